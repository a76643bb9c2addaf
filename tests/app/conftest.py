"""Fixtures for the server tests: a temp data directory, an app on it, tiny fast runs."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.services_pg import postgres_server

# A run that trains in about a second: small net, small shapes set, small batches.
TINY_DATASET = {"name": "shapes", "n_train": 256, "n_val": 64}
TINY = {"model": "small", "dataset": TINY_DATASET, "batch_size": 8, "steps": 30, "snapshot_every": 10, "eval_every": 15}
# A run long enough to pause, resume and stop while it trains.
LONG = {**TINY, "steps": 100_000, "snapshot_every": 50, "eval_every": 1000}

TERMINAL = {"completed", "stopped", "diverged", "failed", "interrupted"}

# The server token of the classroom tests: whoever holds it is the teacher.
TOKEN = "teacher-secret-token"
TEACHER = {"Authorization": f"Bearer {TOKEN}"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """One real PostgreSQL per test module that asks for it (tests/services_pg.py)."""
    server = postgres_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    """Each backend in turn: None is the SQLite file in the data folder, else the URL of a fresh
    database on the module's PostgreSQL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").create_database(f"db_{uuid.uuid4().hex[:12]}")


def make_settings(data_dir, **overrides) -> Settings:
    values = {"data_dir": data_dir, "max_runs": 2, "max_queued": 4, "checkpoint_every": 20, "shutdown_timeout": 5.0}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def client(data_dir):
    with TestClient(create_app(make_settings(data_dir))) as test_client:
        yield test_client


def wait_for(client, run_id: str, statuses, timeout: float = 60.0) -> dict:
    """Poll GET /api/runs/{id} until its status is one of `statuses`."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stayed {run['status']} (wanted {statuses}): {run}")
        time.sleep(0.05)


def wait_for_step(client, run_id: str, step: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["step"] >= step:
            return run
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not reach step {step}: {run}")
        time.sleep(0.05)


def read_events(response):
    """Parse a text/event-stream httpx response into {"id", "event", "data"} dicts (data parsed as JSON)."""
    import json

    event: dict = {}
    data_lines: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data_lines:
                event["data"] = json.loads("\n".join(data_lines))
                yield event
            event, data_lines = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data_lines.append(value)
            elif name == "id":
                event["id"] = int(value)
            elif name == "event":
                event["event"] = value
