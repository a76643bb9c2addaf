/*
 * The kernel editor: draw a k×k kernel by clicking cells (click: +1 → −1 → 0;
 * values in between by typing) or pick X, plus, Sobel x/y or Laplacian, then
 * either use it as the init of the first filters of a conv layer in the setup
 * form (the spec's per-layer {"name": "kernel", "kernels": [...]} init), or put
 * it into the open run while it trains or is paused (PUT
 * /api/runs/{id}/kernels/{layer}/{filter}), optionally frozen. Like the
 * engine's named kernels, the grid is scaled to unit L2 norm (times `scale`)
 * before use, so a seeded filter starts at the size of its neighbours.
 * The learner then watches whether the seeded detector persists, drifts or is relearned.
 */

import { el, labelled as label } from "./dom.js";
import { divergingColor } from "./filters.js";

const PATTERNS = {
  x: (k) => grid(k, (i, j) => (i === j || i + j === k - 1 ? 1 : -1)),
  plus: (k) => grid(k, (i, j) => (i === (k >> 1) || j === (k >> 1) ? 1 : -1)),
  sobel_x: (k) => grid(k, (i, j) => smoothing(k)[i] * derivative(k)[j]),
  sobel_y: (k) => grid(k, (i, j) => derivative(k)[i] * smoothing(k)[j]),
  laplacian: (k) => (k === 3 ? [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    : grid(k, (i, j) => (i === (k >> 1) && j === (k >> 1) ? -(k * k - 1) : 1))),
};
export const PATTERN_NAMES = Object.keys(PATTERNS);

function grid(k, f) {
  return Array.from({ length: k }, (_, i) => Array.from({ length: k }, (_, j) => f(i, j)));
}

/* Binomial smoothing [1, 2, 1] and central difference [-1, 0, 1], at any odd size. */
function smoothing(k) {
  let row = [1];
  for (let n = 1; n < k; n++) row = [...row, 0].map((v, i) => v + (i > 0 ? row[i - 1] : 0));
  return row;
}

function derivative(k) {
  return Array.from({ length: k }, (_, j) => j - (k >> 1));
}

/* The grid made zero-mean where the pattern is ±1 (X and plus), then unit L2 norm times scale. */
export function normalised(values, scale = 1) {
  const flat = values.flat();
  const norm = Math.sqrt(flat.reduce((a, v) => a + v * v, 0));
  if (!(norm > 0)) return values.map((row) => row.map(() => 0));
  return values.map((row) => row.map((v) => (v / norm) * scale));
}

export function pattern(name, k) {
  const values = PATTERNS[name](k);
  if (name === "x" || name === "plus") {
    // balance the ±1 pattern: the positive cells and the negative cells each sum to ±1
    const pos = values.flat().filter((v) => v > 0).length;
    const neg = values.flat().filter((v) => v < 0).length;
    return values.map((row) => row.map((v) => (v > 0 ? 1 / pos : neg ? -1 / neg : 0)));
  }
  return values;
}

/*
 * context: {api, state, applyLayerInit(layerIndex, init), convLayersOfForm() -> [{index, filters, kernel}],
 *           showError(message)}. Fills #kernel-editor.
 */
export function mountKernelEditor(context) {
  const { api, state } = context;
  const root = document.getElementById("kernel-editor");
  if (!root) return;
  // the editor starts at the kernel size of the first conv layer of the setup form's model
  const formLayers = () => context.convLayersOfForm?.() ?? [];
  const nameOf = (index) => state.formLabels?.[index] ?? `layer ${index}`;
  const SIZES = [3, 5, 7];
  // until the server has described the form's model, the smallest size the editor offers
  let size = formLayers()[0]?.kernel?.[0] ?? SIZES[0];
  let sizePicked = false;   // the learner chose a size: the form's model no longer sets it
  let values = pattern("x", size);

  const intro = el("p", { class: "legend" });
  intro.textContent = "Draw a kernel (click a cell: +1, −1, 0) or pick a classic one. Use it as the starting "
    + "value of chosen filters, or put it into the run on screen — frozen, to keep it exactly as drawn, or free, "
    + "to see whether training keeps it, bends it, or replaces it.";
  const sizeSelect = el("select", { id: "ke-size" });
  for (const k of SIZES) sizeSelect.append(el("option", { value: String(k) }, `${k}×${k}`));
  sizeSelect.value = String(size);
  const presets = el("div", { class: "ke-presets" });
  for (const name of PATTERN_NAMES) {
    const button = el("button", { type: "button", "data-pattern": name }, name.replace("_", " "));
    button.addEventListener("click", () => { values = pattern(name, size); draw(); });
    presets.append(button);
  }
  const clear = el("button", { type: "button", "data-pattern": "clear" }, "clear");
  clear.addEventListener("click", () => { values = grid(size, () => 0); draw(); });
  presets.append(clear);
  const cells = el("div", { class: "ke-grid", id: "ke-grid" });
  const scale = el("input", { id: "ke-scale", type: "number", step: "any", min: "0", value: "1" });
  scale.title = "the kernel is scaled to unit L2 norm, times this";

  // -- use as init of the first filters of a layer in the setup form
  const initLayer = el("select", { id: "ke-init-layer" });
  const initCount = el("input", { id: "ke-init-count", type: "number", min: "1", step: "1", value: "1" });
  const useInit = el("button", { type: "button", id: "ke-use-init" }, "use as init");
  const initWhat = el("p", { class: "ke-note", id: "ke-init-what" });
  const initNote = el("p", { class: "ke-note ke-confirm", id: "ke-init-note" });

  // -- put into the open run
  const runLayer = el("select", { id: "ke-run-layer" });
  const runFilter = el("input", { id: "ke-run-filter", type: "number", min: "0", step: "1", value: "0" });
  const frozen = el("input", { id: "ke-frozen", type: "checkbox" });
  const put = el("button", { type: "button", id: "ke-put" }, "put into run");
  const putNote = el("span", { class: "ke-note", id: "ke-put-note" });

  const initBox = el("fieldset", { class: "ke-box" });
  initBox.append(el("legend", {}, "as the init of a new run"), label("layer ", initLayer),
    label("first filters ", initCount), useInit, initWhat, initNote);
  const runBox = el("fieldset", { class: "ke-box" });
  const frozenLabel = el("label", {}, "");
  frozenLabel.append(frozen, document.createTextNode(" frozen"));
  runBox.append(el("legend", {}, "into the run on screen"), label("layer ", runLayer),
    label("filter ", runFilter), frozenLabel, put, putNote);
  root.append(intro, label("size ", sizeSelect), presets, cells, label("scale ", scale), initBox, runBox);

  let shownRun = null;
  function setSize(k) {
    size = k;
    sizeSelect.value = String(k);
    values = pattern("x", size);
    draw();
  }
  sizeSelect.addEventListener("change", () => { sizePicked = true; setSize(Number(sizeSelect.value)); });
  // the editor starts at the size of the form's first conv layer, once the server has described it
  document.addEventListener("kernelscope:form-layers", (event) => {
    const first = event.detail[0]?.kernel?.[0];
    if (!sizePicked && first && first !== size && SIZES.includes(first)) setSize(first);
  });

  /* The filter views' colormap (blue < 0 < red), with white digits on the dark ends. */
  function paintCell(cell, v, peak) {
    const t = peak > 0 ? v / peak : 0;
    const [r, g, b] = divergingColor(t);
    cell.style.background = `rgb(${r}, ${g}, ${b})`;
    cell.style.color = Math.abs(t) > 0.6 ? "#ffffff" : "#111827";
  }

  function draw() {
    const peak = Math.max(1e-12, ...values.flat().map(Math.abs));
    cells.style.gridTemplateColumns = `repeat(${size}, 38px)`;
    cells.replaceChildren();
    values.forEach((row, i) => row.forEach((v, j) => {
      const cell = el("button", { type: "button", class: "ke-cell", "data-row": String(i), "data-col": String(j) },
        Number(v.toFixed(2)).toString());
      paintCell(cell, v, peak);
      cell.title = "click: +1 → −1 → 0; right-click: type a value";
      cell.addEventListener("click", () => {
        // cycle through the grid's own positive and negative values (±1 on a blank grid), so a
        // clicked cell matches the preset it edits instead of mixing ±1 into 0.2/−0.25
        const up = Math.max(0, ...values.flat()) || 1;
        const down = Math.max(0, ...values.flat().map((u) => -u)) || up;
        values[i][j] = v > 0 ? -down : v < 0 ? 0 : up;
        draw();
      });
      cell.addEventListener("contextmenu", (event) => {
        event.preventDefault();
        const typed = window.prompt("value of this cell", String(values[i][j]));
        if (typed !== null && Number.isFinite(Number(typed))) { values[i][j] = Number(typed); draw(); }
      });
      cells.append(cell);
    }));
    syncLayers();
  }

  function scaled() {
    const s = Number(scale.value);
    return normalised(values, Number.isFinite(s) && s > 0 ? s : 1);
  }

  /* Layer choices: conv layers of the form's spec (for the init) and of the open run (to put into). */
  function syncLayers() {
    // a newly opened run none of whose conv layers has this size: start at its first conv layer's size
    const runConvs = (state.latestSnapshot?.layers ?? []).filter((l) => l.type === "conv");
    if (state.run?.id && state.run.id !== shownRun && runConvs.length) {
      shownRun = state.run.id;
      if (!runConvs.some((l) => l.shape?.[2] === size)) { setSize(runConvs[0].shape[2]); return; }
    }
    const fitting = formLayers().filter((l) => l.kernel[0] === size && l.kernel[1] === size);
    fill(initLayer, fitting.map((l) => [l.index, `${nameOf(l.index)} (${l.filters} filters, ${l.kernel.join("×")})`]));
    useInit.disabled = fitting.length === 0;
    const target = fitting.find((l) => String(l.index) === initLayer.value);
    const count = Math.max(1, Math.floor(Number(initCount.value) || 1));
    initWhat.textContent = target
      ? `${nameOf(target.index)}: filter${count > 1 ? `s 0–${Math.min(count, target.filters) - 1}` : " 0"} of its ${target.filters} start as this kernel`
      : `no ${size}×${size} conv layer in the setup form's model (its layers: ${formLayers().map((l) => `${nameOf(l.index)} ${l.kernel.join("×")}`).join(", ")})`;
    const runLayers = (state.latestSnapshot?.layers ?? []).filter((l) => l.type === "conv" && l.shape?.[2] === size);
    fill(runLayer, runLayers.map((l) => [l.index, `${l.label ?? `layer ${l.index}`} (${l.shape[0]} filters)`]));
    const active = ["running", "paused"].includes(state.run?.status);
    put.disabled = !active || runLayers.length === 0;
    if (!putNote.dataset.sticky) {
      putNote.textContent = !state.run ? "open a run first"
        : !active ? `the run is ${state.run.status}; kernels go into running or paused runs`
        : runLayers.length ? "" : `the run has no ${size}×${size} conv layer`;
    }
  }

  function fill(select, options) {
    const keys = options.map(([v, text]) => `${v}:${text}`).join(",");
    if (select.dataset.keys === keys) return;
    const current = select.value;
    select.replaceChildren(...options.map(([value, text]) => el("option", { value: String(value) }, text)));
    select.dataset.keys = keys;
    if (options.some(([v]) => String(v) === current)) select.value = current;
  }

  useInit.addEventListener("click", () => {
    const layer = Number(initLayer.value);
    const count = Math.max(1, Math.floor(Number(initCount.value) || 1));
    // the rest of the layer starts from the run's default init (a random one: kernel cannot be its own
    // fallback; then the kernel init's own fallback as GET /api/inits states it)
    const ownFallback = state.inits.find((i) => i.name === "kernel")?.params?.fallback;
    const base = state.config.init?.name === "kernel" || !state.config.init
      ? (typeof ownFallback === "string" ? { name: ownFallback } : ownFallback) : state.config.init;
    const fallback = Object.keys(base).length === 1 ? base.name : base;
    const kernel = scaled();
    context.applyLayerInit(layer, { name: "kernel", kernels: Array.from({ length: count }, () => kernel), fallback });
    const target = formLayers().find((l) => l.index === layer);
    const n = Math.min(count, target?.filters ?? count);
    // stays until the next "use as init": the form redrawing must not wipe it
    initNote.textContent = `✓ set: ${nameOf(layer)} filter${n > 1 ? `s 0–${n - 1}` : " 0"} start as your kernel, `
      + `the other ${Math.max(0, (target?.filters ?? n) - n)} from ${base.name}. Start training to use it.`;
  });

  put.addEventListener("click", async () => {
    const id = state.run?.id;
    if (!id) return;
    const layer = Number(runLayer.value);
    const filter = Math.max(0, Math.floor(Number(runFilter.value) || 0));
    putNote.dataset.sticky = "1";
    putNote.textContent = "…";
    try {
      const answer = await api.putJSON(`/api/runs/${encodeURIComponent(id)}/kernels/${layer}/${filter}`,
        { kernel: scaled(), frozen: frozen.checked });
      putNote.textContent = `layer ${answer.layer}, filter ${answer.filter} set at step ${answer.step}`
        + (answer.frozen ? " and frozen" : "");
    } catch (error) {
      putNote.textContent = error.message;
    }
    setTimeout(() => { delete putNote.dataset.sticky; }, 4000);
  });

  initLayer.addEventListener("change", syncLayers);
  initCount.addEventListener("input", syncLayers);
  draw();
  setInterval(syncLayers, 1000);
}
