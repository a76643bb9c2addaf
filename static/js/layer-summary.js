/*
 * Layer summaries over time, beside the run view's charts: per conv layer and snapshot, the
 * number of dead filters, the share of orientation-selective filters and the mean detector
 * score, each against its chance level, from GET /api/runs/{id}/layers/{layer}/summary (the
 * server computes every number). Three LineCharts (charts.js) are appended to the charts panel.
 *
 * The summary covers every stored snapshot, so it is fetched when a run is opened, again at
 * most every REFRESH_MS while the run trains, and once more when it ends; the history
 * slider's step is marked on the charts. One fetch round at a time; a round for a run no longer
 * on screen is dropped.
 */

import { el } from "./dom.js";
import { LineChart } from "./charts.js";

const REFRESH_MS = 15_000;
const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];
/* conv1, conv2, ... each in its colour; its chance level dashed in the same colour. */
const SERIES = Object.fromEntries(COLORS.flatMap((color, i) => [
  [`conv${i + 1}`, { color }], [`conv${i + 1} chance`, { color, dash: "dash" }]]));
const ACTIVE = new Set(["queued", "running", "paused"]);

/* context: {api, debug}. */
export function mountLayerSummaries(context) {
  const { api, debug } = context;
  const panel = document.querySelector(".charts-panel");
  if (!panel) return {};
  const box = (id) => { const d = el("div", { class: "chart summary-chart", id }); panel.append(d); return d; };
  const charts = {
    dead: new LineChart(box("chart-dead"), { title: "dead filters", yTitle: "never fire", series: SERIES }),
    selective: new LineChart(box("chart-selective"), { title: "orientation-selective", yTitle: "share", yRange: [0, 1.02], series: SERIES }),
    score: new LineChart(box("chart-score"), { title: "detector score", yTitle: "mean (- - chance)", series: SERIES }),
  };
  const shown = { run: null, loading: false, last: 0, status: null, layers: null };
  debug.summaries = { run: null, layers: {} };
  debug.summaryCharts = charts;

  function reset(run) {
    // fit the charts to the panel, now on screen (they were made while it was hidden, at plotly's default width)
    for (const chart of Object.values(charts)) { chart.reset(); chart.resize(); chart.markStep(null); }
    Object.assign(shown, { run, last: 0, layers: null, loaded: false });
    debug.summaries = { run, layers: {} };
  }

  async function convLayers(run) {
    if (shown.layers) return shown.layers;
    const snapshot = await api.getSnapshot(run, "latest", false);
    shown.layers = snapshot.layers.filter((l) => l.type === "conv").map((l) => l.index);
    return shown.layers;
  }

  async function load(run) {
    if (shown.loading) return;
    shown.loading = true;
    shown.last = performance.now();
    try {
      const layers = await convLayers(run);
      shown.loaded = true;
      for (const layer of layers) {
        const s = await api.getJSON(`/api/runs/${encodeURIComponent(run)}/layers/${layer}/summary`);
        if (run !== shown.run) return;
        const steps = s.points.map((p) => p.step);
        const name = s.label;
        charts.dead.setSeries(name, steps, s.points.map((p) => p.dead_filters));
        charts.selective.setSeries(name, steps, s.points.map((p) => p.selective_share));
        charts.score.setSeries(name, steps, s.points.map((p) => p.mean_score));
        if (steps.length) {
          charts.score.setSeries(`${name} chance`, [steps[0], steps[steps.length - 1]], [s.score_chance, s.score_chance]);
        }
        debug.summaries.layers[layer] = s;
      }
    } catch { /* a run without snapshots yet: the next view change tries again */ } finally {
      shown.loading = false;
    }
  }

  document.addEventListener("kernelscope:view", (event) => {
    const { run, step, mode, status } = event.detail;
    if (!run) return;
    if (run !== shown.run) reset(run);
    if (step == null) return;   // no snapshot yet: nothing to summarize
    if (!shown.loaded) load(run);
    else if (status !== shown.status && !ACTIVE.has(status)) load(run);   // the run ended: its last snapshots
    else if (ACTIVE.has(status) && performance.now() - shown.last > REFRESH_MS) load(run);
    shown.status = status;
    for (const chart of Object.values(charts)) chart.markStep(mode === "history" ? step : null);
  });

  return { charts };
}
