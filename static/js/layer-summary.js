/*
 * Layer summaries over time, beside the run view's charts: per conv layer and snapshot, the
 * number of dead filters, the share of orientation-selective filters and the mean detector
 * score, each against its chance level. The engine computes every number: each snapshot's conv
 * layers carry their summary row (engine.explain.summary_row), and GET
 * /api/runs/{id}/layers/{layer}/summary serves the rows of every stored snapshot. Three
 * LineCharts (charts.js) are appended to the charts panel.
 *
 * The summary is fetched when a run is opened, again every REFRESH_MS while the run trains, and
 * once more when it ends; in between, the rows of each new snapshot the live stream brings
 * (document's "kernelscope:snapshot") are added as they come, so the curves keep up with the run.
 * Both land in one table of rows per layer and step (a fetch fills in the snapshots the stream
 * skipped: it sends a viewer that falls behind only the newest). The history slider's step is
 * marked on the charts. One fetch round at a time; a round for a run no longer on screen is
 * dropped. The server summarizes a run stored without rows in parts (its answer says how many
 * steps are still `pending`): the charts grow as the parts come, and a status line above them
 * says which layer is being summarized and how far it got.
 */

import { el } from "./dom.js";
import { LineChart } from "./charts.js";

const REFRESH_MS = 15_000;
const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];
/* conv1, conv2, ... each in its colour; its chance level dashed in the same colour, without a
   legend entry of its own (the axis title says what the dashes are; four entries crowded the title). */
const SERIES = Object.fromEntries(COLORS.flatMap((color, i) => [
  [`conv${i + 1}`, { color }], [`conv${i + 1} chance`, { color, dash: "dash", legend: false }]]));
const ACTIVE = new Set(["queued", "running", "paused"]);

