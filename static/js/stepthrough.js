/*
 * Convolution step-through: for one output pixel of a feature map, the input
 * patch under the kernel, the kernel, their elementwise product and the sum
 * that (plus the bias) gives the pixel, as in the classic animation of an X
 * kernel sliding over an image. convolvePixel() is the arithmetic (plain
 * loops, PyTorch conv2d semantics: cross-correlation, zero padding, stride);
 * StepThrough draws it and can slide the window across the image.
 */

import { divergingColor, drawGray, maxAbs, paintTiles } from "./filters.js";
import { convLayers, pair } from "./state.js";

/*
 * input (C, H, W), kernel (C, kh, kw), bias: number, stride, padding, and the
 * output position (y, x) -> {patch, product (both C×kh×kw), sum, value}.
 * Positions of the patch outside the input (padding) read as 0.
 */
/* The number of decimals the numbers of a nested array are stored with (the most any of them
   needs, up to 12; null for only zeros): the precision is read from the data, not assumed. */
export function storedDecimals(nested) {
  let most = null;   // null: only zeros, which rounding leaves exact
  for (const v of [nested].flat(Infinity)) {
    if (!Number.isFinite(v) || v === 0) continue;
    most ??= 0;
    let d = most;
    while (d < 12 && Math.abs(Math.round(v * 10 ** d) / 10 ** d - v) > 1e-12 * Math.max(1, Math.abs(v))) d += 1;
    most = d;
  }
  return most;
}

/*
 * How far the page's sum may lie from the stored map value when both are right: the map's own
 * rounding, plus the rounding of the stored inputs and weights the page multiplies (each carried
 * through the sum by the other factor's magnitude; ReLU and pooling do not widen it), plus the
 * server's float32 arithmetic.
 */
export function agreementTolerance(ctx, r) {
  const half = (d) => (d === null ? 0 : 0.5 * 10 ** -d);
  const w = [ctx.kernel].flat(Infinity), x = [r.patch].flat(Infinity);
  const sumW = w.reduce((a, v) => a + Math.abs(v), 0), sumX = x.reduce((a, v) => a + Math.abs(v), 0);
  const sumWX = w.reduce((a, v, i) => a + Math.abs(v * x[i]), 0);
  return half(storedDecimals(ctx.stored)) + sumW * half(storedDecimals(ctx.input)) + sumX * half(storedDecimals(ctx.kernel))
    + half(storedDecimals([ctx.bias])) + 1e-6 * (sumWX + Math.abs(ctx.bias)) + 1e-9;
}

export function convolvePixel(input, kernel, bias, stride, padding, y, x) {
  const C = kernel.length, kh = kernel[0].length, kw = kernel[0][0].length;
  const H = input[0].length, W = input[0][0].length;
  const patch = [], product = [];
  let sum = 0;
  for (let c = 0; c < C; c++) {
    const pRows = [], qRows = [];
    for (let i = 0; i < kh; i++) {
      const pRow = [], qRow = [];
      for (let j = 0; j < kw; j++) {
        const yy = y * stride - padding + i, xx = x * stride - padding + j;
        const v = yy >= 0 && yy < H && xx >= 0 && xx < W ? input[c][yy][xx] : 0;
        const q = v * kernel[c][i][j];
        pRow.push(v);
        qRow.push(q);
        sum += q;
      }
      pRows.push(pRow);
      qRows.push(qRow);
    }
    patch.push(pRows);
    product.push(qRows);
  }
  return { patch, product, sum, value: sum + bias };
}

/* Layers the page can replay between two conv layers, on (C, H, W) maps; their settings are
   read from the normalised spec (GET /api/runs/{id} model_spec), which states every one. */
const ELEMENTWISE = {
  relu: () => (v) => Math.max(0, v),
  leaky_relu: (layer) => (v) => (v > 0 ? v : layer.slope * v),
  tanh: () => Math.tanh,
  sigmoid: () => (v) => 1 / (1 + Math.exp(-v)),
};

/* A pool of a normalised spec: `size` n or [h, w]; `stride` null means windows side by side
   (the stride is the size: the engine's meaning of null, stated in its spec). */
