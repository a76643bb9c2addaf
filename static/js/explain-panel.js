/*
 * The explain panel: why one filter is what it is, at the step on screen. Click a filter
 * card and a drawer opens with what GET /api/runs/{id}/snapshots/{step}/filters/{layer}/{filter}
 * answers: the kernel, its top image patches (with activation and class), the input that
 * maximizes it, its Fourier spectrum (orientation, frequency, selectivity against chance), its
 * trajectory (‖W‖, ‖W − W₀‖/‖W₀‖, detector score against chance, birth step), its dead share,
 * and for layers after conv1 its expanded weights in pixel space.
 *
 * It follows the history slider through the "kernelscope:view" event: in history mode a new
 * step aborts the request in flight (AbortController); in live mode the newest step waits for
 * the one in flight, so a fast run cannot starve the panel. Every picture states its colour
 * scale: weights on one scale symmetric around 0 (blue < 0 < red), images on the data's pixel
 * range (the same gray for patches and the maximization image), the spectrum from 0 to its peak.
 * The panel computes no measure itself; it draws what the server sends.
 */

import { $, el } from "./dom.js";
import { LineChart } from "./charts.js";
import { divergingColor, maxAbs, paintGrid } from "./filters.js";

const fmt = (v, digits = 3) => (v == null || !Number.isFinite(Number(v)) ? "–" : Number(v).toPrecision(digits));
const pct = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`);

/* Paint one image (C, H, W) on a canvas: gray for one channel, RGB for three, lo..hi -> black..white. */
function paintImage(canvas, image, lo, hi) {
  const rgb = image.length === 3;
  const h = image[0].length, w = image[0][0].length;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  const scale = (v) => Math.round(255 * Math.max(0, Math.min(1, hi > lo ? (v - lo) / (hi - lo) : 0.5)));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = 4 * (y * w + x);
      for (let k = 0; k < 3; k++) data.data[o + k] = scale(image[rgb ? k : 0][y][x]);
      data.data[o + 3] = 255;
    }
  }
  ctx.putImageData(data, 0, 0);
}

/* Weights (C, H, W) as a table of kernels on one scale symmetric around 0; returns the scale. */
function paintWeights(canvas, weight, px) {
  const scale = maxAbs(weight);
  paintGrid(canvas, weight.slice(0, 16), (v) => divergingColor(scale > 0 ? v / scale : 0));
  canvas.style.width = `${canvas.width * px}px`;
  canvas.style.height = `${canvas.height * px}px`;
  return scale;
}

/* The spectrum magnitude: 0 black .. peak white. */
function paintSpectrum(canvas, magnitude) {
  const peak = Math.max(...magnitude.flat());
  paintImage(canvas, [magnitude], 0, peak);
  return peak;
}

function section(title, note) {
  const box = el("section", "explain-section");
  box.append(el("h3", {}, title));
  if (note != null) box.append(el("p", "explain-scale", note));
  return box;
}

/*
 * context: {api, state, debug}. Returns {open(layer, filter), close(), isOpen()}.
 */
export function mountExplainPanel(context) {
  const { api, state, debug } = context;
  const root = el("aside", { id: "explain-panel", class: "explain-panel", "aria-label": "explain a filter", hidden: "" });
  const head = el("div", "explain-head");
  const title = el("h2", {}, "Explain a filter");
  const status = el("span", { class: "explain-status", role: "status" }, "");
  const close = el("button", { type: "button", class: "ghost", id: "explain-close", title: "close (Escape)" }, "✕ close");
  head.append(title, status, close);
  const body = el("div", "explain-body");
  root.append(head, body);
  document.body.append(root);

  const shown = { run: null, layer: null, filter: null, view: null, step: null, controller: null,
                  inFlight: null, pending: null, charts: null, result: null };
  debug.explain = null;

  function isOpen() { return !root.hidden; }

  function wantedStep() {
    const view = shown.view;
    if (!view || view.run !== shown.run || view.step == null) return "latest";
    return view.step;
  }

  function setStatus(text, loading) {
    status.textContent = text;
    root.classList.toggle("loading", loading);
    if (debug.explain) debug.explain.loading = loading;
  }

  /* Fetch the explanation of `step`; history mode drops a stale request, live mode queues. */
  function request(step) {
    if (shown.inFlight !== null) {
      if (shown.inFlight === step) return;
      if (shown.view?.mode === "live") { shown.pending = step; return; }
      shown.controller.abort();
      if (debug.explain) debug.explain.aborted += 1;
    }
    shown.pending = null;
    const controller = new AbortController();
    shown.controller = controller;
    shown.inFlight = step;
    const { run, layer, filter } = shown;
    setStatus(`computing step ${step}…`, true);
    const path = `/api/runs/${encodeURIComponent(run)}/snapshots/${step}/filters/${layer}/${filter}`;
    api.getJSON(path, { signal: controller.signal }).then((result) => {
      if (controller.signal.aborted || run !== shown.run || layer !== shown.layer || filter !== shown.filter) return;
      draw(result);
      setStatus(`step ${result.step}`, false);
    }).catch((error) => {
      if (error.name === "AbortError" || controller.signal.aborted) return;
      setStatus(`could not explain step ${step}: ${error.message}`, false);
    }).finally(() => {
      if (shown.controller !== controller) return;
      shown.inFlight = null;
      const next = shown.pending;
      shown.pending = null;
      if (next !== null && isOpen()) request(next);
    });
  }

  function open(layer, filter) {
    if (!state.view.run) return;
    if (shown.controller) shown.controller.abort();
    Object.assign(shown, { run: state.view.run, layer, filter, inFlight: null, pending: null, result: null });
    debug.explain = { run: shown.run, layer, filter, step: null, loading: true, aborted: 0, drawn: null };
    root.hidden = false;
    document.body.classList.add("explaining");
    window.dispatchEvent(new Event("resize"));   // the page narrows beside the drawer; plotly charts refit
    title.textContent = `Explain filter ${filter} of layer ${layer}`;
    body.replaceChildren(el("p", "explain-wait", "computing the explanation…"));
    for (const card of document.querySelectorAll(".filter-card.explained")) card.classList.remove("explained");
    document.querySelector(`.layer-panel[data-layer="${layer}"] .filter-card[data-filter="${filter}"]`)?.classList.add("explained");
    request(wantedStep());
  }

  function closePanel() {
    if (shown.controller) shown.controller.abort();
    Object.assign(shown, { run: null, inFlight: null, pending: null, controller: null });
    root.hidden = true;
    document.body.classList.remove("explaining");
    window.dispatchEvent(new Event("resize"));
    for (const card of document.querySelectorAll(".filter-card.explained")) card.classList.remove("explained");
    debug.explain = null;
  }

  // ---------------------------------------------------------------- drawing

  function draw(r) {
    shown.result = r;
    title.textContent = `${r.label} · filter ${r.filter} · step ${r.step}`;
    const det = r.detector;
    const parts = [];

    const kernel = section("Kernel", "");
    const kc = el("canvas", "explain-kernel");
    const kscale = paintWeights(kc, r.weight, r.shape[0] > 1 ? 10 : r.shape[1] <= 3 ? 28 : 20);
    kernel.querySelector(".explain-scale").textContent =
      `blue −${fmt(kscale)} · white 0 · red +${fmt(kscale)} (one scale, symmetric around 0) · bias ${fmt(r.bias)}`;
    kernel.append(kc, el("p", "explain-facts",
      `best match ${String(det.label).replace(/_/g, " ")}: |cos| ${fmt(det.score)} against chance ${fmt(det.chance)}`
      + ` (higher than ${fmt(det.percentile, 3)}% of random kernels) — ${det.beats_chance ? "a detector" : "not distinguishable from random"}`));
    kernel.dataset.beatsChance = String(det.beats_chance);
    parts.push(kernel);

    const [lo, hi] = r.maximize.regularization.clip;
    const rf = r.receptive_field;
    const patches = section(`Top ${r.patches.items.length} patches of ${r.patches.images} images`,
      `gray: black ${fmt(lo)} … white ${fmt(hi)} (the data's pixel range, shared with the maximization image) · `
      + `receptive field ${rf.size}×${rf.size} px`);
    const row = el("div", "explain-patches");
    for (const p of r.patches.items) {
      const fig = el("figure", "explain-patch");
      const c = el("canvas");
      paintImage(c, p.pixels, lo, hi);
      c.style.width = c.style.height = "56px";
      c.title = `image ${p.image}, output position (${p.y}, ${p.x}), crop at (${p.top}, ${p.left})`;
      fig.append(c, el("figcaption", {}, `${fmt(p.activation)} · ${String(p.label).replace(/_/g, " ")}`));
      row.append(fig);
    }
    patches.append(row);
    parts.push(patches);

    const m = r.maximize;
    const maxBox = section("Activation maximization",
      `gradient ascent on the input through the engine's backward pass, ${m.steps} steps; `
      + `decay ${m.regularization.decay}, jitter ${m.regularization.jitter} px, blur every ${m.regularization.blur_every} steps`);
    const mc = el("canvas", "explain-maximize");
    paintImage(mc, m.image, lo, hi);
    mc.style.width = mc.style.height = "112px";
    maxBox.append(mc, el("p", "explain-facts",
      `activation ${fmt(m.activation)} · best dataset patch ${fmt(m.best_patch_activation)}`));
    parts.push(maxBox);

    const s = r.spectrum;
    const spec = section("Spectrum", "");
    const sc = el("canvas", "explain-spectrum");
    const peak = paintSpectrum(sc, s.magnitude);
    sc.style.width = sc.style.height = `${s.size * 3}px`;
    spec.querySelector(".explain-scale").textContent =
      `Fourier magnitude, zero frequency in the centre, +fy up · black 0 … white ${fmt(peak)}`;
    spec.append(sc, el("p", "explain-facts",
      `orientation ${s.orientation == null ? "none" : `${fmt(s.orientation, 3)}°`} · frequency `
      + `${s.frequency == null ? "–" : `${fmt(s.frequency)} cycles/px`} · selectivity ${fmt(s.selectivity)} against chance `
      + `${fmt(s.chance)} — ${s.selective ? "orientation-selective" : "not orientation-selective"}`));
    parts.push(spec);

    const d = r.dead;
    const dead = section("Dead or alive", "");
    dead.append(el("p", "explain-facts",
      `${d.activation} output is zero at ${pct(d.share)} of ${d.positions} positions of the monitor batch — `
      + (d.dead ? "dead: it never fires" : "alive")));
    dead.dataset.dead = String(d.dead);
    parts.push(dead);

    if (r.label !== "conv1" && r.expanded) {
      const ex = section("Expanded weights (in pixel space)", "");
      const ec = el("canvas", "explain-expanded");
      const escale = paintWeights(ec, r.expanded.weight, 8);
      ex.querySelector(".explain-scale").textContent =
        `${r.expanded.linearization} · blue −${fmt(escale)} · white 0 · red +${fmt(escale)}`;
      ex.append(ec);
      parts.push(ex);
    }

    const traj = section("Trajectory", "");
    const t = r.trajectory;
    traj.querySelector(".explain-scale").textContent = t.birth_step == null
      ? `no birth step: the score never stays above chance (${fmt(t.chance)})`
      : `birth step ${t.birth_step}: from there on the score stays above chance (${fmt(t.chance)})`;
    const chartBox = el("div", "explain-charts");
    traj.append(chartBox);
    parts.push(traj);

    body.replaceChildren(...parts);
    drawTrajectory(chartBox, r);
    debug.explain = {
      ...debug.explain, step: r.step, loading: false,
      drawn: { step: r.step, weight: r.weight, activation: m.activation, top: r.patches.items.map((p) => p.activation),
               spectrum: { orientation: s.orientation, selectivity: s.selectivity }, dead: d.share,
               birth: t.birth_step },
    };
  }

  function drawTrajectory(box, r) {
    const t = r.trajectory;
    const a = el("div", "explain-chart");
    const b = el("div", "explain-chart");
    box.append(a, b);
    const norm = new LineChart(a, { title: "‖W‖ and ‖W − W₀‖ / ‖W₀‖", series: {
      "‖W‖": { color: "#2563eb" }, "relative change": { color: "#ea580c" } } });
    const score = new LineChart(b, { title: "detector score vs chance", series: {
      score: { color: "#16a34a" }, chance: { color: "#94a3b8", dash: "dash" } } });
    norm.setSeries("‖W‖", t.steps, t.norm);
    norm.setSeries("relative change", t.steps, t.relative_change);
    score.setSeries("score", t.steps, t.score);
    score.setSeries("chance", [t.steps[0], t.steps[t.steps.length - 1]], [t.chance, t.chance]);
    const line = (x, color, dash) => ({ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color, width: 1, dash } });
    const shapes = [line(r.step, "#94a3b8", "dot")];
    const scoreShapes = [...shapes];
    if (t.birth_step != null) scoreShapes.push(line(t.birth_step, "#16a34a", "dash"));
    norm.setExtraLayout({ shapes });
    score.setExtraLayout({
      shapes: scoreShapes,
      annotations: t.birth_step == null ? [] : [{ x: t.birth_step, y: 1, yref: "paper", text: `birth ${t.birth_step}`,
        showarrow: false, xanchor: "left", font: { size: 10, color: "#16a34a" } }],
    });
    shown.charts = { norm, score };
  }

  // ---------------------------------------------------------------- wiring

  close.addEventListener("click", closePanel);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && isOpen()) closePanel(); });
  $("filter-board").addEventListener("click", (event) => {
    const card = event.target.closest(".filter-card");
    const layer = card?.closest(".layer-panel");
    if (!card || !layer) return;
    open(Number(layer.dataset.layer), Number(card.dataset.filter));
  });
  document.addEventListener("kernelscope:view", (event) => {
    shown.view = event.detail;
    if (!isOpen()) return;
    if (event.detail.run !== shown.run) { closePanel(); return; }
    if (event.detail.step != null && event.detail.step !== shown.result?.step) request(event.detail.step);
  });

  return { open, close: closePanel, isOpen };
}
