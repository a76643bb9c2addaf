"""Explain routes: one filter at one stored step, and a conv layer's summary over every snapshot.

GET /api/runs/{id}/snapshots/{step}/filters/{layer}/{filter} answers engine.explain.explain_filter
for the snapshot's parameters on the run's monitor batch (the first 64 validation images), plus the
filter's trajectory over every stored snapshot; `.../patches.png`, `maximize.png`, `spectrum.png`
and `expanded.png` draw its pictures. GET /api/runs/{id}/layers/{layer}/summary gives, per
snapshot step, dead filters, the orientation-selective share and the mean detector score.

The measures are computed here, in the server process, from stored files read through the
Store's public methods: the run's monitor batch and model spec come from its monitor file
(written when training starts, so no dataset is loaded here), and of each snapshot only the
arrays a measure needs are read. Three small in-process caches keep repeated requests cheap:
each (run, layer)'s weight history, finished explanations per (run, step, layer, filter,
snapshot count), and each (run, layer)'s summary rows per step. Route functions are plain `def`:
FastAPI runs them in its thread pool, so a computation never blocks the event loop.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np
from fastapi import APIRouter, HTTPException, Response, status

from app import limits, render
from app.deps import HEAVY, Responses, Run, SettingsDep, StoreDep, snapshot_step
from app.settings import Settings
from app.store import Store
from engine import explain

router = APIRouter(prefix="/api/runs", tags=["explain"])


NOT_FOUND: Responses = {
    404: {"description": "no such run, snapshot, conv layer or filter (the message names what exists)"}
}
PNG: Responses = {200: {"content": {"image/png": {}}, "description": "a picture"}, **NOT_FOUND}
PIXEL = 12  # screen pixels per image pixel or weight in the PNGs


class _Lru:
    """A small thread-safe least-recently-used map."""

    items: OrderedDict

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_histories = _Lru(32)  # (run, conv layer) -> {step: layer weight}
_explanations = _Lru(256)  # (run, step, layer, filter, snapshot count) -> explanation
_summaries = _Lru(64)  # (run, layer) -> {step: summary row}


def _run_context(store: Store, settings: Settings, run: dict) -> tuple[dict, np.ndarray, np.ndarray, list]:
    """The run's model spec and monitor batch (images, labels, class names), read from the run's
    monitor file (app/store.py `read_monitor`; a damaged one is a 500 naming it). A run stored
    before runs kept that file gets it here, built once from its dataset."""
    monitor = store.read_monitor(run["id"])
    if monitor is None:
        from app.security import confined_dataset
        from engine.datasets import load_dataset
        from engine.trainer import resolve_model_spec

        config = run["config"]
        dataset = load_dataset(confined_dataset(settings.data_dir, config.get("dataset")))
        spec = resolve_model_spec(config.get("model"), dataset)
        store.write_monitor(run["id"], dataset.monitor_x, dataset.monitor_y, dataset.classes, spec)
        monitor = {"spec": spec, "x": dataset.monitor_x, "y": dataset.monitor_y, "classes": list(dataset.classes)}
    return monitor["spec"], monitor["x"], monitor["y"], monitor["classes"]


def _steps(store: Store, run_id: str) -> list[int]:
    steps = store.snapshot_steps(run_id)
    if not steps:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot yet")
    return steps


def _step(store: Store, steps: list[int], run_id: str, step: str) -> int:
    number = snapshot_step(store, run_id, step)
    if number not in steps:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot at step {number}")
    return number


def _params(store: Store, run_id: str, step: int) -> dict:
    params = store.read_snapshot_params(run_id, step)
    if params is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot at step {step}")
    return params


def _check(spec: dict, layer: int, filter: int | None) -> str:
    try:
        return explain.check_filter(spec, layer, filter)
    except explain.NotAFilter as error:
        field = "filter" if str(error).startswith("filter") else "layer"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{field}: {error}") from None


def _history(store: Store, spec: dict, run_id: str, layer: int, steps: list[int]) -> tuple[list[int], list]:
    """The layer's weight at every stored step. Only steps not seen before are read, and of each
    only the conv weights: those of every conv layer at once (one opening of each snapshot file
    serves the trajectories of all layers)."""
    convs = [entry["index"] for entry in explain.conv_layers(spec)]
    histories = {index: dict(_histories.get((run_id, index)) or {}) for index in convs}
    missing = [step for step in steps if any(step not in histories[index] for index in convs)]
    for step in missing:
        arrays = store.read_snapshot_arrays(run_id, step, [f"{index}.weight" for index in convs])
        for index in convs:
            if arrays is not None and f"{index}.weight" in arrays:
                histories[index][step] = arrays[f"{index}.weight"]
    if missing:
        for index in convs:
            _histories.put((run_id, index), histories[index])
    known = histories[layer]
    kept = [step for step in steps if step in known]
    return kept, [known[step] for step in kept]


def explanation(store: Store, settings: Settings, run: dict, step: str, layer: int, filter: int) -> dict:
    """The JSON answer of the filter route (cached)."""
    run_id = run["id"]
    steps = _steps(store, run_id)
    number = _step(store, steps, run_id, step)
    spec, images, labels, classes = _run_context(store, settings, run)
    _check(spec, layer, filter)
    key = (run_id, number, layer, filter, len(steps))
    found = _explanations.get(key)
    if found is not None:
        return found
    params = _params(store, run_id, number)
    result = explain.explain_filter(
        spec, params, layer, filter, images, labels, classes, history=_history(store, spec, run_id, layer, steps)
    )
    result = {"run_id": run_id, "step": number, **result}
    return _explanations.put(key, result)


@router.get("/{run_id}/snapshots/{step}/filters/{layer}/{filter}", responses=NOT_FOUND, dependencies=HEAVY)
def explain_filter(store: StoreDep, settings: SettingsDep, run: Run, step: str, layer: int, filter: int) -> dict:
    """Explain one filter at one stored step (`latest` allowed): top patches, activation maximization,
    spectrum and orientation, dead share, expanded weights, trajectory and birth step."""
    return explanation(store, settings, run, step, layer, filter)


# ---------------------------------------------------------------- pictures


def _gray(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) -> uint8 (H, W, 3): gray for one channel, colour for three, else the first channel."""
    scaled = np.clip((np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = scaled[:3] if scaled.shape[0] == 3 else np.repeat(scaled[:1], 3, axis=0)
    return np.round(255 * rgb.transpose(1, 2, 0)).astype(np.uint8)


def _tiles(images: list[np.ndarray], pixel: int = PIXEL, gap: int = 2) -> bytes:
    """uint8 (H, W, 3) pictures side by side, enlarged `pixel` times, on the grid background."""
    from PIL import Image

    height = max(image.shape[0] for image in images) * pixel
    width = sum(image.shape[1] * pixel + gap for image in images) + gap
    canvas = np.empty((height + 2 * gap, width, 3), dtype=np.uint8)
    canvas[:] = render.BACKGROUND
    left = gap
    for image in images:
        big = image.repeat(pixel, axis=0).repeat(pixel, axis=1)
        canvas[gap : gap + big.shape[0], left : left + big.shape[1]] = big
        left += big.shape[1] + gap
    return render.png_bytes(Image.fromarray(canvas))


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


@router.get(
    "/{run_id}/snapshots/{step}/filters/{layer}/{filter}/patches.png",
    response_class=Response,
    responses=PNG,
    dependencies=HEAVY,
)
def patches_png(store: StoreDep, settings: SettingsDep, run: Run, step: str, layer: int, filter: int) -> Response:
    """The top patches, strongest first, in gray (one scale: the data's pixel range)."""
    result = explanation(store, settings, run, step, layer, filter)
    lo, hi = result["maximize"]["regularization"]["clip"]
    return _png(_tiles([_gray(np.asarray(p["pixels"]), lo, hi) for p in result["patches"]["items"]]))


@router.get(
    "/{run_id}/snapshots/{step}/filters/{layer}/{filter}/maximize.png",
    response_class=Response,
    responses=PNG,
    dependencies=HEAVY,
)
def maximize_png(store: StoreDep, settings: SettingsDep, run: Run, step: str, layer: int, filter: int) -> Response:
    """The activation-maximizing input, on the same gray scale as the patches."""
    result = explanation(store, settings, run, step, layer, filter)
    lo, hi = result["maximize"]["regularization"]["clip"]
    return _png(_tiles([_gray(np.asarray(result["maximize"]["image"]), lo, hi)]))


@router.get(
    "/{run_id}/snapshots/{step}/filters/{layer}/{filter}/spectrum.png",
    response_class=Response,
    responses=PNG,
    dependencies=HEAVY,
)
def spectrum_png(store: StoreDep, settings: SettingsDep, run: Run, step: str, layer: int, filter: int) -> Response:
    """The Fourier magnitude, zero frequency in the centre, white = the largest."""
    result = explanation(store, settings, run, step, layer, filter)
    magnitude = np.asarray(result["spectrum"]["magnitude"], dtype=np.float64)
    peak = float(magnitude.max()) or 1.0
    return _png(_tiles([_gray(magnitude[None], 0.0, peak)], pixel=6))


@router.get(
    "/{run_id}/snapshots/{step}/filters/{layer}/{filter}/expanded.png",
    response_class=Response,
    responses=PNG,
    dependencies=HEAVY,
)
def expanded_png(store: StoreDep, settings: SettingsDep, run: Run, step: str, layer: int, filter: int) -> Response:
    """The expanded weights (input channels side by side), blue < 0 < red."""
    result = explanation(store, settings, run, step, layer, filter)
    weight = np.asarray(result["expanded"]["weight"], dtype=np.float64)
    return _png(render.png_bytes(render.filter_grid(weight[None], pixel=PIXEL)))


# ---------------------------------------------------------------- layer summary over time


def summary_rows(store: Store, spec: dict, run_id: str, layer: int, images: np.ndarray, steps, seconds: float):
    """{step: summary row} of the steps summarized so far (cached per (run, layer)), after
    summarizing missing steps in step order for about `seconds` (at least one step). A row the
    analyst stored with the snapshot is read as it is; for a snapshot stored without one, only
    the parameters of layers 0..layer are read, and one model is built for all of them."""
    known = dict(_summaries.get((run_id, layer)) or {})
    missing = [step for step in steps if step not in known]
    if missing:
        names = explain.layer_param_names(spec, layer)
        model = None
        deadline = time.monotonic() + seconds
        for step in missing:
            row = stored_summary(store.read_snapshot_without_arrays(run_id, step), layer)
            if row is None:
                params = store.read_snapshot_arrays(run_id, step, names)
                if params is None:  # removed meanwhile (a resumed run drops snapshots past its checkpoint)
                    continue
                if model is None:
                    model = explain.truncated_model(spec, params, layer)
                row = explain.layer_summary(spec, params, layer, images, model=model)
            known[step] = row
            if time.monotonic() >= deadline:
                break
        _summaries.put((run_id, layer), known)
    return known


def stored_summary(snapshot: dict | None, layer: int) -> dict | None:
    """The summary row stored with conv `layer` in a snapshot; None when it has none (stored
    before the analyst made them, or a legacy file) or the snapshot is absent."""
    for entry in [] if snapshot is None else snapshot["layers"]:
        if isinstance(entry, dict) and entry.get("index") == layer and isinstance(entry.get("summary"), dict):
            return entry["summary"]
    return None


@router.get("/{run_id}/layers/{layer}/summary", responses=NOT_FOUND, dependencies=HEAVY)
def layer_summary(store: StoreDep, settings: SettingsDep, run: Run, layer: int) -> dict:
    """Per snapshot step: dead filters (never fire on the monitor batch), the share of
    orientation-selective filters, and the mean detector score with its chance level.

    Steps not summarized before are computed for about app/limits.py SUMMARY_SECONDS per
    request: `points` holds the steps done so far and `pending` counts those still to do (ask
    again until it is 0)."""
    run_id = run["id"]
    steps = _steps(store, run_id)
    spec, images, _, _ = _run_context(store, settings, run)
    label = _check(spec, layer, None)
    known = summary_rows(store, spec, run_id, layer, images, steps, limits.SUMMARY_SECONDS)
    rows = [{"step": step, **known[step]} for step in steps if step in known]
    first = rows[0] if rows else {}
    return {
        "run_id": run_id,
        "layer": layer,
        "label": label,
        "filters": first.get("filters"),
        "selectivity_chance": first.get("selectivity_chance"),
        "score_chance": first.get("score_chance"),
        "pending": len(steps) - len(rows),
        "points": [
            {key: row[key] for key in ("step", "dead_filters", "selective_share", "mean_score", "detector_share")}
            for row in rows
        ],
    }