function pool(maps, layer, reduce) {
  const [sh, sw] = pair(layer.size);
  const [th, tw] = layer.stride == null ? [sh, sw] : pair(layer.stride);
  return maps.map((map) => {
    const outH = Math.floor((map.length - sh) / th) + 1;
    const outW = Math.floor((map[0].length - sw) / tw) + 1;
    return Array.from({ length: outH }, (_, y) => Array.from({ length: outW }, (_, x) => {
      const window = [];
      for (let i = 0; i < sh; i++) for (let j = 0; j < sw; j++) window.push(map[y * th + i][x * tw + j]);
      return reduce(window);
    }));
  });
}

/*
 * The input (C, H, W) that conv layer `layerIndex` saw for probe `probe`:
 * the probe image for the first layer; for a deeper layer, the previous conv
 * layer's feature maps replayed through the activations and pooling in
 * between. null when a layer in between is of another kind.
 */
export function layerInput(spec, snapshot, layerIndex, probe) {
  if (!spec || !snapshot) return null;
  const previous = convLayers(spec).filter((l) => l.index < layerIndex).pop();
  let maps;
  let from;
  if (!previous) {
    maps = snapshot.probes?.[probe];
    from = 0;
  } else {
    maps = snapshot.layers.find((l) => l.index === previous.index)?.feature_maps?.[probe];
    from = previous.index + 1;
  }
  if (!maps) return null;
  for (let i = from; i < layerIndex; i++) {
    const layer = spec.layers[i];
    if (ELEMENTWISE[layer.type]) {
      const f = ELEMENTWISE[layer.type](layer);
      maps = maps.map((m) => m.map((row) => row.map(f)));
    } else if (layer.type === "maxpool") {
      maps = pool(maps, layer, (w) => Math.max(...w));
    } else if (layer.type === "avgpool") {
      maps = pool(maps, layer, (w) => w.reduce((a, b) => a + b, 0) / w.length);
    } else {
      return null;
    }
    if (!maps) return null;
  }
  return maps;
}

/* Output size of a conv along one axis (PyTorch formula). */
export function outputSize(size, kernel, stride, padding) {
  return Math.floor((size + 2 * padding - kernel) / stride) + 1;
}

const fmt = (v) => {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3).replace(/^(-?)0\./, "$1.");
};

function numberGrid(title, grid, scale) {
  const box = document.createElement("div");
  box.className = "st-grid-box";
  const h = document.createElement("div");
  h.className = "st-grid-title";
  h.textContent = title;
  box.append(h);
  const table = document.createElement("table");
  table.className = "st-grid";
  for (const row of grid) {
    const tr = document.createElement("tr");
    for (const v of row) {
      const td = document.createElement("td");
      const [r, g, b] = divergingColor(scale > 0 ? v / scale : 0);
      td.style.background = `rgb(${r},${g},${b})`;
      td.style.color = Math.abs(scale > 0 ? v / scale : 0) > 0.6 ? "#fff" : "#111827";
      td.textContent = fmt(v);
      tr.append(td);
    }
    table.append(tr);
  }
  box.append(table);
  return box;
}

export class StepThrough {
  /* panel: the element to fill; onChange(result) is told what is shown (for tests and the debug hook). */
  constructor(panel, onChange) {
    this.panel = panel;
    this.onChange = onChange ?? (() => {});
    this.timer = null;
    this.context = null;
  }

  /*
   * Show pixel (y, x) of filter `filter` of a conv layer. ctx: {input (C,H,W),
   * kernel (C,kh,kw), bias, stride, padding, stored (the feature map, H'×W'),
   * layerIndex, filter, probe, step, probeLabel}.
   */
  open(ctx, y, x) {
    this.stop();
    this.context = ctx;
    const kh = ctx.kernel[0].length, kw = ctx.kernel[0][0].length;
    this.outH = outputSize(ctx.input[0].length, kh, ctx.stride, ctx.padding);
    this.outW = outputSize(ctx.input[0][0].length, kw, ctx.stride, ctx.padding);
    // the output as the sliding window has built it so far, in reading order up to (y, x)
    this.built = new Array(this.outH).fill(null).map(() => new Array(this.outW).fill(0));
    for (let index = 0; index < y * this.outW + x; index++) {
      const yy = Math.floor(index / this.outW), xx = index % this.outW;
      this.built[yy][xx] = convolvePixel(ctx.input, ctx.kernel, ctx.bias, ctx.stride, ctx.padding, yy, xx).value;
    }
    this.panel.hidden = false;
    this.show(y, x);
  }

