"""A class: join codes, learner tokens, who may change which run, quotas, the wall, assignments, the CSV.

The server here has a token (the teacher's); two learners of one class and one
of another class act on each other's runs through every state-changing route.
Every test runs on both backends of app/database.py: the SQLite file and a real PostgreSQL
(tests/services_pg.py, a fresh database per test; skipped without it, failing under CI=true).
"""

from __future__ import annotations

import base64
import csv
import io
import time

import pytest
from fastapi.testclient import TestClient

from app import classroom, limits
from app.main import create_app
from tests.app.conftest import LONG, TEACHER, TERMINAL, TINY, TOKEN, bearer, make_settings


@pytest.fixture
def server(data_dir, database_url):
    settings = make_settings(data_dir, token=TOKEN, max_runs=3, max_queued=8, database_url=database_url)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def client(data_dir, database_url):
    """conftest's open server (no token), on both backends."""
    with TestClient(create_app(make_settings(data_dir, database_url=database_url))) as test_client:
        yield test_client


def make_class(client, name="Class A", **quotas) -> dict:
    response = client.post("/api/classes", json={"name": name, **quotas}, headers=TEACHER)
    assert response.status_code == 201, response.text
    return response.json()


def join(client, code: str, name: str) -> dict:
    response = client.post("/api/classes/join", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    client.cookies.clear()  # each learner sends their own token; the jar would mix them up
    return response.json()


def wait_until(client, run_id: str, done, timeout: float = 120.0) -> dict:
    """Poll the run (as the teacher: class runs are not for anonymous readers) until done(run)."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/runs/{run_id}", headers=TEACHER).json()
        if done(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never got there: {run}")
        time.sleep(0.05)


def wait_for(client, run_id: str, status: str) -> dict:
    return wait_until(
        client, run_id, lambda run: run["status"] == status or (run["status"] in TERMINAL and status not in TERMINAL)
    )


def start(client, token_headers, config=LONG) -> dict:
    response = client.post("/api/runs", json=config, headers=token_headers)
    assert response.status_code == 201, response.text
    return response.json()


# ---------------------------------------------------------------- join codes and tokens


def test_a_learner_joins_with_the_code_and_gets_a_long_random_token(server):
    klass = make_class(server)
    assert len(klass["join_code"]) == limits.JOIN_CODE_LENGTH
    joined = join(server, klass["join_code"].lower(), "Ada")  # codes are read case-insensitively
    learner_id, _, secret = joined["token"].partition(".")
    assert learner_id == joined["learner"]["id"]
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) * 8 >= 128
    me = server.get("/api/classes/me", headers=bearer(joined["token"])).json()
    assert me["role"] == "learner" and me["learner"]["name"] == "Ada" and me["class"]["id"] == klass["id"]
    assert "join_code" not in me["class"]  # only the teacher sees the code
    other = join(server, klass["join_code"], "Grace")
    assert other["token"] != joined["token"]


def test_a_wrong_join_code_is_401_after_a_pause(server):
    make_class(server)
    began = time.monotonic()
    response = server.post("/api/classes/join", json={"code": "WRONGCODE1", "name": "Eve"})
    assert response.status_code == 401
    assert time.monotonic() - began >= limits.JOIN_FAIL_DELAY_SECONDS
    assert "join code" in response.json()["message"]


def test_display_names_are_length_limited_and_unique_in_a_class(server):
    code = make_class(server)["join_code"]
    too_long = server.post("/api/classes/join", json={"code": code, "name": "x" * (limits.MAX_DISPLAY_NAME_LENGTH + 1)})
    assert too_long.status_code == 422 and too_long.json()["message"].startswith("name")
    control = server.post("/api/classes/join", json={"code": code, "name": "a\u0007b"})
    assert control.status_code == 422 and "control" in control.json()["message"]
    join(server, code, "Ada")
    taken = server.post("/api/classes/join", json={"code": code, "name": "ada"})
    assert taken.status_code == 422 and "taken" in taken.json()["message"]


def test_script_names_come_back_as_text_in_json_and_csv(server):
    klass = make_class(server, name="<script>alert('class')</script>")
    name = "<script>alert(1)</script>"
    joined = join(server, klass["join_code"], name)
    assert joined["learner"]["name"] == name  # JSON carries it verbatim; the page sets it as text
    page = server.get(f"/class/{klass['id']}").text
    assert "<script>alert" not in page
    rows = list(csv.reader(io.StringIO(server.get(f"/api/classes/{klass['id']}/export.csv", headers=TEACHER).text)))
    assert rows[1][0] == name


def test_a_formula_name_is_defused_in_the_csv(server):
    klass = make_class(server)
    join(server, klass["join_code"], "=HYPERLINK(1)")
    rows = list(csv.reader(io.StringIO(server.get(f"/api/classes/{klass['id']}/export.csv", headers=TEACHER).text)))
    assert rows[1][0] == "'=HYPERLINK(1)"


def test_only_the_teacher_creates_classes_and_pushes_assignments(server):
    klass = make_class(server)
    token = join(server, klass["join_code"], "Ada")["token"]
    assert server.post("/api/classes", json={"name": "mine"}).status_code == 401  # no token at all
    refused = server.post("/api/classes", json={"name": "mine"}, headers=bearer(token))
    assert refused.status_code == 403 and "teacher" in refused.json()["message"]
    assert server.post("/api/classes", json={"name": "x", "max_queued": 0}, headers=TEACHER).status_code == 422
    pushed = {"title": "zeros vs he", "hash": "#init=zeros&steps=200"}
    assert server.put(f"/api/classes/{klass['id']}/assignment", json=pushed, headers=bearer(token)).status_code == 403
    assert server.put(f"/api/classes/{klass['id']}/assignment", json=pushed, headers=TEACHER).status_code == 200
    me = server.get("/api/classes/me", headers=bearer(token)).json()
    assert me["class"]["assignment"] == {"title": "zeros vs he", "hash": "init=zeros&steps=200"}
    assert server.get(f"/api/classes/{klass['id']}/export.csv", headers=bearer(token)).status_code == 403


def test_a_bogus_bearer_token_is_401_on_a_server_with_a_token(server):
    assert server.post("/api/runs", json=TINY, headers=bearer("nobody.nothing")).status_code == 401


# ---------------------------------------------------------------- ownership


def test_learners_control_only_their_own_runs_and_the_teacher_controls_all(server):
    klass = make_class(server, max_training=2, max_queued=3)
    ada = bearer(join(server, klass["join_code"], "Ada")["token"])
    bob = bearer(join(server, klass["join_code"], "Bob")["token"])
    run = start(server, ada)
    run_id = run["id"]
    assert run["meta"]["owner"]["name"] == "Ada"
    wait_until(server, run_id, lambda run: run["step"] >= 1)

    attempts = {
        "pause": lambda h: server.post(f"/api/runs/{run_id}/pause", headers=h),
        "resume": lambda h: server.post(f"/api/runs/{run_id}/resume", headers=h),
        "stop": lambda h: server.post(f"/api/runs/{run_id}/stop", headers=h),
        "fork": lambda h: server.post(f"/api/runs/{run_id}/fork", json={}, headers=h),
        "kernel": lambda h: server.put(f"/api/runs/{run_id}/kernels/0/0", json={"kernel": "x"}, headers=h),
        "delete": lambda h: server.delete(f"/api/runs/{run_id}", headers=h),
    }
    for route, attempt in attempts.items():
        response = attempt(bob)
        assert response.status_code == 403, (route, response.text)
        assert "not yours" in response.json()["message"]
    # Bob reads Ada's run all the same
    assert server.get(f"/api/runs/{run_id}", headers=bob).status_code == 200
    assert run_id in [r["id"] for r in server.get("/api/runs", headers=bob).json()["runs"]]

    # Ada controls it
    assert attempts["kernel"](ada).status_code == 200
    assert attempts["pause"](ada).json()["status"] == "paused"
    assert attempts["resume"](ada).json()["status"] in ("running", "queued")
    fork = attempts["fork"](ada)
    assert fork.status_code == 201 and fork.json()["meta"]["owner"]["name"] == "Ada"
    # the teacher controls both
    assert server.post(f"/api/runs/{fork.json()['id']}/stop", headers=TEACHER).status_code == 200
    assert attempts["pause"](TEACHER).json()["status"] == "paused"
    assert attempts["stop"](ada).json()["status"] == "stopped"
    assert attempts["delete"](ada).status_code == 204
    assert server.delete(f"/api/runs/{fork.json()['id']}", headers=TEACHER).status_code == 204


def test_a_learner_cannot_reach_another_class_runs_by_id(server):
    first = make_class(server, name="A")
    second = make_class(server, name="B")
    ada = bearer(join(server, first["join_code"], "Ada")["token"])
    cleo = bearer(join(server, second["join_code"], "Cleo")["token"])
    run_id = start(server, ada, TINY)["id"]
    teachers_run = start(server, TEACHER, TINY)["id"]  # no class: everyone reads it
    for path in (
        f"/api/runs/{run_id}",
        f"/api/runs/{run_id}/metrics",
        f"/api/runs/{run_id}/snapshots",
        f"/api/runs/{run_id}/events",
    ):
        assert server.get(path, headers=cleo).status_code == 404, path
    assert server.post(f"/api/runs/{run_id}/stop", headers=cleo).status_code == 404
    listed = [r["id"] for r in server.get("/api/runs", headers=cleo).json()["runs"]]
    assert run_id not in listed and teachers_run in listed
    assert server.get(f"/api/classes/{first['id']}", headers=cleo).status_code == 404
    assert server.get(f"/api/classes/{first['id']}/wall", headers=cleo).status_code == 404
    # anonymous readers (this server has a token) do not see class runs either; the teacher does
    assert server.get(f"/api/runs/{run_id}").status_code == 404
    assert server.get(f"/api/runs/{run_id}", headers=TEACHER).status_code == 200
    # a learner may not control a run outside any class
    assert server.post(f"/api/runs/{teachers_run}/stop", headers=ada).status_code == 403


def test_the_session_cookie_reads_as_the_learner_but_never_writes(server):
    klass = make_class(server)
    response = server.post("/api/classes/join", json={"code": klass["join_code"], "name": "Ada"})
    token = response.json()["token"]
    assert classroom.SESSION_COOKIE in response.cookies
    run_id = start(server, bearer(token), TINY)["id"]
    # the client's jar now carries the cookie: reads are Ada's ...
    assert server.get(f"/api/runs/{run_id}").status_code == 200
    assert server.get("/api/classes/me").json()["role"] == "learner"
    # ... but a state-changing request needs the header
    assert server.post(f"/api/runs/{run_id}/stop").status_code == 401


# ---------------------------------------------------------------- quotas


def test_a_learner_over_quota_gets_429_naming_the_limit_with_retry_after(server):
    klass = make_class(server, max_training=1, max_queued=1)
    ada = bearer(join(server, klass["join_code"], "Ada")["token"])
    bob = bearer(join(server, klass["join_code"], "Bob")["token"])
    first = start(server, ada)
    assert first["status"] == "running"
    second = start(server, ada)
    assert second["status"] == "queued"  # the server has free slots, but Ada is at max_training
    refused = server.post("/api/runs", json=LONG, headers=ada)
    assert refused.status_code == 429
    assert "max_queued" in refused.json()["message"] and "1 training" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) == limits.QUOTA_RETRY_AFTER_SECONDS
    comparison = server.post("/api/comparisons", json={"base": LONG, "inits": ["zeros", "he_normal"]}, headers=ada)
    assert comparison.status_code == 429
    # another learner is not held by Ada's quota, and the teacher has none
    assert start(server, bob)["status"] == "running"
    assert server.post("/api/runs", json=LONG, headers=TEACHER).status_code == 201
    # when Ada's first run stops, her queued one starts
    server.post(f"/api/runs/{first['id']}/stop", headers=ada)
    assert wait_for(server, second["id"], "running")["status"] == "running"
    # resuming counts like starting: Ada fills her queue, then cannot resume the stopped one
    assert start(server, ada)["status"] == "queued"
    resumed = server.post(f"/api/runs/{first['id']}/resume", headers=ada)
    assert resumed.status_code == 429 and "max_queued" in resumed.json()["message"]
    for run in server.get("/api/runs", headers=TEACHER).json()["runs"]:
        if run["status"] in ("running", "queued", "paused"):
            server.post(f"/api/runs/{run['id']}/stop", headers=TEACHER)


# ---------------------------------------------------------------- the wall and the export


def test_the_wall_has_one_tile_per_learner_with_conv1_and_the_same_step(server):
    klass = make_class(server)
    ada = bearer(join(server, klass["join_code"], "Ada")["token"])
    join(server, klass["join_code"], "Bob")
    run_id = start(server, ada, {**TINY, "init": "zeros"})["id"]
    wait_for(server, run_id, "completed")
    wall = server.get(f"/api/classes/{klass['id']}/wall", headers=ada).json()
    tiles = {tile["name"]: tile for tile in wall["tiles"]}
    assert set(tiles) == {"Ada", "Bob"} and tiles["Bob"]["run"] is None
    ada_tile = tiles["Ada"]["run"]
    assert ada_tile["init"] == "zeros" and ada_tile["snapshot_step"] == TINY["steps"]
    assert len(ada_tile["weight"]) > 0 and ada_tile["symmetry"] is not None
    at_zero = server.get(f"/api/classes/{klass['id']}/wall?step=0", headers=TEACHER).json()
    zero_tile = next(t for t in at_zero["tiles"] if t["name"] == "Ada")["run"]
    assert zero_tile["snapshot_step"] == 0
    assert all(w == 0 for f in zero_tile["weight"] for c in f for row in c for w in row)  # zeros at step 0

    rows = list(csv.DictReader(io.StringIO(server.get(f"/api/classes/{klass['id']}/export.csv", headers=TEACHER).text)))
    ada_row = next(row for row in rows if row["learner"] == "Ada")
    assert ada_row["run_id"] == run_id and ada_row["init"] == "zeros" and ada_row["status"] == "completed"
    assert ada_row["final_val_acc"] != "" and ada_row["conv1_detectors"].isdigit()
    assert next(row for row in rows if row["learner"] == "Bob")["run_id"] == ""


def test_the_wall_stream_sends_only_changed_tiles(server, data_dir):
    from app.routes.classes import _changed_tiles

    klass = make_class(server)
    ada = bearer(join(server, klass["join_code"], "Ada")["token"])
    join(server, klass["join_code"], "Bob")
    app = server.app
    seen: dict = {}
    first = _changed_tiles(app.state.store, app.state.classroom, klass["id"], seen)
    assert sorted(t["name"] for t in first) == ["Ada", "Bob"]
    assert _changed_tiles(app.state.store, app.state.classroom, klass["id"], seen) == []
    run_id = start(server, ada, TINY)["id"]
    wait_for(server, run_id, "completed")
    changed = _changed_tiles(app.state.store, app.state.classroom, klass["id"], seen)
    assert [t["name"] for t in changed] == ["Ada"] and changed[0]["run"]["id"] == run_id


def test_without_a_token_the_server_is_open_as_before_but_learner_tokens_still_bind(client):
    klass = client.post("/api/classes", json={"name": "open"}).json()  # no server token: anyone is the teacher
    ada = bearer(join(client, klass["join_code"], "Ada")["token"])
    bob = bearer(join(client, klass["join_code"], "Bob")["token"])
    run_id = start(client, ada, TINY)["id"]
    assert client.post(f"/api/runs/{run_id}/stop", headers=bob).status_code == 403
    assert client.get(f"/api/runs/{run_id}").status_code == 200


def test_the_class_command_creates_lists_and_exports(tmp_path, database_url, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import cli

    if database_url is not None:
        monkeypatch.setenv("KERNELSCOPE_DATABASE_URL", database_url)
    runner = CliRunner()
    data = str(tmp_path / "data")
    created = runner.invoke(cli, ["class", "create", "Kernels 101", "--max-queued", "2", "--data", data])
    assert created.exit_code == 0, created.output
    code = created.output.split("join code: ")[1].split()[0]
    class_id = created.output.split("class ")[1].split(":")[0]
    listed = runner.invoke(cli, ["class", "list", "--data", data])
    assert class_id in listed.output and "queued<=2" in listed.output
    rooms = classroom.ClassroomStore(data, database_url)
    rooms.join(code, "Ada")
    rooms.close()
    exported = runner.invoke(cli, ["class", "export", class_id, "--data", data])
    assert exported.exit_code == 0 and exported.output.splitlines()[1].startswith("Ada,")
    assert runner.invoke(cli, ["class", "export", "nope", "--data", data]).exit_code == 2
    assert runner.invoke(cli, ["class", "create", " ", "--data", data]).exit_code == 2
