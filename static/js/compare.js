/*
 * The comparison view: several runs that share model, data, seed and batch
 * order and differ only in their init, side by side under one step slider.
 * Per run: the first conv layer's filters and the symmetry meter; across runs:
 * overlaid loss curves, activation std per layer (log scale) and symmetry per
 * conv layer at the slider's step. It answers three questions at once:
 * why random (zeros/constant filters stay identical: symmetry 1.0), why mean
 * zero (constant weights push every activation one way), why this variance
 * (N(0, 0.01²) fades layer after layer, He keeps the scale).
 * State lives in `view`; drawing reads it. window.__kernelscope.compare exposes what was drawn.
 */

import { el, setFill } from "./dom.js";
import {
  logTicks, positiveExtent, seriesStyle, stepAxis, stepAxisIsLog, stepMarkerLayout, withZeroStrip, zeroTrace,
} from "./charts.js";
import { divergingColor, isDetector, maxAbs, paintGrid } from "./filters.js";

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];
const ACTIVE = new Set(["queued", "running", "paused"]);
const POLL_MS = 1500;
const CACHE_LIMIT = 400;
const STORAGE_KEY = "kernelscope-comparison";

/* The inits offered for a comparison; the kernel entry is the engine's bank (GET /api/defaults kernel_bank). */
export function defaultInits(kernelBank) {
  return [
    { label: "zeros", init: "zeros" },
    { label: "constant", init: "constant" },
    { label: "normal(std=0.01)", init: { name: "normal", std: 0.01 } },
    { label: "glorot_uniform", init: "glorot_uniform" },
    { label: "he_normal", init: "he_normal" },
    { label: "kernel bank", init: { name: "kernel", kernels: [...kernelBank] } },
  ];
}

/* An init in one comparable form: a name alone is {name}; the kernel init's fallback is left out. */
function initKey(init) {
  const value = typeof init === "string" ? { name: init } : { ...(init ?? {}) };
  delete value.fallback;
  return JSON.stringify(Object.keys(value).sort().map((k) => [k, value[k]]));
}

/* Labels go in legends: "kernel(x, plus, sobel_x, sobel_y, laplacian, identity)" becomes "kernel(x, plus, …)". */
function shortLabel(label) {
  if (label.length <= 24) return label;
  const open = label.indexOf("(");
  const parts = label.slice(open + 1, -1).split(", ");
  return open > 0 && parts.length > 2 ? `${label.slice(0, open)}(${parts.slice(0, 2).join(", ")}, …)` : `${label.slice(0, 22)}…`;
}


const PLOT_LAYOUT = {
  margin: { l: 50, r: 10, t: 30, b: 36 },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "#ffffff",
  font: { family: "system-ui, sans-serif", size: 11, color: "#1f2937" },
  showlegend: false,  // one legend above the three charts (the colours are the cards' swatches too)
  uirevision: "keep",
};

/*
 * context: {api, state, defaults (GET /api/defaults), baseConfig() -> POST /api/runs body from the setup form,
 *           showView(name), openRun(id), showError(message)}.
 * Returns {start(base, inits, name)} so other views (the init probe's depth demo) can start one.
 */
