/*
 * The setup form ("Set up a run"): architecture, the run's init and each conv
 * layer's own, dataset, optimizer and numbers, then "start training". It
 * writes what the learner picks into state.config (state.js) and draws
 * state.config back into the fields. Nothing here is a rule of its own:
 * the fields' values start from GET /api/defaults, their bounds are its
 * `limits`, the inits and their parameters are GET /api/inits, and the law
 * with its figures for each layer is POST /api/inits/describe.
 */

import * as api from "./api.js";
import { $, bounded, el } from "./dom.js";
import {
  applyRunConfig, baseSpec, compactInit, datasetRequest, describedConvLayers, followOptimizerDefaults, optimizerDefaults,
  toRunRequest,
} from "./state.js";

/* The number fields: input id, the name in messages, the key in state.config, the key in defaults.limits. */
const NUMBER_FIELDS = [
  { id: "f-lr", label: "learning rate", key: "lr", limit: "lr" },
  { id: "f-momentum", label: "momentum", key: "momentum", limit: "momentum" },
  { id: "f-wd", label: "weight decay", key: "weightDecay", limit: "weight_decay" },
  { id: "f-batch", label: "batch size", key: "batchSize", limit: "batch_size" },
  { id: "f-steps", label: "steps", key: "steps", limit: "steps" },
  { id: "f-seed", label: "seed", key: "seed", limit: "seed" },
  { id: "f-every", label: "snapshot every", key: "snapshotEvery", limit: "snapshot_every" },
];

/*
 * context: {state, writeHash(), openRun(id), refreshRunList()}.
 * Returns {render(), changed(), loadRunConfig(config), askForToken(), describe}.
 */