  explainUnavailable(message) {
    this.stop();
    this.context = null;
    this.panel.hidden = false;
    this.panel.replaceChildren();
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = message;
    this.panel.append(this._head(), p);
  }

  _head() {
    const head = document.createElement("div");
    head.className = "st-head";
    const title = document.createElement("h3");
    title.textContent = "Convolution step-through";
    const close = document.createElement("button");
    close.type = "button";
    close.className = "ghost";
    close.id = "st-close";
    close.textContent = "close";
    close.addEventListener("click", () => this.close());
    head.append(title, close);
    return head;
  }

  close() {
    this.stop();
    this.panel.hidden = true;
    this.panel.replaceChildren();
  }

  show(y, x) {
    const ctx = this.context;
    this.y = y;
    this.x = x;
    const r = convolvePixel(ctx.input, ctx.kernel, ctx.bias, ctx.stride, ctx.padding, y, x);
    this.built[y][x] = r.value;
    const stored = ctx.stored?.[y]?.[x];
    const kh = ctx.kernel[0].length, kw = ctx.kernel[0][0].length;

    this.panel.replaceChildren(this._head());
    const where = document.createElement("p");
    where.className = "st-where";
    where.textContent = `step ${ctx.step} · probe ${ctx.probe}${ctx.probeLabel ? ` (${ctx.probeLabel})` : ""} · ${ctx.layerLabel ?? `layer ${ctx.layerIndex}`}, filter ${ctx.filter} · output pixel (row ${y}, col ${x}) · stride ${ctx.stride}, padding ${ctx.padding}`;
    this.panel.append(where);

    const row = document.createElement("div");
    row.className = "st-row";
    // input with the window drawn on top
    const inputBox = document.createElement("div");
    inputBox.className = "st-grid-box";
    const inputTitle = document.createElement("div");
    inputTitle.className = "st-grid-title";
    inputTitle.textContent = "input";
    const wrap = document.createElement("div");
    wrap.className = "st-input-wrap";
    const H = ctx.input[0].length, W = ctx.input[0][0].length;
    const px = Math.max(3, Math.floor(150 / Math.max(H, W)));
    const inputCanvas = document.createElement("canvas");
    inputCanvas.className = "st-input";
    drawGray(inputCanvas, ctx.input[0]);
    inputCanvas.style.width = `${W * px}px`;
    inputCanvas.style.height = `${H * px}px`;
    const windowBox = document.createElement("div");
    windowBox.className = "st-window";
    windowBox.style.left = `${(x * ctx.stride - ctx.padding) * px}px`;
    windowBox.style.top = `${(y * ctx.stride - ctx.padding) * px}px`;
    windowBox.style.width = `${kw * px}px`;
    windowBox.style.height = `${kh * px}px`;
    wrap.append(inputCanvas, windowBox);
    inputBox.append(inputTitle, wrap);
    row.append(inputBox);

    const patchScale = maxAbs(r.patch), kernelScale = maxAbs(ctx.kernel), productScale = maxAbs(r.product);
    const channels = ctx.kernel.length;
    const shown = Math.min(channels, 4);
    for (let c = 0; c < shown; c++) {
      const suffix = channels > 1 ? ` (channel ${c})` : "";
      const group = document.createElement("div");
      group.className = "st-group";
      group.append(numberGrid(`patch${suffix}`, r.patch[c], patchScale), this._op("×"),
        numberGrid(`kernel${suffix}`, ctx.kernel[c], kernelScale), this._op("="),
        numberGrid(`product${suffix}`, r.product[c], productScale));
      row.append(group);
    }
    this.panel.append(row);
    if (channels > shown) {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = `${channels - shown} more input channels are included in the sum but not drawn.`;
      this.panel.append(note);
    }

    const eq = document.createElement("p");
    eq.className = "st-equation";
    eq.innerHTML = "";
    const parts = [
      ["Σ products", r.sum], ["+ bias", ctx.bias], ["= pixel", r.value],
    ];
    for (const [label, value] of parts) {
      const span = document.createElement("span");
      span.className = "st-term";
      span.innerHTML = `<small>${label}</small><b>${value.toPrecision(5)}</b>`;
      eq.append(span);
    }
    if (stored != null) {
      const span = document.createElement("span");
      span.className = "st-term stored";
      // compared at the precision the map, the inputs and the weights are stored with
      const tolerance = agreementTolerance(ctx, r);
      const agrees = Math.abs(stored - r.value) <= tolerance;
      eq.dataset.tolerance = String(tolerance);
      eq.dataset.agrees = String(agrees);
      // shown as stored (its rounded digits only), not padded out to look as precise as the sum
      span.innerHTML = `<small>feature map holds (rounded)</small><b>${String(Number(stored))}</b>`;
      span.title = agrees
        ? `matches the feature map the server computed, within ±${tolerance.toPrecision(2)}: the rounding of the stored map, inputs and weights`
        : "differs from the server's feature map by more than its rounding";
      span.classList.toggle("mismatch", !agrees);
      eq.append(span);
    }
    eq.id = "st-equation";
    eq.dataset.sum = String(r.sum);
    eq.dataset.value = String(r.value);
    this.panel.append(eq);

    // the output map filling in as the window slides
    const outBox = document.createElement("div");
    outBox.className = "st-controls";
    const outCanvas = document.createElement("canvas");
    outCanvas.className = "st-output";
    const opx = Math.max(2, Math.floor(96 / Math.max(this.outH, this.outW)));
    outCanvas.style.width = `${this.outW * opx}px`;
    outCanvas.style.height = `${this.outH * opx}px`;
    const scale = ctx.stored ? maxAbs(ctx.stored) : maxAbs(this.built);
    paintTiles(outCanvas, [this.built], (v) => divergingColor(scale > 0 ? v / scale : 0));
    const buttons = document.createElement("div");
    buttons.className = "st-buttons";
    const mk = (text, id, fn) => {
      const b = document.createElement("button");
      b.type = "button";
      b.id = id;
      b.textContent = text;
      b.addEventListener("click", fn);
      buttons.append(b);
      return b;
    };
    mk("◀", "st-prev", () => { this.stop(); this.move(-1); });
    mk(this.timer ? "pause" : "slide ▶", "st-play", () => {
      if (this.timer) { this.stop(); this.show(this.y, this.x); } else { this.play(); }
    });
    mk("▶", "st-next", () => { this.stop(); this.move(1); });
    const caption = document.createElement("span");
    caption.className = "note";
    caption.textContent = "output so far (slide the window to fill it)";
    outBox.append(buttons, outCanvas, caption);
    this.panel.append(outBox);

    this.onChange({
      layer: ctx.layerIndex, filter: ctx.filter, probe: ctx.probe, step: ctx.step, y, x,
      patch: r.patch, product: r.product, sum: r.sum, bias: ctx.bias, value: r.value, stored,
    });
  }

  _op(symbol) {
    const s = document.createElement("span");
    s.className = "st-op";
    s.textContent = symbol;
    return s;
  }

  move(delta) {
    let index = this.y * this.outW + this.x + delta;
    const total = this.outH * this.outW;
    index = ((index % total) + total) % total;
    this.show(Math.floor(index / this.outW), index % this.outW);
  }

  play() {
    if (!this.context) return;
    this.timer = setInterval(() => {
      if (this.y === this.outH - 1 && this.x === this.outW - 1) { this.stop(); this.show(this.y, this.x); return; }
      this.move(1);
    }, 120);
    this.show(this.y, this.x);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
