/*
 * Canvas drawing of what a conv layer holds: its filters as small heatmaps
 * (diverging colormap, zero white, negative blue, positive red) with their
 * detector labels, the symmetry meter, the weight histogram against the
 * initial one, and the feature maps of the probe images. Each canvas holds
 * one pixel per weight and CSS enlarges it with crisp edges, so drawing a
 * whole layer is a few putImageData calls. DOM is built once per layer shape
 * and then updated in place.
 */

import { niceCeiling } from "./charts.js";
import { el, setFill, setText } from "./dom.js";
// RdBu-like stops from -1 to 1 (ColorBrewer RdBu, reversed so positive is red).
const STOPS = [
  [-1.0, [33, 102, 172]],
  [-0.5, [146, 197, 222]],
  [0.0, [247, 247, 247]],
  [0.5, [244, 165, 130]],
  [1.0, [178, 24, 43]],
];

/* v in [-1, 1] (clipped) -> [r, g, b]. */
export function divergingColor(v) {
  const x = Math.max(-1, Math.min(1, Number.isFinite(v) ? v : 0));
  for (let i = 1; i < STOPS.length; i++) {
    const [x1, c1] = STOPS[i];
    if (x <= x1) {
      const [x0, c0] = STOPS[i - 1];
      const t = (x - x0) / (x1 - x0);
      return [0, 1, 2].map((k) => Math.round(c0[k] + t * (c1[k] - c0[k])));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

/* Grayscale for input images: lo..hi -> black..white. */
function grayColor(v, lo, hi) {
  const g = hi > lo ? Math.round(255 * (v - lo) / (hi - lo)) : 128;
  return [g, g, g];
}

export function flatten(nested) {
  return Array.isArray(nested) ? nested.flat(Infinity) : [nested];
}

export function maxAbs(nested) {
  let m = 0;
  for (const v of flatten(nested)) if (Math.abs(v) > m) m = Math.abs(v);
  return m;
}

/* Paint 2-D arrays (all h×w) on one canvas, `cols` to a row, one pixel per value and
   1 transparent px apart. */
function paintTable(canvas, tiles, cols, colorOf) {
  const h = tiles[0].length, w = tiles[0][0].length;
  const rows = Math.ceil(tiles.length / cols);
  const width = cols * (w + 1) - 1, height = rows * (h + 1) - 1;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  tiles.forEach((tile, t) => {
    const top = Math.floor(t / cols) * (h + 1), left = (t % cols) * (w + 1);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const [r, g, b] = colorOf(tile[y][x]);
        const o = 4 * ((top + y) * width + left + x);
        image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = 255;
      }
    }
  });
  ctx.putImageData(image, 0, 0);
}

/* Paint 2-D arrays side by side, in one row. */
export function paintTiles(canvas, tiles, colorOf) {
  paintTable(canvas, tiles, tiles.length, colorOf);
}

/* Columns and rows of the near-square table paintGrid lays `count` tiles out in: about
   twice as wide as tall, since cards are wide (8 tiles: 4 x 2; 16: 6 x 3; 3: 3 x 1). */
export function tileGrid(count) {
  const cols = Math.max(1, Math.min(count, Math.ceil(Math.sqrt(count * 2))));
  return { cols, rows: Math.ceil(count / cols) };
}

/* Paint 2-D arrays in the near-square table of tileGrid. */
export function paintGrid(canvas, tiles, colorOf) {
  paintTable(canvas, tiles, tileGrid(tiles.length).cols, colorOf);
}

export function drawDiverging(canvas, grid, scale) {
  const s = scale > 0 ? scale : 1;
  paintTiles(canvas, [grid], (v) => divergingColor(v / s));
}

export function drawGray(canvas, grid) {
  const values = flatten(grid);
  const lo = Math.min(...values), hi = Math.max(...values);
  paintTiles(canvas, [grid], (v) => grayColor(v, lo, hi));
}

const MAX_CHANNELS_SHOWN = 16;
const ROW_PX = 15;   // height of one row of birth ticks on a layer's timeline

/*
 * A filter's caption from its snapshot entry: a dead filter is "dead" and a brightness filter
 * (energy mostly in its mean) "brightness" with that share; neither is a detector, so neither
 * gets a score. Otherwise the best-matching detector and |cos|, with "?" below chance.
 */
export function detectorText(det) {
  if (!det) return "";
  if (det.dead || det.label === "dead") return "dead";
  if (det.label === "brightness") return `brightness · ${Math.round(Number(det.mean_share ?? 0) * 100)}% mean`;
  const name = String(det.label ?? "").replace(/_/g, " ");
  const score = Number(det.score ?? 0).toFixed(2);
  return det.beats_chance === false ? `${name}? ${score}` : `${name} ${score}`;
}

/* Is this snapshot entry a detector at all (not dead, not brightness)? */
export function isDetector(det) {
  return Boolean(det) && !det.dead && det.label !== "dead" && det.label !== "brightness";
}

/* The learner-facing name of a conv layer: the API's `label` (conv1, conv2, …). */
export function layerName(layer) {
  return layer?.label ?? `layer ${layer?.index}`;
}


/*
 * One conv layer's panel: header (name, shape, symmetry meter, histogram)
 * and the filter grid. update(layer, options) redraws from a snapshot layer.
 */
export class FilterLayerView {
  constructor(parent, layer, { open = true } = {}) {
    const [filters, channels, kh, kw] = layer.shape;
    this.shapeKey = layer.shape.join("x");
    this.root = el("details", "layer-panel");
    this.root.open = open;
    this.root.dataset.layer = String(layer.index);
    const summary = el("summary", "layer-head");
    summary.append(el("span", "layer-name", layerName(layer)));
    summary.append(el("span", "layer-shape", `${filters} filters · ${channels} in · ${kh}×${kw}`));
    this.initNote = el("span", "layer-init", "");
    this.summarySymmetry = el("span", "layer-symmetry", "");
    summary.append(this.initNote, this.summarySymmetry);
    this.root.append(summary);

    const stats = el("div", "layer-stats");
    const meter = el("div", "meter");
    meter.title = "Symmetry meter: mean pairwise cosine similarity of the layer's filters. 1.0 means every filter is the same — the init never broke symmetry.";
    meter.append(el("span", "meter-label", "symmetry"));
    const bar = el("div", "meter-bar");
    this.meterFill = el("div", "meter-fill");
    bar.append(this.meterFill);
    meter.append(bar);
    this.meterValue = el("span", "meter-value", "–");
    meter.append(this.meterValue);
    this.meterNote = el("span", "meter-note", "");
    meter.append(this.meterNote);
    this.meter = meter;
    stats.append(meter);
    const histBox = el("div", "hist-box");
    this.histogram = el("canvas", "histogram");
    this.histogram.width = 240;
    this.histogram.height = 64;
    this.histogram.title = "Weight histogram: bars now, outline at step 0";
    histBox.append(this.histogram);
    this.histLegend = el("div", "hist-legend", "");
    histBox.append(this.histLegend);
    stats.append(histBox);
    this.root.append(stats);
    // the layer's timeline: when each filter was born (its score stays above chance from then on)
    this.timeline = el("div", "birth-timeline");
    this.timeline.title = "births: the snapshot from which a filter's detector score stays above chance (3 snapshots or more); log step axis";
    this.root.append(this.timeline);

    this.grid = el("div", "filter-grid");
    this.cards = [];
    const shown = Math.min(channels, MAX_CHANNELS_SHOWN);
    // a filter's input channels as a small table of kernels; css px per weight: large for
    // single-channel first layers, compact for deep ones
    const { cols, rows } = tileGrid(shown);
    const cell = shown === 1 ? (kh <= 3 ? 16 : kh <= 5 ? 12 : 8) : (kh <= 3 ? 7 : kh <= 5 ? 5 : 4);
    const small = Math.max(2, Math.round(cell / 2.5));   // css px per weight of the step-0 kernel beside it
    // one-channel kernels get the step-0 kernel beside them; tables of channels get it underneath
    const stacked = shown > 1;
    const cardWidth = Math.max(112, (cols * (kw + 1) - 1) * (stacked ? cell : cell + small) + 14);
    this.grid.style.gridTemplateColumns = `repeat(auto-fill, minmax(${cardWidth}px, 1fr))`;
    for (let f = 0; f < filters; f++) {
      const card = el("figure", "filter-card");
      card.dataset.filter = String(f);
      const canvas = el("canvas", "kernel");
      canvas.style.width = `${(cols * (kw + 1) - 1) * cell}px`;
      canvas.style.height = `${(rows * (kh + 1) - 1) * cell}px`;
      // the filter at step 0, small, beside the current one, on the same colour scale
      const initial = el("canvas", "kernel0");
      initial.style.width = `${(cols * (kw + 1) - 1) * small}px`;
      initial.style.height = `${(rows * (kh + 1) - 1) * small}px`;
      initial.title = `filter ${f} at step 0, same colour scale`;
      const pair = el("div", stacked ? "kernel-pair stacked" : "kernel-pair");
      const then = el("div", "kernel-then");
      then.append(initial, el("span", "kernel-then-label", "step 0"));
      pair.append(canvas, then);
      const label = el("figcaption", "detector-label", "");
      const birth = el("span", "birth-label", "");
      const mark = el("span", "filter-mark", "");
      card.append(pair, label, birth, mark);
      this.grid.append(card);
      this.cards.push({ card, canvas, initial, label, birth, mark });
    }
    if (channels > shown) {
      this.grid.append(el("p", "note", `first ${shown} of ${channels} input channels shown per filter`));
    }
    this.root.append(this.grid);
    parent.append(this.root);
  }

  update(layer, { scaling = "layer", initialWeights = null, initText = "", births = null, step = null } = {}) {
    setText(this.initNote, initText);
    const layerScale = maxAbs(layer.weight);
    const frozen = new Set(layer.frozen ?? []);
    layer.weight.forEach((filter, f) => {
      const scale = scaling === "filter" ? maxAbs(filter) : layerScale;
      const tiles = filter.slice(0, MAX_CHANNELS_SHOWN);
      const { canvas, label, card, initial, birth, mark } = this.cards[f];
      paintGrid(canvas, tiles, (v) => divergingColor(scale > 0 ? v / scale : 0));
      const start = initialWeights?.[f];
      initial.parentElement.hidden = !start;
      if (start) paintGrid(initial, start.slice(0, MAX_CHANNELS_SHOWN), (v) => divergingColor(scale > 0 ? v / scale : 0));
      const born = births?.[f]?.birth_step;
      setText(birth, births == null ? "" : born != null && (step == null || born <= step) ? `born at step ${born}` : "not born yet");
      birth.classList.toggle("born", born != null && (step == null || born <= step));
      const isFrozen = frozen.has(f);
      setText(mark, isFrozen ? "frozen" : "");
      card.classList.toggle("frozen", isFrozen);
      canvas.title = `filter ${f}: max |w| = ${maxAbs(filter).toPrecision(3)}, bias = ${Number(layer.bias?.[f] ?? 0).toPrecision(3)}`;
      const det = (layer.detectors || []).find((d) => d.filter === f) ?? layer.detectors?.[f];
      setText(label, detectorText(det));
      label.classList.toggle("below-chance", det?.beats_chance === false && isDetector(det));
      label.classList.toggle("not-detector", Boolean(det) && !isDetector(det));
      card.classList.toggle("dead", Boolean(det?.dead || det?.label === "dead"));
      label.title = det ? `best match ${det.label}, |cos| = ${Number(det.score).toFixed(3)}`
        + (det.percentile != null ? `, higher than ${det.percentile}% of random kernels of this size` : "")
        + `; chance level ${Number(det.chance ?? NaN).toFixed(3)} (99th percentile)`
        + (det.beats_chance === false ? " — not distinguishable from a random kernel" : "") : "";
      if (det && !isDetector(det)) {
        label.title = det.label === "brightness"
          ? `a brightness filter: ${Math.round(Number(det.mean_share) * 100)}% of its energy is its mean — it responds to how bright a patch is, not to a shape, so it is not counted as a detector`
          : "a dead filter: its weights are tiny beside the layer's, or it never fires on the probe images — no detector label";
      }
      card.classList.toggle("detector", det?.beats_chance === true && isDetector(det));
    });
    this.updateMeter(layer.symmetry);
    this.drawTimeline(births, layer.weight.length);
    this.drawHistogram(layer.weight, initialWeights);
  }

  updateMeter(symmetry) {
    const s = Number(symmetry);
    this.meter.dataset.symmetry = Number.isFinite(s) ? String(s) : "";
    setFill(this.meterFill, s);
    setText(this.meterValue, Number.isFinite(s) ? s.toFixed(3) : "–");
    setText(this.summarySymmetry, Number.isFinite(s) && !this.root.open ? `symmetry ${s.toFixed(3)}` : "");
    setText(this.meterNote, s >= 0.9999 ? "all filters identical: symmetry never broken" : "");
    this.meter.classList.toggle("stuck", s >= 0.9999);
  }

  /*
   * The births on a log step axis from step 1 to the newest stored step. When a live run has
   * passed the births' answer (asked every few seconds) the axis reaches past the step on screen,
   * to a round step (charts.js niceCeiling), so the step's mark stays on it and the ticks, laid out
   * again only when the axis changes, are not measured anew at every snapshot. Filters born at the
   * same step share one tick (their numbers, or "N filters" past three; data-filters lists them);
   * ticks that would touch are stacked in rows, each in the lowest row where it fits, so none covers
   * another.
   */
  drawTimeline(births, filters) {
    const info = this.birthInfo;
    if (!births || !info?.last) { this.timeline.replaceChildren(); delete this.timeline.dataset.key; return; }
    const end = (info.step ?? 0) > info.last ? niceCeiling(info.step) : info.last;
    const fraction = (step) => Math.log10(1 + step) / Math.log10(1 + end);
    const key = JSON.stringify([births.map((b) => b.birth_step), end]);
    if (this.timeline.dataset.key === key) { this.placeNow(fraction); return; }
    this.timeline.dataset.key = key;
    const track = el("div", "birth-track");
    const born = births.filter((b) => b.birth_step != null).sort((a, b) => a.birth_step - b.birth_step || a.filter - b.filter);
    const text = el("span", "birth-text", born.length
      ? `births (log steps 1–${end}): ${born.length} of ${filters} filters`
      : `no filter born yet (log steps 1–${end})`);
    this.timeline.replaceChildren(text, track);
    const groups = [];
    for (const b of born) {
      const last = groups[groups.length - 1];
      if (last && last.step === b.birth_step) last.filters.push(b.filter); else groups.push({ step: b.birth_step, filters: [b.filter] });
    }
    const ticks = groups.map(({ step, filters: fs }) => {
      const tick = el("span", "birth-tick", fs.length <= 3 ? fs.join(",") : `${fs.length} filters`);
      tick.dataset.filters = fs.join(",");
      tick.dataset.step = String(step);
      tick.style.left = `${(100 * fraction(step)).toFixed(2)}%`;
      tick.title = `${fs.length > 1 ? `filters ${fs.join(", ")}` : `filter ${fs[0]}`} born at step ${step}`;
      track.append(tick);
      return tick;
    });
    // stack: measure the ticks as drawn (the panel is open: closed panels are not updated)
    const width = track.clientWidth;
    const rowEnds = [];   // right edge (px) of the last tick in each row
    const GAP = 2;
    for (const tick of ticks) {
      const w = tick.offsetWidth;
      const x = fraction(Number(tick.dataset.step)) * width;
      const leftEdge = x - w / 2;
      let row = rowEnds.findIndex((end) => end + GAP <= leftEdge);
      if (row < 0) { row = rowEnds.length; rowEnds.push(0); }
      rowEnds[row] = x + w / 2;
      tick.style.bottom = `${row * ROW_PX}px`;
      tick.dataset.row = String(row);
    }
    track.style.height = `${Math.max(1, rowEnds.length) * ROW_PX + 2}px`;
    this.now = el("span", "birth-now");
    track.prepend(this.now);
    this.placeNow(fraction);
  }

  /* The mark of the step on screen on the births' axis: moved, not redrawn, as the step changes
     (the ticks are laid out again only when the births or the axis change). */
  placeNow(fraction) {
    const step = this.birthInfo?.step;
    if (!this.now) return;
    this.now.hidden = step == null;
    if (step == null) return;
    this.now.style.left = `${(100 * fraction(step)).toFixed(2)}%`;
    this.now.title = `step ${step} on screen`;
  }

  drawHistogram(weight, initialWeights) {
    const values = flatten(weight);
    const initial = initialWeights ? flatten(initialWeights) : null;
    const m = Math.max(maxAbs(values), initial ? maxAbs(initial) : 0) || 1;
    const bins = 31;
    const count = (vals) => {
      const h = new Array(bins).fill(0);
      for (const v of vals) h[Math.min(bins - 1, Math.max(0, Math.floor((v + m) / (2 * m) * bins)))] += 1;
      return h;
    };
    const now = count(values);
    const before = initial ? count(initial) : null;
    const top = Math.max(...now, ...(before ?? [0])) || 1;
    const c = this.histogram, ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const bw = c.width / bins, H = c.height - 2;
    now.forEach((n, i) => {
      ctx.fillStyle = `rgb(${divergingColor((i + 0.5) / bins * 2 - 1).join(",")})`;
      ctx.fillRect(i * bw + 0.5, H - (n / top) * H, bw - 1, (n / top) * H);
    });
    if (before) {
      // the step-0 histogram as a step outline over the bars
      ctx.strokeStyle = "#1f2937";
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      ctx.moveTo(0, H);
      before.forEach((n, i) => {
        const y = H - (n / top) * H;
        ctx.lineTo(i * bw, y);
        ctx.lineTo((i + 1) * bw, y);
      });
      ctx.lineTo(c.width, H);
      ctx.stroke();
    }
    ctx.strokeStyle = "#94a3b8";
    ctx.beginPath();
    ctx.moveTo(c.width / 2, 0);
    ctx.lineTo(c.width / 2, c.height);
    ctx.stroke();
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
    this.histLegend.textContent = `±${m.toPrecision(2)} · std ${std.toPrecision(3)}`;
  }
}

/* All conv layers of a snapshot; rebuilds a layer's view when its shape changes. */
export class FilterBoard {
  constructor(container) {
    this.container = container;
    this.views = new Map();   // layer index -> FilterLayerView
  }

  clear() {
    this.container.replaceChildren();
    this.views.clear();
    this.keys = null;   // the next update rebuilds the views, even for the same layer shapes
  }

  update(snapshot, options) {
    const layers = snapshot.layers.filter((l) => l.type === "conv" && l.weight);
    const keys = layers.map((l) => `${l.index}:${l.shape.join("x")}`).join(",");
    if (keys !== this.keys) {
      this.clear();
      this.keys = keys;
      layers.forEach((layer, i) => this.views.set(layer.index, new FilterLayerView(this.container, layer, { open: i < 3 })));
    }
    for (const layer of layers) {
      const view = this.views.get(layer.index);
      if (!view.root.open) { view.updateMeter(layer.symmetry); continue; }
      const initial = options.initialSnapshot?.layers?.find((l) => l.index === layer.index)?.weight ?? null;
      const births = options.births?.get(layer.index) ?? null;
      view.birthInfo = births ? { last: births.last_step, step: snapshot.step } : null;
      view.update(layer, { scaling: options.scaling, initialWeights: initial, initText: options.initText?.(layer.index) ?? "",
                           births: births?.births ?? null, step: snapshot.step });
    }
  }

  /* A short fingerprint of the pixels drawn for one layer's filters (tests count visibly different redraws). */
  fingerprint(layerIndex) {
    const view = this.views.get(layerIndex);
    if (!view) return null;
    let hash = 2166136261;
    for (const { canvas } of view.cards) {
      if (!canvas.width) continue;
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length; i++) hash = Math.imul(hash ^ data[i], 16777619) >>> 0;
    }
    return hash.toString(16);
  }
}

