"""Run lifecycle through the API: pause/resume/stop, queue, delete, dead workers, recovery, CLI."""

from __future__ import annotations

import os
import signal

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.store import Store
from engine.trainer import snapshot_steps
from tests.app.conftest import LONG, TINY, make_settings, wait_for, wait_for_step


def test_pause_resume_stop_then_resume_to_completion(client):
    run_id = client.post("/api/runs", json={**LONG, "steps": 3000}).json()["id"]
    wait_for_step(client, run_id, 5)

    paused = client.post(f"/api/runs/{run_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    held = paused.json()["step"]
    assert client.get(f"/api/runs/{run_id}").json()["step"] == held  # nothing trains while paused
    assert client.post(f"/api/runs/{run_id}/pause").status_code == 409

    resumed = client.post(f"/api/runs/{run_id}/resume")
    assert resumed.json()["status"] == "running"
    wait_for_step(client, run_id, held + 5)

    stopped = client.post(f"/api/runs/{run_id}/stop").json()
    assert stopped["status"] == "stopped"
    assert client.app.state.store.read_checkpoint(run_id)["step"] == stopped["step"]

    # a stopped run continues from its checkpoint, and its history stays one timeline
    again = client.post(f"/api/runs/{run_id}/resume")
    assert again.status_code == 200 and again.json()["status"] in ("queued", "running")
    client.post(f"/api/runs/{run_id}/stop")
    run = client.get(f"/api/runs/{run_id}").json()
    points = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
    assert [p["step"] for p in points] == list(range(1, run["step"] + 1))  # no gap, no repeat


def test_resumed_run_ends_exactly_where_an_uninterrupted_one_does(client):
    straight = client.post("/api/runs", json={**TINY, "steps": 40}).json()["id"]
    broken = client.post("/api/runs", json={**TINY, "steps": 40, "snapshot_every": 5}).json()["id"]
    wait_for_step(client, broken, 3)
    client.post(f"/api/runs/{broken}/stop")
    client.post(f"/api/runs/{broken}/resume")
    wait_for(client, straight, "completed")
    wait_for(client, broken, "completed")
    store = client.app.state.store
    a = store.read_snapshot_params(straight, 40)
    b = store.read_snapshot_params(broken, 40)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_runs_beyond_the_limit_wait_queued_and_the_queue_is_bounded(data_dir):
    with TestClient(create_app(make_settings(data_dir, max_runs=1, max_queued=1))) as client:
        first = client.post("/api/runs", json=LONG).json()
        second = client.post("/api/runs", json=TINY).json()
        assert first["status"] == "running"
        assert second["status"] == "queued" and second["queue_position"] == 1
        full = client.post("/api/runs", json=TINY)
        assert full.status_code == 429 and "KERNELSCOPE_MAX_QUEUED" in full.json()["message"]
        client.post(f"/api/runs/{first['id']}/stop")
        wait_for(client, second["id"], "completed")  # the freed slot went to the queued run


def test_stopping_a_queued_run_removes_it_from_the_queue(data_dir):
    with TestClient(create_app(make_settings(data_dir, max_runs=1))) as client:
        first = client.post("/api/runs", json=LONG).json()
        second = client.post("/api/runs", json=TINY).json()
        stopped = client.post(f"/api/runs/{second['id']}/stop").json()
        assert stopped["status"] == "stopped" and stopped["queue_position"] is None
        client.post(f"/api/runs/{first['id']}/stop")
        assert client.get(f"/api/runs/{second['id']}").json()["status"] == "stopped"


def test_delete_removes_rows_and_files_even_while_training(client):
    run_id = client.post("/api/runs", json=LONG).json()["id"]
    wait_for_step(client, run_id, 3)
    folder = client.app.state.store.run_dir(run_id)
    assert folder.is_dir()
    assert client.delete(f"/api/runs/{run_id}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/api/runs/{run_id}").status_code == 404
    assert client.get(f"/api/runs/{run_id}/metrics").status_code == 404
    assert client.get("/api/runs").json()["runs"] == []


def test_a_killed_worker_ends_failed_and_the_server_carries_on(client):
    run_id = client.post("/api/runs", json=LONG).json()["id"]
    wait_for_step(client, run_id, 3)
    process = client.app.state.manager._workers[run_id].process
    os.kill(process.pid, signal.SIGKILL)
    run = wait_for(client, run_id, "failed")
    assert "exited unexpectedly" in run["message"] and "-9" in run["message"]
    other = client.post("/api/runs", json=TINY).json()["id"]
    wait_for(client, other, "completed")
    # a failed run resumes from its last checkpoint
    assert client.post(f"/api/runs/{run_id}/resume").status_code == 200
    client.post(f"/api/runs/{run_id}/stop")


def test_diverging_run_ends_diverged_with_its_step(client):
    body = {**TINY, "optimizer": {"name": "sgd", "lr": 10.0, "momentum": 0.9}, "steps": 200}
    run = wait_for(client, client.post("/api/runs", json=body).json()["id"], {"diverged", "completed"})
    assert run["status"] == "diverged"
    assert "diverged at step" in run["message"]


def test_restart_marks_unfinished_runs_interrupted_and_resume_continues(data_dir):
    settings = make_settings(data_dir)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json={**LONG, "steps": 100}).json()["id"]
        wait_for_step(client, run_id, 25)
    # the clean shutdown checkpointed the run and left it resumable
    with TestClient(create_app(settings)) as client:
        run = client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "interrupted"
        assert client.get(f"/api/runs/{run_id}/snapshots").json()["steps"][0] == 0
        assert client.post(f"/api/runs/{run_id}/resume").status_code == 200
        done = wait_for(client, run_id, "completed", timeout=120)
        assert done["step"] == 100
        points = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
        assert [p["step"] for p in points] == list(range(1, 101))


