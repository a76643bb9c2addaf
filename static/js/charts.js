/*
 * Line charts over plotly.js (loaded globally from /static/vendor/plotly.min.js)
 * with a small API in the spirit of TensorFlow Playground's linechart:
 * addDataPoint(series, x, y) appends a point; setSeries() replaces a whole
 * series; reset() empties the chart. The chart adds a trace the first time a
 * series name is seen, so per-layer series need no declaration.
 *
 * State apart from drawing: those calls only change the chart's series and
 * layout; a chart whose state changed is drawn later, whole, by one
 * Plotly.react. Plotly redraws a whole SVG chart on every call (hundreds of
 * milliseconds for a few hundred markers on a busy machine), so one scheduler
 * draws the changed charts one per animation frame, waiting between rounds at
 * least 250 ms (a second while only points stream in from a training run) and
 * at least four times as long as its last round took: the
 * charts take at most about a fifth of the main thread, the filter heatmaps
 * keep their frames, and opening a finished run is a row of short tasks
 * instead of one long one (every chart drawn once, not once per series).
 * A chart off screen (scrolled away, or in a hidden view) waits: it stays changed and is drawn
 * when it comes on screen (dom.js watchOnScreen). On a laptop most of the run view's charts lie
 * below the filters, and their redraws took the cores the run trains on.
 * flush() draws one chart at once (tests, or a caller that reads the layout).
 */

import { watchOnScreen } from "./dom.js";

const MIN_FLUSH_INTERVAL_MS = 250;
/* Points that stream in from a training run wait at least this long between rounds: a curve that
   grows once a second reads as live, and every round redraws each changed chart's whole SVG. */
const LIVE_FLUSH_INTERVAL_MS = 1000;
const FLUSH_BUDGET_FACTOR = 4;
/* A series with more points than this gets its markers on a thinned copy (about MARKED_POINTS of
   them): plotly styles every marker one by one, and hundreds per curve cost most of a redraw while
   a marker every few dozen pixels tells the curves apart just as well. */
const MARKERS_ON_EVERY_POINT = 60;
const MARKED_POINTS = 24;

const dirtyCharts = new Set();
let flushTimer = null;        // a round waiting for its time
let flushDue = Infinity;      // when that round starts
let round = null;             // the charts of the round being drawn, one per frame
let lastFlushEnd = -Infinity;
let lastFlushMs = 0;          // main-thread time the last round of flushes took

/* Ask for a round at least `minInterval` ms (and FLUSH_BUDGET_FACTOR times the last round's own
   time) after the last one ended; an earlier ask moves a waiting round forward. A round draws the
   charts that are changed when it starts; what changes meanwhile waits for the next one. */
function scheduleFlush(minInterval) {
  const interval = Math.max(minInterval, FLUSH_BUDGET_FACTOR * lastFlushMs);
  const due = Math.max(performance.now(), lastFlushEnd + interval);
  if (round !== null || (flushTimer !== null && due >= flushDue)) return;
  clearTimeout(flushTimer);
  flushDue = due;
  flushTimer = setTimeout(() => {
    flushTimer = null;
    flushDue = Infinity;
    round = [...dirtyCharts].filter((chart) => chart.screen.visible);
    requestAnimationFrame(() => flushNext(0));
  }, due - performance.now());
}

/* One chart per animation frame, so the frames in between can draw filters. */
function flushNext(spentMs) {
  const chart = round.shift();
  let spent = spentMs;
  if (chart) {
    const started = performance.now();
    chart.flush();
    spent += performance.now() - started;
  }
  if (round.length) {
    requestAnimationFrame(() => flushNext(spent));
    return;
  }
  round = null;
  lastFlushEnd = performance.now();
  lastFlushMs = spent;
  const waiting = [...dirtyCharts].filter((chart) => chart.screen.visible);
  if (waiting.length) scheduleFlush(Math.min(...waiting.map((chart) => chart.waitMs)));
}

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];

