/*
 * The page's state and its URL hash: the run configuration the learner is
 * editing, the view options, and pure helpers that turn them into the JSON
 * body of POST /api/runs. No DOM here, and no rule of the engine: the form's
 * values, the init laws and their figures, the limits and the demos all come
 * from the server (GET /api/defaults, /api/inits, POST /api/inits/describe).
 */

/*
 * The shape of the form's config. Its values are blank: GET /api/defaults fills
 * them (pageDefaults), so that "start training" with nothing changed is the run
 * `POST /api/runs {}` starts.
 */
export const BLANK_CONFIG = Object.freeze({
  preset: null,             // a preset name, or "custom" to use `spec`
  spec: null,               // the edited JSON spec when preset === "custom"
  init: null,               // the run's default init, {name, ...params}
  layerInits: {},           // {"<layer index>": {name, ...params}} per-layer overrides
  dataset: null,
  datasetPath: "",          // the folder under DATA/datasets of a dataset that reads files ("" for none)
  optimizer: null,
  lr: null,
  momentum: null,
  weightDecay: null,
  batchSize: null,
  steps: null,
  seed: null,
  snapshotEvery: null,
});

/* The optimizer fields of the form; momentum only counts for SGD. */
const OPTIMIZER_FIELDS = ["optimizer", "lr", "momentum", "weightDecay"];
const usesField = (optimizer, field) => field !== "momentum" || optimizer === "sgd";

/* An optimizer's settings as the server gives them -> the form's optimizer fields. */
function optimizerToFields(optimizer, fallback) {
  return {
    optimizer: optimizer.name,
    lr: optimizer.lr ?? fallback.lr,
    momentum: optimizer.momentum ?? fallback.momentum,
    weightDecay: optimizer.weight_decay ?? fallback.weightDecay,
  };
}

/*
 * The page's defaults from GET /api/defaults ({run, optimizers}) and the
 * presets' own optimizers from GET /api/presets ({name: optimizer}):
 * {config, optimizers: {name: fields}, presetOptimizers: {preset: fields}}.
 * Either may be null (server unreachable): the config stays blank.
 */
export function pageDefaults(server, presetOptimizers) {
  const config = cloneConfig(BLANK_CONFIG);
  if (server?.run) applyRunConfig(config, server.run);
  const optimizers = {};
  for (const [name, optimizer] of Object.entries(server?.optimizers ?? {})) {
    optimizers[name] = optimizerToFields({ ...optimizer, name }, config);
  }
  const presets = {};
  for (const [name, optimizer] of Object.entries(presetOptimizers ?? {})) presets[name] = optimizerToFields(optimizer, config);
  return { config, optimizers, presetOptimizers: presets };
}

/*
 * The optimizer fields a run of `preset` starts from: with no optimizer named,
 * the preset's own; with one named, the preset's own when it is that one,
 * else that optimizer's defaults.
 */
export function optimizerDefaults(defaults, preset, optimizer = null) {
  const own = defaults.presetOptimizers[preset];
  if (own && (optimizer === null || own.optimizer === optimizer)) return own;
  const name = optimizer ?? defaults.config.optimizer;
  return defaults.optimizers[name] ?? optimizerToFields({ name }, defaults.config);
}

/*
 * Optimizer fields the learner has not touched follow the defaults when the
 * preset or the optimizer changes (Adam starts at its own learning rate, the
 * deep preset with Adam); once any of them was edited, all of them stay.
 * `before` and `after` are optimizerDefaults results; the config is changed in place.
 */
export function followOptimizerDefaults(config, before, after) {
  const untouched = OPTIMIZER_FIELDS.every((field) => !usesField(before.optimizer, field) || config[field] === before[field]);
  if (untouched) Object.assign(config, after);
  return untouched;
}

export const DEFAULT_VIEW = Object.freeze({
  run: null,                // the run on screen
  scaling: "layer",         // "layer" or "filter": how heatmaps are normalised
  probe: 0,                 // which probe image the feature maps show
  pace: "live",             // "live", or stored snapshots played per second (PACES)
  stepAxis: "auto",         // "auto" (log while the run is young), "log" or "linear"
  // set only from a link: lesson (the guided lesson on screen, lessons.js, `#lesson=<id>`) and
  // lessonSteps (`#lesson_steps=N`: a lesson's runs trained for N steps; short runs, tests)
});

