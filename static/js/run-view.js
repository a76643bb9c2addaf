/*
 * The run view ("Live & history"): one run on screen. It opens a run (REST
 * history, then its event stream), keeps the run's snapshot steps, and shows
 * either the newest snapshot (live) or the one the slider or replay picks
 * (history): the filter grid, the feature maps of a probe image, the
 * step-through of one map pixel, the charts, the header with status,
 * progress and pause/resume/stop.
 *
 * The data lives in `state` (state.js: run, steps, mode, historyStep, latest
 * and initial snapshot); what is on screen lives in `shown` below. Live
 * snapshots are coalesced to the newest, drawn at most LIVE_DRAWS_PER_SECOND
 * times a second while the filters are on screen, and their feature maps asked for at most every
 * LIVE_MAPS_INTERVAL_MS while they are on screen; snapshot fetches keep one request in flight. So the
 * page drops frames rather than falling behind, and a page left open on a run
 * that trains hundreds of steps a second does not take the cores it trains on:
 * every map request makes the server decode a stored snapshot, and every draw
 * costs the browser a frame. To watch every snapshot, a learner picks a pace.
 * `debug` (window.__kernelscope) records what was drawn.
 */

import * as api from "./api.js";
import { $, el, setFill, setText, showError, watchOnScreen } from "./dom.js";
import { FeatureMapBoard, FilterBoard, drawGray } from "./filters.js";
import { autoStepAxisIsLog, runStepSpan } from "./charts.js";
import { RunCharts, statLayers } from "./run-charts.js";
import { convLayers } from "./state.js";
import { StepThrough, layerInput } from "./stepthrough.js";
import { Throttle } from "./throttle.js";

export const ACTIVE = new Set(["queued", "running", "paused"]);
const LIVE_DRAWS_PER_SECOND = 12;
const LIVE_MAPS_INTERVAL_MS = 500;

function recordTime(list, ms) {
  list.push(ms);
  if (list.length > 500) list.shift();
}

/*
 * context: {state, debug, writeHash(), loadRunConfig(config), refreshRunList(),
 *           askForToken()}. Returns {openRun(id, {loadConfig}), updateProgress(step, {now}), charts}.
 */
