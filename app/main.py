"""The FastAPI application: create_app() wires settings, store, run manager and routers.

The lifespan opens the store, marks runs a previous server left running as
`interrupted` (resumable from their checkpoint), and on shutdown asks every
training process to checkpoint and exit. Every error answer is JSON with
`detail` (FastAPI's usual shape) and `message` (one readable line naming the
field and the limit); app/errors.py turns each domain error into its answer.

Run it with `kernelscope serve` or `uvicorn app.main:create_app --factory`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import classroom, errors, limits, render, security
from app.distributed import DistributedRunManager
from app.routes import births, classes, explain, lessons, meta, pages, runs, teaching
from app.runs import RunManager, install_shutdown_signal_hook
from app.settings import Settings
from app.store import Store


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; settings default to the environment (KERNELSCOPE_*)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = await asyncio.to_thread(Store, settings.data_dir, settings.database_url)
        await asyncio.to_thread(store.sweep_temp_files)
        # the executor: local processes (embedded) or Dramatiq workers with Redis Streams (distributed)
        manager = RunManager(settings, store) if settings.broker_url is None else DistributedRunManager(settings, store)
        manager.recover()
        manager.warm_up()
        # classes and learners (app/classroom.py), in the store's database
        rooms = await asyncio.to_thread(classroom.ClassroomStore, settings.data_dir, settings.database_url)
        manager.gate = classroom.QuotaGate(rooms)
        app.state.store = store
        app.state.manager = manager
        app.state.classroom = rooms
        app.state.streams_closing = asyncio.Event()  # classroom: the wall streams end when it is set

        def close_streams():
            manager.close_streams()
            app.state.streams_closing.set()

        loop = asyncio.get_running_loop()
        install_shutdown_signal_hook(lambda: loop.call_soon_threadsafe(close_streams))
        try:
            yield
        finally:
            await asyncio.to_thread(manager.shutdown)
            rooms.close()
            store.close()

    app = FastAPI(
        title="kernelscope",
        summary="Watch convolution kernels move from their initialization into edge and X detectors.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.render_slots = render.RenderSlots(
        limits.MAX_RENDERS, limits.MAX_RENDERS_WAITING, limits.RENDER_RETRY_SECONDS
    )
    security.install(app, settings.token, settings.cors_origins)  # the token (once), body limits, CORS if configured
    errors.install(app)  # one handler per domain error
    for module in (meta, runs, teaching, explain, births, lessons, classes, pages):
        app.include_router(module.router)
    return app
