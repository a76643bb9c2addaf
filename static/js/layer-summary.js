/*
 * Layer summaries over time, beside the run view's charts: per conv layer and snapshot, the
 * number of dead filters, the share of orientation-selective filters and the mean detector
 * score, each against its chance level, from GET /api/runs/{id}/layers/{layer}/summary (the
 * server computes every number). Three LineCharts (charts.js) are appended to the charts panel.
 *
 * The summary covers every stored snapshot, so it is fetched when a run is opened, again every
 * REFRESH_MS while the run trains (sooner while it is young and its steps grow by a quarter
 * between summaries), and once more when it ends; the history
 * slider's step is marked on the charts. One fetch round at a time; a round for a run no longer
 * on screen is dropped. The server summarizes a long run's snapshots in parts (its answer says
 * how many steps are still `pending`): the charts grow as the parts come, and a status line
 * above them says which layer is being summarized and how far it got.
 */

import { el } from "./dom.js";
import { LineChart } from "./charts.js";

const REFRESH_MS = 15_000;
/* Sooner while the run is young: once its newest snapshot is a quarter past the last summarized
   one (early snapshots come every step or so, when the filters change fastest), at most this often. */
const EARLY_REFRESH_MS = 3_000;
const GROWTH = 1.25;
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
    Object.assign(shown, { run, last: 0, layers: null, loaded: false, summarizedUpTo: 0, newest: null });
    debug.summaries = { run, layers: {}, progress: null };
    setProgress(null);
  }

  function drawLayer(s) {
    const steps = s.points.map((p) => p.step);
    const name = s.label;
    charts.dead.setSeries(name, steps, s.points.map((p) => p.dead_filters));
    charts.selective.setSeries(name, steps, s.points.map((p) => p.selective_share));
    charts.score.setSeries(name, steps, s.points.map((p) => p.mean_score));
    if (steps.length) {
      charts.score.setSeries(`${name} chance`, [steps[0], steps[steps.length - 1]], [s.score_chance, s.score_chance]);
    }
  }

  async function convLayers(run) {
    if (shown.layers) return shown.layers;
    const snapshot = await api.getSnapshot(run, "latest", false);
    shown.layers = snapshot.layers.filter((l) => l.type === "conv").map((l) => l.index);
    return shown.layers;
  }

  /* Whether a training run's summary is due again (its newest stored step is `newest`). */
  function due(newest) {
    const since = performance.now() - shown.last;
    const grown = newest != null && newest > Math.max(1, shown.summarizedUpTo) * GROWTH;
    return since > REFRESH_MS || (since > EARLY_REFRESH_MS && grown);
  }

  async function load(run) {
    if (shown.loading) return;
    shown.loading = true;
    shown.last = performance.now();
    shown.summarizedUpTo = shown.newest ?? 0;
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
    const { run, step, mode, status, logSteps, span, newest } = event.detail;
    if (!run) return;
    if (run !== shown.run) reset(run);
    shown.newest = newest;
    if (step == null) return;   // no snapshot yet: nothing to summarize
    if (!shown.loaded) load(run);
    else if (status !== shown.status && !ACTIVE.has(status)) load(run);   // the run ended: its last snapshots
    else if (ACTIVE.has(status) && due(newest)) load(run);
    shown.status = status;
    for (const chart of Object.values(charts)) {
      chart.setLogX(logSteps);   // the run view's step axis and span, so every chart lines up step for step
      chart.setStepSpan(span);
      chart.markStep(mode === "history" ? step : null);
    }
  });

  return { charts };
}
