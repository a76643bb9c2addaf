"""Routers (one per file) and the dependencies they share.

`get_settings`, `get_store`, `get_manager` hand a route the objects that
create_app() put on app.state; `require_token` guards every state-changing
route (POST/PUT/DELETE) when KERNELSCOPE_TOKEN is set; `existing_run` answers
404 for an unknown run id before a route body (or an event stream) starts.
They are async because they are quick: a plain `def` dependency would cost a
thread-pool round trip per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from app.runs import RunManager
from app.settings import Settings
from app.store import RunNotFound, Store

RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_manager(request: Request) -> RunManager:
    return request.app.state.manager


async def require_token(request: Request) -> None:
    """When KERNELSCOPE_TOKEN is set, demand `Authorization: Bearer <token>`."""
    token = request.app.state.settings.token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="authorization: this server needs the header 'Authorization: Bearer <KERNELSCOPE_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="run id as returned by POST /api/runs")]


async def existing_run(run_id: RunId, store: Annotated[Store, Depends(get_store)]) -> dict:
    """The stored run, or 404. Async: a sub-millisecond lookup needs no thread hop."""
    try:
        return store.get_run(run_id)
    except RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run_id: no run {run_id!r}") from None


Token = Depends(require_token)
