/*
 * Wiring of the page: reads the URL hash into state, builds the setup form,
 * starts and controls runs, follows a run's event stream, and hands snapshots
 * to the drawing modules. Live snapshots are coalesced to one draw per
 * animation frame and snapshot fetches keep one request in flight, so the page
 * drops frames rather than falling behind. window.__kernelscope exposes what
 * was drawn, for the browser tests and for curious learners in the console.
 */

import * as api from "./api.js";
import { LineChart } from "./charts.js";
import { FeatureMapBoard, FilterBoard, drawGray } from "./filters.js";
import {
  DEFAULT_KERNEL_BANK, INIT_MAIN_PARAM, INIT_PARAM_DEFAULTS, NAMED_KERNELS, baseSpec, configToHash, convLayers, createState, describeInit,
  applyRunConfig, followOptimizerDefaults, hashToConfig, normaliseInit, optimizerDefaults, pageDefaults, toRunRequest,
} from "./state.js";
import { StepThrough, layerInput } from "./stepthrough.js";
import { mountCompare } from "./compare.js";
import { mountForkExport } from "./fork-export.js";
import { mountKernelEditor } from "./kernel-editor.js";
import { mountProbe } from "./probe.js";

const $ = (id) => document.getElementById(id);
const ACTIVE = new Set(["queued", "running", "paused"]);
const FALLBACK_INITS = ["zeros", "constant", "normal", "uniform", "glorot_uniform", "glorot_normal",
  "he_normal", "he_uniform", "lecun_normal", "orthogonal", "kernel"];

const state = createState();
const debug = {
  state,
  drawn: null,          // {step, layers: {index: weight}} of the filters on screen
  features: null,       // {step, probe} of the feature maps on screen
  stepThrough: null,    // what the step-through panel shows
  framesDrawn: 0,         // filter redraws
  framesDropped: 0,       // snapshots skipped because a newer one arrived before drawing
  snapshotsReceived: 0,   // snapshot events from the stream
  featureFramesDrawn: 0,  // feature-map redraws
  drawMs: { filters: [], featureMaps: [] },   // time each redraw took
  charts: null,
};
window.__kernelscope = debug;

function recordTime(list, ms) {
  list.push(ms);
  if (list.length > 500) list.shift();
}

let closeEvents = null;
let runGeneration = 0;       // bumps when another run is opened; stale async work checks it
let pendingLive = null;      // newest live snapshot waiting for the next animation frame
let liveFrame = null;
let fmapSnapshot = null;     // the full snapshot whose feature maps are on screen
let shownSnapshot = null;    // the snapshot whose filters are on screen
let replayTimer = null;
let lastTrainStep = -1;
let lastValStep = -1;
let liveStats = [];          // per-layer stats of the snapshots received live, for merging with a backfill

// ------------------------------------------------------------------ charts

const charts = {
  loss: new LineChart($("chart-loss"), { title: "loss", series: {
    train: { color: "#2563eb" }, validation: { color: "#ea580c", mode: "lines+markers" } } }),
  acc: new LineChart($("chart-acc"), { title: "accuracy", yRange: [0, 1.02], series: {
    train: { color: "#2563eb" }, validation: { color: "#ea580c", mode: "lines+markers" } } }),
  act: new LineChart($("chart-act"), { title: "activation std", yTitle: "log scale", log: true, mode: "lines+markers" }),
  grad: new LineChart($("chart-grad"), { title: "gradient std", yTitle: "log scale", log: true, mode: "lines+markers" }),
};
debug.charts = charts;

function resetCharts() {
  for (const chart of Object.values(charts)) { chart.reset(); chart.markStep(null); }
  lastTrainStep = -1;
  lastValStep = -1;
  liveStats = [];
}

/*
 * Training points kept per chart: every step of short runs, every k-th step
 * of long ones (about 2,000 points), so an SVG chart stays quick to extend.
 * Validation points are all kept.
 */
const MAX_TRAIN_POINTS = 2000;

function addMetricPoints(points) {
  const total = state.run?.steps ?? state.run?.config?.steps ?? 0;
  const stride = Math.max(1, Math.ceil(total / MAX_TRAIN_POINTS));
  for (const p of points) {
    if (p.loss != null && p.step > lastTrainStep && (p.step % stride === 0 || p.step === total)) {
      charts.loss.addDataPoint("train", p.step, p.loss);
      charts.acc.addDataPoint("train", p.step, p.acc);
      lastTrainStep = p.step;
    }
    if (p.val_loss != null && p.step > lastValStep) {
      charts.loss.addDataPoint("validation", p.step, p.val_loss);
      charts.acc.addDataPoint("validation", p.step, p.val_acc);
      lastValStep = p.step;
    }
    updateProgress(p.step);
  }
}

