"""Run routes: start, list, control and delete runs; metrics, snapshots, filter pictures, events.

Route functions that wait on the RunManager (start, control, delete) are
plain `def`, so FastAPI runs them in its thread pool and the event loop keeps
serving streams meanwhile. Snapshot JSON is served from its file as it is
(no parse) unless feature maps are asked for.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response, status
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse

from app import classroom, limits, render
from app.deps import CONFLICT, HEAVY, NOT_FOUND, QUEUE_FULL, Manager, Responses, Run, StoreDep, run_out, snapshot_step
from app.errors import InvalidInput
from app.schemas import MetricsOut, RunCreate, RunList, RunOut, SnapshotSteps
from app.store import dumps_json

router = APIRouter(prefix="/api/runs", tags=["runs"])


# ---------------------------------------------------------------- runs


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut, responses=QUEUE_FULL)
def start_run(manager: Manager, body: Annotated[RunCreate | None, Body()] = None) -> dict:
    """Start a run (`{}` = the default demo). It trains at once or waits `queued` for a slot."""
    body = body or RunCreate()
    meta = {"name": body.name} if body.name else {}
    return run_out(manager, manager.create_run(body.engine_config(), meta=meta))


@router.get("", response_model=RunList)
async def list_runs(manager: Manager) -> dict:
    runs = classroom.visible_runs(classroom.current(), manager.store.list_runs())  # classroom: not other classes'
    return {"runs": [run_out(manager, run) for run in runs]}


@router.get("/{run_id}", response_model=RunOut, responses=NOT_FOUND)
async def get_run(manager: Manager, run: Run) -> dict:
    """One run, with `model_spec`: its model as the engine normalises it (the page replays the layers
    between two convs from it, and reads kernel sizes, strides and slopes there, not from JS copies)."""
    return {**run_out(manager, run), "model_spec": normalised_model(run["config"])}


def normalised_model(config: dict) -> dict | None:
    """The run's model spec with every default filled in (engine.probe.resolve_spec: a preset takes
    the dataset's input shape and class count), or None when only the dataset's files could tell.
    Cached by (model, dataset): this route is polled by many viewers and the answer never changes."""
    try:
        key = json.dumps([config["model"], config["dataset"]], sort_keys=True)
    except (KeyError, TypeError):
        return None
    spec = _normalised_model(key)
    return copy.deepcopy(spec) if spec is not None else None


@functools.lru_cache(maxsize=64)
def _normalised_model(key: str) -> dict | None:
    from engine.datasets import known_shape
    from engine.probe import resolve_spec

    model, dataset = json.loads(key)
    try:
        shape, classes = known_shape(dataset)
        if shape is None or classes is None:
            return None
        return resolve_spec(model, dataset)
    except ValueError:
        return None


@router.post("/{run_id}/pause", response_model=RunOut, responses={**NOT_FOUND, **CONFLICT})
def pause_run(manager: Manager, run: Run) -> dict:
    """Pause a running run (its process keeps its state and writes a checkpoint)."""
    return run_out(manager, manager.pause(run["id"]))


@router.post("/{run_id}/resume", response_model=RunOut, responses={**NOT_FOUND, **CONFLICT, **QUEUE_FULL})
def resume_run(manager: Manager, run: Run) -> dict:
    """Continue a paused run, or restart an interrupted, stopped or failed one from its last checkpoint."""
    return run_out(manager, manager.resume(run["id"]))


@router.post("/{run_id}/stop", response_model=RunOut, responses={**NOT_FOUND, **CONFLICT})
def stop_run(manager: Manager, run: Run) -> dict:
    """Stop a queued, running or paused run (it checkpoints first, so it can be resumed)."""
    return run_out(manager, manager.stop(run["id"]))


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_run(manager: Manager, run: Run) -> Response:
    """Delete a run: stop its process, remove its rows, snapshots and checkpoint."""
    manager.delete(run["id"])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- history


@router.get("/{run_id}/metrics", response_model=MetricsOut, response_model_exclude_none=True, responses=NOT_FOUND)
def get_metrics(
    store: StoreDep,
    run: Run,
    since: Annotated[int, Query(ge=-1, le=limits.MAX_STEPS, description="only points with step > since")] = -1,
    limit: Annotated[int | None, Query(ge=1, le=limits.MAX_METRICS_LIMIT)] = None,
) -> dict:
    """Loss and accuracy by step (val_loss/val_acc at evaluation steps)."""
    return {"run_id": run["id"], "points": store.metrics(run["id"], since_step=since, limit=limit)}


@router.get("/{run_id}/snapshots", response_model=SnapshotSteps, responses=NOT_FOUND)
def list_snapshots(store: StoreDep, run: Run) -> dict:
    """Every step that has a snapshot, ascending."""
    return {"run_id": run["id"], "steps": store.snapshot_steps(run["id"])}


StepParam = Annotated[str, "a step number or 'latest'"]
SNAPSHOT_JSON: Responses = {
    200: {"content": {"application/json": {}}, "description": "snapshot JSON (docs/ARCHITECTURE.md)"}
}


@router.get("/{run_id}/snapshots/{step}", responses={**SNAPSHOT_JSON, **NOT_FOUND}, response_class=Response)
def get_snapshot(
    store: StoreDep,
    run: Run,
    step: StepParam,
    feature_maps: Annotated[bool, Query(description="include the probe images' feature maps")] = True,
) -> Response:
    """One snapshot: kernels, detector analysis, layer statistics and (optionally) feature maps."""
    number = snapshot_step(store, run["id"], step)
    if feature_maps:
        snapshot = store.read_snapshot(run["id"], number, feature_maps=True)
        text = None if snapshot is None else dumps_json(snapshot)
    else:
        text = store.read_snapshot_text(run["id"], number)
    if text is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run['id']} has no snapshot at step {number}")
    return Response(text, media_type="application/json")


@router.get(
    "/{run_id}/snapshots/{step}/filters.png",
    response_class=Response,
    dependencies=HEAVY,
    responses={200: {"content": {"image/png": {}}, "description": "the layer's kernels as a picture"}, **NOT_FOUND},
)
def get_filters_png(
    store: StoreDep,
    run: Run,
    step: StepParam,
    layer: Annotated[
        int | None, Query(ge=0, le=limits.MAX_LAYER_INDEX, description="spec index of a conv layer; default the first")
    ] = None,
    scale: Annotated[
        float | None,
        Query(gt=0, le=limits.MAX_PNG_SCALE, description="|weight| drawn at full colour; default the layer's max"),
    ] = None,
    pixel: Annotated[int, Query(ge=1, le=limits.MAX_PNG_PIXEL, description="screen pixels per weight")] = 12,
) -> Response:
    """The filters of one conv layer drawn with a diverging colormap centred at zero (blue < 0 < red)."""
    import numpy as np

    number = snapshot_step(store, run["id"], step)
    snapshot = store.read_snapshot(run["id"], number, feature_maps=False)
    if snapshot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run['id']} has no snapshot at step {number}")
    conv_layers = {entry["index"]: entry for entry in snapshot["layers"] if entry.get("type") == "conv"}
    if not conv_layers:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="layer: this model has no conv layer")
    index = min(conv_layers) if layer is None else layer
    if index not in conv_layers:
        raise InvalidInput(
            ["query", "layer"], f"layer: {index} is not a conv layer; conv layers are {sorted(conv_layers)}"
        )
    weight = np.asarray(conv_layers[index]["weight"], dtype=np.float64)
    fitting = render.largest_pixel_within(weight.shape, pixel, limits.MAX_IMAGE_PIXELS)
    if fitting is None:
        width, height = render.filter_grid_size(weight.shape, 1)
        raise InvalidInput(
            ["query", "layer"],
            f"layer: {list(weight.shape)} is too large to draw "
            f"({width * height} pixels; at most {limits.MAX_IMAGE_PIXELS})",
        )
    image = render.filter_grid(weight, scale=scale, pixel=fitting)
    # a layer too wide for `pixel` is drawn smaller; the header says with how many pixels per weight
    return Response(render.png_bytes(image), media_type="image/png", headers={"X-Kernelscope-Pixel": str(fitting)})


# ---------------------------------------------------------------- live events

# Each event as FastAPI documents SSE (OpenAPI 3.2 `itemSchema`), so clients and
# schemathesis validate events one by one rather than the stream as one string.
EVENT_STREAM: Responses = {
    200: {
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "enum": ["status", "metrics", "snapshot", "snapshot_damaged"]},
                        "data": {"type": "string", "description": "JSON"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
        "description": "status, metrics and snapshot events (docs/ARCHITECTURE.md)",
    }
}


# Returning an EventSourceResponse (not declaring it as response_class) keeps FastAPI
# from re-encoding each item per viewer: the frames are already SSE bytes.
@router.get("/{run_id}/events", responses={**EVENT_STREAM, **NOT_FOUND, **QUEUE_FULL})
async def run_events(
    request: Request,
    manager: Manager,
    run: Run,
    last_event_id: Annotated[int | None, Header(ge=0, description="resume after this event id")] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `status`, `metrics` (batched points) and `snapshot` (without feature maps).

    Each event has an increasing `id:`. A new viewer first gets the current
    status and the latest snapshot; a viewer that reconnects with
    `Last-Event-ID` first gets every metrics point it missed. A comment line
    is sent after 15 s of silence to keep proxies from closing the stream.

    Every event is encoded once (fastapi.sse.format_sse_event) and the same
    bytes go to every viewer, which keeps hundreds of viewers cheap. A snapshot
    whose file is damaged comes as `snapshot_damaged` (`{"step", "message"}`).
    Replays are read from the store in pages, a few at a time; one client may
    replay at most limits.MAX_REPLAYS_PER_CLIENT streams at once (429 with
    Retry-After beyond).
    """
    ticket = None
    if last_event_id is not None and last_event_id < run["event_seq"]:
        ticket = manager.replay_ticket(request.client.host if request.client else "?")

    async def frames():
        async for event in manager.stream(run["id"], last_event_id, ticket=ticket):
            yield KEEPALIVE_COMMENT if event is None else event.wire

    return EventSourceResponse(frames(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
