/*
 * Run actions on the history bar: fork the open run from the snapshot on
 * screen (with a new learning rate, optimizer or step budget), download the
 * run as a zip (config, metrics CSV, every snapshot, torch-loadable weights),
 * the evolution GIF of a layer's filters, and the filter grid on screen as a PNG.
 * The step and layer are read when a button is used, so they always match
 * what the learner is looking at.
 */

import { bounded, el, labelled as label } from "./dom.js";

/* The step on screen: the history slider's step, or the newest snapshot when following live. */
export function shownStep(state) {
  if (state.mode === "history" && state.historyStep != null) return state.historyStep;
  return state.steps.length ? state.steps[state.steps.length - 1] : null;
}

/* The conv layer indices of the open run's newest snapshot. */
function convIndices(state) {
  const layers = state.latestSnapshot?.layers ?? [];
  return layers.filter((l) => l.type === "conv").map((l) => l.index);
}

/*
 * context: {api, state, defaults (GET /api/defaults: limits), openRun(id), refreshRunList(), showError(message)}.
 * Fills #run-actions and keeps it in step with the open run.
 */
export function mountForkExport(context) {
  const { api, state } = context;
  const host = document.getElementById("run-actions");
  if (!host) return { refresh() {} };
  host.classList.add("fork-export");

  const layerSelect = el("select", { id: "export-layer", title: "conv layer for the GIF and PNG" });
  const png = el("a", { id: "btn-filters-png", class: "button", download: "" }, "PNG");
  png.title = "download the filter grid on screen as a PNG";
  const gif = el("a", { id: "btn-gif", class: "button", download: "" }, "GIF");
  gif.title = "download an animated GIF of this layer's filters over the whole run";
  const zip = el("a", { id: "btn-export", class: "button", download: "" }, "zip");
  zip.title = "download config, metrics CSV, every snapshot and weights.npz (loads into torch.nn.Sequential)";
  const forkButton = el("button", { type: "button", id: "btn-fork" }, "fork…");
  forkButton.title = "start a new run from the weights of the snapshot on screen";
  host.append(forkButton, layerSelect, png, gif, zip);

  const form = el("form", { id: "fork-form", class: "fork-form" });
  form.hidden = true;
  const stepText = el("span", { class: "fork-step" });
  const optimizer = el("select", { id: "fork-optimizer" });
  for (const [value, label] of [["", "same optimizer"], ["sgd", "SGD + momentum"], ["adam", "Adam"]]) {
    optimizer.append(el("option", { value }, label));
  }
  const limits = context.defaults?.limits ?? {};
  const lr = bounded(el("input", { id: "fork-lr", type: "number", step: "any", placeholder: "same lr" }), limits.lr);
  const steps = bounded(el("input", { id: "fork-steps", type: "number", step: "1", placeholder: "same steps" }), limits.steps);
  const go = el("button", { type: "submit", class: "primary", id: "btn-fork-start" }, "start fork");
  const cancel = el("button", { type: "button", class: "ghost" }, "cancel");
  const error = el("span", { class: "field-error", id: "fork-error" });
  form.append(stepText, label("optimizer ", optimizer), label("learning rate ", lr), label("total steps ", steps), go, cancel, error);
  host.parentElement.after(form);

  function runId() {
    return state.run?.id ?? null;
  }

  function selectedLayer() {
    const value = layerSelect.value;
    return value === "" ? null : Number(value);
  }

  function refresh() {
    const layers = convIndices(state);
    const current = layerSelect.value;
    const keys = layers.join(",");
    if (layerSelect.dataset.keys !== keys) {
      const labels = new Map((state.latestSnapshot?.layers ?? []).map((l) => [l.index, l.label]));
      layerSelect.replaceChildren(...layers.map((i) => el("option", { value: String(i) }, labels.get(i) ?? `layer ${i}`)));
      layerSelect.dataset.keys = keys;
      if (layers.map(String).includes(current)) layerSelect.value = current;
    }
    const enabled = runId() !== null && shownStep(state) !== null;
    for (const node of [png, gif, zip, forkButton]) node.classList.toggle("disabled", !enabled);
    forkButton.disabled = !enabled;
  }

  function pointLinks() {
    const id = runId();
    const step = shownStep(state);
    if (id === null || step === null) return false;
    const path = `/api/runs/${encodeURIComponent(id)}`;
    const layer = selectedLayer();
    const layerQuery = layer === null ? "" : `layer=${layer}`;
    png.href = `${path}/snapshots/${step}/filters.png?${layerQuery}`;
    png.download = `kernelscope-${id}-step${step}${layer === null ? "" : `-layer${layer}`}.png`;
    gif.href = `${path}/evolution.gif?${layerQuery}`;
    gif.download = `kernelscope-${id}${layer === null ? "" : `-layer${layer}`}.gif`;
    zip.href = `${path}/export`;
    zip.download = `kernelscope-${id}.zip`;
    return true;
  }

  for (const link of [png, gif, zip]) {
    link.addEventListener("click", (event) => { if (!pointLinks()) event.preventDefault(); });
  }

  forkButton.addEventListener("click", () => {
    const step = shownStep(state);
    if (runId() === null || step === null) return;
    form.dataset.step = String(step);
    stepText.textContent = `fork run ${runId()} from step ${step}:`;
    error.textContent = "";
    form.hidden = !form.hidden;
  });
  cancel.addEventListener("click", () => { form.hidden = true; });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { step: Number(form.dataset.step) };
    const opt = {};
    if (optimizer.value) opt.name = optimizer.value;
    if (lr.value !== "") opt.lr = Number(lr.value);
    if (Object.keys(opt).length) body.optimizer = opt;
    if (steps.value !== "") body.steps = Number(steps.value);
    go.disabled = true;
    try {
      const child = await api.postJSON(`/api/runs/${encodeURIComponent(runId())}/fork`, body);
      form.hidden = true;
      await context.openRun(child.id);
      context.refreshRunList?.();
    } catch (failure) {
      error.textContent = failure.message;
    } finally {
      go.disabled = false;
    }
  });

  refresh();
  // main.js announces each change of the run or step on screen; the slow poll catches new layers.
  document.addEventListener("kernelscope:view", refresh);
  setInterval(refresh, 2000);
  return { refresh };
}
