"""The runs database on both backends: the Store contract on SQLite and on a real PostgreSQL,
the migrations (a fresh database, a SQLite file from before migrations), a real server on
PostgreSQL, and PostgreSQL stopped under the API (503 naming the database, nothing written).

PostgreSQL is started for real by tests/services_pg.py (skipped without it, failing under CI=true).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app import database
from app.main import create_app
from app.store import DatabaseUnavailable, RunNotFound, Store
from tests.app.conftest import LONG, TINY, make_settings, wait_for, wait_for_step
from tests.live_server import free_port, uvicorn_command, wait_until_healthy
from tests.services_pg import postgres_server, wait_until_stopped

# The schema app/store.py created before migrations existed (copied from it, commit 2869b15).
PREMIGRATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id        TEXT PRIMARY KEY,
    status    TEXT NOT NULL,
    config    TEXT NOT NULL,
    meta      TEXT NOT NULL DEFAULT '{}',
    step      INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    message   TEXT,
    metrics   TEXT,
    event_seq INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id   TEXT NOT NULL,
    step     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    loss     REAL,
    acc      REAL,
    val_loss REAL,
    val_acc  REAL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_by_seq ON metrics (run_id, seq);
"""
# The tables app/classroom.py made itself, beside those, before revision 0002 (copied from it, commit 86ce623).
OLD_CLASSROOM_SCHEMA = """
CREATE TABLE IF NOT EXISTS classes (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    join_code    TEXT NOT NULL,
    max_training INTEGER NOT NULL,
    max_queued   INTEGER NOT NULL,
    assignment   TEXT,
    created      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS learners (
    id         TEXT PRIMARY KEY,
    class_id   TEXT NOT NULL,
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS learners_by_class ON learners (class_id, created);
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("postgres").url if request.param == "postgresql" else None
    opened = Store(tmp_path / "data", database_url=url)
    yield opened
    opened.close()


def rows_of(url: str, query: str, **params) -> list[tuple]:
    engine = sa.create_engine(database.database_url("", url))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(query), params)]
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the Store contract, both backends


def test_runs_are_created_read_listed_updated_and_deleted(store):
    first = store.create_run({"steps": 5, "lr": 0.1}, meta={"name": "a"}, owner_pid=123)
    second = store.create_run({"steps": 7}, status="running")
    assert (first["status"], first["config"], first["meta"], first["step"], first["owner_pid"]) == (
        "queued",
        {"steps": 5, "lr": 0.1},
        {"name": "a"},
        0,
        123,
    )
    assert (first["event_seq"], first["metrics"], first["message"]) == (0, None, None)
    assert store.get_run(first["id"]) == first
    listed = [run["id"] for run in store.list_runs() if run["id"] in (first["id"], second["id"])]
    assert listed == [first["id"], second["id"]]  # oldest first

    store.update_run(first["id"], status="paused", step=3, message="held", metrics={"step": 3, "loss": 1.5})
    stored = store.get_run(first["id"])
    assert (stored["status"], stored["step"], stored["message"], stored["metrics"]) == (
        "paused",
        3,
        "held",
        {"step": 3, "loss": 1.5},
    )
    assert stored["updated"] >= stored["created"]
    with pytest.raises(ValueError, match="status"):
        store.update_run(first["id"], status="sleeping")
    with pytest.raises(ValueError, match="unknown run fields"):
        store.update_run(first["id"], colour="red")
    with pytest.raises(RunNotFound):
        store.update_run("nope", step=1)

    store.add_metrics(first["id"], [{"step": 1, "loss": 1.0}], seq=1)
    store.delete_run(first["id"])
    with pytest.raises(RunNotFound):
        store.get_run(first["id"])
    assert store.metrics(first["id"]) == []
    assert not store.run_dir(first["id"]).exists()
    with pytest.raises(RunNotFound):
        store.delete_run(first["id"])
    assert store.get_run(second["id"])["status"] == "running"


def test_event_sequence_numbers_are_reserved_in_blocks(store):
    run_id = store.create_run({})["id"]
    assert store.next_seq(run_id) == 1
    assert store.next_seq(run_id, 4) == 2
    assert store.next_seq(run_id) == 6
    assert store.get_run(run_id)["event_seq"] == 6
    with pytest.raises(RunNotFound):
        store.next_seq("nope")


def test_metrics_replace_retrained_steps_page_by_sequence_and_truncate(store):
    run_id = store.create_run({})["id"]
    other = store.create_run({})["id"]
    store.add_metrics(run_id, [{"step": s, "loss": 2.0 - s / 10, "acc": s / 10} for s in (1, 2, 3)], seq=5)
    store.add_metrics(run_id, [{"step": 4, "loss": float("nan"), "acc": 0.4, "val_acc": 0.35}], seq=9)
    store.add_metrics(other, [{"step": 1, "loss": 9.0}], seq=1)
    assert store.metrics(run_id)[3] == {"step": 4, "acc": 0.4, "val_acc": 0.35}  # NaN is stored as nothing
    assert [p["step"] for p in store.metrics(run_id, since_step=1, limit=2)] == [2, 3]

    # keyset pages over (seq, step): the whole history in pages of two, nothing twice
    pages, after = [], (0, 0)
    while page := store.metrics_page(run_id, after, upto_seq=100, limit=2):
        pages.append(page)
        after = (page[-1][0], page[-1][1]["step"])
    assert [[(seq, point["step"]) for seq, point in page] for page in pages] == [[(5, 1), (5, 2)], [(5, 3), (9, 4)]]
    assert store.metrics_page(run_id, (5, 2), upto_seq=5, limit=10) == [(5, store.metrics(run_id)[2])]

    store.truncate_metrics(run_id, after_step=2)  # resumed from the step-2 checkpoint
    store.add_metrics(run_id, [{"step": 3, "loss": 1.7, "acc": 0.3}], seq=12)
    assert store.metrics(run_id) == [
        {"step": 1, "loss": 1.9, "acc": 0.1},
        {"step": 2, "loss": 1.8, "acc": 0.2},
        {"step": 3, "loss": 1.7, "acc": 0.3},
    ]
    assert [(seq, p["step"]) for seq, p in store.metrics_between_seq(run_id, 5, 100)] == [(12, 3)]
    store.add_metrics(run_id, [{"step": 2, "loss": 0.5}], seq=13)  # a later point for a step replaces it
    assert store.metrics(run_id, since_step=1, limit=1) == [{"step": 2, "loss": 0.5}]
    assert store.metrics(other) == [{"step": 1, "loss": 9.0}]


def test_the_store_survives_reopening(store, tmp_path):
    run_id = store.create_run({"steps": 3})["id"]
    store.add_metrics(run_id, [{"step": 1, "loss": 1.0}], seq=2)
    store.close()
    url = None if store.sqlite else store._engine.url.render_as_string(hide_password=False)
    again = Store(tmp_path / "data", database_url=url)
    try:
        assert again.get_run(run_id)["config"] == {"steps": 3}
        assert again.metrics(run_id) == [{"step": 1, "loss": 1.0}]
    finally:
        again.close()


# ---------------------------------------------------------------- migrations


def test_a_fresh_sqlite_database_is_at_the_newest_revision_with_the_old_schema(tmp_path):
    Store(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "kernelscope.db")) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        columns = {
            table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")] for table in ("runs", "metrics")
        }
        indexes = {row[1] for row in db.execute("PRAGMA index_list(metrics)")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert revision == database.head_revision()
    premigration = sqlite3.connect(":memory:")
    premigration.executescript(PREMIGRATION_SCHEMA)
    assert columns == {
        table: [row[1] for row in premigration.execute(f"PRAGMA table_info({table})")] for table in ("runs", "metrics")
    }
    assert "metrics_by_seq" in indexes


def test_a_sqlite_file_from_before_migrations_is_stamped_and_keeps_its_runs(tmp_path):
    with contextlib.closing(sqlite3.connect(tmp_path / "kernelscope.db")) as db:
        db.executescript(PREMIGRATION_SCHEMA)
        db.execute(
            "INSERT INTO runs (id, status, config, meta, step, created, updated, event_seq) "
            "VALUES ('old1', 'completed', '{\"steps\":2}', '{}', 2, 1.0, 2.0, 8)"
        )
        db.execute("INSERT INTO metrics VALUES ('old1', 1, 4, 1.5, 0.5, NULL, NULL)")
        db.executescript(OLD_CLASSROOM_SCHEMA)  # the classroom's tables shared the file (0002 adopts them)
        db.commit()

    store = Store(tmp_path)
    try:
        assert store.get_run("old1")["status"] == "completed"
        assert store.metrics("old1") == [{"step": 1, "loss": 1.5, "acc": 0.5}]
        assert store.next_seq("old1") == 9
        assert database.migrate(store._engine) == "current"  # nothing left to do
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "kernelscope.db")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(database.head_revision(),)]
        assert db.execute("SELECT count(*) FROM classes").fetchone() == (0,)


def test_migrate_reports_the_stamp_of_an_old_file_and_refuses_a_foreign_one(tmp_path):
    (tmp_path / "old").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "old" / "kernelscope.db")) as db:
        db.executescript(PREMIGRATION_SCHEMA)
    engine = database.make_engine(database.database_url(tmp_path / "old", None))
    try:
        assert database.migrate(engine) == "stamped+upgraded"
        assert database.migrate(engine) == "current"
    finally:
        engine.dispose()

    (tmp_path / "foreign").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "foreign" / "kernelscope.db")) as db:
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT)")
    with pytest.raises(RuntimeError, match=r"runs lacks columns \[.*'event_seq'"):
        Store(tmp_path / "foreign")


def test_postgresql_gets_the_same_tables_from_the_same_history(postgres, tmp_path):
    Store(tmp_path, database_url=postgres.url).close()
    assert rows_of(postgres.url, "SELECT version_num FROM alembic_version") == [(database.head_revision(),)]
    columns = rows_of(
        postgres.url,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name IN ('runs', 'metrics') ORDER BY table_name, ordinal_position",
    )
    assert [c for t, c in columns if t == "runs"] == list(database.runs.c.keys())
    assert [c for t, c in columns if t == "metrics"] == list(database.metrics.c.keys())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_starting_together_on_a_new_database_migrate_it_once(backend, request, tmp_path):
    if backend == "postgresql":
        url = request.getfixturevalue("postgres").create_database("kernelscope_race")
        target = database.database_url("", url)
    else:
        target = database.database_url(tmp_path, None)
    engines = [database.make_engine(target) for _ in range(4)]
    results: list[str] = []
    threads = [threading.Thread(target=lambda e=engine: results.append(database.migrate(e))) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(results) == ["current", "current", "current", "upgraded"]
    with engines[0].connect() as connection:
        assert database.current_revision(connection) == database.head_revision()
    engines[0].dispose()


def test_a_database_url_that_is_not_postgresql_is_refused_naming_the_variable():
    from app.settings import Settings

    with pytest.raises(ValueError, match="KERNELSCOPE_DATABASE_URL: expected a postgresql:// URL"):
        Settings.from_env({"KERNELSCOPE_DATABASE_URL": "mysql://db/kernelscope"})
    assert Settings.from_env({"KERNELSCOPE_DATABASE_URL": ""}).database_url is None


# ---------------------------------------------------------------- a real server on PostgreSQL


def test_a_real_server_on_postgresql_trains_a_run_and_reads_it_back(postgres, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "KERNELSCOPE_DATA": str(tmp_path / "data"),
        "KERNELSCOPE_DATABASE_URL": postgres.url,
        "KERNELSCOPE_MAX_RUNS": "1",
    }
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(uvicorn_command(port), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        problem = wait_until_healthy(url, process, timeout=90)
        assert problem is None, f"server {problem}: {(tmp_path / 'server.log').read_text()}"
        created = httpx.post(f"{url}/api/runs", json=TINY, timeout=30)
        assert created.status_code in (200, 201), created.text
        run_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while (run := httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json())["status"] != "completed":
            assert run["status"] in ("queued", "running"), run
            assert time.monotonic() < deadline, f"run stayed {run['status']}"
            time.sleep(0.2)
        assert run["step"] == TINY["steps"]
        metrics = httpx.get(f"{url}/api/runs/{run_id}/metrics", timeout=30).json()
        points = metrics["points"] if isinstance(metrics, dict) else metrics
        assert [point["step"] for point in points][-1] == TINY["steps"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    # the run and its points are in PostgreSQL (not in a SQLite file beside the data)
    assert rows_of(postgres.url, "SELECT status, step FROM runs WHERE id = :id", id=run_id) == [
        ("completed", TINY["steps"])
    ]
    stored = rows_of(postgres.url, "SELECT count(*), max(step) FROM metrics WHERE run_id = :id", id=run_id)
    assert stored == [(len(points), TINY["steps"])]


# ---------------------------------------------------------------- PostgreSQL stopped


def test_the_cli_names_an_unreachable_database_instead_of_a_traceback(tmp_path):
    port = free_port()  # nothing listens there
    env = {
        **os.environ,
        "KERNELSCOPE_DATA": str(tmp_path),
        "KERNELSCOPE_DATABASE_URL": f"postgresql://kernelscope@127.0.0.1:{port}/kernelscope",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "runs"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert f"database: PostgreSQL 127.0.0.1:{port}/kernelscope is unreachable" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_postgresql_stopped_is_503_naming_the_database_and_nothing_is_half_written(tmp_path):
    server = postgres_server(tmp_path)
    try:
        settings = make_settings(tmp_path / "data", database_url=server.url)
        with TestClient(create_app(settings)) as client:
            kept = client.post("/api/runs", json={**TINY, "steps": 1}).json()["id"]
            training = client.post("/api/runs", json=LONG).json()["id"]
            wait_for_step(client, training, 5)
            store = client.app.state.store
            before = store.metrics(kept)
            server.stop()
            wait_until_stopped(server)

            for answer in (
                client.get("/api/runs"),
                client.post("/api/runs", json=TINY),
                client.get(f"/api/runs/{kept}"),
            ):
                assert answer.status_code == 503, answer.text
                body = answer.json()
                assert body["message"].startswith(f"database: PostgreSQL 127.0.0.1:{server.port}/kernelscope")
                assert "unreachable" in body["message"]
                assert body["detail"]["database"] == f"PostgreSQL 127.0.0.1:{server.port}/kernelscope"
                assert answer.headers["retry-after"].isdigit()
            with pytest.raises(DatabaseUnavailable):
                store.add_metrics(kept, [{"step": 90, "loss": 1.0}, {"step": 91, "loss": 1.0}], seq=1000)

            server.start()
            runs = client.get("/api/runs")  # the pool replaces its dead connections by itself
            assert runs.status_code == 200, runs.text
            listed = runs.json()
            ids = [run["id"] for run in (listed["runs"] if isinstance(listed, dict) else listed)]
            assert ids == [kept, training]  # the POST during the outage left no run behind
            assert store.metrics(kept) == before  # nor any point of the refused batch
            # the run that trained through the outage could not record its steps: it ended, and its
            # final status, kept in memory meanwhile, reaches the database once it is back
            ended = wait_for(client, training, "failed")
            assert "DatabaseUnavailable" in ended["message"], ended
            deadline = time.monotonic() + 60  # the manager retries every limits.DISK_RETRY_SECONDS
            while store.get_run(training)["status"] != "failed":
                assert time.monotonic() < deadline, store.get_run(training)
                time.sleep(0.2)
    finally:
        server.remove()
