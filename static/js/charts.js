/*
 * Line charts over plotly.js (loaded globally from /static/vendor/plotly.min.js)
 * with a small API in the spirit of TensorFlow Playground's linechart:
 * addDataPoint(series, x, y) buffers points; reset() empties the chart;
 * setSeries() loads a whole history at once. The chart adds a trace the first
 * time a series name is seen, so per-layer series need no declaration.
 *
 * Buffered points of every chart are flushed together (Plotly.extendTraces)
 * by one scheduler: plotly redraws a whole SVG chart on each extend, which on
 * a busy machine costs tens of milliseconds, so the scheduler waits at least
 * 250 ms and at least four times as long as the last round took, and draws
 * one chart per animation frame. Charts then take at most about a fifth of
 * the main thread, and the filter heatmaps keep their frames.
 */

const MIN_FLUSH_INTERVAL_MS = 250;
const FLUSH_BUDGET_FACTOR = 4;

const dirtyCharts = new Set();
let flushTimer = null;        // set while a flush is waiting or running
let lastFlushEnd = -Infinity;
let lastFlushMs = 0;          // main-thread time the last round of flushes took

function scheduleFlush() {
  if (flushTimer !== null) return;
  const interval = Math.max(MIN_FLUSH_INTERVAL_MS, FLUSH_BUDGET_FACTOR * lastFlushMs);
  const wait = Math.max(0, lastFlushEnd + interval - performance.now());
  flushTimer = setTimeout(() => requestAnimationFrame(() => flushNext(0)), wait);
}

/* One chart per animation frame, so the frames in between can draw filters. */
function flushNext(spentMs) {
  const chart = dirtyCharts.values().next().value;
  let spent = spentMs;
  if (chart) {
    dirtyCharts.delete(chart);
    const started = performance.now();
    chart.flush();
    spent += performance.now() - started;
  }
  if (dirtyCharts.size) {
    requestAnimationFrame(() => flushNext(spent));
    return;
  }
  flushTimer = null;
  lastFlushEnd = performance.now();
  lastFlushMs = spent;
}

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];

export class LineChart {
  /*
   * element: the div to draw in. options: {title, yTitle, log (bool), mode
   * (plotly trace mode, default "lines"), series: {name: {color, dash, mode}}
   * for fixed styling, yRange}.
   */
  constructor(element, options = {}) {
    this.element = element;
    this.options = options;
    this.names = [];            // trace order
    this.pending = new Map();   // name -> {x: [], y: []}
    this.counts = new Map();    // name -> number of points drawn
    this.yExtent = null;        // [lowest, highest] y drawn, for the ticks of a log axis
    const layout = {
      title: { text: options.title ?? "", font: { size: 13 }, x: 0.02, xanchor: "left" },
      margin: { l: 48, r: 10, t: 30, b: 30 },
      xaxis: { title: { text: "step", font: { size: 11 } }, zeroline: false, automargin: true, exponentformat: "B" },
      yaxis: { type: options.log ? "log" : "linear", zeroline: false, automargin: true,
               exponentformat: "e", range: options.yRange,
               // decades until the data says how many it spans (_fitLogTicks): an empty log axis spans
               // several, and 1-2-5 ticks there pile up into an unreadable column
               ...(options.log ? { tickformat: ".0e", dtick: 1 } : {}) },
      legend: { orientation: "h", y: 1.02, x: 1, xanchor: "right", yanchor: "bottom", font: { size: 10 } },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
      font: { family: "system-ui, sans-serif", size: 11, color: "#1f2937" },
      uirevision: "keep",
      autosize: true,
    };
    if (options.yTitle) layout.yaxis.title = { text: options.yTitle, font: { size: 11 } };
    window.Plotly.newPlot(element, [], layout, { displayModeBar: false, responsive: true });
  }