export class LineChart {
  /*
   * element: the div to draw in. options: {title, yTitle, log (bool), mode
   * (plotly trace mode, default "lines+markers"), series: {name: {color, dash, mode, symbol,
   * legend (false: no legend entry)}} for fixed styling, yRange}.
   */
  constructor(element, options = {}) {
    this.element = element;
    this.options = options;
    this.series = new Map();    // name -> {x: [], y: [], style}, in trace order
    this.counts = new Map();    // name -> number of points drawn
    this.yExtent = null;        // [lowest, highest] y held, for the ticks of a log axis
    this.logX = false;
    this.extra = {};            // layout the caller adds (shapes, annotations)
    this.plotted = false;
    this.revision = 0;
    this.drawnRevision = -1;
    this.marked = null;
    this.span = null;           // [first, last] step of the x axis, or null to fit the points
    this.screen = watchOnScreen(element, (visible) => {
      if (visible && dirtyCharts.has(this)) scheduleFlush(MIN_FLUSH_INTERVAL_MS);
    });
  }

  /* Note a change of state; the scheduler draws it. `live`: points streaming in, which can wait
     LIVE_FLUSH_INTERVAL_MS; any other change (a history loaded, the axis switched) comes sooner. */
  _changed(live = false) {
    this.revision += 1;
    const wait = live ? LIVE_FLUSH_INTERVAL_MS : MIN_FLUSH_INTERVAL_MS;
    this.waitMs = dirtyCharts.has(this) ? Math.min(this.waitMs, wait) : wait;
    dirtyCharts.add(this);
    if (this.screen.visible) scheduleFlush(wait);
  }

  _seriesFor(name) {
    let series = this.series.get(name);
    if (series) return series;
    const fixed = this.options.series?.[name] ?? {};
    const look = seriesStyle(this.series.size);
    series = { x: [], y: [], zeros: [], style: {
      color: fixed.color ?? PALETTE[this.series.size % PALETTE.length],
      dash: fixed.dash ?? look.dash, symbol: fixed.symbol ?? look.symbol,
      // every series its own dash and marker, so overlapping curves stay apart; a dense series such
      // as the training loss may ask for a line only
      mode: fixed.mode ?? this.options.mode ?? "lines+markers",
      legend: fixed.legend ?? true,
    } };
    this.series.set(name, series);
    return series;
  }

  addDataPoint(name, x, y) {
    if (y == null || !Number.isFinite(y)) return;
    if (this.options.log && y < 0) return;
    const series = this._seriesFor(name);
    if (this.options.log && y === 0) series.zeros.push(x);   // drawn apart: a log scale has no 0
    else { series.x.push(x); series.y.push(y); this._widen([y]); }
    this._changed(true);
  }

  /* Replace a whole series (e.g. the metrics history of an opened run). `live`: a series that
     grows with a training run, drawn at the pace of streamed points (see _changed). */
  setSeries(name, xs, ys, { live = false } = {}) {
    const log = this.options.log;
    const keep = xs.map((_, i) => i).filter((i) => ys[i] != null && Number.isFinite(ys[i]) && (!log || ys[i] > 0));
    const series = this._seriesFor(name);
    series.x = keep.map((i) => xs[i]);
    series.y = keep.map((i) => ys[i]);
    series.zeros = log ? xs.filter((_, i) => ys[i] === 0) : [];
    this._widen(series.y);
    this._changed(live);
  }

  /* Give a series another name (its points and style stay). */
  renameSeries(from, to) {
    if (!this.series.has(from) || this.series.has(to)) return;
    this.series = new Map([...this.series].map(([name, series]) => [name === from ? to : name, series]));
    this.counts.delete(from);
    this._changed();
  }

  /* The steps the x axis spans, [first, last] (null: as plotly fits the points), so the charts of
     one run line up step for step, whichever points each holds yet. */
  setStepSpan(span) {
    const same = span === this.span || (span && this.span && span[0] === this.span[0] && span[1] === this.span[1]);
    if (same) return;
    this.span = span ? [span[0], span[1]] : null;
    this._changed();
  }

  /* Layout the caller adds to the chart's own, e.g. {shapes, annotations}. */
  setExtraLayout(extra) {
    this.extra = { ...extra };
    this._changed();
  }

  _widen(ys) {
    if (!this.options.log || !ys.length) return;
    let [low, high] = this.yExtent ?? [Infinity, -Infinity];
    for (const y of ys) { if (y < low) low = y; if (y > high) high = y; }
    this.yExtent = [low, high];
  }

