/*
 * The teacher's wall (/class/{id}): one tile per learner with the conv1 filters
 * of their latest run, all drawn at ONE colour scale (the largest |weight| on the
 * wall, stated above the tiles), with init, step, loss and the symmetry meter.
 * One event stream (/api/classes/{id}/events) feeds every tile; tiles sort or
 * group by init; the "same step" slider shows every run at the same step
 * (GET /api/classes/{id}/wall?step=). State (`wall`) apart from drawing (`draw`).
 * Names are set as text only (el), never as HTML.
 */

import * as api from "./api.js";
import { $, el, setFill, showError } from "./dom.js";
import { divergingColor, maxAbs, paintGrid } from "./filters.js";

const classId = document.body.dataset.classId;
const base = `/api/classes/${encodeURIComponent(classId)}`;

const wall = {
  klass: null,
  live: new Map(),       // learner id -> tile from the stream
  atStep: null,          // Map learner id -> tile at the slider's step, when "same step" is on
  step: null,
  sort: "name",
  group: false,
  scale: 0,
  tilesReceived: 0,
  redraws: 0,
};
window.__kernelscope = { wall };

/* A filter of conv1 as one 2-D kernel: the sum over its input channels (as the detector analysis reads it). */
function kernelsOf(weight) {
  return weight.map((filter) => filter[0].map((row, y) => row.map((_, x) => filter.reduce((s, ch) => s + ch[y][x], 0))));
}

function shownTiles() {
  const source = wall.atStep ?? wall.live;
  return [...wall.live.keys()].map((id) => {
    const live = wall.live.get(id);
    const fixed = source.get(id);
    return { ...live, run: fixed?.run && live.run ? { ...live.run, weight: fixed.run.weight, symmetry: fixed.run.symmetry,
      snapshot_step: fixed.run.snapshot_step } : live.run };
  });
}

function sortKey(tile) {
  if (wall.sort === "init") return [tile.run?.init ?? "~", tile.name.toLowerCase()];
  if (wall.sort === "loss") return [tile.run?.loss ?? Infinity, tile.name.toLowerCase()];
  return [tile.name.toLowerCase(), ""];
}

function compare(a, b) {
  const [x, y] = [sortKey(a), sortKey(b)];
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

function tileNode(tile, scale) {
  const node = el("article", "wall-tile");
  node.dataset.learner = tile.learner;
  node.append(el("h3", "wall-name", tile.name));
  const run = tile.run;
  if (!run) {
    node.append(el("p", "wall-empty", "no run yet"));
    return node;
  }
  node.dataset.init = run.init;
  node.append(el("p", "wall-init", `init ${run.init}`));
  if (run.weight) {
    const canvas = el("canvas", "wall-filters");
    paintGrid(canvas, kernelsOf(run.weight), (v) => divergingColor(v / (scale || 1)));
    canvas.style.width = `${canvas.width * 6}px`;
    canvas.dataset.step = String(run.snapshot_step);
    node.append(canvas);
  } else {
    node.append(el("p", "wall-empty", "no snapshot yet"));
  }
  const loss = Number.isFinite(run.loss) ? run.loss.toFixed(3) : "–";
  node.append(el("p", "wall-facts", `step ${run.snapshot_step ?? run.step} of ${run.steps} · ${run.status} · loss ${loss}`));
  const meter = el("div", "wall-meter");
  meter.title = "symmetry: mean pairwise cosine of the filters (1.0 = symmetry never broken)";
  const s = Number(run.symmetry);
  const fill = el("div", "wall-meter-fill");
  setFill(fill, Math.abs(s));
  meter.append(fill, el("span", "wall-meter-text", Number.isFinite(s) ? `symmetry ${s.toFixed(2)}` : "symmetry –"));
  node.append(meter);
  return node;
}

function draw() {
  const tiles = shownTiles().sort(compare);
  wall.scale = Math.max(0, ...tiles.map((t) => (t.run?.weight ? maxAbs(t.run.weight) : 0)));
  $("wall-scale").textContent = wall.scale > 0
    ? `One colour scale for every tile: ±${wall.scale.toPrecision(3)} (the largest |weight| on the wall); blue < 0 < red, white = 0.`
    : "One colour scale for every tile (no filters yet).";
  const box = $("wall-tiles");
  box.replaceChildren();
  if (wall.group) {
    const groups = new Map();
    for (const tile of tiles) {
      const key = tile.run?.init ?? "no run yet";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(tile);
    }
    for (const [init, members] of [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const section = el("section", "wall-group");
      section.dataset.init = init;
      section.append(el("h2", "", `${init} (${members.length})`));
      const row = el("div", "wall-row");
      row.append(...members.map((t) => tileNode(t, wall.scale)));
      section.append(row);
      box.append(section);
    }
  } else {
    const row = el("div", "wall-row");
    row.append(...tiles.map((t) => tileNode(t, wall.scale)));
    box.append(row);
  }
  const maxSteps = Math.max(0, ...tiles.map((t) => Number(t.run?.steps) || 0));
  $("wall-step").max = String(maxSteps);
  $("wall-count").textContent = `${wall.live.size} learner(s)`;
  wall.redraws += 1;
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; draw(); });
}

