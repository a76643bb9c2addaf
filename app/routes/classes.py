"""Class routes: create a class, join it, the teacher's wall (one stream), assignments, the CSV export.

Who may do what is app/classroom.py's rule; the caller comes from
security.RequestGuard (classroom.current()). The teacher (server token, or
anyone on a server without one) sees every class; a learner only their own;
the page /class/{id} is the teacher's wall.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from app import classroom, limits, paths
from app.classroom import ClassNotFound, Forbidden
from app.deps import StoreDep
from app.store import dumps_json

# a class id that does not exist (or a learner of another class asking) is 404 on every class route
router = APIRouter(tags=["classes"], responses={404: {"description": "no such class"}})
templates = Jinja2Templates(directory=str(paths.templates_dir()))

ClassId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="class id as returned by POST /api/classes")
]
KEEPALIVE_SECONDS = 15.0


class ClassCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=limits.MAX_CLASS_NAME_LENGTH)
    max_training: int = Field(
        limits.DEFAULT_CLASS_MAX_TRAINING,
        ge=1,
        le=limits.MAX_CLASS_MAX_TRAINING,
        description="runs one learner may have training (running or paused)",
    )
    max_queued: int = Field(
        limits.DEFAULT_CLASS_MAX_QUEUED,
        ge=1,
        le=limits.MAX_CLASS_MAX_QUEUED,
        description="runs one learner may have waiting in the queue",
    )


class JoinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=limits.MAX_DISPLAY_NAME_LENGTH)


class AssignmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=limits.MAX_ASSIGNMENT_TITLE_LENGTH)
    hash: str = Field(
        min_length=1,
        max_length=limits.MAX_ASSIGNMENT_LENGTH,
        description="the page's URL-hash config (what the address bar shows after #)",
    )


def _classroom(request: Request) -> classroom.ClassroomStore:
    return request.app.state.classroom


def _teacher_only(what: str) -> None:
    caller = classroom.current()
    if not caller.is_teacher:
        raise Forbidden(f"{what}: only the teacher (the server token) may do this")


def _visible_class(request: Request, class_id: str) -> dict:
    """The class, if the caller is its teacher or one of its learners; 404 otherwise."""
    caller = classroom.current()
    if (caller.is_learner and caller.learner["class"] != class_id) or caller.role == "anonymous":
        raise ClassNotFound(class_id)
    return _classroom(request).get_class(class_id)


def _class_out(request: Request, klass: dict) -> dict:
    out = {key: klass[key] for key in ("id", "name", "max_training", "max_queued", "assignment", "created")}
    out["learners"] = [
        {"id": learner["id"], "name": learner["name"]} for learner in _classroom(request).learners(klass["id"])
    ]
    out["wall_url"] = f"/class/{klass['id']}"
    if classroom.current().is_teacher:
        out["join_code"] = klass["join_code"]
    return out


def _session_cookie(response: Response, token: str) -> None:
    # For GETs a browser cannot add a header to (EventSource); never used for state-changing requests.
    response.set_cookie(classroom.SESSION_COOKIE, token, httponly=True, samesite="strict", path="/")


# ---------------------------------------------------------------- classes and learners


@router.post("/api/classes", status_code=status.HTTP_201_CREATED)
def create_class(request: Request, body: ClassCreate) -> dict:
    """Create a class (the teacher only); the answer carries its join code."""
    _teacher_only("class")
    klass = _classroom(request).create_class(body.name, body.max_training, body.max_queued)
    return _class_out(request, klass)


@router.get("/api/classes")
def list_classes(request: Request) -> dict:
    """The teacher: every class; a learner: their own; anyone else: none."""
    caller = classroom.current()
    store = _classroom(request)
    if caller.is_teacher:
        classes = store.list_classes()
    elif caller.is_learner:
        classes = [store.get_class(caller.learner["class"])]
    else:
        classes = []
    return {"classes": [_class_out(request, klass) for klass in classes]}


@router.get("/api/classes/me")
def who_am_i(request: Request) -> dict:
    """Who the page is: {"role"} and, for a learner, their learner entry and class (with its assignment)."""
    caller = classroom.current()
    out: dict = {"role": caller.role, "classes_exist": _classroom(request).has_classes()}
    if caller.is_learner:
        out["learner"] = {"id": caller.learner["id"], "name": caller.learner["name"]}
        out["class"] = _class_out(request, _classroom(request).get_class(caller.learner["class"]))
    return out


@router.post(
    "/api/classes/join",
    status_code=status.HTTP_201_CREATED,
    responses={401: {"description": "no class has this join code"}},
)
def join_class(request: Request, response: Response, body: JoinBody) -> dict:
    """A learner joins with the join code and a display name; the answer carries their token (keep it)."""
    learner, token = _classroom(request).join(body.code, body.name)
    _session_cookie(response, token)
    klass = _classroom(request).get_class(learner["class"])
    return {
        "token": token,
        "learner": {"id": learner["id"], "name": learner["name"]},
        "class": {"id": klass["id"], "name": klass["name"], "assignment": klass["assignment"]},
    }


@router.post("/api/classes/session", status_code=status.HTTP_204_NO_CONTENT)
def open_session(request: Request) -> Response:
    """Put the bearer token this request carries (the guard has checked it: teacher or learner) in an
    HttpOnly cookie, so the browser's event streams and reads are the caller's too."""
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if token:  # without one (a server without a token) the browser is the teacher already
        _session_cookie(response, token)
    return response


@router.delete("/api/classes/session", status_code=status.HTTP_204_NO_CONTENT)
def close_session() -> Response:
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(classroom.SESSION_COOKIE, path="/")
    return response


@router.get("/api/classes/{class_id}")
def get_class(request: Request, class_id: ClassId) -> dict:
    return _class_out(request, _visible_class(request, class_id))


@router.put("/api/classes/{class_id}/assignment")
def set_assignment(request: Request, class_id: ClassId, body: AssignmentBody) -> dict:
    """Push a run setup (the page's URL-hash config) to the class; learners see "start the assignment"."""
    _teacher_only("assignment")
    klass = _classroom(request).set_assignment(class_id, {"title": body.title.strip(), "hash": body.hash.lstrip("#")})
    return _class_out(request, klass)


@router.delete("/api/classes/{class_id}/assignment")
def clear_assignment(request: Request, class_id: ClassId) -> dict:
    _teacher_only("assignment")
    return _class_out(request, _classroom(request).set_assignment(class_id, None))


# ---------------------------------------------------------------- the wall


@router.get("/api/classes/{class_id}/wall")
def get_wall(
    request: Request,
    store: StoreDep,
    class_id: ClassId,
    step: Annotated[
        int | None,
        Query(ge=0, le=limits.MAX_STEPS, description="show every tile at its run's snapshot at or before this step"),
    ] = None,
) -> dict:
    """One tile per learner: the conv1 filters of their latest run (latest snapshot, or at `step`)."""
    _visible_class(request, class_id)
    return classroom.wall(store, _classroom(request), class_id, step)


def _changed_tiles(store, rooms: classroom.ClassroomStore, class_id: str, seen: dict) -> list[dict]:
    """The tiles whose run, status, step, metrics or latest snapshot changed since `seen` (updated)."""
    latest = classroom.latest_runs(store, class_id)
    changed = []
    for learner in rooms.learners(class_id):
        run = latest.get(learner["id"])
        mark = (
            None
            if run is None
            else (
                run["id"],
                run["status"],
                run["step"],
                dumps_json(run["metrics"]),
                store.latest_snapshot_step(run["id"]),
            )
        )
        if learner["id"] not in seen or seen[learner["id"]] != mark:
            seen[learner["id"]] = mark
            changed.append(classroom.wall_tile(store, learner, run))
    return changed


@router.get("/api/classes/{class_id}/events")
async def wall_events(request: Request, store: StoreDep, class_id: ClassId) -> EventSourceResponse:
    """ONE stream for the whole wall: a `tile` event whenever a learner's tile changes (first: every tile).

    The stream looks at the class's runs every limits.WALL_POLL_SECONDS and sends only the
    tiles that changed, so its cost grows with the learners, not with the viewers' tiles.
    It ends when the server stops (SIGINT/SIGTERM), like the run streams.
    """
    _visible_class(request, class_id)
    rooms = _classroom(request)
    closing: asyncio.Event = request.app.state.streams_closing  # set when the server stops

    async def frames():
        seen: dict = {}
        sequence = 0
        quiet = 0.0
        while True:
            tiles = await asyncio.to_thread(_changed_tiles, store, rooms, class_id, seen)
            for tile in tiles:
                sequence += 1
                yield format_sse_event(data_str=dumps_json(tile), event="tile", id=str(sequence))
            quiet = 0.0 if tiles else quiet + limits.WALL_POLL_SECONDS
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield KEEPALIVE_COMMENT
            try:
                await asyncio.wait_for(closing.wait(), limits.WALL_POLL_SECONDS)
                return  # the server is stopping: end the stream so it need not wait for the viewer
            except TimeoutError:
                pass

    return EventSourceResponse(frames(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get(
    "/api/classes/{class_id}/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "learners, runs, inits, accuracy, detectors"}},
)
def export_class(request: Request, store: StoreDep, class_id: ClassId) -> Response:
    """The teacher's CSV: one row per learner's run (learner, run, status, init, step, accuracy, detector counts)."""
    _teacher_only("export")
    _classroom(request).get_class(class_id)
    text = classroom.export_csv(store, _classroom(request), class_id)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="class-{class_id}.csv"'},
    )


@router.get("/class/{class_id}", response_class=HTMLResponse, include_in_schema=False)
def wall_page(request: Request, class_id: ClassId):
    """The teacher's wall (the page loads the class and its stream itself)."""
    return templates.TemplateResponse(request, "class.html", {"class_id": class_id})