/* The paces the live view offers, in snapshots per second. */
export const PACES = [1, 2, 5, 10, 20];
export const STEP_AXES = ["auto", "log", "linear"];

export function createState() {
  return {
    config: cloneConfig(BLANK_CONFIG),
    defaults: pageDefaults(null, null),   // what the form starts from (GET /api/defaults, /api/presets)
    served: null,           // GET /api/defaults as served: run, optimizers, demos, kernel_bank, limits
    view: { ...DEFAULT_VIEW },
    presets: {},            // name -> spec (from GET /api/presets)
    inits: [],              // [{name, law, params, aliases}] (from GET /api/inits)
    namedKernels: [],       // the engine's hand-made kernels (GET /api/inits named_kernels)
    datasets: [],           // [name] (GET /api/datasets: only those that can load here)
    datasetsWithPath: [],   // datasets that read files from dataset.path (their served params take one)
    datasetPathRule: "",    // where dataset.path points (GET /api/datasets path_rule)
    run: null,              // the run record on screen (GET /api/runs/{id})
    steps: [],              // snapshot steps stored for the run, ascending
    mode: "live",           // "live" follows the stream, "history" shows `historyStep`
    historyStep: null,
    latestSnapshot: null,   // the newest snapshot received (no feature maps)
    initialSnapshot: null,  // step 0 of the run, for the histogram's outline
  };
}

export function cloneConfig(config) {
  return JSON.parse(JSON.stringify(config));
}

/* An init given as "name" or {name, ...params} -> {name, ...params}. */
export function normaliseInit(init) {
  if (typeof init === "string") return { name: init };
  if (typeof init === "object" && typeof init.name === "string") return { ...init };
  throw new Error(`init: expected a name or {"name": ...}, got ${JSON.stringify(init)}`);
}

/*
 * A run config as the server stores it (GET /api/runs/{id}, /api/defaults)
 * into the page's config, in place; fields it lacks keep their values.
 */
export function applyRunConfig(config, run) {
  if (typeof run.model === "string") { config.preset = run.model; config.spec = null; }
  else if (run.model) { config.preset = "custom"; config.spec = run.model; }
  config.layerInits = {};
  try { config.init = normaliseInit(run.init); } catch { /* keep */ }
  config.dataset = typeof run.dataset === "string" ? run.dataset : run.dataset?.name ?? config.dataset;
  config.datasetPath = typeof run.dataset === "object" && typeof run.dataset?.path === "string" ? run.dataset.path : "";
  const optimizer = typeof run.optimizer === "string" ? { name: run.optimizer } : run.optimizer ?? {};
  Object.assign(config, optimizerToFields({ name: config.optimizer, ...optimizer }, config));
  config.batchSize = run.batch_size ?? config.batchSize;
  config.steps = run.steps ?? config.steps;
  config.seed = run.seed ?? config.seed;
  config.snapshotEvery = run.snapshot_every ?? config.snapshotEvery;
  return config;
}

/* {name} -> "name" so that simple inits stay simple in the JSON body. */
export function compactInit(init) {
  const keys = Object.keys(init);
  return keys.length === 1 ? init.name : { ...init };
}

// ---------------------------------------------------------------- URL hash

const NUMBER_FIELDS = { lr: "lr", momentum: "momentum", wd: "weightDecay", bs: "batchSize", steps: "steps", seed: "seed",
  every: "snapshotEvery" };

