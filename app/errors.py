"""Errors as HTTP answers: one handler per domain error, registered once by create_app().

Routes raise what went wrong and never translate it themselves:

- `ValueError("field: problem")`, the engine's and app/limits.py's way of refusing
  input, is 422 with the field as the error's location;
- `InvalidInput(location, message)` is 422 at a location the route knows better
  (an entry of `inits`, a query or path parameter);
- `RunNotFound` is 404, `RunConflict` 409, `QueueFull` 429 (with Retry-After when it says);
- distributed mode's Redis unreachable (`BrokerUnavailable`) is 503 with Retry-After;
- a full disk (StorageFull, ENOSPC, SQLite's "disk is full") is 507;
- `DamagedFile` (a stored file that does not read back whole) is 500 naming run, step and file;
- `DatabaseUnavailable` (PostgreSQL down or unreachable, distributed mode) is 503 naming the
  database, with Retry-After; nothing of the request was written;
- classroom: `Forbidden` 403, `BadJoinCode` 401 (after a pause), `QuotaExceeded` 429
  with Retry-After, `ClassNotFound` 404;
- anything else is a bug: 500, still JSON, naming only the kind of error.

Every error answer is `{"detail": <FastAPI's detail>, "message": "field: problem"}`.
Pydantic's own refusals get the same shape, and a value outside a fixed set of
names gets the closest valid one ("did you mean ...", engine/names.py).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import classroom, limits
from app.broker import BrokerUnavailable
from app.runs import QueueFull, RunConflict
from app.store import DamagedFile, DatabaseUnavailable, RunNotFound, StorageFull, is_disk_full
from engine import OPTIMIZERS
from engine.core.names import closest

# "field: problem" or "field.sub problem", as the engine words its ValueErrors.
FIELD_MESSAGE = re.compile(r"^([A-Za-z_][\w\[\]]*(?:\.[\w\[\]]+)*):? (.*)$", re.DOTALL)
_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")

# Settings of some engine optimizer ("lr", "momentum", ...): sent beside "optimizer" instead of in it,
# they get a hint saying where they go.
OPTIMIZER_SETTINGS = frozenset(name for optimizer in OPTIMIZERS.values() for name in optimizer.defaults)


class InvalidInput(Exception):
    """422 at `location` (["body", "inits", 2], ["query", "layer"], ...); `message` starts with the field."""

    def __init__(self, location: list, message: str):
        super().__init__(message)
        self.location = location
        self.message = message


def named_field(text: str) -> tuple[str, str] | None:
    """(field, problem) of a message worded "field: problem" or "field.sub problem", else None."""
    match = FIELD_MESSAGE.match(text)
    if match and (text[len(match.group(1))] == ":" or "." in match.group(1)):
        return match.group(1), match.group(2)
    return None


def field_error(error: ValueError, prefix: str = "", location: str = "body") -> InvalidInput:
    """An engine ValueError ("field: problem") as 422 at `prefix.field` (e.g. a comparison's `base`)."""
    text = str(error)
    field, problem = named_field(text) or ("", text)
    path = ".".join(part for part in (prefix, field) if part)
    return InvalidInput([location, *path.split(".")] if path else [location], f"{path or location}: {problem}")


def _answer(status: int, detail, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "message": message}, headers=headers)


def _unprocessable(location: list, message: str) -> JSONResponse:
    return _answer(422, [{"loc": location, "msg": message, "type": "value_error"}], message)


async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
    return _unprocessable(exc.location, exc.message)


async def value_error(request: Request, exc: ValueError) -> JSONResponse:
    """The engine's or the limits' "field: problem": 422 located at that field of the body."""
    if named_field(str(exc)) is None:
        raise exc  # not a refusal of input: a bug, answered 500 by the server error middleware
    refused = field_error(exc)
    return _unprocessable(refused.location, refused.message)


async def run_not_found(request: Request, exc: RunNotFound) -> JSONResponse:
    return _answer(404, f"run_id: no run {exc.args[0]!r}", f"run_id: no run {exc.args[0]!r}")


async def run_conflict(request: Request, exc: RunConflict) -> JSONResponse:
    return _answer(409, str(exc), str(exc))


async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
    retry = getattr(exc, "retry_after", None)
    return _answer(429, str(exc), str(exc), None if retry is None else {"Retry-After": str(retry)})