def test_runs_left_running_by_a_dead_server_are_interrupted_at_startup(data_dir):
    store = Store(data_dir)
    for status in ("running", "queued", "paused"):
        store.create_run({"steps": 10}, status=status, owner_pid=999_999_999)
    store.create_run({"steps": 10}, status="completed")
    store.close()
    with TestClient(create_app(make_settings(data_dir))) as client:
        statuses = sorted(run["status"] for run in client.get("/api/runs").json()["runs"])
        assert statuses == ["completed", "interrupted", "interrupted", "interrupted"]


def test_cli_train_stores_a_run_the_server_lists(data_dir):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "train",
            "--preset",
            "small",
            "--steps",
            "20",
            "--batch-size",
            "8",
            "--snapshot-every",
            "10",
            "--dataset",
            '{"name": "shapes", "n_train": 256, "n_val": 64}',
            "--init",
            '{"name": "normal", "std": 0.02}',
            "--data",
            str(data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "completed at step 20" in result.output
    listed = runner.invoke(cli, ["runs", "--data", str(data_dir)])
    assert listed.exit_code == 0
    # piped, the list is tab-separated with whole values (a table cut to 80 columns would read "glo…")
    header, line = [row.split("\t") for row in listed.output.strip().splitlines()]
    assert header == ["id", "status", "step", "model", "init", "loss", "acc", "val_acc", "created"]
    row = dict(zip(header, line))
    assert (row["status"], row["step"], row["model"], row["init"]) == ("completed", "20/20", "small", "normal")
    with TestClient(create_app(make_settings(data_dir))) as client:
        (run,) = client.get("/api/runs").json()["runs"]
        assert run["status"] == "completed" and run["step"] == 20
        assert run["config"]["init"] == {"name": "normal", "std": 0.02}
        assert client.get(f"/api/runs/{run['id']}/snapshots").json()["steps"] == snapshot_steps(run["config"])
        assert len(client.get(f"/api/runs/{run['id']}/metrics").json()["points"]) == 20


def test_cli_train_rejects_a_bad_option_naming_it(data_dir):
    result = CliRunner().invoke(cli, ["train", "--steps", "-5", "--data", str(data_dir)])
    assert result.exit_code == 2
    assert "steps" in result.output


def test_training_processes_run_at_a_lower_priority_than_the_api(client):
    run_id = client.post("/api/runs", json=LONG).json()["id"]
    wait_for_step(client, run_id, 1)
    pid = client.app.state.manager._workers[run_id].process.pid
    with open(f"/proc/{pid}/stat") as f:
        worker_nice = int(f.read().rsplit(")", 1)[1].split()[16])
    assert worker_nice == os.getpriority(os.PRIO_PROCESS, 0) + client.app.state.settings.worker_nice > 0
    client.post(f"/api/runs/{run_id}/stop")


def test_a_run_process_is_a_fork_of_the_forkserver_that_preloaded_the_engine(client):
    """A run starts in milliseconds: its process is forked from one forkserver (started with the
    server) that imported app.worker, numpy and the engine once, instead of being a fresh
    interpreter that imports them again for every run (about 0.35 s of CPU each)."""
    run_id = client.post("/api/runs", json={**LONG, "steps": 3000}).json()["id"]
    wait_for_step(client, run_id, 1)
    pid = client.app.state.manager._workers[run_id].process.pid
    parent = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()
    assert b"forkserver" in open(f"/proc/{parent}/cmdline", "rb").read()
    assert "_multiarray_umath" in open(f"/proc/{parent}/maps").read()  # numpy was loaded before the fork
    client.post(f"/api/runs/{run_id}/stop")


def test_a_resume_removes_the_snapshots_past_the_checkpoint_before_the_run_starts(data_dir):
    """A killed run resumes from its last checkpoint (none here: from step 0); the snapshots it
    stored after that are gone as soon as the resume is answered, also while the run waits
    queued: a page that opens its stream meanwhile is never handed one of them as the newest
    (and then a 404 for it)."""
    with TestClient(create_app(make_settings(data_dir, checkpoint_every=1_000_000))) as client:
        run_id = client.post("/api/runs", json={**LONG, "snapshot_every": 5}).json()["id"]
        wait_for_step(client, run_id, 30)
        os.kill(client.app.state.manager._workers[run_id].process.pid, signal.SIGKILL)
        wait_for(client, run_id, "failed")
        assert client.app.state.store.read_checkpoint(run_id) is None
        assert client.get(f"/api/runs/{run_id}/snapshots").json()["steps"][-1] > 0  # the dense early ones
        # both slots busy: the resumed run waits queued, its process not started
        others = [client.post("/api/runs", json=LONG).json()["id"] for _ in range(2)]
        for other in others:
            wait_for_step(client, other, 1)
        assert client.post(f"/api/runs/{run_id}/resume").json()["status"] == "queued"
        assert client.get(f"/api/runs/{run_id}/snapshots").json()["steps"] == [0]
        assert client.app.state.manager.latest_snapshot_step(run_id) == 0
        for run in [run_id, *others]:
            client.post(f"/api/runs/{run}/stop")