const statLayers = (snapshot) => (snapshot.stats || []).filter((s) => s.type === "conv" || s.type === "dense");

function addStatPoints(snapshot) {
  liveStats.push({ step: snapshot.step, stats: statLayers(snapshot) });
  for (const s of statLayers(snapshot)) {
    charts.act.addDataPoint(`${s.type} ${s.index}`, snapshot.step, s.act_std);
    charts.grad.addDataPoint(`${s.type} ${s.index}`, snapshot.step, s.grad_std);
  }
}

// ------------------------------------------------------------------ boards

const filterBoard = new FilterBoard($("filter-board"));
const fmapBoard = new FeatureMapBoard($("fmap-board"), pickPixel);
const stepThrough = new StepThrough($("stepthrough"), (result) => { debug.stepThrough = result; });

function runSpec() {
  const model = state.run?.config?.model;
  if (model && typeof model === "object") return model;
  if (typeof model === "string") return state.presets[model] ?? null;
  return null;
}

function initTextFor(layerIndex) {
  const cfg = state.run?.config;
  if (!cfg) return "";
  const layer = convLayers(runSpec()).find((l) => l.index === layerIndex);
  let init;
  try { init = normaliseInit(layer?.init ?? cfg.init); } catch { return ""; }
  if (!layer) return `init ${init.name}`;
  const d = describeInit(init, layer.fanIn, layer.fanOut);
  return `init ${init.name}${d.figure ? ` (${d.figure})` : ""}`;
}

function drawFilters(snapshot) {
  const started = performance.now();
  shownSnapshot = snapshot;
  filterBoard.update(snapshot, {
    scaling: state.view.scaling,
    initialSnapshot: state.initialSnapshot,
    initText: initTextFor,
  });
  const layers = {};
  for (const l of snapshot.layers) if (l.type === "conv" && l.weight) layers[l.index] = l.weight;
  debug.drawn = { step: snapshot.step, layers, symmetry: Object.fromEntries(snapshot.layers.filter((l) => l.type === "conv").map((l) => [l.index, l.symmetry])) };
  $("filters-step").textContent = `step ${snapshot.step}`;
  debug.framesDrawn += 1;
  recordTime(debug.drawMs.filters, performance.now() - started);
}

function drawFeatureMaps(snapshot) {
  const started = performance.now();
  if (!fmapBoard.update(snapshot, state.view.probe)) return;
  fmapSnapshot = snapshot;
  debug.features = { step: snapshot.step, probe: state.view.probe };
  debug.featureFramesDrawn += 1;
  $("fmaps-step").textContent = `step ${snapshot.step}`;
  buildProbePicker(snapshot);
  recordTime(debug.drawMs.featureMaps, performance.now() - started);
}

function buildProbePicker(snapshot) {
  const picker = $("probe-picker");
  const probes = snapshot.probes || [];
  if (picker.childElementCount === probes.length) {
    [...picker.children].forEach((b, i) => b.classList.toggle("active", i === state.view.probe));
    return;
  }
  picker.replaceChildren();
  probes.forEach((image, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "probe";
    button.dataset.probe = String(i);
    button.title = `probe ${i}${snapshot.probe_labels?.[i] ? `: ${snapshot.probe_labels[i]}` : ""}`;
    const canvas = document.createElement("canvas");
    drawGray(canvas, image[0]);
    button.append(canvas);
    button.classList.toggle("active", i === state.view.probe);
    button.addEventListener("click", () => {
      state.view.probe = i;
      writeHash();
      if (fmapSnapshot) drawFeatureMaps(fmapSnapshot);
    });
    picker.append(button);
  });
}

function pickPixel(layerIndex, filter, y, x) {
  const snapshot = fmapSnapshot;
  if (!snapshot) return;
  const layer = snapshot.layers.find((l) => l.index === layerIndex);
  const spec = runSpec();
  const conv = convLayers(spec).find((l) => l.index === layerIndex);
  const p = Math.min(state.view.probe, (snapshot.probes || []).length - 1);
  const input = layerInput(spec, snapshot, layerIndex, p);
  if (!input || !conv) {
    stepThrough.explainUnavailable(
      `Step-through of conv layer ${layerIndex} needs the input of that layer. Layer 0 reads the probe image; ` +
      "a deeper layer reads the previous conv layer's maps after its activation and pooling, which the page " +
      "rebuilds only when the layers in between are activations or pooling. Pick a map of conv layer " +
      `${convLayers(spec)[0]?.index ?? 0} to step through.`);
    return;
  }
  stepThrough.open({
    input, kernel: layer.weight[filter], bias: Number(layer.bias?.[filter] ?? 0),
    stride: conv.stride, padding: conv.padding, stored: layer.feature_maps[p][filter],
    layerIndex, filter, probe: p, step: snapshot.step, probeLabel: snapshot.probe_labels?.[p],
  }, y, x);
  $("stepthrough").scrollIntoView({ block: "nearest", behavior: "smooth" });
}