async def damaged_file(request: Request, exc: DamagedFile) -> JSONResponse:
    return _answer(
        500, {"run_id": exc.run_id, "step": exc.step, "file": exc.path.name, "problem": exc.reason}, str(exc)
    )


async def database_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
    return _answer(
        503,
        {"database": exc.database, "problem": exc.reason},
        str(exc),
        {"Retry-After": str(limits.DATABASE_RETRY_SECONDS)},
    )


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """Every other exception (Starlette's last resort, after it logs the traceback): JSON, not text.
    A full disk (StorageFull, ENOSPC, SQLite's 'disk is full') is 507 and says so."""
    if is_disk_full(exc):
        message = (
            str(exc)
            if str(exc).startswith("storage: ")
            else f"storage: the data directory's disk is full ({exc}); reads still work, writes resume "
            "once space is freed"
        )
        return _answer(507, message, message)
    message = f"internal error ({type(exc).__name__}); the server log has the details"
    return _answer(500, message, message)


async def broker_unavailable(request: Request, exc: BrokerUnavailable) -> JSONResponse:
    """Distributed mode: Redis cannot be reached (it restarts); nothing was half-done, retry shortly."""
    return _answer(503, str(exc), str(exc), {"Retry-After": "2"})


# classroom (app/classroom.py): a learner and another's run, a wrong join code, a quota, an unknown class
async def forbidden(request: Request, exc: classroom.Forbidden) -> JSONResponse:
    return _answer(403, str(exc), str(exc))


async def bad_join_code(request: Request, exc: classroom.BadJoinCode) -> JSONResponse:
    await asyncio.sleep(limits.JOIN_FAIL_DELAY_SECONDS)  # guessing codes stays slow
    return _answer(401, str(exc), str(exc))


async def quota_exceeded(request: Request, exc: classroom.QuotaExceeded) -> JSONResponse:
    return _answer(429, str(exc), str(exc), {"Retry-After": str(exc.retry_after)})


async def class_not_found(request: Request, exc: classroom.ClassNotFound) -> JSONResponse:
    return _answer(404, f"class_id: no class {exc.args[0]!r}", f"class_id: no class {exc.args[0]!r}")


# ---------------------------------------------------------------- pydantic's and FastAPI's own errors


def _field_of(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:] or loc
    return ".".join(loc) or "request"


def _readable(error: dict) -> str:
    """'field: problem' for one FastAPI/pydantic error entry."""
    field = _field_of(error)
    if error.get("type") == "extra_forbidden":
        misplaced = field.rsplit(".", 1)[-1] in OPTIMIZER_SETTINGS
        return f"{field}: not a field here" + (
            ' (an optimizer setting goes inside "optimizer", e.g. {"optimizer": {"name": "sgd", "lr": 0.05}})'
            if misplaced
            else ""
        )
    text = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "literal_error":
        expected = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        guess = closest(error.get("input"), expected)
        if guess is not None:
            text += f"; did you mean {guess!r}?"
    return text if _NAMED.match(text) else f"{field}: {text}"


def validation_message(errors: list[dict]) -> str:
    return "; ".join(_readable(error) for error in errors)


async def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
    message = validation_message(errors)
    for error in errors:  # the raw input can be huge; the message names field and limit
        error.pop("input", None)
        error.pop("url", None)
    return _answer(422, errors, message)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    message = validation_message(detail) if isinstance(detail, list) else str(detail)
    return _answer(exc.status_code, detail, message, getattr(exc, "headers", None))


# One handler per error kind (typed loosely: Starlette types every handler as taking Exception).
HANDLERS: dict[type[Exception], Any] = {
    RequestValidationError: request_validation_error,
    StarletteHTTPException: http_error,
    InvalidInput: invalid_input,
    ValueError: value_error,
    RunNotFound: run_not_found,
    RunConflict: run_conflict,
    QueueFull: queue_full,
    classroom.Forbidden: forbidden,
    classroom.BadJoinCode: bad_join_code,
    classroom.QuotaExceeded: quota_exceeded,
    classroom.ClassNotFound: class_not_found,
    DamagedFile: damaged_file,
    DatabaseUnavailable: database_unavailable,
    BrokerUnavailable: broker_unavailable,
    StorageFull: server_error,
    Exception: server_error,
}


def install(app: FastAPI) -> None:
    """Register HANDLERS on the app."""
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
