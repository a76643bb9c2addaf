"""The FastAPI application: create_app() wires settings, store, run manager and routers.

The lifespan opens the store, marks runs a previous server left running as
`interrupted` (resumable from their checkpoint), and on shutdown asks every
training process to checkpoint and exit. Every error answer is JSON with
`detail` (FastAPI's usual shape) and `message` (one readable line naming the
field and the limit).

Run it with `kernelscope serve` or `uvicorn app.main:create_app --factory`.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import security
from app.routes import meta as meta_routes
from app.routes import runs as run_routes
from app.runs import RunManager, install_shutdown_signal_hook
from app.settings import Settings
from app.store import Store
from engine.core.optimizers import OPTIMIZERS

# Routers written in other files of the project; included when present.
OPTIONAL_ROUTERS = ("pages", "teaching", "explain", "lessons")


def _field_of(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:] or loc
    return ".".join(loc) or "request"


_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")


# Settings of some engine optimizer ("lr", "momentum", ...): sent beside "optimizer" instead of in it,
# they get a hint saying where they go.
OPTIMIZER_SETTINGS = frozenset(name for optimizer in OPTIMIZERS.values() for name in optimizer.defaults)


def _readable(error: dict) -> str:
    """'field: problem' for one FastAPI/pydantic error entry."""
    field = _field_of(error)
    if error.get("type") == "extra_forbidden":
        misplaced = field.rsplit(".", 1)[-1] in OPTIMIZER_SETTINGS
        return f"{field}: not a field here" + (
            ' (an optimizer setting goes inside "optimizer", e.g. {"optimizer": {"name": "sgd", "lr": 0.05}})'
            if misplaced else "")
    text = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return text if _NAMED.match(text) else f"{field}: {text}"


def _validation_message(errors: list[dict]) -> str:
    return "; ".join(_readable(error) for error in errors)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
    for error in errors:  # the raw input can be huge; the message names field and limit
        error.pop("input", None)
        error.pop("url", None)
    return JSONResponse(status_code=422, content={"detail": errors, "message": _validation_message(errors)})


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, list):
        message = _validation_message(detail)
    else:
        message = str(detail)
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": detail, "message": message},
        headers=getattr(exc, "headers", None),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; settings default to the environment (KERNELSCOPE_*)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = Store(settings.data_dir)
        await asyncio.to_thread(store.sweep_temp_files)
        manager = RunManager(settings, store)
        manager.recover()
        app.state.store = store
        app.state.manager = manager
        loop = asyncio.get_running_loop()
        install_shutdown_signal_hook(lambda: loop.call_soon_threadsafe(manager.close_streams))
        try:
            yield
        finally:
            await asyncio.to_thread(manager.shutdown)
            store.close()

    app = FastAPI(
        title="kernelscope",
        summary="Watch convolution kernels move from their initialization into edge and X detectors.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    security.install(app, settings.token, settings.cors_origins)  # token, body limits, CORS if configured
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.include_router(meta_routes.router)
    app.include_router(run_routes.router)
    for name in OPTIONAL_ROUTERS:
        module_name = f"app.routes.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        app.include_router(module.router)
    return app