/*
 * Feature maps of one probe image for every conv layer. onPick(layerIndex,
 * filter, y, x) is called when a map pixel is clicked.
 */
export class FeatureMapBoard {
  constructor(container, onPick) {
    this.container = container;
    this.onPick = onPick;
    this.key = null;
  }

  clear() {
    this.container.replaceChildren();
    this.key = null;
  }

  update(snapshot, probe) {
    const layers = snapshot.layers.filter((l) => l.type === "conv" && Array.isArray(l.feature_maps));
    if (!layers.length) return false;
    const p = Math.min(probe, layers[0].feature_maps.length - 1);
    const key = layers.map((l) => `${l.index}:${l.feature_maps[p].length}x${l.feature_maps[p][0].length}x${l.feature_maps[p][0][0].length}`).join(",");
    if (key !== this.key) this._build(layers, p, key);
    for (const layer of layers) {
      const maps = layer.feature_maps[p];
      const canvases = this.canvases.get(layer.index);
      maps.forEach((map, f) => {
        const scale = maxAbs(map);
        drawDiverging(canvases[f], map, scale);
        canvases[f].title = `${layerName(layer)}, filter ${f}: click a pixel to step through its convolution`;
      });
    }
    return true;
  }

  _build(layers, p, key) {
    this.container.replaceChildren();
    this.key = key;
    this.canvases = new Map();
    for (const layer of layers) {
      const row = el("div", "fmap-layer");
      row.dataset.layer = String(layer.index);
      row.append(el("div", "fmap-title", layerName(layer)));
      const grid = el("div", "fmap-grid");
      const maps = layer.feature_maps[p];
      const h = maps[0].length, w = maps[0][0].length;
      const cssPx = Math.max(2, Math.min(4, Math.floor(72 / Math.max(h, w))));
      // whole rows: as many maps to a row as divide the count and fit the panel
      const fit = Math.max(1, Math.floor(((this.container.clientWidth || 560) + 4) / (w * cssPx + 4)));
      let perRow = Math.min(maps.length, fit);
      while (perRow > 1 && maps.length % perRow !== 0) perRow -= 1;
      grid.style.gridTemplateColumns = `repeat(${perRow}, max-content)`;
      const list = maps.map((_, f) => {
        const canvas = el("canvas", "fmap");
        canvas.dataset.layer = String(layer.index);
        canvas.dataset.filter = String(f);
        canvas.style.width = `${w * cssPx}px`;
        canvas.style.height = `${h * cssPx}px`;
        canvas.addEventListener("click", (event) => {
          const rect = canvas.getBoundingClientRect();
          const x = Math.min(w - 1, Math.floor((event.clientX - rect.left) / rect.width * w));
          const y = Math.min(h - 1, Math.floor((event.clientY - rect.top) / rect.height * h));
          this.onPick(layer.index, f, y, x);
        });
        grid.append(canvas);
        return canvas;
      });
      this.canvases.set(layer.index, list);
      row.append(grid);
      this.container.append(row);
    }
  }
}
