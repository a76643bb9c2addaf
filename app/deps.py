"""What the routers share: the objects create_app() puts on app.state, the run lookup, the run view.

`Manager`, `StoreDep` and `Run` are annotated dependencies a route takes as
parameters; `Run` answers 404 for an unknown run id before a route body (or an
event stream) starts. They are async because they are quick: a plain `def`
dependency would cost a thread-pool round trip per request. The token is not
checked here: security.RequestGuard checks it once, for every state-changing
request, before any route runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status

from app import classroom
from app.errors import InvalidInput
from app.runs import RunManager
from app.security import SAFE_METHODS
from app.settings import Settings
from app.store import RunNotFound, Store

RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# The `responses=` of a route, as FastAPI types it: status code -> OpenAPI response object.
Responses = dict[int | str, dict[str, Any]]

NOT_FOUND: Responses = {404: {"description": "no such run (or snapshot)"}}
CONFLICT: Responses = {409: {"description": "the run is not in a state that allows this"}}
QUEUE_FULL: Responses = {429: {"description": "every slot is busy and the queue is full"}}


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_manager(request: Request) -> RunManager:
    return request.app.state.manager


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="run id as returned by POST /api/runs")]


async def existing_run(run_id: RunId, store: Annotated[Store, Depends(get_store)], request: Request) -> dict:
    """The stored run; an unknown id raises RunNotFound (404, app/errors.py).

    classroom: another class's run is unknown to a learner (404), and a learner may
    change only their own runs (403); see app/classroom.py.
    """
    run = store.get_run(run_id)
    classroom.check_run_access(classroom.current(), run, request.method not in SAFE_METHODS, RunNotFound(run_id))
    return run


async def render_slot(request: Request):
    """Hold one slot of the heavy-render pool (app/render.py) for the request; 429 when it is full."""
    async with request.app.state.render_slots.slot():
        yield


HEAVY = [Depends(render_slot)]  # `dependencies=` of every heavy route
Manager = Annotated[RunManager, Depends(get_manager)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Run = Annotated[dict, Depends(existing_run)]


def run_out(manager: RunManager, run: dict) -> dict:
    """The API view of a stored run (RunOut)."""
    run = manager.view(run)
    return {
        "id": run["id"],
        "status": run["status"],
        "config": run["config"],
        "meta": run["meta"],
        "step": run["step"],
        "steps": int(run["config"].get("steps", 0)),
        "created": run["created"],
        "updated": run["updated"],
        "message": run["message"],
        "metrics": run["metrics"],
        "latest_snapshot": manager.latest_snapshot_step(run["id"]),
        "queue_position": manager.queue_position(run["id"]),
    }


def snapshot_step(store: Store, run_id: str, step: str) -> int:
    """A path's `{step}`: a step number, or `latest` (404 while the run has no snapshot)."""
    if step == "latest":
        latest = store.latest_snapshot_step(run_id)
        if latest is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot yet")
        return latest
    if not (step.isascii() and step.isdigit()) or len(step) > 12:  # not '³': a digit int() refuses
        raise InvalidInput(["path", "step"], f"step: must be a non-negative integer or 'latest', got {step!r}")
    return int(step)
