/*
 * Wiring of the page, and nothing else: load what the server states (presets,
 * inits, datasets, defaults), read the URL hash into state, then mount each
 * view and hand every view the few functions of the others it calls.
 *
 *   state.js        the data: config, view options, run on screen (no DOM)
 *   dom.js          $ and el, the error banner
 *   setup-form.js   the "Set up a run" form
 *   run-view.js     the "Live & history" view of one run (uses filters.js,
 *                   run-charts.js, stepthrough.js)
 *   run-list.js     the sidebar's list of runs
 *   compare.js, probe.js, kernel-editor.js, fork-export.js   teaching views
 *   explain-panel.js, layer-summary.js, lessons.js   explain a filter, layer
 *                   summaries over time, guided lessons (issue 20)
 *   join.js         joining a class, its assignment (the wall is wall.js on /class/{id})
 *
 * window.__kernelscope exposes what was drawn, for the browser tests and for
 * curious learners in the console.
 */

import * as api from "./api.js";
import { mountCompare } from "./compare.js";
import { showError } from "./dom.js";
import { mountExplainPanel } from "./explain-panel.js";
import { mountLayerSummaries } from "./layer-summary.js";
import { mountLessons } from "./lessons.js";
import { mountForkExport } from "./fork-export.js";
import { mountJoin } from "./join.js";
import { mountKernelEditor } from "./kernel-editor.js";
import { mountProbe } from "./probe.js";
import { mountRunList } from "./run-list.js";
import { mountRunView } from "./run-view.js";
import { mountSetupForm } from "./setup-form.js";
import { configToHash, createState, hashToConfig, pageDefaults, toRunRequest } from "./state.js";

const state = createState();
const debug = {
  state,
  drawn: null,            // {step, layers: {index: weight}, symmetry} of the filters on screen
  features: null,         // {step, probe} of the feature maps on screen
  stepThrough: null,      // what the step-through panel shows
  framesDrawn: 0,         // filter redraws
  framesDropped: 0,       // snapshots skipped because a newer one arrived before drawing
  snapshotsReceived: 0,   // snapshot events from the stream
  paceWaits: 0,           // player ticks that waited for the snapshot on screen to arrive
  liveMapsAsked: null,    // set to [] to record when the feature maps of a live snapshot were asked for
  liveLimits: null,       // the live view's draw and feature-map rates (run-view.js)
  frameLog: null,         // set to [] to record {step, mode, at, conv1 (fingerprint of its drawn pixels)} per redraw
  featureFramesDrawn: 0,  // feature-map redraws
  drawMs: { filters: [], featureMaps: [] },   // time each redraw took
  charts: null,
};
window.__kernelscope = debug;

function writeHash() {
  const hash = configToHash(state.config, state.view);
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

/* Show one tab's view; document receives "kernelscope:tab" {view} (the explain drawer belongs to
   the live view's filters and closes on another tab). */
function showView(name) {
  for (const tab of document.querySelectorAll("#view-tabs [data-view]")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const panel of document.querySelectorAll("[data-view-panel]")) panel.hidden = panel.dataset.viewPanel !== name;
  document.dispatchEvent(new CustomEvent("kernelscope:tab", { detail: { view: name } }));
}

/* What the server states, into state; a part that cannot be read is named in the banner. */
async function loadServerFacts() {
  const [presets, inits, datasets, defaults] = await Promise.allSettled(
    [api.fetchPresets(), api.fetchInits(), api.fetchDatasets(), api.fetchDefaults()]);
  const failed = (name, result) => result.status === "rejected" && showError(`${name}: ${result.reason.message}`);
  [["presets", presets], ["inits", inits], ["datasets", datasets], ["defaults", defaults]].forEach(([n, r]) => failed(n, r));
  if (presets.status === "fulfilled") state.presets = presets.value.specs;
  if (inits.status === "fulfilled") {
    state.inits = inits.value.inits;
    state.namedKernels = inits.value.namedKernels ?? [];
  }
  if (datasets.status === "fulfilled") {
    state.datasets = datasets.value.names;
    state.datasetPathRule = datasets.value.pathRule;
    state.datasetsWithPath = datasets.value.withPath;
  }
  state.served = defaults.value ?? null;
  state.defaults = pageDefaults(state.served, presets.value?.optimizers ?? null);
  Object.assign(state, hashToConfig(location.hash, state.defaults));
}

async function main() {
  await loadServerFacts();
  // views call each other through these late-bound functions
  const views = {};
  const shared = {
    api, state, debug, writeHash, showView, showError,
    openRun: (id, options) => views.run.openRun(id, options),
    refreshRunList: () => views.list.refresh(),
    markCurrentRun: () => views.list.markCurrent(),
    updateProgress: (step, options) => views.run.updateProgress(step, options),
    loadRunConfig: (config) => views.form.loadRunConfig(config),
    askForToken: () => views.form.askForToken(),
    defaults: state.served,
  };
  views.form = mountSetupForm(shared);
  views.run = mountRunView(shared);
  views.list = mountRunList(shared);
  for (const tab of document.querySelectorAll("#view-tabs [data-view]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  views.form.render();
  writeHash();

  const compare = mountCompare({ ...shared, baseConfig: () => toRunRequest(state.config, state.presets) });
  mountProbe({ ...shared, startComparison: compare.start });
  mountKernelEditor({
    ...shared,
    convLayersOfForm: () => state.formLayers ?? [],   // as the server described the form's model
    applyLayerInit: (layer, init) => { state.config.layerInits[String(layer)] = init; views.form.changed(); },
  });
  mountForkExport(shared);
  mountLayerSummaries(shared);
  const explain = mountExplainPanel(shared);
  mountLessons({ ...shared, explain });
  mountJoin(shared);  // classroom: the learner's join box and assignment

  // on a narrow screen the run comes first and the setup form folds away while a run is on screen
  const narrow = window.matchMedia("(max-width: 820px)");
  if (narrow.matches && state.view.run) document.getElementById("setup-details").open = false;

  // the list keeps its statuses live: every 2 s while a run is active, every 10 s otherwise
  await views.list.refresh();
  const pollList = async () => {
    if (!document.hidden) await views.list.refresh();
    setTimeout(pollList, views.list.anyActive() ? 2000 : 10000);
  };
  setTimeout(pollList, 2000);
  if (state.view.run) views.run.openRun(state.view.run);

  // a link pasted into this tab opens its run and configuration without a reload
  window.addEventListener("hashchange", () => {
    const wanted = hashToConfig(location.hash, state.defaults);
    const current = configToHash(state.config, state.view);
    if (location.hash === current) return;
    Object.assign(state.config, wanted.config);
    const runChanged = wanted.view.run !== state.view.run;
    Object.assign(state.view, wanted.view);
    views.form.render();
    if (wanted.view.run && runChanged) views.run.openRun(wanted.view.run);
    else writeHash();
  });
  document.body.dataset.ready = "true";
}

main();