  /* A log axis gets a labelled tick at 1, 2 and 5 of each power of ten while it spans a
     couple of decades, and one per decade (two, past six) once it spans more: beyond that
     the labels would overlap on these small charts. An empty log axis ticks at decades too
     (it spans several, and 1-2-5 ticks there pile up into an unreadable column). */
  _logTicks() {
    return logTicks(this.yExtent);
  }

  /* The whole layout of the chart's present state. */
  _layout() {
    const options = this.options;
    const axis = stepAxis(this.logX);
    const layout = {
      title: { text: options.title ?? "", font: { size: 13 }, x: 0.02, xanchor: "left" },
      margin: { l: 48, r: 18, t: 30, b: 30 },   // r: room for the last step label at the axis end
      xaxis: { zeroline: false, automargin: true, type: axis["xaxis.type"], tickmode: axis["xaxis.tickmode"],
               exponentformat: axis["xaxis.exponentformat"], title: { text: axis["xaxis.title.text"], font: { size: 11 } } },
      yaxis: { type: options.log ? "log" : "linear", zeroline: false, automargin: true,
               exponentformat: "e", range: options.yRange,
               ...(options.log ? { tickformat: ".0e", dtick: this._logTicks() } : {}) },
      legend: { orientation: "h", y: 1.02, x: 1, xanchor: "right", yanchor: "bottom", font: { size: 10 } },
      // a legend of many layers would cover the plot; their names stay in the hover text
      showlegend: this.series.size < 7 ? undefined : false,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
      font: { family: "system-ui, sans-serif", size: 11, color: "#1f2937" },
      uirevision: "keep",
      datarevision: this.revision,
      autosize: true,
      ...this.extra,
    };
    if (axis["xaxis.dtick"] != null) layout.xaxis.dtick = axis["xaxis.dtick"];
    if (this.span) {
      const [first, last] = this.span;
      // a log axis starts at step 1 (step 0 lies off it); a little room at each end for the markers
      layout.xaxis.range = this.logX
        ? [Math.log10(Math.max(1, first)) - 0.03, Math.log10(Math.max(1, last)) + 0.03]
        : [first - 0.01 * (last - first), last + 0.01 * (last - first)];
    }
    if (options.yTitle) layout.yaxis.title = { text: options.yTitle, font: { size: 11 } };
    return [...this.series.values()].some((series) => series.zeros.length) ? withZeroStrip(layout) : layout;
  }

  /* The plotly traces of the chart's series: a dense series draws its line, and its markers on
     a thinned copy of its points (no legend entry, no hover of its own). */
  _traces() {
    const traces = [];
    for (const [name, { x, y, style }] of this.series) {
      const markers = style.mode.includes("markers");
      const dense = markers && x.length > MARKERS_ON_EVERY_POINT;
      const line = { color: style.color, width: 1.6, dash: style.dash };
      const marker = { color: style.color, size: 5, symbol: style.symbol };
      traces.push({ x, y, name, type: "scatter", mode: dense ? "lines" : style.mode, line, marker, legendgroup: name,
                    showlegend: style.legend });
      const { zeros } = this.series.get(name);
      if (zeros.length) traces.push(zeroTrace(zeros, name, style.color));
      if (dense) {
        const every = Math.ceil(x.length / MARKED_POINTS);
        const at = x.map((_, i) => i).filter((i) => i % every === 0 || i === x.length - 1);
        traces.push({ x: at.map((i) => x[i]), y: at.map((i) => y[i]), name, type: "scatter", mode: "markers", marker,
                      legendgroup: name, showlegend: false, hoverinfo: "skip", meta: "markers" });
      }
    }
    return traces;
  }

  /* Draw the chart's state now (the scheduler calls this; nothing happens when it is drawn). */
  flush() {
    dirtyCharts.delete(this);
    if (this.drawnRevision === this.revision && this.plotted) return;
    this.drawnRevision = this.revision;
    window.Plotly.react(this.element, this._traces(), this._layout(), { displayModeBar: false, responsive: true });
    for (const [name, series] of this.series) this.counts.set(name, series.x.length + series.zeros.length);
    if (!this.plotted) {
      this.plotted = true;
      // the slider's marker is placed again whenever plotly redraws (the chart is resized)
      const place = () => this._placeMarker();
      this.element.on?.("plotly_afterplot", place);
      this.element.on?.("plotly_relayout", place);
    }
    this._placeMarker();
  }