export function configToHash(config, view) {
  const p = new URLSearchParams();
  p.set("preset", config.preset);
  if (config.preset === "custom" && config.spec) p.set("spec", JSON.stringify(config.spec));
  p.set("init", JSON.stringify(compactInit(config.init)));
  if (Object.keys(config.layerInits).length) {
    const compact = {};
    for (const [k, v] of Object.entries(config.layerInits)) compact[k] = compactInit(v);
    p.set("layers", JSON.stringify(compact));
  }
  p.set("dataset", config.dataset);
  if (config.datasetPath) p.set("dpath", config.datasetPath);
  p.set("opt", config.optimizer);
  for (const [key, field] of Object.entries(NUMBER_FIELDS)) p.set(key, String(config[field]));
  if (view.run) p.set("run", view.run);
  if (view.scaling !== DEFAULT_VIEW.scaling) p.set("scale", view.scaling);
  if (view.probe !== DEFAULT_VIEW.probe) p.set("probe", String(view.probe));
  if (view.lesson) p.set("lesson", view.lesson);
  if (view.lessonSteps) p.set("lesson_steps", String(view.lessonSteps));
  if (view.pace !== DEFAULT_VIEW.pace) p.set("pace", String(view.pace));
  if (view.stepAxis !== DEFAULT_VIEW.stepAxis) p.set("axis", view.stepAxis);
  return "#" + p.toString();
}

/*
 * Parse a location hash; unknown or malformed fields keep their defaults
 * (`defaults` from pageDefaults). A link without a weight decay (made before
 * the form had one) gets the default of its optimizer.
 */
