"""Who may change what, and what a request may carry: the server's gate.

`RequestGuard` is an ASGI middleware in front of every route. When
KERNELSCOPE_TOKEN is set, a request that can change state (any method but
GET, HEAD and OPTIONS) needs `Authorization: Bearer <token>` (401 otherwise);
reads stay open. With classes (app/classroom.py) a learner token also opens
state-changing requests, and the guard records who asks (teacher, learner,
anonymous) in caller.CALLER (app/caller.py) for the run lookup and the quotas; joining a
class (OPEN_PATHS) needs no token. A body larger than limits.MAX_BODY_BYTES is refused with
413, and a JSON body holding NaN, Infinity (or a number too large for a float),
text that is not valid Unicode, or nesting deeper than limits.MAX_JSON_DEPTH is
refused with 422 naming the field, before any route sees it.

`resolve_dataset_path` confines a config's dataset path to DATA/datasets
(no absolute paths, no `..`, no symlink leading out). `install` wires the
guard and, only when KERNELSCOPE_CORS_ORIGINS lists origins, CORS.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from app import caller as callers
from app import limits

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_MESSAGE = "authorization: this server needs the header 'Authorization: Bearer <KERNELSCOPE_TOKEN>'"


# ---------------------------------------------------------------- the token

# ---------------------------------------------------------------- JSON bodies


class _NotFinite:
    """Stands in for a NaN/Infinity literal (or an overflowing number) while a body is checked."""

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _path_text(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def body_problem(body: bytes) -> tuple[list, str] | None:
    """(location, message) of the first thing a JSON body may not carry, or None."""
    try:
        data = json.loads(body, parse_constant=_NotFinite, parse_float=_parse_float)
    except RecursionError:
        return [], f"body: nested more than {limits.MAX_JSON_DEPTH} levels deep"
    except UnicodeDecodeError:
        return [], "body: must be UTF-8 encoded JSON"
    except json.JSONDecodeError as error:
        return [], f"body: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
    stack: list[tuple[object, list, int]] = [(data, [], 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, _NotFinite):
            return path, f"{_path_text(path)}: must be a finite number, got {value.text}"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path, f"{_path_text(path)}: must be valid Unicode text (no lone surrogates)"
            continue
        if isinstance(value, (dict, list)):
            if depth >= limits.MAX_JSON_DEPTH:
                return path, f"{_path_text(path)}: nested more than {limits.MAX_JSON_DEPTH} levels deep"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        return path, f"{_path_text(path)}: field names must be valid Unicode text"
                stack.append((item, [*path, key], depth + 1))
    return None


# ---------------------------------------------------------------- the caller (classroom)

# Routes that change state without a token: a learner joining a class with its code.
OPEN_PATHS = frozenset({"/api/classes/join"})


def _bearer(header: str) -> str | None:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip() or None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def _identify(scope, headers: dict, token: str | None, safe: bool) -> callers.Caller:
    """The server token is the teacher; a learner token a learner (app/classroom.py); no token: anonymous."""
    app = scope.get("app")
    store = getattr(getattr(app, "state", None), "classroom", None)
    return callers.identify(
        store,
        token,
        _bearer(headers.get("authorization", "")),
        _cookie(headers.get("cookie", ""), callers.SESSION_COOKIE),
        safe,
    )


# ---------------------------------------------------------------- the middleware


async def _send_json(send, status: int, content: dict, headers: list | None = None) -> None:
    body = json.dumps(content).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _documented_methods(app) -> list[tuple[re.Pattern, str]]:
    """(path pattern, "GET, POST") for every path of the app's OpenAPI document."""
    table = []
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", template)
        )
        methods = ", ".join(method.upper() for method in operations)
        table.append((re.compile(f"^{pattern}$"), methods))
    return table