/* context: {api, debug}. */
export function mountLayerSummaries(context) {
  const { api, debug } = context;
  const panel = document.querySelector(".charts-panel");
  if (!panel) return {};
  const status = el("p", { id: "summary-status", class: "summary-status", role: "status", hidden: "" });
  panel.append(status);
  const box = (id) => { const d = el("div", { class: "chart summary-chart", id }); panel.append(d); return d; };
  const charts = {
    dead: new LineChart(box("chart-dead"), { title: "dead filters", yTitle: "never fire", series: SERIES }),
    selective: new LineChart(box("chart-selective"), { title: "orientation-selective", yTitle: "share", yRange: [0, 1.02], series: SERIES }),
    score: new LineChart(box("chart-score"), { title: "detector score", yTitle: "mean (- - chance)", series: SERIES }),
  };
  const shown = { run: null, loading: false, last: 0, status: null, layers: null };
  debug.summaries = { run: null, layers: {}, progress: null };
  debug.summaryCharts = charts;

  /* The status line: null hides it; else {label, done, total} of the layer being summarized. */
  function setProgress(progress) {
    debug.summaries.progress = progress;
    status.hidden = progress === null;
    status.textContent = progress === null ? ""
      : progress.total === null ? `summarizing ${progress.label}…`
      : `summarizing ${progress.label}: ${progress.done} of ${progress.total} snapshots…`;
  }

  function reset(run) {
    // fit the charts to the panel, now on screen (they were made while it was hidden, at plotly's default width)
    for (const chart of Object.values(charts)) { chart.reset(); chart.resize(); chart.markStep(null); }
    Object.assign(shown, { run, last: 0, layers: null, loaded: false, rows: new Map() });
    debug.summaries = { run, layers: {}, progress: null };
    setProgress(null);
  }

  /* One conv layer's rows: {label, chance (its detector-score chance level), byStep: step -> row}. */
  function layerRows(layer, label, chance) {
    if (!shown.rows.has(layer)) shown.rows.set(layer, { label, chance, byStep: new Map() });
    return shown.rows.get(layer);
  }

  /* Draw a layer's rows, in step order; `live`: drawn at the pace of a training run's points. */
  function drawRows(rows, live) {
    const steps = [...rows.byStep.keys()].sort((a, b) => a - b);
    const points = steps.map((step) => rows.byStep.get(step));
    const name = rows.label, options = { live };
    charts.dead.setSeries(name, steps, points.map((p) => p.dead_filters), options);
    charts.selective.setSeries(name, steps, points.map((p) => p.selective_share), options);
    charts.score.setSeries(name, steps, points.map((p) => p.mean_score), options);
    if (steps.length) {
      const ends = [steps[0], steps[steps.length - 1]];
      charts.score.setSeries(`${name} chance`, ends, [rows.chance, rows.chance], options);
    }
  }

  /* A route's answer (or part of one) for one layer. A whole answer holds every snapshot stored
     when it was made: a row up to its last step that it lacks was removed (a resumed run drops
     its snapshots past the checkpoint); rows of later steps came live since and stay. */
  function drawLayer(s) {
    const rows = layerRows(s.layer, s.label, s.score_chance);
    if (s.pending === 0) {
      const last = s.points.length ? s.points[s.points.length - 1].step : -Infinity;
      const later = [...rows.byStep].filter(([step]) => step > last);
      rows.byStep = new Map([...s.points.map((point) => [point.step, point]), ...later]);
    } else {
      for (const point of s.points) rows.byStep.set(point.step, point);
    }
    drawRows(rows, false);
  }

  /* The summary rows a new snapshot of a training run carries, one per conv layer. */
  document.addEventListener("kernelscope:snapshot", (event) => {
    const { run, snapshot } = event.detail;
    if (run !== shown.run || !ACTIVE.has(shown.status)) return;
    for (const layer of snapshot.layers || []) {
      if (layer.type !== "conv" || !layer.summary) continue;
      const rows = layerRows(layer.index, layer.label, layer.summary.score_chance);
      rows.byStep.set(snapshot.step, layer.summary);
      drawRows(rows, true);
    }
  });

  async function convLayers(run) {
    if (shown.layers) return shown.layers;
    const snapshot = await api.getSnapshot(run, "latest", false);
    shown.layers = snapshot.layers.filter((l) => l.type === "conv").map((l) => l.index);
    return shown.layers;
  }

  /* Whether a training run's summary is due again (to fill in the snapshots the stream skipped). */
  function due() {
    return performance.now() - shown.last > REFRESH_MS;
  }

  async function load(run) {
    if (shown.loading) return;
    shown.loading = true;
    shown.last = performance.now();
    try {
      const layers = await convLayers(run);
      shown.loaded = true;
      for (const [i, layer] of layers.entries()) {
        const label = `conv${i + 1}`;
        if (!debug.summaries.layers[layer]) setProgress({ label, done: 0, total: null });
        const s = await api.getLayerSummary(run, layer, {
          stillWanted: () => run === shown.run,
          onPart: (part) => {
            drawLayer(part);
            setProgress({ label: part.label, done: part.points.length, total: part.points.length + part.pending });
          },
        });
        if (s === null) return;
        drawLayer(s);
        debug.summaries.layers[layer] = s;
      }
    } catch { /* a run without snapshots yet: the next view change tries again */ } finally {
      shown.loading = false;
      if (run === shown.run) setProgress(null);
    }
  }

  document.addEventListener("kernelscope:view", (event) => {
    const { run, step, mode, status, logSteps, span } = event.detail;
    if (!run) return;
    if (run !== shown.run) reset(run);
    const ended = status !== shown.status && !ACTIVE.has(status);
    shown.status = status;
    if (step == null) return;   // no snapshot yet: nothing to summarize
    if (!shown.loaded || ended || (ACTIVE.has(status) && due())) load(run);   // ended: its last snapshots
    for (const chart of Object.values(charts)) {
      chart.setLogX(logSteps);   // the run view's step axis and span, so every chart lines up step for step
      chart.setStepSpan(span);
      chart.markStep(mode === "history" ? step : null);
    }
  });

  return { charts };
}