// ------------------------------------------------------------------ history

/* One snapshot request in flight; only the newest wanted step is fetched next. */
const snapshotFetcher = new api.LatestOnlyFetcher(
  ({ run, step }) => api.getSnapshot(run, step, true),
  ({ run, step, generation }, snapshot) => {
    if (generation !== runGeneration || run !== state.view.run) return;
    if (state.mode === "history") {
      if (step !== state.historyStep) return;
      drawFilters(snapshot);
      drawFeatureMaps(snapshot);
    } else {
      drawFeatureMaps(snapshot);
    }
  },
  (key, error) => showError(`snapshot ${key.step}: ${error.message}`),
);

function wantSnapshot(step) {
  const before = snapshotFetcher.dropped;
  snapshotFetcher.want({ run: state.view.run, step, generation: runGeneration });
  debug.framesDropped += snapshotFetcher.dropped - before;
}

/*
 * Tell other page modules (comparison, fork, export...) what is on screen:
 * document receives "kernelscope:view" with {run, step, mode} whenever the
 * run or the shown step changes.
 */
let lastViewKey = null;
function announceView() {
  const step = state.mode === "live" ? state.steps[state.steps.length - 1] ?? null : state.historyStep;
  const detail = { run: state.view.run, step, mode: state.mode, status: state.run?.status ?? null };
  const key = JSON.stringify(detail);
  if (key === lastViewKey) return;
  lastViewKey = key;
  document.dispatchEvent(new CustomEvent("kernelscope:view", { detail }));
}

function updateSlider() {
  const slider = $("history-slider");
  slider.max = String(Math.max(0, state.steps.length - 1));
  if (state.mode === "live") slider.value = slider.max;
  const shown = state.mode === "live" ? state.steps[state.steps.length - 1] : state.historyStep;
  $("history-step").textContent = shown == null ? "no snapshots yet"
    : `step ${shown} · snapshot ${Number(slider.value) + 1} of ${state.steps.length}`;
  $("btn-live").classList.toggle("active", state.mode === "live");
  announceView();
}

function showHistoryIndex(index) {
  if (!state.steps.length) return;
  state.mode = "history";
  state.historyStep = state.steps[Math.max(0, Math.min(index, state.steps.length - 1))];
  $("history-slider").value = String(state.steps.indexOf(state.historyStep));
  for (const chart of [charts.loss, charts.acc, charts.act, charts.grad]) chart.markStep(state.historyStep);
  updateSlider();
  wantSnapshot(state.historyStep);
}

function goLive() {
  stopReplay();
  state.mode = "live";
  state.historyStep = null;
  for (const chart of Object.values(charts)) chart.markStep(null);
  updateSlider();
  if (state.latestSnapshot) {
    drawFilters(state.latestSnapshot);
    wantSnapshot(state.latestSnapshot.step);
  } else if (state.steps.length) {
    const last = state.steps[state.steps.length - 1];
    api.getSnapshot(state.view.run, last, false).then((s) => {
      if (state.mode === "live" && s.step === last) { state.latestSnapshot = s; drawFilters(s); }
    }).catch((e) => showError(e.message));
    wantSnapshot(last);
  }
}

function stopReplay() {
  if (replayTimer) clearInterval(replayTimer);
  replayTimer = null;
  $("btn-play").textContent = "▶ replay";
}

function startReplay() {
  if (!state.steps.length) return;
  let index = state.mode === "history" ? state.steps.indexOf(state.historyStep) : -1;
  if (index >= state.steps.length - 1) index = -1;
  const stride = Math.max(1, Math.round(state.steps.length / 150));
  $("btn-play").textContent = "❚❚ pause";
  showHistoryIndex(index + 1);
  replayTimer = setInterval(() => {
    if (snapshotFetcher.busy) return;   // wait for the frame on screen rather than queueing
    const at = state.steps.indexOf(state.historyStep);
    if (at >= state.steps.length - 1) {
      stopReplay();
      if (ACTIVE.has(state.run?.status)) goLive();
      return;
    }
    showHistoryIndex(Math.min(state.steps.length - 1, at + stride));
  }, 150);
}

