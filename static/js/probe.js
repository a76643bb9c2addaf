/*
 * The init probe view: no training, just one look at a network at its
 * initialization. POST /api/init-probe pushes unit-variance noise through a
 * plain stack of conv + ReLU layers (or a preset) for several inits, and this
 * view plots the std of each layer's output and of the gradient reaching it
 * against depth on a log scale, with the theory as dashed lines (Glorot: the
 * variance is multiplied by fan_in·Var(W)/2 at each ReLU layer, so it halves;
 * He: constant). The server's one-line summaries say in words what the
 * learner sees. The depth-stall demo then trains the 20-layer "deep" preset
 * with He, Glorot and N(0, 0.01²) side by side (a comparison).
 */

import { logTicks, positiveExtent, withZeroStrip, zeroTrace } from "./charts.js";
import { bounded, el, labelled } from "./dom.js";

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];

const PROBE_INITS = [
  { label: "he_normal", init: "he_normal", checked: true },
  { label: "glorot_uniform", init: "glorot_uniform", checked: true },
  { label: "normal(std=0.01)", init: { name: "normal", std: 0.01 }, checked: true },
  { label: "lecun_normal", init: "lecun_normal", checked: false },
  { label: "normal(std=0.1)", init: { name: "normal", std: 0.1 }, checked: false },
];

/* A whole-number field whose bounds are the served limits of POST /api/init-probe's field (GET /api/defaults). */
function numberInput(id, value, bound) {
  return bounded(el("input", { id, type: "number", value: String(value), step: "1" }), bound);
}

/*
 * context: {api, defaults (GET /api/defaults: its demos.depth_stall is the depth-stall demo),
 *           startComparison(base, inits, name), showError(message)}. Fills #probe-view.
 */