  /* Number of points drawn in a series (what the page shows, for tests). */
  pointCount(name) {
    return this.counts.get(name) ?? 0;
  }

  reset() {
    const had = this.series.size > 0;
    this.series.clear();
    this.counts.clear();
    this.yExtent = null;
    if (had) this._changed();
  }

  /* Fit the chart to its element again (after the element was hidden or resized); a chart not
     drawn yet is drawn now that it is on screen, as an empty frame with its title. */
  resize() {
    if (this.plotted) window.Plotly.Plots.resize(this.element);
    else this._changed();
  }

  /*
   * A vertical marker at the step the history slider shows (null hides it): a red line with
   * "step N" on top, an element laid over the plot rather than a plotly shape — a shape's
   * relayout redraws every point of the chart (hundreds of milliseconds each on a busy machine,
   * several times a second while snapshots play); the overlay costs a style change. It is placed
   * again whenever plotly redraws (new points widen the axis, the chart is resized).
   */
  markStep(step) {
    this.marked = step;
    if (!this.marker) {
      this.marker = document.createElement("div");
      this.marker.className = "step-marker";
      this.marker.hidden = true;
      this.marker.append(document.createElement("span"));
      if (getComputedStyle(this.element).position === "static") this.element.style.position = "relative";
      this.element.append(this.marker);
    }
    this._placeMarker();
  }

  _placeMarker() {
    const marker = this.marker;
    if (!marker) return;
    const step = this.marked;
    const xa = this.element._fullLayout?.xaxis, ya = this.element._fullLayout?.yaxis;
    const at = step == null ? null : stepMarker(step, this.logX);
    // until the chart is drawn on the axis it has now, the marker waits (the redraw places it)
    if (!at || !xa?.range || !ya || (xa.type === "log") !== this.logX) { marker.hidden = true; delete marker.dataset.step; return; }
    const [low, high] = xa.range;
    const fraction = (at.axisValue - low) / (high - low);
    marker.hidden = !(fraction >= 0 && fraction <= 1);
    marker.dataset.step = String(step);
    marker.style.left = `${xa._offset + fraction * xa._length}px`;
    marker.style.top = `${ya._offset}px`;
    marker.style.height = `${ya._length}px`;
    marker.firstChild.textContent = at.text;
  }

  /* Log or linear step axis; a log axis is labelled at whole decades only (1, 10, 100, …). */
  setLogX(on) {
    if (Boolean(on) === this.logX) return;
    this.logX = Boolean(on);
    this._changed();
    this._placeMarker();
  }
}

/*
 * The "auto" step axis: log while the step on screen lies in the first quarter of the run's
 * steps, when the filters change fastest and a linear axis squeezes that phase into its first
 * pixels; linear after. It follows the step displayed, not how far training got, so a learner
 * replaying the early snapshots while the run trains on keeps the log axis that shows them.
 */
export const AUTO_LOG_BEFORE = 0.25;
export function autoStepAxisIsLog(shownStep, totalSteps) {
  return totalSteps > 0 && shownStep != null && shownStep < AUTO_LOG_BEFORE * totalSteps;
}

/* The dtick of a log axis over [lowest, highest] positive values (null: none yet): 1, 2 and 5 of
   each power of ten while they span at most two decades; beyond, a label every 1, 2, 5, 10 or 20
   decades, the fewest that keeps about five labels: more overlap on these small charts. */
export function logTicks(extent) {
  if (!extent || !(extent[0] > 0) || !(extent[1] > 0)) return 1;
  const decades = Math.log10(extent[1] / extent[0]);
  if (decades <= 2) return "D2";
  return [1, 2, 5, 10, 20].find((every) => every >= decades / 5) ?? Math.ceil(decades / 5);
}

/* [lowest, highest] of the positive numbers among `values` (null when there are none). */
export function positiveExtent(values) {
  const positive = values.filter((v) => Number.isFinite(v) && v > 0);
  return positive.length ? [Math.min(...positive), Math.max(...positive)] : null;
}

/*
 * Exact zeros on a log scale (a std of 0: zero weights, a dead layer) have no place on it; drawn at
 * any small number they would read as that number. They are drawn apart instead: open downward
 * triangles in a strip of their own under the plot, on a second axis whose one tick says "0".
 * zeroTrace(xs, name, color) is such a trace, withZeroStrip(layout) the layout that makes room.
 */
