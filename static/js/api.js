/*
 * Talking to the server: JSON fetches for the REST routes of the design card,
 * the run's Server-Sent Event stream, and a "latest only" fetcher that keeps
 * one request in flight and always asks next for the newest thing wanted, so
 * a slow network drops frames instead of queueing them.
 */

export class ApiError extends Error {
  /* fields: the request's fields the server refused, as "dataset.path" (a 422's detail locations). */
  constructor(message, status, fields = []) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

/* A server started with KERNELSCOPE_TOKEN wants it on every POST/PUT/DELETE. */
const TOKEN_KEY = "kernelscope-token";
let token = localStorage.getItem(TOKEN_KEY);

export function setToken(value) {
  token = value || null;
  if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
}

export const hasToken = () => Boolean(token);

async function request(method, path, body, signal) {
  const options = { method, headers: { Accept: "application/json" }, signal };
  if (token && method !== "GET") options.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw new ApiError(errorMessage(data, response), response.status, refusedFields(data));
  return data;
}

/* The fields a 422 names: each detail's location without "body", as "dataset.path". */
function refusedFields(data) {
  const detail = data && typeof data === "object" ? data.detail : null;
  return Array.isArray(detail) ? detail.map((d) => (d.loc || []).filter((x) => x !== "body").join(".")) : [];
}

/* FastAPI errors come as {"detail": "..."} or {"detail": [{loc, msg}, ...]}. */
function errorMessage(data, response) {
  if (data && typeof data === "object" && typeof data.message === "string") return data.message;
  const detail = data && typeof data === "object" ? data.detail ?? data.error : data;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return detail || `${response.status} ${response.statusText}`;
}

export const getJSON = (path, { signal } = {}) => request("GET", path, undefined, signal);
export const postJSON = (path, body) => request("POST", path, body ?? {});
export const putJSON = (path, body) => request("PUT", path, body ?? {});
export const deleteJSON = (path) => request("DELETE", path);

const runPath = (id) => `/api/runs/${encodeURIComponent(id)}`;

/* GET /api/inits -> {inits: [{name, title, law, paper, params, aliases}], namedKernels: [name]}. */
export async function fetchInits() {
  const data = await getJSON("/api/inits");
  return { inits: data.inits, namedKernels: data.named_kernels ?? null };
}

/* GET /api/datasets -> {names: [name], pathRule: where dataset.path points, as the server states it,
 * withPath: the names whose served params take a path}. */
export async function fetchDatasets() {
  const data = await getJSON("/api/datasets");
  return {
    names: data.datasets.map((d) => d.name),
    pathRule: data.path_rule ?? "",
    withPath: data.datasets.filter((d) => "path" in (d.params ?? {})).map((d) => d.name),
  };
}

/* GET /api/presets -> {specs: {name: spec}, optimizers: {name: the optimizer its runs default to}}. */
export async function fetchPresets() {
  const specs = {};
  const optimizers = {};
  for (const p of (await getJSON("/api/presets")).presets) {
    specs[p.name] = p.spec;
    optimizers[p.name] = p.optimizer;
  }
  return { specs, optimizers };
}

/*
 * GET /api/defaults -> {run: the complete config of `{}`, optimizers: {name: settings},
 * demos: {depth_stall: {base, inits}}, kernel_bank: [name], limits: {field: {min, max, ...}}}.
 */
export const fetchDefaults = () => getJSON("/api/defaults");

/*
 * POST /api/inits/describe {model?, init?, dataset?} -> {layers: [{index, label, type, shape,
 * fan_in, fan_out, init, law, std, bound, text}]}: each conv and dense layer's init law and its figures.
 */
export const describeInits = (body) => postJSON("/api/inits/describe", body);

/* The engine's name of each weight layer of a run's model, {index: "conv1" | "dense1" | ...}, from
   POST /api/inits/describe (its `label`: order among layers of its type). One request per model. */
const labelsAsked = new Map();
export function layerLabels(config) {
  const key = JSON.stringify([config.model, config.dataset]);
  if (!labelsAsked.has(key)) {
    const answer = describeInits({ model: config.model, init: config.init, dataset: config.dataset })
      .then(({ layers }) => Object.fromEntries(layers.map((l) => [l.index, l.label])));
    answer.catch(() => labelsAsked.delete(key));
    labelsAsked.set(key, answer);
  }
  return labelsAsked.get(key);
}

export const listRuns = async () => (await getJSON("/api/runs")).runs;
export const getRun = (id) => getJSON(runPath(id));
export const startRun = (body) => postJSON("/api/runs", body);
export const controlRun = (id, action) => postJSON(`${runPath(id)}/${action}`);

/* -> [{step, loss, acc, val_loss?, val_acc?}], steps ascending. */
export const getMetrics = async (id) => (await getJSON(`${runPath(id)}/metrics`)).points;

/* -> the steps that have a snapshot, ascending. */
export const getSnapshotSteps = async (id) => (await getJSON(`${runPath(id)}/snapshots`)).steps;
/* Each filter's birth step in conv layer `layer` (GET /api/runs/{id}/layers/{layer}/births). */
export const getBirths = (id, layer) => getJSON(`${runPath(id)}/layers/${layer}/births`);

/*
 * Conv layer `layer`'s summary over every snapshot (GET /api/runs/{id}/layers/{layer}/summary).
 * The server summarizes a long run in parts: while its answer has `pending` steps this asks
 * again, handing each partial answer to `onPart` (if given); resolves to the complete answer.
 * `stillWanted()` false stops early (resolving to null).
 */
export async function getLayerSummary(id, layer, { onPart, stillWanted } = {}) {
  for (;;) {
    const summary = await getJSON(`${runPath(id)}/layers/${layer}/summary`);
    if (stillWanted && !stillWanted()) return null;
    if (!summary.pending) return summary;
    onPart?.(summary);
  }
}

export const getSnapshot = (id, step, featureMaps = true) =>
  getJSON(`${runPath(id)}/snapshots/${step}${featureMaps ? "" : "?feature_maps=0"}`);

/*
 * Open the run's event stream. `handlers` has optional status, metrics,
 * snapshot and error callbacks, each given the parsed JSON data. Returns a
 * function that closes the stream. EventSource reconnects by itself and sends
 * Last-Event-ID, so the server replays the metrics missed meanwhile.
 */
export function openEvents(id, handlers) {
  const source = new EventSource(`${runPath(id)}/events`);
  for (const type of ["status", "metrics", "snapshot"]) {
    source.addEventListener(type, (event) => {
      if (handlers[type]) handlers[type](JSON.parse(event.data), event);
    });
  }
  source.onerror = () => { if (handlers.error) handlers.error(source.readyState); };
  return () => source.close();
}

/*
 * Keeps at most one request in flight. want(key) records the newest wish;
 * when the current request ends, only the newest wish is fetched next and
 * every wish in between is dropped. onResult(key, data) gets each answer.
 */
export class LatestOnlyFetcher {
  constructor(fetchFn, onResult, onError) {
    this.fetchFn = fetchFn;
    this.onResult = onResult;
    this.onError = onError ?? (() => {});
    this.inFlight = null;
    this.wanted = null;
    this.dropped = 0;
  }

  want(key) {
    if (this.inFlight !== null) {
      if (this.wanted !== null) this.dropped += 1;
      this.wanted = key;
      return;
    }
    this._start(key);
  }

  get busy() {
    return this.inFlight !== null;
  }

  async _start(key) {
    this.inFlight = key;
    try {
      const data = await this.fetchFn(key);
      this.onResult(key, data);
    } catch (error) {
      this.onError(key, error);
    } finally {
      this.inFlight = null;
      const next = this.wanted;
      this.wanted = null;
      if (next !== null) this._start(next);
    }
  }
}