export function mountSetupForm(context) {
  const { state } = context;
  const limits = () => state.served?.limits ?? {};
  const initInfo = (name) => state.inits.find((i) => i.name === name || (i.aliases ?? []).includes(name));

  // ---------------------------------------------------------------- init controls

  /* The parameter the form offers for an init: its first one in GET /api/inits (std, a, value, gain, kernels). */
  function initParamControl(init, onChange, what) {
    const span = el("span", "init-param");
    const params = initInfo(init.name)?.params ?? {};
    const key = Object.keys(params)[0];
    if (!key) return span;
    let input;
    if (key === "kernels") {
      input = el("select");
      const drawn = Array.isArray(init.kernels) && init.kernels.length && Array.isArray(init.kernels[0]);
      if (drawn) {
        // the learner's own kernel from the kernel editor: say so, not the bank's names
        const n = init.kernels.length;
        const rest = typeof init.fallback === "string" ? init.fallback : init.fallback?.name ?? "the fallback";
        input.append(new Option(`your drawn kernel: filter${n > 1 ? `s 0–${n - 1}` : " 0"}, the rest ${rest}`, "__drawn__"));
      }
      input.append(new Option(`bank: ${(state.served?.kernel_bank ?? []).join(", ")}`, ""));
      for (const k of state.namedKernels) input.append(new Option(`${k} in every filter`, k));
      input.value = drawn ? "__drawn__" : typeof init.kernels === "string" ? init.kernels : "";
    } else {
      input = el("input", { type: "number", step: "any" });
      input.value = String(init[key] ?? params[key]);
    }
    input.setAttribute("aria-label", key);
    input.dataset.param = key;
    input.dataset.what = `${what} ${key}`;   // the field's name in the form's messages
    input.addEventListener("change", () => {
      const next = { ...init };
      if (input.type === "number" && emptyOrBad(input)) { showProblems(); return; }   // kept empty, named
      if (key === "kernels") {
        if (input.value === "__drawn__") return;
        delete next.fallback;
        if (input.value) next.kernels = input.value; else delete next.kernels;
      } else {
        next[key] = Number(input.value);
      }
      onChange(next);
    });
    span.append(`${key} `, input);
    return span;
  }

  function initSelect(value, { allowDefault = false } = {}) {
    const select = el("select");
    if (allowDefault) select.append(new Option("— run default —", ""));
    for (const { name } of state.inits) select.append(new Option(name, name));
    select.value = value ?? "";
    return select;
  }

  /*
   * The law and figures of each layer's init come from the server; one request
   * in flight, only the newest form is asked next. #init-table gets
   * data-described="true" once the figures on screen are those of the form.
   */
  let wantedDescription = null;
  const describer = new api.LatestOnlyFetcher(
    (body) => api.describeInits(JSON.parse(body)),
    (body, answer) => { if (body === wantedDescription) showDescription(answer.layers); },
    (body, error) => {
      if (body !== wantedDescription) return;
      if (error.fields?.includes("dataset.path")) {
        // the folder is refused: said beside its field; the laws wait for a folder the server takes
        refusePath(JSON.parse(body).dataset.path, error.message);
        waitForFolder("a dataset folder the server can read");
        return;
      }
      for (const law of document.querySelectorAll("#init-table .law")) law.textContent = error.message;
      $("init-table").dataset.described = "true";
    },
  );

  function describeForm() {
    let model;
    try { model = toRunRequest(state.config, state.presets).model; } catch { return; }
    if (needsPath() && !state.config.datasetPath) {
      // a dataset that reads files cannot be described without its folder: no request that must fail
      wantedDescription = null;
      waitForFolder("the dataset folder");
      return;
    }
    const body = JSON.stringify({ model, init: compactInit(state.config.init), dataset: datasetRequest(state.config) });
    if (body === wantedDescription) return;
    wantedDescription = body;
    $("init-table").dataset.described = "false";
    describer.want(body);
  }

  /* Each layer's law waits for what the description needs (the figures depend on the dataset). */
  function waitForFolder(what) {
    for (const law of document.querySelectorAll("#init-table .law")) law.textContent = `the figures follow once ${what} is given`;
    $("init-table").dataset.described = "waiting";
  }

  // ---------------------------------------------------------------- the dataset's folder

  /* Whether the chosen dataset reads files: its served params take a path (GET /api/datasets). */
  const needsPath = () => state.datasetsWithPath.includes(state.config.dataset);
  let pathRefusal = null;   // {path, message}: the server's last word on a folder (POST describe or runs)

  function refusePath(path, message) {
    pathRefusal = { path, message };
    showPathField();
  }

  /* The folder field beside a dataset that reads files, with the path rule and what is wrong. */
  function showPathField() {
    const wanted = needsPath();
    $("dataset-path-label").hidden = !wanted;
    const path = state.config.datasetPath;
    const problem = !wanted ? "" : !path ? "dataset.path: required for this dataset"
      : pathRefusal?.path === path ? pathRefusal.message : "";
    $("dataset-path-error").textContent = problem;
    $("f-dataset-path").setAttribute("aria-invalid", String(Boolean(problem)));
  }

  function showDescription(layers) {
    // the form's layer names and conv shapes as the server gives them (conv1, conv2, …; kernel
    // sizes from the engine's normalised spec), for the other views
    state.formLabels = Object.fromEntries(layers.map((l) => [l.index, l.label]));
    state.formLayers = describedConvLayers(layers);
    document.dispatchEvent(new CustomEvent("kernelscope:form-layers", { detail: state.formLayers }));
    for (const layer of layers) {
      const row = document.querySelector(`#init-table .init-layer[data-layer="${layer.index}"]`);
      if (!row) continue;
      row.querySelector(".layer-shape").textContent = layer.shape.join("×");
      row.querySelector(".fans").textContent = `fan_in ${layer.fan_in} · fan_out ${layer.fan_out}`;
      if (layer.label) row.querySelector(".layer-label").textContent = layer.label;
      const law = row.querySelector(".law");
      const [rule, figure] = layer.text.split(" → ");
      law.replaceChildren(el("span", {}, figure ? `${rule} → ` : rule));
      if (figure) law.append(el("b", {}, figure));
    }
    $("init-table").dataset.described = "true";
  }

  /* What the init controls show depends on: the model, the inits and the dataset (describe's figures). */
  const initControlsKey = () => {
    const c = state.config;
    return JSON.stringify([c.preset, c.preset === "custom" ? c.spec : null, c.init, c.layerInits, c.dataset, c.datasetPath]);
  };
  let renderedInitKey = null;

  function renderInitControls() {
    const config = state.config;
    renderedInitKey = initControlsKey();
    if (!config.init) return;   // GET /api/defaults could not be read (the banner says so)
    const select = $("f-init");
    select.replaceChildren(...initSelect(config.init.name).children);
    select.value = config.init.name;
    $("f-init-param").replaceWith(Object.assign(initParamControl(config.init, (init) => {
      config.init = init; changed();
    }, "init"), { id: "f-init-param" }));

    // until the server's figures for this form arrive, each row keeps the ones it had,
    // so the form does not jump under the learner's pointer
    const box = $("init-table");
    const before = new Map([...box.querySelectorAll(".init-layer")].map((row) => [row.dataset.layer, row]));
    box.replaceChildren();
    wantedDescription = null;
    // the conv layers of the spec as written; their shapes come with the server's description
    const layers = (baseSpec(config, state.presets)?.layers ?? []).map((layer, index) => ({ ...layer, index }))
      .filter((layer) => layer.type === "conv");
    for (const layer of layers) {
      const own = config.layerInits[layer.index] ?? null;
      const row = el("div", "init-layer");
      row.dataset.layer = String(layer.index);
      const head = el("div", "init-layer-head");
      const fans = el("span", { class: "fans", title: "fan_in = in_channels·kh·kw, fan_out = out_channels·kh·kw" }, "fan_in … · fan_out …");
      const name = el("b", "layer-label", before.get(String(layer.index))?.querySelector(".layer-label")?.textContent ?? `layer ${layer.index}`);
      const shape = el("span", "layer-shape", before.get(String(layer.index))?.querySelector(".layer-shape")?.textContent ?? "…");
      head.append(name, shape, fans);
      const pick = el("div", "init-layer-pick");
      const sel = initSelect(own?.name ?? "", { allowDefault: true });
      sel.setAttribute("aria-label", `init of layer ${layer.index}`);
      sel.addEventListener("change", () => {
        if (sel.value) config.layerInits[layer.index] = { name: sel.value };
        else delete config.layerInits[layer.index];
        changed();
      });
      pick.append(sel);
      if (own) {
        pick.append(initParamControl(own, (init) => { config.layerInits[layer.index] = init; changed(); },
          `${state.formLabels?.[layer.index] ?? `layer ${layer.index}`} init`));
      }
      const law = el("div", "law", "…");
      const previous = before.get(String(layer.index));
      if (previous) {
        fans.textContent = previous.querySelector(".fans").textContent;
        law.replaceChildren(...previous.querySelector(".law").childNodes);
      }
      row.append(head, pick, law);
      box.append(row);
    }
    if (!layers.length) box.append(el("p", "note", "The spec has no conv layers."));
    describeForm();
  }

  // ---------------------------------------------------------------- fields

  /* Each number field's bounds, as GET /api/defaults states them. */
  function applyLimits() {
    for (const field of NUMBER_FIELDS) bounded($(field.id), limits()[field.limit]);
  }

  function render() {
    const c = state.config;
    const preset = $("f-preset");
    preset.replaceChildren();
    for (const name of Object.keys(state.presets)) preset.append(new Option(name, name));
    preset.append(new Option("custom (JSON spec)", "custom"));
    if (c.preset !== "custom" && !(c.preset in state.presets) && Object.keys(state.presets).length) {
      c.preset = Object.keys(state.presets)[0];
    }
    preset.value = c.preset;
    const spec = baseSpec(c, state.presets);
    if (document.activeElement !== $("f-spec")) $("f-spec").value = spec ? JSON.stringify(spec, null, 1) : "";
    const dataset = $("f-dataset");
    dataset.replaceChildren();
    for (const name of new Set([...state.datasets, c.dataset])) dataset.append(new Option(name, name));
    dataset.value = c.dataset;
    if (!needsPath()) c.datasetPath = "";
    $("f-dataset-path").value = c.datasetPath;
    $("f-dataset-rule").textContent = state.datasetPathRule;
    showPathField();
    applyLimits();
    writeOptimizerFields();
    for (const field of NUMBER_FIELDS.slice(3)) $(field.id).value = String(c[field.key]);
    renderInitControls();
  }

  /* The optimizer fields of the config into the form. */
  function writeOptimizerFields() {
    const c = state.config;
    $("f-optimizer").value = c.optimizer;
    for (const field of NUMBER_FIELDS.slice(0, 3)) $(field.id).value = String(c[field.key]);
    $("momentum-label").hidden = c.optimizer !== "sgd";
  }

  /* What is wrong with a number input that holds no number: "required" when it is empty, "not a
     number" when the browser could not read what was typed (its value then reads ""); else null. */
  function emptyOrBad(input) {
    if (input.validity?.badInput) return "not a number";
    return input.value.trim() === "" ? "required" : null;
  }

  /* A number field's value within its served bounds; an integer where the field steps by 1. */
  function readNumber(field) {
    const input = $(field.id);
    const { min = null, max = null, min_exclusive: lowOpen = false, max_exclusive: highOpen = false } = limits()[field.limit] ?? {};
    const integer = input.step === "1";
    const value = Number(input.value);
    const missing = emptyOrBad(input);
    if (missing) throw new Error(`${field.label}: ${missing}`);
    const low = min != null && (lowOpen ? value <= min : value < min);
    const high = max != null && (highOpen ? value >= max : value > max);
    if (!Number.isFinite(value) || low || high || (integer && !Number.isInteger(value))) {
      const bounds = [min != null ? `${lowOpen ? ">" : "≥"} ${min}` : "", max != null ? `${highOpen ? "<" : "≤"} ${max}` : ""].filter(Boolean);
      throw new Error(`${field.label}: expected ${integer ? "an integer" : "a number"}${bounds.length ? ` ${bounds.join(" and ")}` : ""}, got ${input.value}`);
    }
    return value;
  }

  function readForm() {
    const c = state.config;
    c.dataset = $("f-dataset").value;
    // the folder counts only for a dataset that reads files; the field keeps what was typed meanwhile
    c.datasetPath = needsPath() ? $("f-dataset-path").value.trim() : "";
    c.optimizer = $("f-optimizer").value;
    const problems = [];
    if (needsPath() && !c.datasetPath) problems.push("dataset folder: required");
    for (const field of NUMBER_FIELDS) {
      try { c[field.key] = readNumber(field); } catch (error) { problems.push(error.message); }
    }
    // an init's parameter: its bounds are the engine's (the server names them); empty is the form's to say
    for (const input of document.querySelectorAll("#setup-form .init-param input[type=number]")) {
      const missing = emptyOrBad(input);
      if (missing) problems.push(`${input.dataset.what}: ${missing}`);
    }
    if (problems.length) throw new Error(problems.join("; "));
  }

  let initRenderQueued = false;

  /* Read the form into state.config and say what is wrong with it, if anything. */
  function showProblems() {
    $("form-error").textContent = "";
    try { readForm(); } catch (error) { $("form-error").textContent = error.message; }
  }

  function changed() {
    showProblems();
    showPathField();
    $("momentum-label").hidden = state.config.optimizer !== "sgd";
    context.writeHash();
    // Rebuild the init controls after this event: rebuilding removes the focused
    // control, whose blur may fire another change while the DOM is being replaced.
    // Only when what they show changed: a number field's change must not replace the init
    // field the learner is moving into (it would take the focus and what was typed there).
    if (initControlsKey() === renderedInitKey) return;
    if (initRenderQueued) return;
    initRenderQueued = true;
    queueMicrotask(() => { initRenderQueued = false; renderInitControls(); });
  }

  /* Put a run's stored config into the form (when a run is opened from the list). */
  function loadRunConfig(cfg) {
    if (!cfg) return;
    applyRunConfig(state.config, cfg);
    render();
    context.writeHash();
  }

  function askForToken() {
    $("token-row").hidden = false;
    $("f-token").focus();
  }

  async function start(event) {
    event.preventDefault();
    $("form-error").textContent = "";
    let body;
    try {
      readForm();
      body = toRunRequest(state.config, state.presets);
    } catch (error) {
      $("form-error").textContent = error.message;
      return;
    }
    const button = $("btn-start");
    button.disabled = true;
    try {
      const run = await api.startRun(body);
      await context.openRun(run.id);
      context.refreshRunList();
    } catch (error) {
      $("form-error").textContent = error.message;
      if (error.fields?.includes("dataset.path")) refusePath(body.dataset?.path, error.message);
      if (error.status === 401) askForToken();
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- events

  $("f-token").addEventListener("change", () => {
    api.setToken($("f-token").value.trim());
    $("form-error").textContent = "";
  });
  $("setup-form").addEventListener("submit", start);
  $("setup-form").addEventListener("change", (event) => {
    const id = event.target.id;
    if (event.target.closest("#init-table") || event.target.closest(".init-param") || id === "f-spec" || id === "f-token") return;
    if (id === "f-optimizer" || id === "f-preset") {
      // untouched optimizer fields follow the new choice's defaults (state.js)
      const c = state.config;
      const preset = id === "f-preset" ? event.target.value : c.preset;
      const optimizer = id === "f-optimizer" ? event.target.value : null;
      const before = optimizerDefaults(state.defaults, c.preset, optimizer === null ? null : c.optimizer);
      if (followOptimizerDefaults(c, before, optimizerDefaults(state.defaults, preset, optimizer))) writeOptimizerFields();
    }
    if (id === "f-preset") {
      state.config.preset = event.target.value;
      state.config.layerInits = {};
      if (state.config.preset === "custom" && !state.config.spec) {
        try { state.config.spec = JSON.parse($("f-spec").value); } catch { state.config.spec = null; }
      }
      $("f-spec").value = JSON.stringify(baseSpec(state.config, state.presets) ?? {}, null, 1);
    }
    if (id === "f-init") state.config.init = { name: event.target.value };
    changed();
  });
  $("btn-apply-spec").addEventListener("click", () => {
    $("spec-error").textContent = "";
    try {
      const spec = JSON.parse($("f-spec").value);
      if (!spec || !Array.isArray(spec.layers)) throw new Error('spec: expected an object with "layers": [...]');
      state.config.preset = "custom";
      state.config.spec = spec;
      state.config.layerInits = {};
      $("f-preset").value = "custom";
      changed();
    } catch (error) {
      $("spec-error").textContent = error instanceof SyntaxError ? `spec: not valid JSON (${error.message})` : error.message;
    }
  });
  $("btn-copy-link").addEventListener("click", async () => {
    context.writeHash();
    try {
      await navigator.clipboard.writeText(location.href);
      $("btn-copy-link").textContent = "copied";
    } catch {
      $("btn-copy-link").textContent = "link is in the address bar";
    }
    setTimeout(() => { $("btn-copy-link").textContent = "copy link"; }, 1500);
  });

  return { render, changed, loadRunConfig, askForToken };
}