export function mountProbe(context) {
  const { api } = context;
  const root = document.getElementById("probe-view");
  if (!root) return;
  const debug = (window.__kernelscope ??= {});

  const intro = el("div", { class: "probe-intro" });
  intro.innerHTML = "<p>Before any training: how big are the signals at each layer? Each layer multiplies the "
    + "variance of its input by <b>fan_in · Var(W)</b>, and a ReLU halves it. He (Var(W) = 2/fan_in) makes the product "
    + "exactly 1, so the std stays flat however deep the network is. Glorot (Var(W) = 2/(fan_in+fan_out)) gives 1/2 per "
    + "ReLU layer: after 30 layers the std is 2<sup>−15</sup> of the input's. A fixed N(0, 0.01²) is far smaller still, and the "
    + "signal is gone after a few layers — so is the gradient, and nothing learns.</p>"
    + "<p class=\"legend\">Solid: measured, averaged over a few random networks (one network fluctuates around the theory, "
    + "more so when it is narrow). Dashed: theory. 1×1 kernels by default (the law is the same for any kernel size: "
    + "fan_in counts kh·kw); 3×3 adds the zero-padded borders, which lose a little signal at every layer.</p>";

  const form = el("form", { class: "probe-form panel", id: "probe-form" });
  const limits = context.defaults?.limits ?? {};
  const depth = numberInput("probe-depth", 30, limits["probe.depth"]);
  const width = numberInput("probe-width", 128, limits["probe.width"]);
  const kernel = el("select", { id: "probe-kernel" });
  kernel.append(el("option", { value: "1" }, "1×1"), el("option", { value: "3" }, "3×3"));
  const activation = el("select", { id: "probe-activation" });
  for (const name of ["relu", "tanh", "linear"]) activation.append(el("option", { value: name }, name));
  const inits = el("span", { class: "probe-inits" });
  PROBE_INITS.forEach((entry, i) => {
    const box = el("input", { type: "checkbox", "data-index": String(i) });
    box.checked = entry.checked;
    const label = el("label", {});
    label.append(box, document.createTextNode(` ${entry.label}`));
    inits.append(label);
  });
  const run = el("button", { type: "submit", class: "primary", id: "btn-probe" }, "probe");
  const status = el("span", { class: "field-error", id: "probe-status" });
  form.append(labelled("depth ", depth), labelled("width ", width), labelled("kernel ", kernel),
    labelled("activation ", activation), inits, run, status);

  const charts = el("div", { class: "probe-charts" });
  const actDiv = el("div", { class: "chart", id: "probe-act" });
  const gradDiv = el("div", { class: "chart", id: "probe-grad" });
  charts.append(actDiv, gradDiv);
  const summary = el("ul", { class: "probe-summary", id: "probe-summary" });

  const demo = el("div", { class: "probe-demo panel" });
  const demoButton = el("button", { type: "button", id: "btn-depth-demo" }, "train the deep preset with each init");
  const demoText = el("p", { class: "legend" });
  // what the demo is, as the server states it (GET /api/defaults demos.depth_stall); its figures are the
  // losses the runs on screen measure, shown on their cards in the comparison view — none are quoted here
  const stall = context.defaults?.demos?.depth_stall;
  const name = (init) => (typeof init === "string" ? init : `${init.name}(${Object.entries(init).filter(([k]) => k !== "name").map(([k, v]) => `${k}=${v}`).join(", ")})`);
  demoText.textContent = stall
    ? `The depth-stall demo (after He et al. 2015, Fig. 3, small): the ${stall.base.model} preset, `
      + `${stall.base.optimizer?.name ?? "its optimizer"}, ${stall.base.steps} steps, once with each of ${stall.inits.map(name).join(", ")}. `
      + "It opens in the comparison view, where each card shows the loss its run measured, at its first step and now: "
      + "watch which init's loss moves away from chance and which stalls."
    : "The server did not say what the depth-stall demo is.";
  demo.append(demoButton, demoText);
  root.append(intro, form, charts, summary, demo);

  function plot(div, title, result, key, theoryKey) {
    const traces = [];
    result.results.forEach((entry, i) => {
      const color = PALETTE[i % PALETTE.length];
      const layers = entry.layers.map((_, j) => j + 1);
      // a std of exactly 0 (zero weights) is drawn apart, on the bottom edge: a log scale has no 0
      const positive = (v) => (v > 0 ? v : null);
      traces.push({ x: layers, y: entry.layers.map((row) => positive(row[key])), name: entry.label,
                    mode: "lines+markers", type: "scatter", line: { color, width: 2 }, marker: { size: 4 } });
      const zeros = layers.filter((_, j) => entry.layers[j][key] === 0);
      if (zeros.length) traces.push(zeroTrace(zeros, entry.label, color));
      const theory = theoryKey ? entry[theoryKey] : null;
      if (theory) {
        traces.push({ x: layers, y: theory.map(positive), name: `${entry.label} theory`,
                      mode: "lines", type: "scatter", line: { color, width: 1.5, dash: "dash" } });
      }
    });
    const layout = {
      title: { text: title, font: { size: 13 } },
      margin: { l: 56, r: 10, t: 30, b: 96 },
      xaxis: { title: { text: "layer (depth)" } },
      yaxis: { type: "log", exponentformat: "e", dtick: logTicks(positiveExtent(traces.flatMap((t) => (t.meta ? [] : t.y)))) },
      // at the bottom of the whole chart, under the axis title (up to three rows of entries)
      legend: { orientation: "h", yref: "container", y: 0, yanchor: "bottom", font: { size: 10 } },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff",
      font: { family: "system-ui, sans-serif", size: 11, color: "#1f2937" },
    };
    window.Plotly.react(div, traces, traces.some((t) => t.meta === "zeros") ? withZeroStrip(layout) : layout,
      { displayModeBar: false, responsive: true });
  }

  async function probe() {
    status.textContent = "";
    const chosen = [...inits.querySelectorAll("input:checked")].map((box) => PROBE_INITS[Number(box.dataset.index)].init);
    if (!chosen.length) { status.textContent = "inits: pick at least one"; return; }
    const body = { depth: Number(depth.value), width: Number(width.value), kernel: Number(kernel.value),
                   activation: activation.value, size: Number(kernel.value) === 1 ? 4 : 16, repeats: 2, inits: chosen };
    run.disabled = true;
    status.textContent = "probing…";
    try {
      const result = await api.postJSON("/api/init-probe", body);
      status.textContent = "";
      plot(actDiv, "activation std per layer at init (log)", result, "act_std", "theory_act_std");
      plot(gradDiv, "gradient std per layer at init (log)", result, "grad_std", null);
      summary.replaceChildren(...result.results.map((entry) => el("li", {}, entry.summary)));
      debug.probe = result;
    } catch (error) {
      status.textContent = error.message;
    } finally {
      run.disabled = false;
    }
  }

  // a 3×3 stack costs 9 times more per layer: narrower by default, so the probe stays quick
  kernel.addEventListener("change", () => { width.value = kernel.value === "1" ? "128" : "16"; });
  form.addEventListener("submit", (event) => { event.preventDefault(); probe(); });
  demoButton.addEventListener("click", async () => {
    demoButton.disabled = true;
    try {
      const depthStall = context.defaults?.demos?.depth_stall;
      if (!depthStall) throw new Error("demos: the server did not say what the depth-stall demo is");
      await context.startComparison(depthStall.base, depthStall.inits, "depth-stall demo");
    } catch (error) {
      status.textContent = error.message;
    } finally {
      demoButton.disabled = false;
    }
  });
  let probedOnce = false;
  document.querySelector('#view-tabs [data-view="probe"]')?.addEventListener("click", () => {
    if (!probedOnce) { probedOnce = true; probe(); return; }
    requestAnimationFrame(() => { for (const div of [actDiv, gradDiv]) if (div.data) window.Plotly.Plots.resize(div); });
  });
}
