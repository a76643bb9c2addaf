/*
 * The explain panel: why one filter is what it is, at the step on screen. Click a filter
 * card and a drawer opens with what GET /api/runs/{id}/snapshots/{step}/filters/{layer}/{filter}
 * answers: the kernel, its top image patches (with activation and class), the input that
 * maximizes it, its Fourier spectrum (orientation, frequency, selectivity against chance), its
 * trajectory (‖W‖, ‖W − W₀‖/‖W₀‖, detector score against chance, birth step), its dead share,
 * and for layers after conv1 its expanded weights in pixel space.
 *
 * It follows the history slider through the "kernelscope:view" event: a step the learner
 * chose aborts the request in flight (AbortController). A step that moves by itself (live, or
 * stored snapshots playing at a pace) waits for the one in flight, so a fast run cannot starve
 * the panel, and for its turn: each explanation is computed by the server on the cores the run
 * trains on, so such a step is explained again at most every LIVE_INTERVAL_MS, and at least
 * LIVE_BUDGET_FACTOR times as long after the last one began as it took.
 *
 * Every picture states its colour scale: weights on one scale symmetric around 0 (blue < 0 <
 * red), images on the data's pixel range (the same gray for patches and the maximization image),
 * the spectrum from 0 to its peak.
 * The kernel and the input that excites it most stand side by side at one size, value by value
 * in crisp squares. The panel computes no measure itself; it draws what the server sends (and
 * counts the input's values that sit at an end of the data's range, to say why it looks flat).
 */

import { $, el } from "./dom.js";
import { LineChart } from "./charts.js";
import { divergingColor, maxAbs, paintGrid } from "./filters.js";

/* Explained back to back while the default run trained (3.5 a second), the explanations took a
   quarter of a core and the run fell from 59 to 35 steps/s (docs/PERFORMANCE.md, tenth session). */
const LIVE_INTERVAL_MS = 2000;
const LIVE_BUDGET_FACTOR = 4;

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

/* Gray of a pixel value on the data's range lo..hi (black..white). */
function grayOf(lo, hi) {
  return (v) => {
    const g = Math.round(255 * Math.max(0, Math.min(1, hi > lo ? (v - lo) / (hi - lo) : 0.5)));
    return [g, g, g];
  };
}

/* A small picture drawn crisply at `cell` CSS px per value, each value a square with a thin gray
   line around it, so a white value reads as a square of the picture and not as page behind it;
   painted at the screen's pixel density. `grid` is H×W values, `colorOf(value)` -> [r, g, b]. */