class RequestGuard:
    """ASGI middleware: token for state-changing methods, body size, JSON values (see module doc).

    It also makes a 405 answer's `Allow` header list every documented method of
    the path (Starlette lists only those of the first route that matched it).
    """

    def __init__(self, app, token: str | None, max_body_bytes: int = limits.MAX_BODY_BYTES):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self._methods_table: list[tuple[re.Pattern, str]] | None = None

    def _allow_header(self, scope) -> bytes | None:
        if self._methods_table is None and "app" in scope:
            self._methods_table = _documented_methods(scope["app"])
        for pattern, methods in self._methods_table or []:
            if pattern.match(scope["path"]):
                return methods.encode("latin-1")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_full_allow(message):
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = self._allow_header(scope)
                if allow is not None:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)

        # here, not at the top: a run's process imports this module (confined_dataset) and never the store
        from app.store import DatabaseUnavailable

        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        safe = scope["method"] in SAFE_METHODS
        # classroom: who is asking (teacher, learner, anonymous), kept for the run lookup and quotas
        try:
            caller = _identify(scope, headers, self.token, safe)
        except DatabaseUnavailable as error:  # a learner token is looked up in the database: 503, as the routes say
            from app.errors import database_unavailable  # here: app.errors imports this module's importers

            await (await database_unavailable(None, error))(scope, receive, send)
            return
        reset = callers.CALLER.set(caller)
        try:
            if safe:
                await self.app(scope, receive, send_with_full_allow)
                return
            if caller.role == "anonymous" and scope["path"] not in OPEN_PATHS:
                await _send_json(
                    send, 401, {"detail": TOKEN_MESSAGE, "message": TOKEN_MESSAGE}, [(b"www-authenticate", b"Bearer")]
                )
                return
            await self._guarded(scope, receive, send, headers, send_with_full_allow)
        finally:
            callers.CALLER.reset(reset)

    async def _guarded(self, scope, receive, send, headers, send_with_full_allow):
        too_large = f"body: at most {self.max_body_bytes} bytes"
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_json(send, 413, {"detail": too_large, "message": too_large})
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_json(send, 413, {"detail": too_large, "message": too_large})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get("content-type", "").lower()
        is_json = not content_type or "json" in content_type
        problem = body_problem(body) if body and is_json else None
        if problem is not None:
            location, text = problem
            detail = [{"loc": ["body", *location], "msg": text, "type": "value_error"}]
            await _send_json(send, 422, {"detail": detail, "message": text})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_full_allow)


# ---------------------------------------------------------------- dataset paths


def datasets_root(data_dir: Path) -> Path:
    return Path(data_dir) / limits.DATASETS_FOLDER


def resolve_dataset_path(data_dir: Path, path, field: str = "dataset.path") -> Path:
    """The real folder a config's dataset path names, confined to DATA/datasets.

    Refuses absolute paths, `..`, and paths that leave the folder through a
    symlink; the target must exist. ValueError names the field.
    """
    root = datasets_root(data_dir)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{field}: must be a folder name under {root}, got {path!r}")
    if "\x00" in path or len(path) > limits.MAX_PATH_LENGTH:
        raise ValueError(f"{field}: not a usable path (at most {limits.MAX_PATH_LENGTH} characters, no NUL)")
    relative = Path(path)
    if relative.is_absolute() or path.startswith(("/", "\\")) or relative.drive:
        raise ValueError(f"{field}: must be relative to {root}, not absolute: {path!r}")
    if ".." in relative.parts or ".." in path.replace("\\", "/").split("/"):
        raise ValueError(f"{field}: must stay inside {root}; '..' is not allowed: {path!r}")
    real_root = root.resolve()
    target = (real_root / relative).resolve()
    if target != real_root and real_root not in target.parents:
        raise ValueError(f"{field}: {path!r} leads out of {root} (through a symlink)")
    if not target.exists():
        raise ValueError(f"{field}: {path!r} does not exist in {root}")
    return target


def check_dataset_path(data_dir: Path, dataset: dict) -> None:
    """Raise ValueError when a dataset spec's path is not confined to DATA/datasets."""
    if isinstance(dataset, dict) and dataset.get("path") is not None:
        resolve_dataset_path(data_dir, dataset["path"])


def confined_dataset(data_dir: Path, dataset: dict | str | None) -> dict | str | None:
    """The dataset spec with its path replaced by the real, confined folder (for loading); a spec
    without a path (a name, a generated set) comes back as it is."""
    if not isinstance(dataset, dict) or dataset.get("path") is None:
        return dataset
    return {**dataset, "path": str(resolve_dataset_path(data_dir, dataset["path"]))}


# ---------------------------------------------------------------- wiring


def install(app, token: str | None, cors_origins: tuple[str, ...] = ()) -> None:
    """Put the guard in front of a FastAPI app's routes; add CORS only for the configured origins."""
    from fastapi.middleware.cors import CORSMiddleware  # here, so training processes never import it

    app.add_middleware(RequestGuard, token=token)
    if cors_origins:  # added last, so it also answers preflights and adds headers to the guard's 401s
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