/* Keeps one request for the slider in flight; asks next only for the newest step. */
let stepWanted = null, stepBusy = false;
async function fetchStep() {
  if (stepBusy || stepWanted === null) return;
  stepBusy = true;
  const step = stepWanted;
  stepWanted = null;
  try {
    const data = await api.getJSON(`${base}/wall?step=${step}`);
    if ($("wall-same-step").checked) {
      wall.atStep = new Map(data.tiles.map((t) => [t.learner, t]));
      wall.step = step;
      scheduleDraw();
    }
  } catch (error) {
    showError(error.message);
  } finally {
    stepBusy = false;
    fetchStep();
  }
}

function wireControls() {
  $("wall-sort").addEventListener("change", (e) => { wall.sort = e.target.value; scheduleDraw(); });
  $("wall-group").addEventListener("change", (e) => { wall.group = e.target.checked; scheduleDraw(); });
  const slider = $("wall-step");
  $("wall-same-step").addEventListener("change", (e) => {
    slider.disabled = !e.target.checked;
    if (e.target.checked) {
      $("wall-step-text").textContent = `every tile at step ${slider.value} of its run`;
      stepWanted = Number(slider.value);
      fetchStep();
    } else {
      wall.atStep = null;
      wall.step = null;
      $("wall-step-text").textContent = "live: each tile at its run's latest snapshot";
      scheduleDraw();
    }
  });
  slider.addEventListener("input", () => {
    $("wall-step-text").textContent = `every tile at step ${slider.value} of its run`;
    stepWanted = Number(slider.value);
    fetchStep();
  });
}

function wireAssignment(klass) {
  const form = $("wall-assign");
  form.hidden = !("join_code" in klass);  // the teacher's view
  const show = (assignment) => {
    $("wall-assign-current").textContent = assignment ? `pushed: ${assignment.title || assignment.hash}` : "no assignment pushed";
  };
  show(klass.assignment);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("wall-assign-hash").value.trim();
    const hash = text.includes("#") ? text.slice(text.indexOf("#") + 1) : text;
    try {
      const updated = await api.putJSON(`${base}/assignment`, { title: $("wall-assign-title").value, hash });
      show(updated.assignment);
    } catch (error) {
      showError(error.message);
    }
  });
  $("wall-assign-clear").addEventListener("click", async () => {
    try {
      show((await api.deleteJSON(`${base}/assignment`)).assignment);
    } catch (error) {
      showError(error.message);
    }
  });
}

async function signIn() {
  api.setToken($("wall-token").value.trim());
  try {
    await api.postJSON("/api/classes/session");
    location.reload();
  } catch (error) {
    showError(error.message);
  }
}

async function main() {
  let klass;
  try {
    klass = await api.getJSON(base);
  } catch (error) {
    if (error.status === 404 || error.status === 401) {
      $("wall-signin").hidden = false;
      $("wall-signin-button").addEventListener("click", signIn);
      document.body.dataset.ready = "true";
      return;
    }
    throw error;
  }
  wall.klass = klass;
  $("wall-head").hidden = false;
  $("wall-title").textContent = klass.name;
  $("wall-code").textContent = klass.join_code ? `join code ${klass.join_code}` : "";
  $("wall-export").href = `${base}/export.csv`;
  $("wall-export").hidden = !klass.join_code;
  wireControls();
  wireAssignment(klass);
  const source = new EventSource(`${base}/events`);
  source.addEventListener("tile", (event) => {
    const tile = JSON.parse(event.data);
    wall.live.set(tile.learner, tile);
    wall.tilesReceived += 1;
    scheduleDraw();
  });
  draw();
  document.body.dataset.ready = "true";
}

main().catch((error) => showError(error.message));
