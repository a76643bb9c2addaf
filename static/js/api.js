/*
 * Talking to the server: JSON fetches for the REST routes of the design card,
 * the run's Server-Sent Event stream, and a "latest only" fetcher that keeps
 * one request in flight and always asks next for the newest thing wanted, so
 * a slow network drops frames instead of queueing them.
 */

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function request(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw new ApiError(errorMessage(data, response), response.status);
  return data;
}

/* FastAPI errors come as {"detail": "..."} or {"detail": [{loc, msg}, ...]}. */
function errorMessage(data, response) {
  const detail = data && typeof data === "object" ? data.detail ?? data.message ?? data.error : data;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return detail || `${response.status} ${response.statusText}`;
}

export const getJSON = (path) => request("GET", path);
export const postJSON = (path, body) => request("POST", path, body ?? {});

const runPath = (id) => `/api/runs/${encodeURIComponent(id)}`;

/* The list routes may answer a bare list or {"<key>": [...]}: accept both. */
function listOf(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  if (data && typeof data === "object") {
    const arrays = Object.values(data).filter(Array.isArray);
    if (arrays.length === 1) return arrays[0];
  }
  return [];
}

export async function fetchInits() {
  const data = await getJSON("/api/inits");
  if (data && !Array.isArray(data) && typeof data === "object" && !data.inits) {
    // {"he_normal": {...}, ...}
    return Object.entries(data).map(([name, info]) => ({ name, ...(typeof info === "object" ? info : { law: info }) }));
  }
  return listOf(data, "inits").map((x) => (typeof x === "string" ? { name: x } : x));
}

export async function fetchDatasets() {
  const data = await getJSON("/api/datasets");
  return listOf(data, "datasets").map((x) => (typeof x === "string" ? x : x.name));
}

/* -> {name: spec} whatever the route's shape: list of {name, spec} or {name: spec}. */
export async function fetchPresets() {
  const data = await getJSON("/api/presets");
  const presets = {};
  const items = Array.isArray(data) ? data : Array.isArray(data?.presets) ? data.presets : null;
  if (items) {
    for (const item of items) presets[item.name] = item.spec ?? item.model ?? item;
  } else if (data && typeof data === "object") {
    for (const [name, value] of Object.entries(data)) presets[name] = value?.layers ? value : value?.spec ?? value;
  }
  return presets;
}

export const listRuns = async () => listOf(await getJSON("/api/runs"), "runs");
export const getRun = (id) => getJSON(runPath(id));
export const startRun = (body) => postJSON("/api/runs", body);
export const controlRun = (id, action) => postJSON(`${runPath(id)}/${action}`);

/* -> [{step, loss, acc, val_loss?, val_acc?}] from either points or columns. */
export async function getMetrics(id) {
  const data = await getJSON(`${runPath(id)}/metrics`);
  if (Array.isArray(data)) return data;
  if (Array.isArray(data?.points)) return data.points;
  if (data && Array.isArray(data.step ?? data.steps)) {
    const steps = data.step ?? data.steps;
    return steps.map((step, i) => {
      const point = { step };
      for (const key of ["loss", "acc", "val_loss", "val_acc"]) {
        if (Array.isArray(data[key]) && data[key][i] != null) point[key] = data[key][i];
      }
      return point;
    });
  }
  return [];
}

export async function getSnapshotSteps(id) {
  const steps = listOf(await getJSON(`${runPath(id)}/snapshots`), "steps");
  return steps.map(Number).sort((a, b) => a - b);
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