// ------------------------------------------------------------------ live stream

function scheduleLiveDraw(snapshot) {
  if (pendingLive) debug.framesDropped += 1;
  pendingLive = snapshot;
  if (liveFrame !== null) return;
  liveFrame = requestAnimationFrame(() => {
    liveFrame = null;
    const s = pendingLive;
    pendingLive = null;
    if (s && state.mode === "live") {
      drawFilters(s);
      wantSnapshot(s.step);
    }
  });
}

function onSnapshotEvent(data, generation) {
  if (generation !== runGeneration) return;
  debug.snapshotsReceived += 1;
  const snapshot = data.snapshot ?? data;
  if (snapshot.step == null) snapshot.step = data.step;
  if (!state.steps.includes(snapshot.step)) {
    state.steps.push(snapshot.step);
    state.steps.sort((a, b) => a - b);
    addStatPoints(snapshot);
  }
  if (snapshot.step === 0 && !state.initialSnapshot) state.initialSnapshot = snapshot;
  if (!state.latestSnapshot || snapshot.step >= state.latestSnapshot.step) state.latestSnapshot = snapshot;
  updateSlider();
  if (state.mode === "live") scheduleLiveDraw(snapshot);
}

function onStatusEvent(data, generation) {
  if (generation !== runGeneration || !state.run) return;
  state.run.status = data.status;
  if (data.step != null) state.run.step = data.step;
  updateRunHeader(data.message);
  if (!ACTIVE.has(data.status) && closeEvents) {
    closeEvents();
    closeEvents = null;
    refreshRunList();
  }
}

function followRun(id, generation) {
  const buffered = [];
  let ready = false;
  const close = api.openEvents(id, {
    status: (d) => onStatusEvent(d, generation),
    snapshot: (d) => onSnapshotEvent(d, generation),
    // EventSource retries by itself; the server's first event on return clears this note
    error: (readyState) => {
      if (generation === runGeneration && readyState === EventSource.CONNECTING) {
        $("run-message").textContent = "connection to the server lost — reconnecting…";
      }
    },
    metrics: (d) => {
      if (generation !== runGeneration) return;
      if (ready) addMetricPoints(d.points || []);
      else buffered.push(...(d.points || []));
    },
  });
  return {
    close,
    // called once the REST history is drawn: points already drawn are skipped by step
    release() { ready = true; addMetricPoints(buffered); buffered.length = 0; },
  };
}

// ------------------------------------------------------------------ runs

async function openRun(id, { loadConfig = false } = {}) {
  runGeneration += 1;
  const generation = runGeneration;
  if (closeEvents) { closeEvents(); closeEvents = null; }
  stopReplay();
  stepThrough.close();
  state.view.run = id;
  state.mode = "live";
  state.steps = [];
  state.latestSnapshot = null;
  state.initialSnapshot = null;
  state.historyStep = null;
  fmapSnapshot = null;
  shownSnapshot = null;
  filterBoard.clear();
  fmapBoard.clear();
  $("probe-picker").replaceChildren();
  resetCharts();
  writeHash();
  $("empty-state").hidden = true;
  $("run-view").hidden = false;
  for (const chart of Object.values(charts)) chart.resize();
  let run;
  try {
    run = await api.getRun(id);
  } catch (error) {
    showError(`run ${id}: ${error.message}`);
    return;
  }
  if (generation !== runGeneration) return;
  state.run = run;
  if (loadConfig) loadRunConfig(run.config);
  updateRunHeader();
  markCurrentRun();
  const stream = ACTIVE.has(run.status) ? followRun(id, generation) : null;
  if (stream) closeEvents = stream.close;
  try {
    const [points, steps] = await Promise.all([api.getMetrics(id), api.getSnapshotSteps(id)]);
    if (generation !== runGeneration) return;
    addMetricPoints(points);
    for (const s of steps) if (!state.steps.includes(s)) state.steps.push(s);
    state.steps.sort((a, b) => a - b);
    updateSlider();
    if (stream) stream.release();
    if (state.steps.includes(0) && !state.initialSnapshot) {
      api.getSnapshot(id, 0, false).then((s) => {
        if (generation === runGeneration && !state.initialSnapshot) { state.initialSnapshot = s; redrawCurrent(); }
      }).catch(() => {});
    }
    if (!state.latestSnapshot) goLive();
    backfillStats(id, steps, generation);
  } catch (error) {
    showError(`run ${id}: ${error.message}`);
  }
}

