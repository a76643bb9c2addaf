/*
 * The sidebar's list of runs (GET /api/runs, newest first): id, status badge,
 * model · init · progress. Clicking a run opens it with its config in the form.
 * The open run's line is marked "current".
 */

import * as api from "./api.js";
import { $, el, showError } from "./dom.js";
import { initSummary } from "./state.js";

/* context: {state, openRun(id, {loadConfig}), updateProgress(step, {now})}. Returns {refresh(), markCurrent()}. */
export function mountRunList(context) {
  const { state } = context;
  const list = $("run-list");

  function markCurrent() {
    for (const li of list.querySelectorAll("li")) li.classList.toggle("current", li.dataset.run === String(state.view.run));
  }

  function item(run) {
    const li = el("li");
    li.dataset.run = String(run.id);
    const button = el("button", { type: "button" });
    const initName = initSummary(run.config);
    const model = typeof run.config?.model === "string" ? run.config.model : "own spec";
    const progress = el("span", "run-progress", `${run.step ?? 0}/${run.steps ?? run.config?.steps ?? "?"}`);
    const meta = el("span", "run-meta");
    meta.append(`${model} · ${initName} · `, progress, run.meta?.origin ? ` · ${run.meta.origin}` : "");
    button.append(el("span", "run-name", `${run.id}`), el("span", `badge status-${run.status}`, run.status), meta);
    button.addEventListener("click", () => context.openRun(run.id, { loadConfig: true }));
    li.append(button);
    return li;
  }

  let active = false;

  async function refresh() {
    let runs;
    try { runs = await api.listRuns(); } catch (error) { showError(`runs: ${error.message}`); return; }
    active = runs.some((run) => ["queued", "running", "paused"].includes(run.status));
    list.replaceChildren();
    if (!runs.length) list.append(el("li", "note", "No runs yet. Runs trained from the CLI appear here too."));
    for (const run of [...runs].sort((a, b) => (b.created ?? 0) - (a.created ?? 0))) {
      list.append(item(run));
      // the newer of list and stream, on the line just drawn and in the header alike
      if (state.run && String(state.run.id) === String(run.id)) context.updateProgress(run.step, { now: true });
    }
    markCurrent();
  }

  return { refresh, markCurrent, anyActive: () => active };
}