function paintCells(canvas, grid, colorOf, cell) {
  const h = grid.length, w = grid[0].length, line = 1;
  const css = { w: w * cell + line, h: h * cell + line };
  const ratio = Math.max(1, Math.round(window.devicePixelRatio || 1));
  canvas.width = css.w * ratio;
  canvas.height = css.h * ratio;
  canvas.style.width = `${css.w}px`;
  canvas.style.height = `${css.h}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.fillStyle = "#94a3b8";
  ctx.fillRect(0, 0, css.w, css.h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = colorOf(grid[y][x]);
      ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
      ctx.fillRect(x * cell + line, y * cell + line, cell - line, cell - line);
    }
  }
  canvas.classList.add("cells");
}

/* CSS px per value so that a side-`n` picture is about `target` px wide (whole pixels, at least 3). */
const cellFor = (n, target) => Math.max(3, Math.floor(target / n));

/* A horizontal colour bar from `from` to `to` (CSS colours) with its end values, under a picture. */
function scaleBar(gradient, low, high) {
  const bar = el("div", "explain-bar");
  bar.append(el("span", {}, low), el("i", { style: `background: linear-gradient(to right, ${gradient})` }), el("span", {}, high));
  return bar;
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
                  inFlight: null, pending: null, charts: null, result: null,
                  nextLiveAt: -Infinity, timer: null };   // a moving step's next explanation: not before
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

  /* Fetch the explanation of `step`; a chosen step drops a stale request, a step that moves by
     itself queues until the one in flight has come and its turn has come (shown.nextLiveAt). */
  function request(step) {
    if (shown.view?.mode === "live" || shown.view?.playing) {
      const wait = shown.nextLiveAt - performance.now();
      if (shown.inFlight !== null || wait > 0) {
        if (shown.inFlight !== step) shown.pending = step;
        if (shown.inFlight === null && shown.timer === null) shown.timer = setTimeout(requestPending, wait);
        return;
      }
    } else if (shown.inFlight !== null) {
      if (shown.inFlight === step) return;
      shown.controller.abort();
      if (debug.explain) debug.explain.aborted += 1;
    }
    clearTimeout(shown.timer);
    shown.timer = null;
    shown.pending = null;
    const controller = new AbortController();
    shown.controller = controller;
    shown.inFlight = step;
    const started = performance.now();
    if (debug.explain) debug.explain.requested.push({ step, at: started });
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
      const took = performance.now() - started;
      shown.nextLiveAt = started + Math.max(LIVE_INTERVAL_MS, LIVE_BUDGET_FACTOR * took);
      requestPending();
    });
  }

  function requestPending() {
    shown.timer = null;
    const next = shown.pending;
    shown.pending = null;
    if (next !== null && isOpen()) request(next);
  }

  function open(layer, filter) {
    if (!state.view.run) return;
    if (shown.controller) shown.controller.abort();
    clearTimeout(shown.timer);
    Object.assign(shown, { run: state.view.run, layer, filter, inFlight: null, pending: null, result: null,
                           nextLiveAt: -Infinity, timer: null });
    debug.explain = { run: shown.run, layer, filter, step: null, loading: true, aborted: 0, drawn: null,
                      requested: [], liveIntervalMs: LIVE_INTERVAL_MS };
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
    clearTimeout(shown.timer);
    Object.assign(shown, { run: null, inFlight: null, pending: null, controller: null, timer: null });
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

    // the kernel and the input that excites it most, side by side at one size, each with its scale
    const [lo, hi] = r.maximize.regularization.clip;
    const m = r.maximize;
    const kernel = section("Kernel, and the input it responds to most", null);
    const pair = el("div", "explain-pair");
    const kernelFig = el("figure", "explain-figure");
    const kc = el("canvas", "explain-kernel");
    const kscale = maxAbs(r.weight);
    const side = Math.max(r.shape[1], r.shape[2]);
    if (r.shape[0] === 1) {
      paintCells(kc, r.weight[0], (v) => divergingColor(kscale > 0 ? v / kscale : 0), cellFor(side, 120));
    } else {
      paintWeights(kc, r.weight, r.shape[1] <= 3 ? 10 : 8);   // one small kernel per input channel
    }
    kernelFig.append(kc, scaleBar("rgb(33,102,172), rgb(247,247,247), rgb(178,24,43)", `−${fmt(kscale)}`, `+${fmt(kscale)}`),
      el("figcaption", {}, `the kernel: ${r.shape[0] > 1 ? `${r.shape[0]} input channels of ` : ""}${r.shape[1]}×${r.shape[2]} `
        + `weights on one scale symmetric around 0 (blue < 0 < red) · bias ${fmt(r.bias)}`));

    const maxFig = el("figure", "explain-figure");
    const mc = el("canvas", "explain-maximize");
    const image = m.image;
    const field = image[0].length;
    if (image.length === 1) paintCells(mc, image[0], grayOf(lo, hi), cellFor(field, 120));
    else { paintImage(mc, image, lo, hi); mc.style.width = mc.style.height = `${cellFor(field, 120) * field}px`; }
    // how much of the picture sits at an end of the data's range (the ascent stops there)
    const values = image.flat(2);
    const near = 1e-4 * Math.max(hi - lo, 1e-12);
    const atHigh = values.filter((v) => v >= hi - near).length, atLow = values.filter((v) => v <= lo + near).length;
    const ends = [atHigh ? `${atHigh} at its white end` : "", atLow ? `${atLow} at its black end` : ""].filter(Boolean);
    const clipped = ends.length
      ? `; ${ends.join(" and ")} (of ${values.length} values), where the ascent is clipped to stay an image the data could hold`
      : "";
    maxFig.append(mc, scaleBar("#000, #fff", fmt(lo), fmt(hi)),
      el("figcaption", {}, `the input that excites it most: ${field}×${field} px, its whole receptive field, `
        + `gray on the data's pixel range${clipped}`));
    maxFig.dataset.atWhite = String(atHigh);
    maxFig.dataset.atBlack = String(atLow);
    pair.append(kernelFig, maxFig);
    // as the filter cards say it: a dead or a brightness filter gets no detector label (filters.js)
    const verdict = det.dead || det.label === "dead"
      ? "dead: its weight norm is below the engine's dead fraction of its layer's median, so it gets no detector label"
      : det.label === "brightness"
        ? `brightness: ${pct(det.mean_share)} of its energy is its mean, so it is not counted as a detector`
        : `best match ${String(det.label).replace(/_/g, " ")}: |cos| ${fmt(det.score)} against chance ${fmt(det.chance)}`
          + ` (higher than ${fmt(det.percentile, 3)}% of random kernels) — ${det.beats_chance ? "a detector" : "not distinguishable from random"}`;
    kernel.append(pair, el("p", "explain-facts", verdict),
    el("p", "explain-facts",
      `the input: activation ${fmt(m.activation)} against ${fmt(m.best_patch_activation)} for the best dataset patch · `
      + `gradient ascent through the engine's backward pass, ${m.steps} steps, decay ${m.regularization.decay}, `
      + `jitter ${m.regularization.jitter} px, blur every ${m.regularization.blur_every} steps`));
    kernel.dataset.beatsChance = String(det.beats_chance);
    parts.push(kernel);

    const rf = r.receptive_field;
    const patches = section(`Top ${r.patches.items.length} patches of ${r.patches.images} images`,
      `gray: black ${fmt(lo)} … white ${fmt(hi)} (the data's pixel range, shared with the input above) · `
      + `receptive field ${rf.size}×${rf.size} px`);
    const row = el("div", "explain-patches");
    for (const p of r.patches.items) {
      const fig = el("figure", "explain-patch");
      const c = el("canvas");
      if (p.pixels.length === 1) paintCells(c, p.pixels[0], grayOf(lo, hi), cellFor(p.pixels[0].length, 56));
      else { paintImage(c, p.pixels, lo, hi); c.style.width = c.style.height = "56px"; }
      c.title = `image ${p.image}, output position (${p.y}, ${p.x}), crop at (${p.top}, ${p.left})`;
      fig.append(c, el("figcaption", {}, `${fmt(p.activation)} · ${String(p.label).replace(/_/g, " ")}`));
      row.append(fig);
    }
    patches.append(row);
    parts.push(patches);

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
  // the drawer explains a filter card of the live view: another tab has none to explain
  document.addEventListener("kernelscope:tab", (event) => { if (event.detail.view !== "live" && isOpen()) closePanel(); });
  document.addEventListener("kernelscope:view", (event) => {
    shown.view = event.detail;
    if (!isOpen()) return;
    if (event.detail.run !== shown.run) { closePanel(); return; }
    if (event.detail.step != null && event.detail.step !== shown.result?.step) request(event.detail.step);
  });

  return { open, close: closePanel, isOpen };
}
