"""Classes and learners in the shared database: migrating the old SQLite tables, joins at the
same moment against the class limit, PostgreSQL stopped (503), and two web processes on one
PostgreSQL sharing a class.

PostgreSQL is started for real by tests/services_pg.py (skipped without it, failing under CI=true);
the two web processes are real uvicorn processes (tests/live_server.py).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import sqlite3
import subprocess
import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from app import classroom, database, limits
from app.main import create_app
from app.store import DatabaseUnavailable, Store
from tests.app.conftest import TEACHER, TINY, TOKEN, bearer, make_settings
from tests.app.test_database import OLD_CLASSROOM_SCHEMA, PREMIGRATION_SCHEMA
from tests.live_server import free_port, uvicorn_command, wait_until_healthy
from tests.services_pg import postgres_server, wait_until_stopped

OLD_SECRET = "an-old-learner-secret"
# ---------------------------------------------------------------- the old SQLite tables


def _old_classroom_rows(db: sqlite3.Connection) -> None:
    db.executescript(OLD_CLASSROOM_SCHEMA)
    db.execute(
        "INSERT INTO classes VALUES ('oldclass01', 'Kernels 101', 'ABCDEFGHJK', 2, 3, '{\"preset\": \"edges\"}', 1.0)"
    )
    digest = hashlib.sha256(OLD_SECRET.encode()).hexdigest()
    db.execute("INSERT INTO learners VALUES ('oldlearner01', 'oldclass01', 'Ada', ?, 2.0)", (digest,))
    db.commit()


@pytest.mark.parametrize("made_by", ["before migrations", "revision 0001"])
def test_a_sqlite_file_with_the_old_classroom_tables_keeps_its_classes_and_learners(tmp_path, made_by):
    if made_by == "before migrations":  # runs, metrics and the classroom's tables, no alembic_version
        with contextlib.closing(sqlite3.connect(tmp_path / database.SQLITE_FILE)) as db:
            db.executescript(PREMIGRATION_SCHEMA)
            _old_classroom_rows(db)
    else:  # a Store of revision 0001 made runs and metrics, the old classroom code its own tables
        from alembic import command

        engine = database.make_engine(database.database_url(tmp_path, None))
        with engine.connect() as connection:
            command.upgrade(database.alembic_config(connection), database.INITIAL_REVISION)
            connection.commit()
        engine.dispose()
        with contextlib.closing(sqlite3.connect(tmp_path / database.SQLITE_FILE)) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
            _old_classroom_rows(db)

    Store(tmp_path).close()  # the server opens the Store first: it migrates
    rooms = classroom.ClassroomStore(tmp_path)
    try:
        assert rooms.get_class("oldclass01") == {
            "id": "oldclass01",
            "name": "Kernels 101",
            "join_code": "ABCDEFGHJK",
            "max_training": 2,
            "max_queued": 3,
            "assignment": {"preset": "edges"},
            "created": 1.0,
        }
        assert rooms.learner_for_token(f"oldlearner01.{OLD_SECRET}") == {
            "id": "oldlearner01",
            "class": "oldclass01",
            "name": "Ada",
            "created": 2.0,
        }
        assert rooms.learner_for_token("oldlearner01.wrong") is None
        with pytest.raises(ValueError, match="name: 'ADA' is taken"):
            rooms.join("abcdefghjk", "ADA")
        bob, _ = rooms.join("abcdefghjk", "Bob")
        assert [learner["name"] for learner in rooms.learners("oldclass01")] == ["Ada", "Bob"]
        assert bob["class"] == "oldclass01"
    finally:
        rooms.close()
    with contextlib.closing(sqlite3.connect(tmp_path / database.SQLITE_FILE)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(database.head_revision(),)]
        indexes = {row[1] for row in db.execute("PRAGMA index_list(learners)")}
        assert "learners_by_class" in indexes


def test_a_classes_table_that_is_not_kernelscopes_stops_the_migration(tmp_path):
    with contextlib.closing(sqlite3.connect(tmp_path / database.SQLITE_FILE)) as db:
        db.executescript(PREMIGRATION_SCHEMA)
        db.execute("CREATE TABLE classes (id TEXT PRIMARY KEY, teacher TEXT)")
    with pytest.raises(RuntimeError, match=r"table classes lacks columns \[.*'join_code'"):
        classroom.ClassroomStore(tmp_path)


def test_postgresql_gets_the_classroom_tables_from_the_history(postgres, tmp_path):
    url = postgres.create_database(f"rooms_{uuid.uuid4().hex[:12]}")
    classroom.ClassroomStore(tmp_path, url).close()  # the classroom alone migrates too
    engine = database.make_engine(database.database_url("", url))
    try:
        import sqlalchemy as sa

        inspector = sa.inspect(engine)
        for table in (database.classes, database.learners, database.runs, database.metrics):
            assert [column["name"] for column in inspector.get_columns(table.name)] == list(table.c.keys())
        assert "learners_by_class" in {index["name"] for index in inspector.get_indexes("learners")}
        with engine.connect() as connection:
            assert database.current_revision(connection) == database.head_revision()
    finally:
        engine.dispose()
    assert not (tmp_path / database.SQLITE_FILE).exists()  # nothing went to a local file


# ---------------------------------------------------------------- joins at the same moment


def test_joins_at_the_same_moment_never_pass_the_class_limit(database_url, tmp_path, monkeypatch):
    """Two stores (as two web processes) and 12 joins released together into a class with
    room for 3 more: exactly 3 get in; 6 joins with one name: exactly one gets it."""
    monkeypatch.setattr(limits, "MAX_LEARNERS_PER_CLASS", 5)
    stores = [classroom.ClassroomStore(tmp_path, database_url) for _ in range(2)]
    try:
        klass = stores[0].create_class("race")
        for name in ("a", "b"):
            stores[1].join(klass["join_code"], name)

        def race(names: list[str]) -> tuple[list[dict], list[str]]:
            barrier = threading.Barrier(len(names))
            joined: list[dict] = []
            refused: list[str] = []

            def one(index: int, name: str) -> None:
                barrier.wait()
                try:
                    joined.append(stores[index % 2].join(klass["join_code"], name)[0])
                except ValueError as error:
                    refused.append(str(error))

            threads = [threading.Thread(target=one, args=(i, name)) for i, name in enumerate(names)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            return joined, refused

        joined, refused = race([f"learner {i}" for i in range(12)])
        assert len(joined) == 3 and len(refused) == 9, (joined, refused)
        assert all(text.startswith("code: this class is full (5 learners at most)") for text in refused)
        assert len(stores[0].learners(klass["id"])) == 5

        monkeypatch.setattr(limits, "MAX_LEARNERS_PER_CLASS", 100)
        joined, refused = race(["Same"] * 6)
        assert len(joined) == 1 and len(refused) == 5, (joined, refused)
        assert all("name: 'Same' is taken" in text for text in refused)
        assert [learner["name"] for learner in stores[1].learners(klass["id"])].count("Same") == 1
    finally:
        for store in stores:
            store.close()


# ---------------------------------------------------------------- PostgreSQL stopped


def test_postgresql_stopped_is_503_for_classes_and_learner_tokens(tmp_path):
    server = postgres_server(tmp_path)
    try:
        settings = make_settings(tmp_path / "data", token=TOKEN, database_url=server.url)
        with TestClient(create_app(settings)) as client:
            klass = client.post("/api/classes", json={"name": "A"}, headers=TEACHER).json()
            ada = client.post("/api/classes/join", json={"code": klass["join_code"], "name": "Ada"}).json()
            client.cookies.clear()
            server.stop()
            wait_until_stopped(server)

            described = f"PostgreSQL 127.0.0.1:{server.port}/kernelscope"
            for answer in (
                client.post("/api/classes", json={"name": "B"}, headers=TEACHER),
                client.get(f"/api/classes/{klass['id']}/wall", headers=TEACHER),
                client.post("/api/classes/join", json={"code": klass["join_code"], "name": "Bob"}),
                client.get("/api/classes/me", headers=bearer(ada["token"])),  # the token is looked up first
                client.post("/api/runs", json=TINY, headers=bearer(ada["token"])),
            ):
                assert answer.status_code == 503, answer.text
                assert answer.json()["message"].startswith(f"database: {described} is unreachable")
                assert answer.json()["detail"]["database"] == described
                assert answer.headers["retry-after"] == str(limits.DATABASE_RETRY_SECONDS)
            with pytest.raises(DatabaseUnavailable):
                client.app.state.classroom.join(klass["join_code"], "Cleo")

            server.start()
            me = client.get("/api/classes/me", headers=bearer(ada["token"]))
            assert me.status_code == 200, me.text
            listed = client.get("/api/classes", headers=TEACHER).json()
            classes = listed["classes"] if isinstance(listed, dict) else listed
            assert [c["name"] for c in classes] == ["A"]  # the refused POST made nothing
            assert [learner["name"] for learner in client.app.state.classroom.learners(klass["id"])] == ["Ada"]
    finally:
        server.remove()


# ---------------------------------------------------------------- two web processes, one PostgreSQL


def test_a_class_made_on_one_web_process_is_joined_on_another_and_its_wall_read_on_the_first(postgres, tmp_path):
    url = postgres.create_database(f"rooms_{uuid.uuid4().hex[:12]}")
    env = {
        **os.environ,
        "KERNELSCOPE_DATA": str(tmp_path / "data"),  # one shared data folder, as in deploy/compose.yaml
        "KERNELSCOPE_DATABASE_URL": url,
        "KERNELSCOPE_TOKEN": TOKEN,
        "KERNELSCOPE_MAX_RUNS": "1",
    }
    processes, logs, urls = [], [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            log = open(tmp_path / f"web-{name}.log", "w")
            logs.append(log)
            processes.append(subprocess.Popen(uvicorn_command(port), env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        for name, process, base in zip(("a", "b"), processes, urls, strict=True):
            problem = wait_until_healthy(base, process, timeout=90)
            assert problem is None, f"web {name} {problem}: {(tmp_path / f'web-{name}.log').read_text()}"
        web_a, web_b = urls

        klass = httpx.post(f"{web_a}/api/classes", json={"name": "Two machines"}, headers=TEACHER, timeout=30)
        assert klass.status_code == 201, klass.text
        class_id, code = klass.json()["id"], klass.json()["join_code"]
        joined = httpx.post(f"{web_b}/api/classes/join", json={"code": code, "name": "Ada"}, timeout=30)
        assert joined.status_code == 201, joined.text
        ada = bearer(joined.json()["token"])
        taken = httpx.post(f"{web_a}/api/classes/join", json={"code": code, "name": "ADA"}, timeout=30)
        assert taken.status_code == 422 and "is taken" in taken.json()["message"]
        me = httpx.get(f"{web_a}/api/classes/me", headers=ada, timeout=30)  # B's token works on A
        assert me.status_code == 200 and me.json()["learner"]["name"] == "Ada", me.text

        started = httpx.post(f"{web_b}/api/runs", json=TINY, headers=ada, timeout=30)
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        deadline = time.monotonic() + 120
        while (run := httpx.get(f"{web_a}/api/runs/{run_id}", headers=TEACHER, timeout=30).json())[
            "status"
        ] != "completed":
            assert run["status"] in ("queued", "running"), run
            assert time.monotonic() < deadline, f"run stayed {run['status']}"
            time.sleep(0.2)

        wall = httpx.get(f"{web_a}/api/classes/{class_id}/wall", headers=TEACHER, timeout=30)
        assert wall.status_code == 200, wall.text
        [tile] = wall.json()["tiles"]
        assert (tile["name"], tile["run"]["id"], tile["run"]["status"]) == ("Ada", run_id, "completed")
        assert tile["run"]["snapshot_step"] == TINY["steps"] and tile["run"]["weight"], tile
        exported = httpx.get(f"{web_a}/api/classes/{class_id}/export.csv", headers=TEACHER, timeout=30)
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(row["learner"], row["run_id"], row["status"]) for row in rows] == [("Ada", run_id, "completed")]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        for log in logs:
            log.close()
    assert not (tmp_path / "data" / database.SQLITE_FILE).exists()  # classes and runs went to PostgreSQL