  _traceFor(name) {
    let index = this.names.indexOf(name);
    if (index >= 0) return index;
    const style = this.options.series?.[name] ?? {};
    const color = style.color ?? PALETTE[this.names.length % PALETTE.length];
    const look = seriesStyle(this.names.length);
    // every series its own dash and marker, so overlapping curves stay apart (a dense series such
    // as the training loss may ask for a line only: thousands of SVG markers would cost seconds
    // per redraw, and plotly's maxdisplayed is slower still)
    window.Plotly.addTraces(this.element, {
      x: [], y: [], name, mode: style.mode ?? "lines+markers", type: "scatter",
      line: { color, width: 1.6, dash: style.dash ?? look.dash },
      marker: { color, size: 5, symbol: style.symbol ?? look.symbol },
    });
    this.names.push(name);
    this.counts.set(name, 0);
    // a legend of many layers would cover the plot; their names stay in the hover text
    if (this.names.length === 7) window.Plotly.relayout(this.element, { showlegend: false });
    return this.names.length - 1;
  }

  addDataPoint(name, x, y) {
    if (y == null || !Number.isFinite(y)) return;
    if (this.options.log && y <= 0) return;
    if (!this.pending.has(name)) this.pending.set(name, { x: [], y: [] });
    const p = this.pending.get(name);
    p.x.push(x);
    p.y.push(y);
    this._widen([y]);
    dirtyCharts.add(this);
    scheduleFlush();
  }

  /* Draw the buffered points now (the scheduler calls this). */
  flush() {
    if (this.pending.size === 0) return;
    const xs = [], ys = [], indices = [];
    for (const [name, p] of this.pending) {
      indices.push(this._traceFor(name));
      xs.push(p.x);
      ys.push(p.y);
      this.counts.set(name, this.counts.get(name) + p.x.length);
    }
    this.pending.clear();
    window.Plotly.extendTraces(this.element, { x: xs, y: ys }, indices);
    this._fitLogTicks();
  }

  _widen(ys) {
    if (!this.options.log || !ys.length) return;
    let [low, high] = this.yExtent ?? [Infinity, -Infinity];
    for (const y of ys) { if (y < low) low = y; if (y > high) high = y; }
    this.yExtent = [low, high];
  }

  /* A log axis gets a labelled tick at 1, 2 and 5 of each power of ten while it spans a
     couple of decades, and one per decade (two, past six) once it spans more: beyond that
     the labels would overlap on these small charts. */
  _fitLogTicks() {
    if (!this.options.log || !this.yExtent) return;
    const decades = Math.log10(this.yExtent[1] / this.yExtent[0]);
    const dtick = decades > 6 ? 2 : decades > 2 ? 1 : "D2";
    if (this.element.layout?.yaxis?.dtick !== dtick) window.Plotly.relayout(this.element, { "yaxis.dtick": dtick });
  }

  /* Replace a whole series (e.g. the metrics history of an opened run). */
  setSeries(name, xs, ys) {
    const keep = xs.map((_, i) => i).filter((i) => ys[i] != null && Number.isFinite(ys[i]) && (!this.options.log || ys[i] > 0));
    const index = this._traceFor(name);
    this.pending.delete(name);
    window.Plotly.restyle(this.element, { x: [keep.map((i) => xs[i])], y: [keep.map((i) => ys[i])] }, [index]);
    this.counts.set(name, keep.length);
    this._widen(keep.map((i) => ys[i]));
    this._fitLogTicks();
  }

  /* Number of points drawn in a series (what the page shows, for tests). */
  pointCount(name) {
    return this.counts.get(name) ?? 0;
  }

  reset() {
    dirtyCharts.delete(this);
    this.pending.clear();
    this.counts.clear();
    this.yExtent = null;
    if (this.names.length) window.Plotly.deleteTraces(this.element, this.names.map((_, i) => i));
    this.names = [];
  }

  /* Fit the chart to its element again (after the element was hidden or resized). */
  resize() {
    window.Plotly.Plots.resize(this.element);
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
      const place = () => this._placeMarker();
      this.element.on?.("plotly_afterplot", place);
      this.element.on?.("plotly_relayout", place);
    }
    this._placeMarker();
  }

  _placeMarker() {
    const marker = this.marker;
    if (!marker) return;
    const step = this.marked;
    const xa = this.element._fullLayout?.xaxis, ya = this.element._fullLayout?.yaxis;
    const at = step == null ? null : stepMarker(step, this.logX);
    if (!at || !xa?.range || !ya) { marker.hidden = true; delete marker.dataset.step; return; }
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
    if (Boolean(on) === Boolean(this.logX)) return;
    this.logX = Boolean(on);
    window.Plotly.relayout(this.element, stepAxis(this.logX));
    this._placeMarker();
  }
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