export function mountCompare(context) {
  const { api } = context;
  const root = document.getElementById("compare-view");
  if (!root) return { start: async () => {} };
  const debug = (window.__kernelscope ??= {});
  const offered = defaultInits(context.defaults?.kernel_bank ?? []);

  const view = {
    id: null,            // comparison id on screen
    runs: [],            // [{id, label, status, step, steps, config}]
    metrics: new Map(),  // run id -> [{step, loss, ...}]
    steps: [],           // union of snapshot steps, ascending
    runSteps: new Map(), // run id -> snapshot steps
    index: -1,           // slider position
    follow: true,        // slider follows the newest step while runs train
    snapshots: new Map(),// "run:step" -> snapshot (no feature maps)
    timer: null,
    generation: 0,
  };
  debug.compare = { id: null, step: null, drawn: {}, runs: [] };

  // ---------------------------------------------------------------- layout
  const intro = el("div", { class: "compare-intro" });
  intro.innerHTML = "<p>One model, one dataset, one seed and one batch order; only the init differs. "
    + "Move the slider and compare. <b>Why random?</b> zeros and constant filters stay identical to each other "
    + "(symmetry meter at 1.0): every filter gets the same gradient, so the layer has one filter, copied. "
    + "<b>Why mean zero?</b> constant weights shift every activation the same way and the loss starts higher. "
    + "<b>Why this variance?</b> N(0, 0.01²) shrinks the activations layer after layer (std chart, log scale) and the "
    + "loss waits; Glorot and He keep the scale, He exactly for ReLU. The hand-made kernel bank starts as detectors — "
    + "watch whether they stay.</p>";

  const controls = el("div", { class: "compare-controls panel" });
  const initBoxes = el("div", { class: "compare-inits" });
  function addBox(entry, i) {
    const box = el("input", { type: "checkbox", "data-index": String(i) });
    box.checked = true;
    const label = el("label", {});
    label.append(box, document.createTextNode(` ${entry.label}`));
    initBoxes.append(label);
  }
  offered.forEach(addBox);

  /* The checkboxes say which inits the comparison on screen has (one it has that is not offered gets its own box). */
  function matchBoxes(inits, labels) {
    const wanted = inits.map(initKey);
    inits.forEach((init, i) => {
      if (!offered.some((entry) => initKey(entry.init) === wanted[i])) {
        offered.push({ label: shortLabel(labels[i] ?? initKey(init)), init });
        addBox(offered[offered.length - 1], offered.length - 1);
      }
    });
    for (const box of initBoxes.querySelectorAll("input")) {
      box.checked = wanted.includes(initKey(offered[Number(box.dataset.index)].init));
    }
  }
  // the comparison's own number of steps, started from the setup form's (GET /api/defaults' limits apply)
  const stepsInput = el("input", { type: "number", id: "compare-steps", min: String(context.defaults?.limits?.steps?.min ?? 1),
                                   max: String(context.defaults?.limits?.steps?.max ?? 1000000), step: "1" });
  stepsInput.value = String(context.state?.config?.steps ?? context.defaults?.run?.steps ?? "");
  const stepsLabel = el("label", { class: "compare-label" }, "steps ");
  stepsLabel.append(stepsInput);
  const startButton = el("button", { type: "button", class: "primary", id: "btn-compare-start" }, "compare these inits");
  startButton.title = "starts one run per init with the setup form's model, dataset, optimizer and seed, for the steps given here";
  // the comparison's own snapshot cadence, said beside its steps (the setup form's is a single run's)
  const every = context.defaults?.comparison?.snapshot_every;
  if (every) stepsLabel.append(el("span", { class: "compare-label", id: "compare-every" }, ` · a snapshot every ${every}`));
  const earlier = el("select", { id: "compare-earlier" });
  const status = el("span", { class: "field-error", id: "compare-status" });
  controls.append(el("span", { class: "compare-label" }, "inits:"), initBoxes, stepsLabel, startButton,
    el("span", { class: "compare-label" }, "or open"), earlier, status);

  const sliderBar = el("div", { class: "history-bar panel" });
  const slider = el("input", { type: "range", id: "compare-slider", min: "0", max: "0", value: "0", step: "1" });
  slider.setAttribute("aria-label", "shared step of the compared runs");
  const stepText = el("span", { class: "history-step", id: "compare-step" }, "step –");
  const followButton = el("button", { type: "button", class: "live", id: "compare-follow" }, "● newest");
  sliderBar.append(followButton, slider, stepText);

  const legend = el("div", { class: "compare-legend", id: "compare-legend" });
  const charts = el("div", { class: "compare-charts" });
  const lossDiv = el("div", { class: "chart", id: "compare-loss" });
  const actDiv = el("div", { class: "chart", id: "compare-act" });
  const symDiv = el("div", { class: "chart", id: "compare-sym" });
  charts.append(lossDiv, actDiv, symDiv);
  const cards = el("div", { class: "compare-cards", id: "compare-cards" });
  const empty = el("p", { class: "empty" }, "Start a comparison, or open an earlier one.");
  root.append(intro, controls, empty, sliderBar, legend, charts, cards);

  // ---------------------------------------------------------------- loading
  async function start(base, inits, name) {
    status.textContent = "";
    const body = { base, inits };
    if (name) body.name = name;
    const answer = await api.postJSON("/api/comparisons", body);
    await open(answer.id);
    refreshEarlier();
    return answer;
  }

  async function open(id, { show = true } = {}) {
    view.generation += 1;
    const generation = view.generation;
    clearTimeout(view.timer);
    Object.assign(view, { id, runs: [], steps: [], index: -1, follow: true });
    view.metrics.clear();
    view.runSteps.clear();
    view.snapshots.clear();
    cards.replaceChildren();
    debug.compare = { id, step: null, drawn: {}, runs: [] };
    sessionStorage.setItem(STORAGE_KEY, id);
    if (show) context.showView("compare");
    await poll(generation);
  }

  async function poll(generation) {
    if (generation !== view.generation || !view.id) return;
    try {
      const comparison = await api.getJSON(`/api/comparisons/${encodeURIComponent(view.id)}`);
      if (generation !== view.generation) return;
      view.runs = comparison.runs.map((run, i) => ({ ...run, label: shortLabel(comparison.labels[i]), color: PALETTE[i % PALETTE.length],
                                                      ...seriesStyle(i) }));
      if (view.boxesFor !== view.id) { matchBoxes(comparison.inits ?? [], comparison.labels ?? []); view.boxesFor = view.id; }
      debug.compare.runs = view.runs.map((r) => ({ id: r.id, label: r.label, status: r.status, step: r.step }));
      await Promise.all(view.runs.map(async (run) => {
        const known = view.metrics.get(run.id) ?? [];
        const since = known.length ? known[known.length - 1].step : -1;
        const [points, steps] = await Promise.all([
          api.getJSON(`/api/runs/${encodeURIComponent(run.id)}/metrics?since=${since}`),
          api.getJSON(`/api/runs/${encodeURIComponent(run.id)}/snapshots`),
        ]);
        view.metrics.set(run.id, known.concat(points.points));
        view.runSteps.set(run.id, steps.steps);
      }));
      if (generation !== view.generation) return;
      view.steps = [...new Set([...view.runSteps.values()].flat())].sort((a, b) => a - b);
      slider.max = String(Math.max(0, view.steps.length - 1));
      if (view.follow || view.index < 0) view.index = view.steps.length - 1;
      slider.value = String(Math.max(0, view.index));
      empty.hidden = true;
      await draw(generation);
    } catch (error) {
      status.textContent = error.message;
    }
    const training = view.runs.some((run) => ACTIVE.has(run.status));
    if (training && generation === view.generation) view.timer = setTimeout(() => poll(generation), POLL_MS);
  }

  async function snapshotAt(run, step) {
    const steps = view.runSteps.get(run.id) ?? [];
    let best = null;
    for (const s of steps) if (s <= step) best = s;
    if (best === null) return null;
    const key = `${run.id}:${best}`;
    if (!view.snapshots.has(key)) {
      if (view.snapshots.size > CACHE_LIMIT) view.snapshots.delete(view.snapshots.keys().next().value);
      view.snapshots.set(key, await api.getJSON(`/api/runs/${encodeURIComponent(run.id)}/snapshots/${best}?feature_maps=0`));
    }
    return view.snapshots.get(key);
  }

  // ---------------------------------------------------------------- drawing
  async function draw(generation) {
    const step = view.steps[view.index] ?? null;
    stepText.textContent = step === null ? "step –" : `step ${step}`;
    followButton.classList.toggle("active", view.follow);
    const snapshots = await Promise.all(view.runs.map((run) => (step === null ? null : snapshotAt(run, step))));
    if (generation !== view.generation) return;
    drawCards(snapshots, step);
    drawLoss(step);
    // the layers named as the engine names them (conv1, …, dense1): the runs share one model
    let names = {};
    try { names = view.runs[0]?.config ? await api.layerLabels(view.runs[0].config) : {}; } catch { /* type and index */ }
    if (generation !== view.generation) return;
    drawLayerCharts(snapshots, names);
    debug.compare.step = step;
  }

  function drawCards(snapshots, step) {
    const keys = view.runs.map((r) => r.id).join(",");
    if (cards.dataset.keys !== keys) {
      legend.replaceChildren(...view.runs.map((run) => {
        const entry = el("span", { class: "compare-legend-entry" });
        const swatch = el("span", { class: "compare-swatch" });
        swatch.style.background = run.color;
        entry.append(swatch, run.label);
        entry.title = run.label;
        return entry;
      }));
      cards.replaceChildren(...view.runs.map((run) => {
        const card = el("div", { class: "compare-card panel", "data-run": run.id });
        const head = el("div", { class: "compare-card-head" });
        const swatch = el("span", { class: "compare-swatch" });
        swatch.style.background = run.color;
        const openButton = el("button", { type: "button", class: "ghost" }, "open");
        openButton.title = "open this run in the live view";
        openButton.addEventListener("click", () => { context.showView("live"); context.openRun(run.id); });
        head.append(swatch, el("b", {}, run.label), el("span", { class: "compare-run-status" }), openButton);
        const canvas = el("canvas", { class: "compare-filters", width: "0", height: "0" });
        canvas.title = "conv1's filters (input channel 0), one colour scale shared by every card: blue < 0 < red";
        const meter = el("div", { class: "meter" });
        const bar = el("div", { class: "meter-bar" });
        bar.append(el("div", { class: "meter-fill" }));
        meter.append(el("span", { class: "meter-label" }, "symmetry"), bar, el("span", { class: "meter-value" }, "–"));
        meter.title = "mean pairwise cosine similarity of the first conv layer's filters; 1.0 = all filters the same";
        card.append(head, canvas, el("div", { class: "compare-scale" }), meter, el("div", { class: "compare-loss-text" }),
          el("div", { class: "compare-detectors" }));
        return card;
      }));
      cards.dataset.keys = keys;
    }
    // one colour scale for every card: the largest |w| of conv1 across the runs at this step, so a
    // small init looks as faint beside He as it is
    const firstConv = snapshots.map((snapshot) => snapshot?.layers?.find((l) => l.type === "conv") ?? null);
    const peaks = firstConv.map((layer) => (layer ? maxAbs(layer.weight.map((filter) => filter[0])) : 0));
    const shared = Math.max(0, ...peaks) || 1;
    debug.compare.sharedScale = shared;
    view.runs.forEach((run, i) => {
      const card = cards.children[i];
      card.querySelector(".compare-run-status").textContent = `${run.status} · step ${run.step}/${run.steps}`;
      const points = (view.metrics.get(run.id) ?? []).filter((p) => p.loss != null);
      const upTo = points.filter((p) => step === null || p.step <= step);
      card.querySelector(".compare-loss-text").textContent = upTo.length
        ? `loss ${upTo[0].loss.toFixed(3)} at step ${upTo[0].step} → ${upTo[upTo.length - 1].loss.toFixed(3)} at step ${upTo[upTo.length - 1].step} (measured in this run)`
        : "no loss measured yet";
      const snapshot = snapshots[i];
      const layer = firstConv[i];
      if (!layer) return;
      const tiles = layer.weight.map((filter) => filter[0]);
      paintGrid(card.querySelector("canvas"), tiles, (v) => divergingColor(v / shared));
      const scaleText = card.querySelector(".compare-scale");
      scaleText.textContent = `max |w| ${peaks[i].toPrecision(3)} · colour scale ±${shared.toPrecision(3)}, shared`;
      scaleText.dataset.maxAbs = String(peaks[i]);
      const symmetry = layer.symmetry;
      const fill = card.querySelector(".meter-fill");
      setFill(fill, symmetry);
      fill.classList.toggle("stuck", symmetry != null && symmetry > 0.999);
      card.querySelector(".meter-value").textContent = symmetry == null ? "–" : symmetry.toFixed(3);
      const labels = (layer.detectors ?? []).filter((d) => d.beats_chance && isDetector(d)).map((d) => d.label.replace(/_/g, " "));
      card.querySelector(".compare-detectors").textContent = labels.length
        ? `detectors beating chance: ${[...new Set(labels)].join(", ")}` : "no filter beats chance yet";
      debug.compare.drawn[run.label] = { run: run.id, step: snapshot.step, layer: layer.index, weight: layer.weight,
        symmetry, maxAbs: peaks[i], scale: shared };
    });
  }

  function drawLoss(step) {
    // each run its dash, and its marker on about 20 of its points (a second, marker-only trace):
    // enough to tell runs apart where their curves coincide, few enough to redraw quickly
    const traces = view.runs.flatMap((run) => {
      const points = (view.metrics.get(run.id) ?? []).filter((p) => p.loss != null);
      const every = Math.max(1, Math.round(points.length / 20));
      const sampled = points.filter((_, i) => i % every === 0);
      return [
        { x: points.map((p) => p.step), y: points.map((p) => p.loss), name: run.label, mode: "lines", type: "scatter",
          line: { color: run.color, width: 1.5, dash: run.dash } },
        { x: sampled.map((p) => p.step), y: sampled.map((p) => p.loss), name: run.label, mode: "markers", type: "scatter",
          marker: { color: run.color, symbol: run.symbol, size: 7 }, showlegend: false, hoverinfo: "skip" },
      ];
    });
    // the step axis follows the live view's choice; auto is log while the slider's step lies in the
    // first quarter of the longest compared run (charts.js stepAxisIsLog)
    const mode = context.state?.view?.stepAxis ?? "auto";
    const total = Math.max(0, ...view.runs.map((run) => run.steps ?? 0));
    const log = stepAxisIsLog(mode, step, total);
    const axis = stepAxis(log);
    const marker = stepMarkerLayout(step, log);
    window.Plotly.react(lossDiv, traces, { ...PLOT_LAYOUT, title: { text: "training loss (log)", font: { size: 13 } },
      xaxis: { type: axis["xaxis.type"], dtick: axis["xaxis.dtick"] ?? undefined, exponentformat: axis["xaxis.exponentformat"],
               title: { text: axis["xaxis.title.text"] } },
      yaxis: { type: "log", dtick: 1, exponentformat: "e" }, ...marker }, { displayModeBar: false, responsive: true });
  }

  function drawLayerCharts(snapshots, names) {
    const act = [], sym = [];
    view.runs.forEach((run, i) => {
      const snapshot = snapshots[i];
      if (!snapshot) return;
      const stats = (snapshot.stats ?? []).filter((s) => s.type === "conv" || s.type === "dense");
      const labels = new Map((snapshot.layers ?? []).map((l) => [l.index, l.label]));
      const layerName = (s) => names[s.index] ?? labels.get(s.index) ?? `${s.type} ${s.index}`;
      // a std of exactly 0 (zero weights) is drawn apart, on the bottom edge: a log scale has no 0
      act.push({ x: stats.map(layerName), y: stats.map((s) => (s.act_std > 0 ? s.act_std : null)),
                 name: run.label, mode: "lines+markers", type: "scatter", line: { color: run.color, dash: run.dash },
                 marker: { symbol: run.symbol, size: 7 } });
      const zeros = stats.filter((s) => s.act_std === 0).map(layerName);
      if (zeros.length) act.push(zeroTrace(zeros, run.label, run.color));
      const conv = (snapshot.layers ?? []).filter((l) => l.type === "conv");
      sym.push({ x: conv.map((l) => l.label ?? `layer ${l.index}`), y: conv.map((l) => l.symmetry), name: run.label,
                 type: "bar", marker: { color: run.color } });
    });
    const actLayout = { ...PLOT_LAYOUT, title: { text: "activation std per layer (log)", font: { size: 13 } },
      yaxis: { type: "log", exponentformat: "e", dtick: logTicks(positiveExtent(act.flatMap((t) => (t.meta ? [] : t.y)))) } };
    window.Plotly.react(actDiv, act, act.some((t) => t.meta === "zeros") ? withZeroStrip(actLayout) : actLayout,
      { displayModeBar: false, responsive: true });
    window.Plotly.react(symDiv, sym, { ...PLOT_LAYOUT, title: { text: "symmetry per conv layer (1 = filters identical)", font: { size: 13 } },
      yaxis: { range: [0, 1.05] }, barmode: "group" }, { displayModeBar: false, responsive: true });
  }

  // ---------------------------------------------------------------- earlier comparisons
  async function refreshEarlier() {
    try {
      const runs = await api.listRuns();
      const seen = new Map();
      for (const run of runs) {
        const id = run.meta?.comparison;
        if (!id) continue;
        if (!seen.has(id)) seen.set(id, { name: run.meta.comparison_name, labels: [] });
        seen.get(id).labels.push(run.meta.name ?? "");
      }
      const options = [el("option", { value: "" }, seen.size ? "an earlier comparison…" : "no earlier comparison")];
      for (const [id, entry] of [...seen.entries()].reverse()) {
        options.push(el("option", { value: id }, `${entry.name ?? id}: ${entry.labels.join(", ")}`));
      }
      earlier.replaceChildren(...options);
      earlier.value = "";
      return seen;
    } catch (error) {
      status.textContent = error.message;
      return new Map();
    }
  }

  /* Plotly sizes a chart drawn while its view was hidden to nothing; fit them when the view shows. */
  function fitCharts() {
    for (const div of [lossDiv, actDiv, symDiv]) if (div.data) window.Plotly.Plots.resize(div);
  }

  // ---------------------------------------------------------------- events
  startButton.addEventListener("click", async () => {
    const inits = [...initBoxes.querySelectorAll("input:checked")].map((box) => offered[Number(box.dataset.index)].init);
    if (!inits.length) { status.textContent = "inits: pick at least one"; return; }
    let base;
    try {
      base = context.baseConfig();
    } catch (error) {
      status.textContent = error.message;
      return;
    }
    delete base.init;
    // a comparison keeps snapshots on its own schedule (GET /api/defaults' comparison), not the
    // setup form's cadence for a single run: its views read them at shared steps
    delete base.snapshot_every;
    const steps = Number(stepsInput.value);
    if (stepsInput.value.trim() === "") { status.textContent = "steps: required"; return; }
    if (!Number.isInteger(steps) || steps < Number(stepsInput.min) || steps > Number(stepsInput.max)) {
      status.textContent = `steps: a whole number from ${stepsInput.min} to ${stepsInput.max}, got ${stepsInput.value}`;
      return;
    }
    base.steps = steps;
    startButton.disabled = true;
    try {
      await start(base, inits);
    } catch (error) {
      status.textContent = error.message;
    } finally {
      startButton.disabled = false;
    }
  });
  earlier.addEventListener("change", () => { if (earlier.value) open(earlier.value); });
  slider.addEventListener("input", () => {
    view.index = Number(slider.value);
    view.follow = view.index === view.steps.length - 1;
    draw(view.generation);
  });
  followButton.addEventListener("click", () => {
    view.follow = true;
    view.index = view.steps.length - 1;
    slider.value = String(Math.max(0, view.index));
    draw(view.generation);
  });

  // until the learner types a number of steps here, the field shows the setup form's
  stepsInput.addEventListener("input", () => { stepsInput.dataset.touched = "1"; });
  document.querySelector('#view-tabs [data-view="compare"]')?.addEventListener("click", () => {
    if (!stepsInput.dataset.touched && context.state?.config?.steps != null) stepsInput.value = String(context.state.config.steps);
    requestAnimationFrame(fitCharts);
  });

  // After a reload, show the comparison this tab had open (if its runs still exist).
  refreshEarlier().then((seen) => {
    const remembered = sessionStorage.getItem(STORAGE_KEY);
    if (remembered && seen.has(remembered) && view.id === null) open(remembered, { show: false });
  });
  return { start, open };
}