export function hashToConfig(hash, defaults = pageDefaults(null, null)) {
  const config = cloneConfig(defaults.config);
  const view = { ...DEFAULT_VIEW };
  const p = new URLSearchParams((hash || "").replace(/^#/, ""));
  const json = (key) => {
    try { return JSON.parse(p.get(key)); } catch { return undefined; }
  };
  if (p.has("preset")) config.preset = p.get("preset");
  if (p.has("spec")) {
    const spec = json("spec");
    if (spec && typeof spec === "object") config.spec = spec;
  }
  if (config.preset === "custom" && !config.spec) config.preset = defaults.config.preset;
  if (p.has("init")) {
    try { config.init = normaliseInit(json("init") ?? p.get("init")); } catch { /* keep default */ }
  }
  if (p.has("layers")) {
    const layers = json("layers");
    if (layers && typeof layers === "object") {
      for (const [k, v] of Object.entries(layers)) {
        try { config.layerInits[k] = normaliseInit(v); } catch { /* skip a bad entry */ }
      }
    }
  }
  if (p.has("dataset")) config.dataset = p.get("dataset");
  config.datasetPath = p.get("dpath") ?? "";
  if (p.has("opt")) config.optimizer = p.get("opt");
  config.weightDecay = optimizerDefaults(defaults, config.preset, config.optimizer).weightDecay;
  for (const [key, field] of Object.entries(NUMBER_FIELDS)) {
    const n = Number(p.get(key));
    if (p.has(key) && Number.isFinite(n)) config[field] = n;
  }
  if (p.has("run")) view.run = p.get("run");
  if (p.get("scale") === "filter") view.scaling = "filter";
  const probe = Number(p.get("probe"));
  if (p.has("probe") && Number.isInteger(probe) && probe >= 0) view.probe = probe;
  if (p.get("lesson")) view.lesson = p.get("lesson");
  const lessonSteps = Number(p.get("lesson_steps"));
  if (Number.isInteger(lessonSteps) && lessonSteps > 0) view.lessonSteps = lessonSteps;
  if (PACES.includes(Number(p.get("pace")))) view.pace = Number(p.get("pace"));
  if (STEP_AXES.includes(p.get("axis"))) view.stepAxis = p.get("axis");
  return { config, view };
}

// ---------------------------------------------------------------- spec helpers

/* The spec the config describes: the custom one or the named preset's. */
export function baseSpec(config, presets) {
  if (config.preset === "custom") return config.spec;
  return presets[config.preset] ?? null;
}

/* A size the engine states as n or [h, w] -> [h, w]. */
export const pair = (value) => (Array.isArray(value) ? [value[0], value[1]] : [value, value]);

/*
 * Conv layers of a normalised spec — the engine's, with every default filled in (GET
 * /api/runs/{id} model_spec): [{index, label, filters, kernel: [kh, kw], inChannels, stride,
 * padding, init}], stride and padding as the spec states them (n or [h, w]), `init` the layer's
 * own init (null when it follows the run default). No default of the engine is assumed here: a
 * spec that lacks one is not normalised, and is refused.
 */
export function convLayers(spec) {
  if (!spec || !Array.isArray(spec.layers) || !Array.isArray(spec.input)) return [];
  let channels = spec.input[0];
  const out = [];
  spec.layers.forEach((layer, index) => {
    if (layer.type !== "conv") return;
    for (const key of ["filters", "kernel", "stride", "padding"]) {
      if (layer[key] == null) throw new Error(`layer ${index}: "${key}" missing; convLayers reads a normalised spec (the run's model_spec)`);
    }
    out.push({
      index, filters: layer.filters, kernel: pair(layer.kernel), inChannels: channels,
      stride: layer.stride, padding: layer.padding,
      init: layer.init != null ? normaliseInit(layer.init) : null,
    });
    channels = layer.filters;
  });
  return out;
}

/*
 * The conv layers of the setup form's model as POST /api/inits/describe states them (the engine
 * normalises the spec: kernel sizes and input channels are its): [{index, label, filters, kernel,
 * inChannels}]. `described` is that answer's `layers`.
 */
export function describedConvLayers(described) {
  return (described ?? []).filter((l) => l.type === "conv")
    .map((l) => ({ index: l.index, label: l.label, filters: l.shape[0], inChannels: l.shape[1], kernel: [l.shape[2], l.shape[3]] }));
}

/* The config's dataset as a request names it: its name, or {name, path} once a folder is given
   (the form gives one only to a dataset whose served params take a path). */
export function datasetRequest(config) {
  return config.datasetPath ? { name: config.dataset, path: config.datasetPath } : config.dataset;
}

/* The JSON body of POST /api/runs for this config. */
export function toRunRequest(config, presets) {
  const body = {
    init: compactInit(config.init),
    dataset: datasetRequest(config),
    optimizer: { name: config.optimizer, lr: config.lr, weight_decay: config.weightDecay },
    batch_size: config.batchSize,
    steps: config.steps,
    seed: config.seed,
    snapshot_every: config.snapshotEvery,
  };
  if (config.optimizer === "sgd") body.optimizer.momentum = config.momentum;
  const overrides = Object.entries(config.layerInits);
  if (config.preset !== "custom" && overrides.length === 0) {
    body.model = config.preset;
    return body;
  }
  const spec = baseSpec(config, presets);
  if (!spec) throw new Error(`model: preset "${config.preset}" is not known to the server`);
  const model = JSON.parse(JSON.stringify(spec));
  for (const [index, init] of overrides) {
    const layer = model.layers[Number(index)];
    if (!layer || layer.type !== "conv") {
      throw new Error(`model.layers[${index}].init: layer ${index} is not a conv layer of this spec`);
    }
    layer.init = compactInit(init);
  }
  body.model = model;
  return body;
}

/*
 * A run's init in a few words, truthfully: the run's default init, and any layer of its spec that
 * starts otherwise — a learner's drawn kernel is "own kernel" (with how many filters get it and
 * what the rest start from), a named one its name. {"init": "he_normal"} -> "he_normal".
 */
export function initSummary(config) {
  const name = (init) => (typeof init === "string" ? init : init?.name ?? "");
  const own = [];
  const layers = typeof config?.model === "object" && Array.isArray(config.model?.layers) ? config.model.layers : [];
  for (const layer of layers) {
    if (layer.type !== "conv" || layer.init == null) continue;
    const init = layer.init;
    if (name(init) === "kernel" && Array.isArray(init.kernels) && Array.isArray(init.kernels[0])) {
      const n = init.kernels.length;
      own.push(`own kernel in ${n} filter${n > 1 ? "s" : ""}, rest ${name(init.fallback) || "fallback"}`);
    } else if (name(init) === "kernel") {
      own.push(`kernel ${typeof init.kernels === "string" ? init.kernels : "bank"}`);
    } else {
      own.push(name(init));
    }
  }
  const base = name(config?.init);
  if (!own.length) return base;
  return layers.filter((l) => l.type === "conv").every((l) => l.init != null) ? own.join(" / ") : `${own.join(" / ")}; other layers ${base}`;
}