/*
 * Per-layer std curves of a run opened midway or after the fact, from a sample
 * of its stored snapshots, merged with the live points that arrived meanwhile.
 */
async function backfillStats(id, steps, generation) {
  if (!steps.length) return;
  const count = Math.min(steps.length, 40);
  const sample = [...new Set(Array.from({ length: count }, (_, i) => steps[Math.round(i * (steps.length - 1) / Math.max(1, count - 1))]))];
  const points = [];
  for (const step of sample) {
    if (generation !== runGeneration) return;
    try {
      const snapshot = await api.getSnapshot(id, step, false);
      points.push({ step, stats: statLayers(snapshot) });
    } catch { /* a snapshot that cannot be read leaves a gap in the curve */ }
  }
  if (generation !== runGeneration) return;
  const lastSampled = sample[sample.length - 1];
  const all = [...points, ...liveStats.filter((p) => p.step > lastSampled)];
  const series = new Map();
  for (const { step, stats } of all) {
    for (const s of stats) {
      const name = `${s.type} ${s.index}`;
      if (!series.has(name)) series.set(name, { x: [], act: [], grad: [] });
      const e = series.get(name);
      e.x.push(step); e.act.push(s.act_std); e.grad.push(s.grad_std);
    }
  }
  for (const [name, e] of series) {
    charts.act.setSeries(name, e.x, e.act);
    charts.grad.setSeries(name, e.x, e.grad);
  }
}

/* Draw the filters on screen again (new scaling, or the step-0 outline arrived). */
function redrawCurrent() {
  if (shownSnapshot) drawFilters(shownSnapshot);
}