export function zeroTrace(xs, name, color) {
  return { x: xs, y: xs.map(() => 0.5), yaxis: "y2", name, type: "scatter", mode: "markers", showlegend: false,
           marker: { color, size: 8, symbol: "triangle-down-open" }, meta: "zeros", cliponaxis: false,
           hovertemplate: `${name}: exactly 0 at %{x}<extra></extra>` };
}
export function withZeroStrip(layout) {
  return {
    ...layout,
    yaxis: { ...layout.yaxis, domain: [0.16, 1] },
    xaxis: { ...layout.xaxis, anchor: "free", position: 0 },
    yaxis2: { domain: [0, 0.1], range: [0, 1], fixedrange: true, showgrid: false, zeroline: false, showline: false,
              tickmode: "array", tickvals: [0.5], ticktext: ["0 ▽"], tickfont: { size: 10, color: "#475569" } },
  };
}

/* The steps a run's charts span: from 0 to the step it reached once it has ended, and while it trains
   to the step it reached, rounded up to a round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a
   power of ten, within its length), so the axes line up across charts yet move about ten times per
   decade instead of at every point. */
export function runStepSpan(reached, total, ended) {
  if (ended || reached >= total) return [0, Math.max(1, Math.min(reached, total))];
  return [0, Math.min(Math.max(1, total), niceCeiling(reached))];
}

/* The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 and 8 times a power of ten that is at least
   `value` (1 for anything below): an axis end that moves about ten times a decade as a run goes on. */
export function niceCeiling(value) {
  const decade = 10 ** Math.floor(Math.log10(Math.max(1, value)));
  return [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((k) => Math.round(k * decade)).find((v) => v >= value);
}

/* "auto", "log" or "linear" -> whether the step axis is log, for the step on screen. */
export function stepAxisIsLog(mode, shownStep, totalSteps) {
  return mode === "log" || (mode === "auto" && autoStepAxisIsLog(shownStep, totalSteps));
}

/* Layout of a step axis: on a log axis one labelled tick per decade, written 1, 10, 100, 1000
   (a step axis spans a few decades, so the labels never crowd); step 0 lies off a log axis.
   The linear axis names tickmode "auto" itself: plotly records tickmode "linear" once a dtick
   was given, and clearing the dtick alone then leaves a labelled tick at every single step
   (3,000 labels for the default run, which plotly measures one by one for minutes). */
export function stepAxis(log) {
  return log
    ? { "xaxis.type": "log", "xaxis.tickmode": "linear", "xaxis.dtick": 1, "xaxis.exponentformat": "none",
        "xaxis.title.text": "step (log scale)" }
    : { "xaxis.type": "linear", "xaxis.tickmode": "auto", "xaxis.dtick": null, "xaxis.tick0": null,
        "xaxis.exponentformat": "B", "xaxis.title.text": "step" };
}

/* Where the slider's step lies on a step axis: {step, x (on a log axis step 0 is drawn at step 1),
   axisValue (x in the axis's own units: its log10 on a log axis), text}. */
export function stepMarker(step, log) {
  const x = log ? Math.max(step, 1) : step;
  return { step, x, axisValue: log ? Math.log10(x) : x, text: `step ${step}` };
}

/* The same marker as plotly layout (a shape and an annotation), for a chart that is redrawn
   whole anyway (Plotly.react in the compare view). null hides it. */
export function stepMarkerLayout(step, log) {
  if (step == null) return { shapes: [], annotations: [] };
  const { x, axisValue, text } = stepMarker(step, log);
  return {
    shapes: [{ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color: "#dc2626", width: 2 } }],
    annotations: [{ x: axisValue, yref: "paper", y: 1, yanchor: "top", xanchor: "left", text, showarrow: false,
                    font: { size: 11, color: "#b91c1c" }, bgcolor: "#ffffff" }],
  };
}

/* Dash and marker of the i-th series, so curves that lie on top of each other stay apart. */
export const DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
export const SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down"];
export function seriesStyle(i) {
  return { dash: DASHES[i % DASHES.length], symbol: SYMBOLS[i % SYMBOLS.length] };
}