export function mountRunView(context) {
  const { state, debug } = context;
  debug.liveLimits = { drawsPerSecond: LIVE_DRAWS_PER_SECOND, mapsIntervalMs: LIVE_MAPS_INTERVAL_MS };
  const shown = {
    closeEvents: null,   // closes the open run's event stream
    generation: 0,       // bumps when another run is opened; stale async work checks it
    pendingLive: null,   // newest live snapshot waiting for the next live frame
    headerDirty: false,  // the progress or the stored steps changed since the last live frame
    resumes: 0,          // resumes asked for: a resumed run drops its snapshots past its checkpoint
    stepsStale: false,   // the stored steps are read anew once the resumed run is running (a
                         // distributed worker removes the ones past the checkpoint only then)
    fmapSnapshot: null,  // the full snapshot whose feature maps are on screen
    mapsWanted: null,    // {run, step, generation} the maps should show (asked for while on screen)
    snapshot: null,      // the snapshot whose filters are on screen
    player: null,        // {pace, catchUp, timer} while stored snapshots play
    stepsListedUpTo: -1, // newest step of the last stored-steps list read (GET .../snapshots)
    stepsAt: -Infinity,  // when that list was last asked for
    stepsBusy: false,
    replacePending: false,  // a replacing read of the stored steps waits for the one under way
    births: new Map(),   // conv layer index -> GET .../layers/{layer}/births
    birthsAt: -Infinity,
    birthsBusy: false,
    initTexts: {},       // layer index -> the run's init law and figure (POST /api/inits/describe)
    viewKey: null,       // what "kernelscope:view" last announced
  };

  const charts = new RunCharts();
  debug.charts = charts.charts;
  const filterBoard = new FilterBoard($("filter-board"));
  const fmapBoard = new FeatureMapBoard($("fmap-board"), pickPixel);
  const stepThrough = new StepThrough($("stepthrough"), (result) => { debug.stepThrough = result; });

  // ---------------------------------------------------------------- drawing

  /* The open run's model as the engine normalised it (GET /api/runs/{id} model_spec; null when
     only the dataset's files could tell its shape): every kernel, stride and slope stated there. */
  function runSpec() {
    return state.run?.model_spec ?? null;
  }

  /* The init law and figures of the open run's layers, as the engine states them. */
  async function describeRunInits(config, generation) {
    try {
      const { layers } = await api.describeInits({ model: config.model, init: config.init, dataset: config.dataset });
      if (generation !== shown.generation) return;
      shown.initTexts = Object.fromEntries(layers.map((l) => [l.index, `init · ${l.text}`]));
      charts.setLayerLabels(layers);   // the std charts name every layer as the engine does (dense1, not "dense 7")
      redrawCurrent();
    } catch { /* the cards then show no init line */ }
  }

  function drawFilters(snapshot) {
    const started = performance.now();
    shown.snapshot = snapshot;
    filterBoard.update(snapshot, {
      scaling: state.view.scaling,
      initialSnapshot: state.initialSnapshot,
      births: shown.births,
      initText: (index) => shown.initTexts[index] ?? "",
    });
    const layers = {};
    for (const l of snapshot.layers) if (l.type === "conv" && l.weight) layers[l.index] = l.weight;
    const symmetry = Object.fromEntries(snapshot.layers.filter((l) => l.type === "conv").map((l) => [l.index, l.symmetry]));
    debug.drawn = { step: snapshot.step, layers, symmetry };
    if (debug.frameLog) debug.frameLog.push({ step: snapshot.step, mode: state.mode, at: performance.now(),
                                              conv1: filterBoard.fingerprint(snapshot.layers.find((l) => l.type === "conv")?.index) });
    setText($("filters-step"), `step ${snapshot.step}`);
    if (!shown.births.size) refreshBirths();
    debug.framesDrawn += 1;
    recordTime(debug.drawMs.filters, performance.now() - started);
  }

  /* Redraw the snapshot on screen (its births, init texts or scale changed). Live, with the
     filters and maps off screen, it waits like a new snapshot: the first live frame back draws it. */
  function redrawCurrent() {
    if (!shown.snapshot) return;
    if (state.mode === "live" && !liveBoardsOnScreen()) shown.pendingLive ??= shown.snapshot;
    else drawFilters(shown.snapshot);
  }

  /* The births of every conv layer of the open run, asked of the server (at most every few
     seconds while it trains; the route reads only the snapshots stored since it was last asked). */
  async function refreshBirths(force = false) {
    const run = state.view.run, generation = shown.generation;
    const snapshot = state.latestSnapshot ?? shown.snapshot;
    if (!run || !snapshot || shown.birthsBusy) return;
    if (!force && performance.now() - shown.birthsAt < 3000) return;
    shown.birthsBusy = true;
    shown.birthsAt = performance.now();
    try {
      for (const layer of snapshot.layers.filter((l) => l.type === "conv")) {
        const answer = await api.getBirths(run, layer.index);
        if (generation !== shown.generation) return;
        shown.births.set(layer.index, answer);
      }
      redrawCurrent();
    } catch { /* the cards then show no birth line */ } finally {
      shown.birthsBusy = false;
    }
  }

  function drawFeatureMaps(snapshot) {
    const started = performance.now();
    if (!fmapBoard.update(snapshot, state.view.probe)) return;
    shown.fmapSnapshot = snapshot;
    debug.features = { step: snapshot.step, probe: state.view.probe };
    debug.featureFramesDrawn += 1;
    $("fmaps-step").textContent = `step ${snapshot.step}`;
    buildProbePicker(snapshot);
    recordTime(debug.drawMs.featureMaps, performance.now() - started);
  }

  function buildProbePicker(snapshot) {
    const picker = $("probe-picker");
    const probes = snapshot.probes || [];
    if (picker.childElementCount === probes.length) {
      [...picker.children].forEach((b, i) => b.classList.toggle("active", i === state.view.probe));
      return;
    }
    picker.replaceChildren();
    probes.forEach((image, i) => {
      const button = el("button", { type: "button", class: "probe", "data-probe": String(i),
        title: `probe ${i}${snapshot.probe_labels?.[i] ? `: ${snapshot.probe_labels[i]}` : ""}` });
      const canvas = el("canvas");
      drawGray(canvas, image[0]);
      button.append(canvas);
      button.classList.toggle("active", i === state.view.probe);
      button.addEventListener("click", () => {
        state.view.probe = i;
        context.writeHash();
        if (shown.fmapSnapshot) drawFeatureMaps(shown.fmapSnapshot);
      });
      picker.append(button);
    });
  }

  function pickPixel(layerIndex, filter, y, x) {
    const snapshot = shown.fmapSnapshot;
    if (!snapshot) return;
    const layer = snapshot.layers.find((l) => l.index === layerIndex);
    const spec = runSpec();
    const conv = convLayers(spec).find((l) => l.index === layerIndex);
    const p = Math.min(state.view.probe, (snapshot.probes || []).length - 1);
    const input = layerInput(spec, snapshot, layerIndex, p);
    // the step-through slides one square step: a layer whose stride or padding differs by axis is not shown
    const square = (v) => (Array.isArray(v) ? (v[0] === v[1] ? v[0] : null) : v);
    const stride = conv ? square(conv.stride) : null, padding = conv ? square(conv.padding) : null;
    if (!input || !conv || stride === null || padding === null) {
      const first = snapshot.layers.find((l) => l.type === "conv");
      stepThrough.explainUnavailable(
        `Step-through of ${layer?.label ?? `layer ${layerIndex}`} needs the input of that layer. conv1 reads the probe image; ` +
        "a deeper conv layer reads the previous one's maps after its activation and pooling, which the page " +
        "rebuilds only when the layers in between are activations or pooling. Pick a map of " +
        `${first?.label ?? "conv1"} to step through.`);
      return;
    }
    stepThrough.open({
      input, kernel: layer.weight[filter], bias: Number(layer.bias?.[filter] ?? 0),
      stride, padding, stored: layer.feature_maps[p][filter],
      layerIndex, layerLabel: layer.label, filter, probe: p, step: snapshot.step, probeLabel: snapshot.probe_labels?.[p],
    }, y, x);
    $("stepthrough").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  // ---------------------------------------------------------------- history

  /*
   * Two fetchers, each with one request in flight and only the newest wanted step next: the
   * filters of a history step (a light snapshot, no feature maps), so the player's pace is
   * not held up by the maps, and the feature maps (the full snapshot), which may skip steps.
   */
  /* Every snapshot this view reads goes through here, so a resume can wait for the reads under
     way: the resumed run removes its snapshots past its checkpoint, and a read that reached the
     server after that would be a 404. */
  const reading = new Set();
  function readSnapshot(run, step, featureMaps) {
    const read = api.getSnapshot(run, step, featureMaps);
    reading.add(read);
    const done = () => reading.delete(read);
    read.then(done, done);
    return read;
  }

  /* Light snapshots by step, fetched ahead of the player (a few at a time) so a tick draws at once. */
  const light = new Map();   // "run:step" -> promise of the snapshot without feature maps
  function lightSnapshot(run, step) {
    const key = `${run}:${step}`;
    if (!light.has(key)) {
      if (light.size > 60) light.delete(light.keys().next().value);
      const promise = readSnapshot(run, step, false);
      promise.catch(() => light.delete(key));
      light.set(key, promise);
    }
    return light.get(key);
  }
  function prefetchAfter(index, count = 6) {
    for (const step of state.steps.slice(index + 1, index + 1 + count)) lightSnapshot(state.view.run, step);
  }

  const filterFetcher = new api.LatestOnlyFetcher(
    ({ run, step }) => lightSnapshot(run, step),
    ({ run, step, generation }, snapshot) => {
      if (generation !== shown.generation || run !== state.view.run) return;
      if (state.mode === "history" && step === state.historyStep) drawFilters(snapshot);
    },
    (key, error) => showError(`snapshot ${key.step}: ${error.message}`),
  );
  const snapshotFetcher = new api.LatestOnlyFetcher(
    ({ run, step }) => readSnapshot(run, step, true),
    ({ run, generation }, snapshot) => {
      if (generation !== shown.generation || run !== state.view.run) return;
      drawFeatureMaps(snapshot);
    },
    (key, error) => showError(`snapshot ${key.step}: ${error.message}`),
  );

  /* The snapshot of `step` for the filters (in history: light, without maps) and for the feature
     maps. The maps (a whole snapshot, which the server decodes by recomputing them) are asked for
     only while they are on screen, else when they come on screen: played at 20 snapshots a
     second with the maps scrolled away, their reads took a third of a core from the run. */
  function wantSnapshot(step) {
    const key = { run: state.view.run, step, generation: shown.generation };
    if (state.mode === "history") {
      const before = filterFetcher.dropped;
      filterFetcher.want(key);
      debug.framesDropped += filterFetcher.dropped - before;
    }
    shown.mapsWanted = key;
    if (mapsOnScreen.visible) snapshotFetcher.want(key);
  }

  /*
   * Tell other page modules (comparison, fork, export...) what is on screen:
   * document receives "kernelscope:view" with {run, step, mode, playing (stored snapshots play
   * at a pace: the step moves by itself, as live), status, logSteps (whether the
   * step axes are log), span (the steps they span), newest (the newest stored step)} whenever
   * one of them changes.
   */
  function announceView() {
    const step = state.mode === "live" ? state.steps[state.steps.length - 1] ?? null : state.historyStep;
    const detail = { run: state.view.run, step, mode: state.mode, playing: Boolean(shown.player),
                     status: state.run?.status ?? null,
                     logSteps: Boolean(shown.logSteps), span: shown.span ?? null,
                     newest: state.steps[state.steps.length - 1] ?? null };
    const key = JSON.stringify(detail);
    if (key === shown.viewKey) return;
    shown.viewKey = key;
    document.dispatchEvent(new CustomEvent("kernelscope:view", { detail }));
  }

  function updateSlider() {
    const slider = $("history-slider");
    slider.max = String(Math.max(0, state.steps.length - 1));
    if (state.mode === "live") slider.value = slider.max;
    const step = state.mode === "live" ? state.steps[state.steps.length - 1] : state.historyStep;
    setText($("history-step"), step == null ? "no snapshots yet"
      : `step ${step} · snapshot ${Number(slider.value) + 1} of ${state.steps.length}`);
    const behind = state.mode === "live" ? 0 : state.steps.length - 1 - Number(slider.value);
    setText($("history-behind"), behind > 0 && ACTIVE.has(state.run?.status) ? `${behind} behind live` : "");
    $("btn-live").classList.toggle("active", state.mode === "live");
    // "auto" follows the step on screen (the newest one live, the slider's or the player's in history)
    const total = state.run?.steps ?? state.run?.config?.steps ?? 0;
    const reached = Math.max(state.run?.step ?? 0, state.steps[state.steps.length - 1] ?? 0);
    shown.span = total ? runStepSpan(reached, total, !ACTIVE.has(state.run?.status)) : null;
    charts.setStepSpan(shown.span);
    shown.logSteps = charts.setStepAxis(state.view.stepAxis, step ?? state.run?.step ?? 0, total);
    // what auto picks for this step, said on its button whichever axis is chosen
    setText($("step-axis-auto"), `axis: auto (${autoStepAxisIsLog(step ?? state.run?.step ?? 0, total) ? "log" : "linear"})`);
    announceView();
  }

  function showHistoryIndex(index) {
    if (!state.steps.length) return;
    state.mode = "history";
    state.historyStep = state.steps[Math.max(0, Math.min(index, state.steps.length - 1))];
    $("history-slider").value = String(state.steps.indexOf(state.historyStep));
    charts.markStep(state.historyStep);
    updateSlider();
    wantSnapshot(state.historyStep);
  }

  function goLive() {
    stopPlaying();
    state.mode = "live";
    state.historyStep = null;
    charts.markStep(null);
    updateSlider();
    if (state.latestSnapshot) {
      drawFilters(state.latestSnapshot);
      wantSnapshot(state.latestSnapshot.step);
    } else if (state.steps.length) {
      const last = state.steps[state.steps.length - 1];
      readSnapshot(state.view.run, last, false).then((s) => {
        if (state.mode === "live" && s.step === last) { state.latestSnapshot = s; drawFilters(s); }
      }).catch((e) => showError(e.message));
      wantSnapshot(last);
    }
  }

  /*
   * The player: stored snapshots one after the other at `pace` snapshots per
   * second, while the run trains on. A tick whose previous snapshot is still on
   * its way waits for it (counted in debug.paceWaits) rather than skipping one,
   * so every stored snapshot is drawn. At the newest snapshot of a training run
   * it waits for the next; at the end of an ended run it stops. `catchUp` plays at
   * the fastest pace and hands over to live once it reaches the newest snapshot.
   * stopPlaying says nothing to the page's other modules: its callers show a step, or go live,
   * next, and announce that view (updateSlider). pause() stops on the step on screen and
   * announces that it no longer moves by itself.
   */
  function stopPlaying() {
    if (shown.player) clearInterval(shown.player.timer);
    shown.player = null;
    $("btn-play").textContent = "▶ play";
    $("btn-play").classList.remove("active");
    $("btn-catch-up").classList.remove("active");
  }

  function pause() {
    stopPlaying();
    announceView();
  }

  function startPlaying(pace, { fromStart = false, catchUp = false } = {}) {
    if (!state.steps.length) return;
    stopPlaying();
    let index = state.mode === "history" && !fromStart ? state.steps.indexOf(state.historyStep) : 0;
    if (index < 0 || (index >= state.steps.length - 1 && !ACTIVE.has(state.run?.status))) index = 0;
    shown.player = { pace, catchUp, timer: null };
    $("btn-play").textContent = "❚❚ pause";
    $("btn-play").classList.add("active");
    $("btn-catch-up").classList.toggle("active", catchUp);
    showHistoryIndex(index);
    shown.player.timer = setInterval(playTick, 1000 / pace);
  }

  function playTick() {
    if (filterFetcher.busy) { debug.paceWaits += 1; return; }   // the frame on screen first
    const at = state.steps.indexOf(state.historyStep);
    // a step known only from the event stream may follow stored ones the stream coalesced away
    // (a busy viewer gets the newest snapshot event only): read the stored steps before playing it
    if (at + 1 < state.steps.length && state.steps[at + 1] > shown.stepsListedUpTo) {
      debug.paceWaits += 1;
      refreshSteps();
      return;
    }
    if (at >= state.steps.length - 1) {
      if (shown.player?.catchUp) { setPace("live"); return; }
      if (!ACTIVE.has(state.run?.status)) pause();
      return;   // a training run: wait here for its next snapshot
    }
    showHistoryIndex(at + 1);
    prefetchAfter(at + 1);
  }

  /* The pace control: "live" follows the run; a number plays stored snapshots at that pace. */
  function setPace(value) {
    state.view.pace = value === "live" ? "live" : Number(value);
    $("pace").value = String(state.view.pace);
    context.writeHash();
    if (state.view.pace === "live") goLive();
    else if (shown.player) startPlaying(state.view.pace);
    else startPlaying(state.view.pace, { fromStart: state.mode === "live" });
  }

  // ---------------------------------------------------------------- live stream

  /* One live frame at most LIVE_DRAWS_PER_SECOND times a second draws what the stream changed
     since the last: the header's progress and the slider (headerDirty), and the newest snapshot
     (pendingLive). The stream brings tens of events a second, and every frame with a DOM change
     costs the browser a style, layout, paint and commit pass on the cores the run trains on. */
  const liveFrame = new Throttle(() => {
    if (shown.headerDirty) {
      shown.headerDirty = false;
      drawProgress();
      updateSlider();
    }
    const s = shown.pendingLive;
    if (s && state.mode === "live" && !liveBoardsOnScreen()) return;   // drawn when they come on screen
    shown.pendingLive = null;
    if (s && state.mode === "live") {
      drawFilters(s);
      liveMaps.schedule();
    }
  }, 1000 / LIVE_DRAWS_PER_SECOND);
  /* The filters off screen (scrolled away, or another tab of the page open) keep their newest
     snapshot waiting instead of painting canvases no one sees, unless the maps are on screen:
     the maps drawn live are those of the snapshot the filters show (at 420 px the charts stand
     between the two, so a learner watching the maps has the filters far above). */
  const liveBoardsOnScreen = () => filtersOnScreen.visible || mapsOnScreen.visible;
  function wakeLiveFrame(visible) {
    if (visible && shown.pendingLive) liveFrame.schedule();
  }
  const filtersOnScreen = watchOnScreen($("filter-board"), wakeLiveFrame);

  function scheduleLiveDraw(snapshot) {
    if (shown.pendingLive && shown.pendingLive !== shown.snapshot) debug.framesDropped += 1;   // not a waiting redraw
    shown.pendingLive = snapshot;
    liveFrame.schedule();
  }

  function scheduleHeader() {
    shown.headerDirty = true;
    liveFrame.schedule();
  }

  /* The feature maps of the snapshot drawn live, asked for at most every LIVE_MAPS_INTERVAL_MS;
     the last one asked for is always the last one drawn (a trailing request). Not the highest
     step seen: a resumed run writes its snapshots after its checkpoint again, and the ones the
     page saw before may not be stored at the moment. */
  const liveMaps = new Throttle((at) => {
    if (state.mode !== "live" || !shown.snapshot || !state.steps.includes(shown.snapshot.step)) return;
    if (!mapsOnScreen.visible) return;   // asked for when they come on screen
    if (debug.liveMapsAsked) debug.liveMapsAsked.push(at);
    wantSnapshot(shown.snapshot.step);
  }, LIVE_MAPS_INTERVAL_MS, { frame: false });
  /* Live maps scrolled off screen are not asked for: each costs the server a stored snapshot's
     decoding and the browser a redraw, on the cores the run trains on. */
  const mapsOnScreen = watchOnScreen($("fmap-board"), (visible) => {
    wakeLiveFrame(visible);
    if (!visible) return;
    if (state.mode === "live") liveMaps.schedule();
    else if (shown.mapsWanted?.generation === shown.generation) snapshotFetcher.want(shown.mapsWanted);
  });

  /*
   * The run's stored steps, read again (GET .../snapshots, a list of numbers): snapshot events
   * coalesce to the newest for a viewer that falls behind, so the stream alone may miss stored
   * steps. One request at a time; `stepsListedUpTo` is the newest step such a list held.
   */
  async function refreshSteps({ replace = false } = {}) {
    const run = state.view.run, generation = shown.generation;
    if (!run) return;
    if (shown.stepsBusy) {   // a list asked for before a resume may hold removed steps: replace after it
      if (replace) shown.replacePending = true;
      return;
    }
    shown.stepsBusy = true;
    shown.stepsAt = performance.now();
    try {
      const steps = await api.getSnapshotSteps(run);
      if (generation !== shown.generation) return;
      if (replace) {
        state.steps = [...steps];
        // a resumed run's snapshots past its checkpoint are gone: never ask for them again
        if (state.latestSnapshot && !steps.includes(state.latestSnapshot.step)) state.latestSnapshot = null;
      } else mergeSteps(steps);
      if (steps.length) shown.stepsListedUpTo = Math.max(shown.stepsListedUpTo, steps[steps.length - 1]);
      updateSlider();
    } catch { /* the next tick asks again */ } finally {
      shown.stepsBusy = false;
      if (shown.replacePending) {
        shown.replacePending = false;
        refreshSteps({ replace: true });
      }
    }
  }

  function mergeSteps(steps) {
    const known = new Set(state.steps);
    const added = steps.filter((s) => !known.has(s));
    if (!added.length) return;
    state.steps.push(...added);
    state.steps.sort((a, b) => a - b);
  }

  function onSnapshotEvent(data, generation) {
    if (generation !== shown.generation) return;
    debug.snapshotsReceived += 1;
    const snapshot = data.snapshot ?? data;
    if (snapshot.step == null) snapshot.step = data.step;
    if (!state.steps.includes(snapshot.step)) {
      state.steps.push(snapshot.step);
      state.steps.sort((a, b) => a - b);
      charts.addStatPoints(snapshot);
      // other page modules (the layer summaries) take what a new snapshot carries
      document.dispatchEvent(new CustomEvent("kernelscope:snapshot", { detail: { run: state.view.run, snapshot } }));
    }
    if (snapshot.step === 0 && !state.initialSnapshot) state.initialSnapshot = snapshot;
    if (!state.latestSnapshot || snapshot.step >= state.latestSnapshot.step) state.latestSnapshot = snapshot;
    scheduleHeader();
    refreshBirths();
    if (performance.now() - shown.stepsAt > 3000) refreshSteps();   // the slider learns of coalesced steps too
    if (shown.autoPlay && state.view.pace !== "live") {
      shown.autoPlay = false;
      startPlaying(state.view.pace, { fromStart: true });
    }
    if (state.mode === "live") scheduleLiveDraw(snapshot);
  }

  function onStatusEvent(data, generation) {
    if (generation !== shown.generation || !state.run) return;
    state.run.status = data.status;
    if (data.step != null) state.run.step = data.step;
    updateRunHeader(data.message);
    if (data.status === "running" && shown.stepsStale) {   // resumed: its steps past the checkpoint are gone
      shown.stepsStale = false;
      refreshSteps({ replace: true });
    }
    updateSlider();   // an ended run's charts span the steps it reached
    if (!ACTIVE.has(data.status) && shown.closeEvents) {
      refreshBirths(true);
      shown.closeEvents();
      shown.closeEvents = null;
      context.refreshRunList();
    }
  }

  function addMetricPoints(points) {
    charts.addMetricPoints(points, state.run?.steps ?? state.run?.config?.steps ?? 0);
    for (const p of points) updateProgress(p.step);
  }

  function followRun(id, generation) {
    const buffered = [];
    let ready = false;
    const close = api.openEvents(id, {
      status: (d) => onStatusEvent(d, generation),
      snapshot: (d) => onSnapshotEvent(d, generation),
      // EventSource retries by itself; the server's first event on return clears this note
      error: (readyState) => {
        if (generation === shown.generation && readyState === EventSource.CONNECTING) {
          $("run-message").textContent = "connection to the server lost — reconnecting…";
        }
      },
      metrics: (d) => {
        if (generation !== shown.generation) return;
        if (ready) addMetricPoints(d.points || []);
        else buffered.push(...(d.points || []));
      },
    });
    return {
      close,
      // called once the REST history is drawn: points already drawn are skipped by step
      release() { ready = true; addMetricPoints(buffered); buffered.length = 0; },
    };
  }

  // ---------------------------------------------------------------- opening a run

  async function openRun(id, { loadConfig = false } = {}) {
    shown.generation += 1;
    const generation = shown.generation;
    if (shown.closeEvents) { shown.closeEvents(); shown.closeEvents = null; }
    stopPlaying();
    stepThrough.close();
    state.view.run = id;
    state.mode = "live";
    state.steps = [];
    state.latestSnapshot = null;
    state.initialSnapshot = null;
    state.historyStep = null;
    shown.fmapSnapshot = null;
    shown.snapshot = null;
    shown.initTexts = {};
    shown.births = new Map();
    shown.birthsAt = -Infinity;
    shown.autoPlay = false;
    shown.stepsListedUpTo = -1;
    shown.stepsAt = -Infinity;
    light.clear();
    filterBoard.clear();
    fmapBoard.clear();
    $("probe-picker").replaceChildren();
    charts.reset();
    context.writeHash();
    $("empty-state").hidden = true;
    $("run-view").hidden = false;
    charts.resize();
    let run;
    try {
      run = await api.getRun(id);
    } catch (error) {
      showError(`run ${id}: ${error.message}`);
      return;
    }
    if (generation !== shown.generation) return;
    state.run = run;
    if (loadConfig) context.loadRunConfig(run.config);
    if (run.config) describeRunInits(run.config, generation);
    updateRunHeader();
    context.markCurrentRun();
    const stream = ACTIVE.has(run.status) ? followRun(id, generation) : null;
    if (stream) shown.closeEvents = stream.close;
    try {
      const [points, steps] = await Promise.all([api.getMetrics(id), api.getSnapshotSteps(id)]);
      if (generation !== shown.generation) return;
      addMetricPoints(points);
      mergeSteps(steps);
      if (steps.length) shown.stepsListedUpTo = Math.max(shown.stepsListedUpTo, steps[steps.length - 1]);
      updateSlider();
      if (stream) stream.release();
      if (state.steps.includes(0) && !state.initialSnapshot) {
        readSnapshot(id, 0, false).then((s) => {
          if (generation === shown.generation && !state.initialSnapshot) { state.initialSnapshot = s; redrawCurrent(); }
        }).catch(() => {});
      }
      if (state.view.pace !== "live" && ACTIVE.has(run.status)) {
        // a training run opens playing from its first snapshot at the chosen pace (once it has one)
        if (state.steps.length) startPlaying(state.view.pace, { fromStart: true }); else shown.autoPlay = true;
      }
      else if (!state.latestSnapshot) goLive();
      backfillStats(id, steps, generation);
    } catch (error) {
      showError(`run ${id}: ${error.message}`);
    }
  }

  /*
   * Per-layer std curves of a run opened midway or after the fact, from a sample
   * of its stored snapshots, merged with the live points that arrived meanwhile. A resume
   * stops it where it is: the resumed run removes its snapshots past its checkpoint.
   */
  async function backfillStats(id, steps, generation) {
    if (!steps.length) return;
    const count = Math.min(steps.length, 40);
    const sample = [...new Set(Array.from({ length: count }, (_, i) => steps[Math.round(i * (steps.length - 1) / Math.max(1, count - 1))]))];
    const points = [];
    const resumes = shown.resumes;
    for (const step of sample) {
      if (generation !== shown.generation) return;
      if (resumes !== shown.resumes) break;
      try {
        const snapshot = await readSnapshot(id, step, false);
        points.push({ step, stats: statLayers(snapshot) });
      } catch { /* a snapshot that cannot be read leaves a gap in the curve */ }
    }
    if (generation !== shown.generation) return;
    // the live points past the last one read fill in the rest
    charts.setStatHistory(points, resumes !== shown.resumes && points.length ? points[points.length - 1].step : sample[sample.length - 1]);
  }

  // ---------------------------------------------------------------- header and controls

  /* The open run reached `step` (from its stream or the run list): kept now, drawn in the next
     live frame, or at once with `now` (the run list has just redrawn the run's line). */
  function updateProgress(step, { now = false } = {}) {
    if (!state.run) return;
    if (step != null && step > (state.run.step ?? -1)) state.run.step = step;
    if (now) drawProgress(); else scheduleHeader();
  }

  function drawProgress() {
    if (!state.run) return;
    const total = state.run.steps ?? state.run.config?.steps ?? 0;
    const done = state.run.step ?? 0;
    const fraction = total ? Math.min(1, done / total) : 0;
    setFill($("progress-fill"), fraction);
    setText($("progress-text"), total ? `${done} / ${total}` : `${done}`);
    // the run list polls every few seconds; keep the open run's line in step with the stream
    const listed = document.querySelector(`#run-list li[data-run="${CSS.escape(String(state.run.id))}"] .run-progress`);
    if (listed) setText(listed, `${done}/${total || "?"}`);
  }

  function updateRunHeader(message) {
    const run = state.run;
    $("run-status").hidden = !run;
    if (!run) return;
    $("run-title").textContent = `run ${run.id}`;
    const badge = $("run-badge");
    badge.textContent = run.status;
    badge.className = `badge status-${run.status}`;
    badge.title = message || run.message || "";
    const problem = ["diverged", "failed", "interrupted"].includes(run.status);
    const queued = run.status === "queued" && run.queue_position != null ? `waiting for a free slot (position ${run.queue_position})` : "";
    $("run-message").textContent = problem ? (message || run.message || "") : queued;
    $("run-message").title = $("run-message").textContent;
    $("btn-pause").hidden = run.status !== "running" && run.status !== "queued";
    // the server resumes a paused run, and restarts stopped, failed or interrupted ones from their checkpoint
    $("btn-resume").hidden = !["paused", "interrupted", "stopped", "failed"].includes(run.status);
    $("btn-stop").hidden = !ACTIVE.has(run.status);
    scheduleHeader();
    const item = document.querySelector(`#run-list li[data-run="${CSS.escape(String(run.id))}"] .badge`);
    if (item) { item.textContent = run.status; item.className = `badge status-${run.status}`; }
    announceView();
  }

  async function control(action) {
    if (!state.run) return;
    if (action === "resume") {
      shown.resumes += 1;   // a backfill under way stops: the snapshots it would read may be removed
      shown.stepsStale = true;
      await Promise.allSettled([...reading]);   // and the reads already sent finish first
    }
    try {
      const run = await api.controlRun(state.run.id, action);
      if (run && run.status) {
        state.run.status = run.status;
        updateRunHeader();
      }
      if (action === "resume") refreshSteps({ replace: true });   // a local server has removed them by now
      if (action === "resume" && !shown.closeEvents) {
        const stream = followRun(state.run.id, shown.generation);
        stream.release();
        shown.closeEvents = stream.close;
      }
      context.refreshRunList();
    } catch (error) {
      showError(`${action}: ${error.message}`);
      if (error.status === 401) context.askForToken();
    }
  }

  $("btn-pause").addEventListener("click", () => control("pause"));
  $("btn-resume").addEventListener("click", () => control("resume"));
  $("btn-stop").addEventListener("click", () => control("stop"));
  $("btn-live").addEventListener("click", () => setPace("live"));
  $("btn-catch-up").addEventListener("click", () => startPlaying(20, { catchUp: true }));
  $("pace").value = String(state.view.pace);
  $("pace").addEventListener("change", () => setPace($("pace").value));
  $("btn-play").addEventListener("click", () => {
    if (shown.player) { pause(); return; }
    startPlaying(state.view.pace === "live" ? 5 : state.view.pace, { fromStart: state.mode === "live" });
  });
  $("history-slider").addEventListener("input", (event) => {
    stopPlaying();
    showHistoryIndex(Number(event.target.value));
  });
  for (const button of document.querySelectorAll("[data-step-axis]")) {
    button.classList.toggle("active", button.dataset.stepAxis === state.view.stepAxis);
    button.addEventListener("click", () => {
      state.view.stepAxis = button.dataset.stepAxis;
      for (const b of document.querySelectorAll("[data-step-axis]")) b.classList.toggle("active", b === button);
      context.writeHash();
      updateSlider();
    });
  }
  for (const button of document.querySelectorAll("[data-scaling]")) {
    button.classList.toggle("active", button.dataset.scaling === state.view.scaling);
    button.addEventListener("click", () => {
      state.view.scaling = button.dataset.scaling;
      for (const b of document.querySelectorAll("[data-scaling]")) b.classList.toggle("active", b === button);
      context.writeHash();
      redrawCurrent();
    });
  }

  return { openRun, updateProgress };
}