function updateProgress(step) {
  if (!state.run) return;
  if (step != null && step > (state.run.step ?? -1)) state.run.step = step;
  const total = state.run.steps ?? state.run.config?.steps ?? 0;
  const done = state.run.step ?? 0;
  const fraction = total ? Math.min(1, done / total) : 0;
  $("progress-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
  $("progress-text").textContent = total ? `${done} / ${total}` : `${done}`;
  // the run list polls every few seconds; keep the open run's line in step with the stream
  const listed = document.querySelector(`#run-list li[data-run="${CSS.escape(String(state.run.id))}"] .run-progress`);
  if (listed) listed.textContent = `${done}/${total || "?"}`;
}

function updateRunHeader(message) {
  const run = state.run;
  $("run-status").hidden = !run;
  if (!run) return;
  $("run-title").textContent = `run ${run.id}`;
  const badge = $("run-badge");
  badge.textContent = run.status;
  badge.className = `badge status-${run.status}`;
  badge.title = message || run.message || "";
  const problem = ["diverged", "failed", "interrupted"].includes(run.status);
  const queued = run.status === "queued" && run.queue_position != null ? `waiting for a free slot (position ${run.queue_position})` : "";
  $("run-message").textContent = problem ? (message || run.message || "") : queued;
  $("run-message").title = $("run-message").textContent;
  $("btn-pause").hidden = run.status !== "running" && run.status !== "queued";
  // the server resumes a paused run, and restarts stopped, failed or interrupted ones from their checkpoint
  $("btn-resume").hidden = !["paused", "interrupted", "stopped", "failed"].includes(run.status);
  $("btn-stop").hidden = !ACTIVE.has(run.status);
  updateProgress(run.step);
  const item = document.querySelector(`#run-list li[data-run="${CSS.escape(String(run.id))}"] .badge`);
  if (item) { item.textContent = run.status; item.className = `badge status-${run.status}`; }
  announceView();
}

async function control(action) {
  if (!state.run) return;
  try {
    const run = await api.controlRun(state.run.id, action);
    if (run && run.status) {
      state.run.status = run.status;
      updateRunHeader();
    }
    if (action === "resume" && !closeEvents) {
      const stream = followRun(state.run.id, runGeneration);
      stream.release();
      closeEvents = stream.close;
    }
    refreshRunList();
  } catch (error) {
    showError(`${action}: ${error.message}`);
    if (error.status === 401) askForToken();
  }
}

async function refreshRunList() {
  let runs;
  try { runs = await api.listRuns(); } catch (error) { showError(`runs: ${error.message}`); return; }
  const list = $("run-list");
  list.replaceChildren();
  if (!runs.length) {
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = "No runs yet. Runs trained from the CLI appear here too.";
    list.append(li);
  }
  const sorted = [...runs].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
  for (const run of sorted) {
    const li = document.createElement("li");
    li.dataset.run = String(run.id);
    const button = document.createElement("button");
    button.type = "button";
    const init = run.config?.init;
    const initName = typeof init === "string" ? init : init?.name ?? "";
    const model = typeof run.config?.model === "string" ? run.config.model : "custom";
    button.innerHTML = "";
    const title = document.createElement("span");
    title.className = "run-name";
    title.textContent = `${run.id}`;
    const meta = document.createElement("span");
    meta.className = "run-meta";
    const progress = document.createElement("span");
    progress.className = "run-progress";
    progress.textContent = `${run.step ?? 0}/${run.steps ?? run.config?.steps ?? "?"}`;
    meta.append(`${model} · ${initName} · `, progress, run.meta?.origin ? ` · ${run.meta.origin}` : "");
    const badge = document.createElement("span");
    badge.className = `badge status-${run.status}`;
    badge.textContent = run.status;
    button.append(title, badge, meta);
    button.addEventListener("click", () => openRun(run.id, { loadConfig: true }));
    li.append(button);
    list.append(li);
    if (state.run && String(state.run.id) === String(run.id)) updateProgress(run.step);  // the newer of list and stream
  }
  markCurrentRun();
}

function markCurrentRun() {
  for (const li of document.querySelectorAll("#run-list li")) li.classList.toggle("current", li.dataset.run === String(state.view.run));
}

// ------------------------------------------------------------------ setup form

function initParamControl(init, onChange) {
  const span = document.createElement("span");
  span.className = "init-param";
  const key = INIT_MAIN_PARAM[init.name];
  if (!key) return span;
  let input;
  if (key === "kernels") {
    input = document.createElement("select");
    input.append(new Option(`bank: ${DEFAULT_KERNEL_BANK.join(", ")}`, ""));
    for (const k of state.namedKernels ?? NAMED_KERNELS) input.append(new Option(`${k} in every filter`, k));
    input.value = typeof init.kernels === "string" ? init.kernels : "";
  } else {
    input = document.createElement("input");
    input.type = "number";
    input.step = "any";
    input.value = String(init[key] ?? INIT_PARAM_DEFAULTS[init.name][key]);
  }
  input.setAttribute("aria-label", key);
  input.dataset.param = key;
  input.addEventListener("change", () => {
    const next = { ...init };
    if (key === "kernels") {
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
  const select = document.createElement("select");
  if (allowDefault) select.append(new Option("— run default —", ""));
  const names = state.inits.length ? state.inits.map((i) => i.name) : FALLBACK_INITS;
  for (const name of names) select.append(new Option(name, name));
  select.value = value ?? "";
  return select;
}

function withDefaults(name) {
  return { name, ...(INIT_PARAM_DEFAULTS[name] ?? {}) };
}

function lawOf(init, layer) {
  const described = describeInit(init, layer.fanIn, layer.fanOut);
  const fromServer = state.inits.find((i) => i.name === init.name)?.law;
  return { law: fromServer || described.law, figure: described.figure };
}

function renderInitControls() {
  const config = state.config;
  const select = $("f-init");
  select.replaceChildren(...initSelect(config.init.name).children);
  select.value = config.init.name;
  $("f-init-param").replaceWith(Object.assign(initParamControl(config.init, (init) => {
    config.init = init; formChanged();
  }), { id: "f-init-param" }));

  const box = $("init-table");
  box.replaceChildren();
  const layers = convLayers(baseSpec(config, state.presets));
  for (const layer of layers) {
    const own = config.layerInits[layer.index] ?? null;
    const effective = own ?? layer.init ?? config.init;
    const row = document.createElement("div");
    row.className = "init-layer";
    row.dataset.layer = String(layer.index);
    const head = document.createElement("div");
    head.className = "init-layer-head";
    const name = document.createElement("b");
    name.textContent = `conv ${layer.index}`;
    const shape = document.createElement("span");
    shape.textContent = `${layer.filters}×${layer.inChannels}×${layer.kernel.join("×")}`;
    const fans = document.createElement("span");
    fans.className = "fans";
    fans.textContent = `fan_in ${layer.fanIn} · fan_out ${layer.fanOut}`;
    fans.title = "fan_in = in_channels·kh·kw, fan_out = out_channels·kh·kw";
    head.append(name, shape, fans);
    const pick = document.createElement("div");
    pick.className = "init-layer-pick";
    const sel = initSelect(own?.name ?? "", { allowDefault: true });
    sel.setAttribute("aria-label", `init of conv layer ${layer.index}`);
    sel.addEventListener("change", () => {
      if (sel.value) config.layerInits[layer.index] = withDefaults(sel.value);
      else delete config.layerInits[layer.index];
      formChanged();
    });
    pick.append(sel);
    if (own) pick.append(initParamControl(own, (init) => { config.layerInits[layer.index] = init; formChanged(); }));
    const law = document.createElement("div");
    law.className = "law";
    const { law: lawText, figure } = lawOf(effective, layer);
    const l = document.createElement("span");
    l.textContent = `${effective.name}: ${lawText} → `;
    const f = document.createElement("b");
    f.textContent = figure;
    law.append(l, f);
    row.append(head, pick, law);
    box.append(row);
  }
  if (!layers.length) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = "The spec has no conv layers.";
    box.append(p);
  }
}

function renderForm() {
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
  const names = state.datasets.length ? state.datasets : ["shapes"];
  for (const name of new Set([...names, c.dataset])) dataset.append(new Option(name, name));
  dataset.value = c.dataset;
  writeOptimizerFields();
  $("f-batch").value = String(c.batchSize);
  $("f-steps").value = String(c.steps);
  $("f-seed").value = String(c.seed);
  $("f-every").value = String(c.snapshotEvery);
  renderInitControls();
}

/* The optimizer fields of the config into the form. */
function writeOptimizerFields() {
  const c = state.config;
  $("f-optimizer").value = c.optimizer;
  $("f-lr").value = String(c.lr);
  $("f-momentum").value = String(c.momentum);
  $("f-wd").value = String(c.weightDecay);
  $("momentum-label").hidden = c.optimizer !== "sgd";
}

function readNumber(id, field, { integer = false, min = 0 } = {}) {
  const value = Number($(id).value);
  if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new Error(`${field}: expected ${integer ? "an integer" : "a number"} ≥ ${min}`);
  }
  return value;
}

function readForm() {
  const c = state.config;
  c.dataset = $("f-dataset").value;
  c.optimizer = $("f-optimizer").value;
  c.lr = readNumber("f-lr", "learning rate");
  c.momentum = readNumber("f-momentum", "momentum");
  c.weightDecay = readNumber("f-wd", "weight decay");
  c.batchSize = readNumber("f-batch", "batch size", { integer: true, min: 1 });
  c.steps = readNumber("f-steps", "steps", { integer: true, min: 1 });
  c.seed = readNumber("f-seed", "seed", { integer: true });
  c.snapshotEvery = readNumber("f-every", "snapshot every", { integer: true, min: 1 });
}

let initRenderQueued = false;

function formChanged() {
  $("form-error").textContent = "";
  try { readForm(); } catch (error) { $("form-error").textContent = error.message; }
  $("momentum-label").hidden = state.config.optimizer !== "sgd";
  writeHash();
  // Rebuild the init controls after this event: rebuilding removes the focused
  // control, whose blur may fire another change while the DOM is being replaced.
  if (initRenderQueued) return;
  initRenderQueued = true;
  queueMicrotask(() => { initRenderQueued = false; renderInitControls(); });
}

/* Put a run's stored config into the form (when a run is opened from the list). */
function loadRunConfig(cfg) {
  if (!cfg) return;
  applyRunConfig(state.config, cfg);
  renderForm();
  writeHash();
}

function writeHash() {
  const hash = configToHash(state.config, state.view);
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

async function startFromForm(event) {
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
    await openRun(run.id);
    refreshRunList();
  } catch (error) {
    $("form-error").textContent = error.message;
    if (error.status === 401) askForToken();
  } finally {
    button.disabled = false;
  }
}

function askForToken() {
  $("token-row").hidden = false;
  $("f-token").focus();
}

function wireForm() {
  $("f-token").addEventListener("change", () => {
    api.setToken($("f-token").value.trim());
    $("form-error").textContent = "";
  });
  $("setup-form").addEventListener("submit", startFromForm);
  $("setup-form").addEventListener("change", (event) => {
    if (event.target.closest("#init-table") || event.target.closest(".init-param")
        || event.target.id === "f-spec" || event.target.id === "f-token") return;
    if (event.target.id === "f-optimizer" || event.target.id === "f-preset") {
      // untouched optimizer fields follow the new choice's defaults (state.js)
      const c = state.config;
      const preset = event.target.id === "f-preset" ? event.target.value : c.preset;
      const optimizer = event.target.id === "f-optimizer" ? event.target.value : null;
      const before = optimizerDefaults(state.defaults, c.preset, optimizer === null ? null : c.optimizer);
      if (followOptimizerDefaults(c, before, optimizerDefaults(state.defaults, preset, optimizer))) writeOptimizerFields();
    }
    if (event.target.id === "f-preset") {
      state.config.preset = event.target.value;
      state.config.layerInits = {};
      if (state.config.preset === "custom" && !state.config.spec) {
        try { state.config.spec = JSON.parse($("f-spec").value); } catch { state.config.spec = null; }
      }
      $("f-spec").value = JSON.stringify(baseSpec(state.config, state.presets) ?? {}, null, 1);
    }
    if (event.target.id === "f-init") state.config.init = withDefaults(event.target.value);
    formChanged();
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
      formChanged();
    } catch (error) {
      $("spec-error").textContent = error instanceof SyntaxError ? `spec: not valid JSON (${error.message})` : error.message;
    }
  });
  $("btn-copy-link").addEventListener("click", async () => {
    writeHash();
    try {
      await navigator.clipboard.writeText(location.href);
      $("btn-copy-link").textContent = "copied";
    } catch {
      $("btn-copy-link").textContent = "link is in the address bar";
    }
    setTimeout(() => { $("btn-copy-link").textContent = "copy link"; }, 1500);
  });
}

function wireRunView() {
  $("btn-pause").addEventListener("click", () => control("pause"));
  $("btn-resume").addEventListener("click", () => control("resume"));
  $("btn-stop").addEventListener("click", () => control("stop"));
  $("btn-live").addEventListener("click", goLive);
  $("btn-play").addEventListener("click", () => (replayTimer ? stopReplay() : startReplay()));
  $("history-slider").addEventListener("input", (event) => {
    stopReplay();
    showHistoryIndex(Number(event.target.value));
  });
  for (const button of document.querySelectorAll("[data-scaling]")) {
    button.classList.toggle("active", button.dataset.scaling === state.view.scaling);
    button.addEventListener("click", () => {
      state.view.scaling = button.dataset.scaling;
      for (const b of document.querySelectorAll("[data-scaling]")) b.classList.toggle("active", b === button);
      writeHash();
      redrawCurrent();
    });
  }
  for (const tab of document.querySelectorAll("#view-tabs [data-view]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
}

function showView(name) {
  for (const tab of document.querySelectorAll("#view-tabs [data-view]")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const panel of document.querySelectorAll("[data-view-panel]")) panel.hidden = panel.dataset.viewPanel !== name;
}

// ------------------------------------------------------------------ start

function showError(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { banner.hidden = true; }, 8000);
}

// ------------------------------------------------------------------ teaching views (compare, probe, kernel editor, fork/export)

function mountTeachingViews() {
  const shared = { api, state, openRun, showView, showError, refreshRunList };
  const compare = mountCompare({ ...shared, baseConfig: () => toRunRequest(state.config, state.presets) });
  mountProbe({ ...shared, startComparison: compare.start });
  mountKernelEditor({
    ...shared,
    convLayersOfForm: () => convLayers(baseSpec(state.config, state.presets)),
    applyLayerInit: (layer, init) => { state.config.layerInits[String(layer)] = init; formChanged(); },
  });
  mountForkExport(shared);
}

async function main() {
  wireForm();
  wireRunView();
  const [presets, inits, datasets, defaults] = await Promise.allSettled(
    [api.fetchPresets(), api.fetchInits(), api.fetchDatasets(), api.fetchDefaults()]);
  if (presets.status === "fulfilled") state.presets = presets.value.specs; else showError(`presets: ${presets.reason.message}`);
  if (defaults.status === "rejected") showError(`defaults: ${defaults.reason.message}`);
  state.defaults = pageDefaults(defaults.value ?? null, presets.value?.optimizers ?? null);
  const { config, view } = hashToConfig(location.hash, state.defaults);
  state.config = config;
  state.view = view;
  if (inits.status === "fulfilled") {
    state.inits = inits.value.inits;
    if (inits.value.namedKernels) state.namedKernels = inits.value.namedKernels;
  } else showError(`inits: ${inits.reason.message}`);
  if (datasets.status === "fulfilled") state.datasets = datasets.value; else showError(`datasets: ${datasets.reason.message}`);
  renderForm();
  writeHash();
  mountTeachingViews();
  await refreshRunList();
  setInterval(() => { if (!document.hidden) refreshRunList(); }, 5000);
  if (state.view.run) openRun(state.view.run);
  document.body.dataset.ready = "true";
}

main();
