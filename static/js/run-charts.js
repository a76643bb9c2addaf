/*
 * The run view's four charts: loss and accuracy by step (training and
 * validation), and each conv/dense layer's activation and gradient std on the
 * monitor batch (log scale). Metric points come from the REST history and the
 * event stream; std points from snapshots, live or sampled from a run opened
 * after the fact (backfill). Drawing is charts.js's LineChart.
 */

import { $ } from "./dom.js";
import { LineChart, stepAxisIsLog } from "./charts.js";

/*
 * Training points kept per chart: every step of short runs, every k-th step
 * of long ones (about 2,000 points), so an SVG chart stays quick to extend.
 * Validation points are all kept.
 */
const MAX_TRAIN_POINTS = 2000;

/* The conv and dense layers' stats of a snapshot, each with the `label` the snapshot gives its
   layer (conv1, conv2, …; a dense layer has none there: RunCharts names it from describe). */
export function statLayers(snapshot) {
  const labels = new Map((snapshot.layers || []).map((l) => [l.index, l.label]));
  return (snapshot.stats || []).filter((s) => s.type === "conv" || s.type === "dense")
    .map((s) => ({ ...s, label: labels.get(s.index) ?? null }));
}

export class RunCharts {
  constructor() {
    this.charts = {
      loss: new LineChart($("chart-loss"), { title: "loss", series: {
        train: { color: "#2563eb", dash: "solid", mode: "lines" }, validation: { color: "#ea580c", dash: "dash", symbol: "diamond" } } }),
      acc: new LineChart($("chart-acc"), { title: "accuracy", yRange: [0, 1.02], series: {
        train: { color: "#2563eb", dash: "solid", mode: "lines" }, validation: { color: "#ea580c", dash: "dash", symbol: "diamond" } } }),
      act: new LineChart($("chart-act"), { title: "activation std", yTitle: "log scale", log: true, mode: "lines+markers" }),
      grad: new LineChart($("chart-grad"), { title: "gradient std", yTitle: "log scale", log: true, mode: "lines+markers" }),
    };
    this.reset();
  }

  reset() {
    for (const chart of Object.values(this.charts)) { chart.reset(); chart.markStep(null); chart.setStepSpan(null); }
    this.labels = {};        // layer index -> the engine's name (POST /api/inits/describe), once known
    this.lastTrainStep = -1;
    this.lastValStep = -1;
    this.liveStats = [];     // per-layer stats of the snapshots received live, for merging with a backfill
  }

  resize() {
    for (const chart of Object.values(this.charts)) chart.resize();
  }

  /*
   * The step axis: "log", "linear", or "auto" (charts.js stepAxisIsLog: log while the step on
   * screen lies in the run's first quarter). Returns whether it is log.
   */
  setStepAxis(mode, shownStep, total) {
    const log = stepAxisIsLog(mode, shownStep, total);
    this.logX = log;
    for (const chart of Object.values(this.charts)) chart.setLogX(log);
    return log;
  }

  /* The steps every chart spans, [first, last] (charts.js runStepSpan), so they line up. */
  setStepSpan(span) {
    for (const chart of Object.values(this.charts)) chart.setStepSpan(span);
  }

  /* A layer's series name: the engine's label (conv1, dense1, …), the snapshot's, or type and index
     until the labels are known. */
  _name(s) {
    return this.labels[s.index] ?? s.label ?? `${s.type} ${s.index}`;
  }

  /* The engine's layer names ([{index, type, label}], POST /api/inits/describe): series drawn
     under a stand-in name ("dense 7") take theirs ("dense1"). */
  setLayerLabels(layers) {
    for (const { index, type, label } of layers) {
      const before = `${type} ${index}`;
      if (label && before !== label) for (const chart of [this.charts.act, this.charts.grad]) chart.renameSeries(before, label);
      this.labels[index] = label;
    }
  }

  /* Mark the step on screen (history mode), or null to mark none: a line laid over each chart,
     so it follows every snapshot the player draws without redrawing the charts (charts.js). */
  markStep(step) {
    for (const chart of Object.values(this.charts)) chart.markStep(step);
  }

  /* Loss/accuracy points of a run of `total` steps; points already drawn are skipped by step. */
  addMetricPoints(points, total) {
    const stride = Math.max(1, Math.ceil(total / MAX_TRAIN_POINTS));
    const { loss, acc } = this.charts;
    for (const p of points) {
      if (p.loss != null && p.step > this.lastTrainStep && (p.step % stride === 0 || p.step === total)) {
        loss.addDataPoint("train", p.step, p.loss);
        acc.addDataPoint("train", p.step, p.acc);
        this.lastTrainStep = p.step;
      }
      if (p.val_loss != null && p.step > this.lastValStep) {
        loss.addDataPoint("validation", p.step, p.val_loss);
        acc.addDataPoint("validation", p.step, p.val_acc);
        this.lastValStep = p.step;
      }
    }
  }

  /* The std points of one snapshot received live. */
  addStatPoints(snapshot) {
    this.liveStats.push({ step: snapshot.step, stats: statLayers(snapshot) });
    for (const s of statLayers(snapshot)) {
      this.charts.act.addDataPoint(this._name(s), snapshot.step, s.act_std);
      this.charts.grad.addDataPoint(this._name(s), snapshot.step, s.grad_std);
    }
  }

  /* Whole std curves from sampled snapshots [{step, stats}] up to `lastSampled`, merged with the live points after it. */
  setStatHistory(points, lastSampled) {
    const all = [...points, ...this.liveStats.filter((p) => p.step > lastSampled)];
    const series = new Map();
    for (const { step, stats } of all) {
      for (const s of stats) {
        const name = this._name(s);
        if (!series.has(name)) series.set(name, { x: [], act: [], grad: [] });
        const e = series.get(name);
        e.x.push(step); e.act.push(s.act_std); e.grad.push(s.grad_std);
      }
    }
    for (const [name, e] of series) {
      this.charts.act.setSeries(name, e.x, e.act);
      this.charts.grad.setSeries(name, e.x, e.grad);
    }
  }
}
