"""A real uvicorn server in a subprocess: the event stream, kill -9 and restart, stream control."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from engine.trainer import snapshot_steps
from tests.app.conftest import LONG, TINY, read_events
from tests.live_server import free_port, uvicorn_command, wait_until_healthy

STREAM_TIMEOUT = httpx.Timeout(60.0)


class Server:
    """`python -m uvicorn app.main:create_app --factory` on a free port and a given data dir."""

    def __init__(self, data_dir, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "KERNELSCOPE_DATA": str(data_dir), "KERNELSCOPE_CHECKPOINT_EVERY": "10", **env}
        self.process = subprocess.Popen(
            uvicorn_command(self.port),
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.client = httpx.Client(base_url=self.url, timeout=STREAM_TIMEOUT)
        problem = wait_until_healthy(self.url, self.process, timeout=60, interval=0.05)
        if problem == "exited":
            raise RuntimeError(f"server exited: {self.process.stderr.read().decode()}")
        if problem == "timeout":
            raise RuntimeError("server did not answer /healthz within 60 s")

    def kill(self) -> None:
        self.client.close()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> str:
        """SIGTERM, as `docker stop` sends; returns the server's stderr after a clean exit.

        uvicorn re-raises the signal after its shutdown, so the exit status is -SIGTERM.
        """
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        errors = self.process.stderr.read().decode()
        assert self.process.returncode in (0, -signal.SIGTERM), errors
        assert "Traceback" not in errors, errors
        return errors


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data")
    yield running
    running.stop()


def test_kill_9_mid_run_then_restart_finds_it_interrupted_and_resumes_to_completion(tmp_path):
    data_dir = tmp_path / "data"
    first = Server(data_dir)
    run_id = first.client.post("/api/runs", json={**TINY, "steps": 120}).json()["id"]
    seen_steps: list[int] = []
    kinds: list[str] = []
    ids: list[int] = []
    with first.client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_events(response):
            kinds.append(event["event"])
            ids.append(event["id"])
            if event["event"] == "metrics":
                seen_steps += [p["step"] for p in event["data"]["points"]]
            if seen_steps and seen_steps[-1] >= 30 and "snapshot" in kinds:
                break
    assert kinds[0] == "status"
    assert ids == sorted(set(ids)), "event ids increase"
    first.kill()  # SIGKILL: no shutdown, no last checkpoint

    second = Server(data_dir)
    try:
        run = second.client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "interrupted"
        steps = second.client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
        assert {0, 10, 20, 30} <= set(steps)
        assert steps == [step for step in snapshot_steps(run["config"]) if step <= steps[-1]]
        assert second.client.get(f"/api/runs/{run_id}/snapshots/20?feature_maps=0").json()["step"] == 20

        assert second.client.post(f"/api/runs/{run_id}/resume").status_code == 200
        final = None
        # reconnect as a browser would, after the last id seen before the kill
        headers = {"Last-Event-ID": str(ids[-1])}
        with second.client.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as response:
            for event in read_events(response):
                if event["event"] == "metrics":
                    seen_steps += [p["step"] for p in event["data"]["points"]]
                if event["event"] == "status" and event["data"]["status"] in ("completed", "failed"):
                    final = event["data"]
                    break
        assert final["status"] == "completed" and final["step"] == 120
        # every step was seen; steps after the last checkpoint were trained (and sent) again
        assert set(seen_steps) == set(range(1, 121))
        points = second.client.get(f"/api/runs/{run_id}/metrics").json()["points"]
        assert [p["step"] for p in points] == list(range(1, 121))
        assert second.client.get(f"/api/runs/{run_id}/snapshots").json()["steps"] == snapshot_steps(run["config"])
    finally:
        second.stop()


def test_pause_resume_stop_are_seen_on_the_event_stream(server):
    run_id = server.client.post("/api/runs", json=LONG).json()["id"]
    statuses: list[str] = []
    steps_after_pause: list[int] = []
    requested: list[str] = []
    paused_at = None

    def request(action: str) -> None:
        requested.append(action)
        assert server.client.post(f"/api/runs/{run_id}/{action}").status_code == 200

    with server.client.stream("GET", f"/api/runs/{run_id}/events") as response:
        for event in read_events(response):
            if event["event"] == "status":
                statuses.append(event["data"]["status"])
                if event["data"]["status"] == "paused":
                    paused_at = event["data"]["step"]
                    request("resume")
                if event["data"]["status"] == "stopped":
                    break
            elif event["event"] == "metrics":
                last = event["data"]["points"][-1]["step"]
                if not requested and last >= 5:
                    request("pause")
                elif paused_at is not None:
                    steps_after_pause.append(last)
                    if last >= paused_at + 5 and "stop" not in requested:
                        request("stop")
    assert statuses[0] == "running"
    assert statuses.index("paused") < statuses.index("stopped")
    assert "running" in statuses[statuses.index("paused") :]
    assert steps_after_pause and min(steps_after_pause) > paused_at  # training went on from where it paused


def test_last_event_id_replays_missed_metrics_without_gaps(server):
    run_id = server.client.post("/api/runs", json={**TINY, "steps": 80}).json()["id"]
    steps: list[int] = []
    last_id = None
    with server.client.stream("GET", f"/api/runs/{run_id}/events") as response:
        for event in read_events(response):
            last_id = event["id"]
            if event["event"] == "metrics":
                steps += [p["step"] for p in event["data"]["points"]]
                if steps[-1] >= 10:
                    break
    time.sleep(0.5)  # the run goes on while this viewer is away
    with server.client.stream("GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(last_id)}) as response:
        ids = []
        for event in read_events(response):
            ids.append(event["id"])
            if event["event"] == "metrics":
                steps += [p["step"] for p in event["data"]["points"]]
            if event["event"] == "status" and event["data"]["status"] == "completed":
                break
    assert ids == sorted(set(ids)) and ids[0] > last_id
    assert steps == list(range(1, 81))  # each step exactly once, in order


def test_a_new_viewer_first_gets_status_then_latest_snapshot(server):
    run_id = server.client.post("/api/runs", json=TINY).json()["id"]
    deadline = time.monotonic() + 60
    while server.client.get(f"/api/runs/{run_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with server.client.stream("GET", f"/api/runs/{run_id}/events") as response:
        events = read_events(response)
        status, snapshot = next(events), next(events)
    assert status["event"] == "status" and status["data"]["status"] == "completed"
    assert snapshot["event"] == "snapshot" and snapshot["data"]["step"] == TINY["steps"]
    assert snapshot["id"] > status["id"]
    assert "feature_maps" not in snapshot["data"]["snapshot"]["layers"][0]
    assert snapshot["data"]["snapshot"]["layers"][0]["shape"] == [8, 1, 3, 3]
    # the probe images, the same in every snapshot, come from GET .../snapshots/{step}, not with each event
    assert "probes" not in snapshot["data"]["snapshot"]
    stored = server.client.get(f"/api/runs/{run_id}/snapshots/{TINY['steps']}?feature_maps=0").json()
    assert len(stored["probes"]) == len(stored["probe_labels"]) > 0
    assert {key: value for key, value in stored.items() if key != "probes"} == snapshot["data"]["snapshot"]


def test_sigterm_with_a_viewer_open_checkpoints_and_exits_quickly(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    run_id = server.client.post("/api/runs", json=LONG).json()["id"]
    viewer = httpx.Client(base_url=server.url, timeout=STREAM_TIMEOUT)
    with viewer.stream("GET", f"/api/runs/{run_id}/events") as response:
        for event in read_events(response):
            if event["event"] == "metrics" and event["data"]["points"][-1]["step"] >= 5:
                break
        server.stop()
    viewer.close()
    again = Server(data_dir)
    try:
        run = again.client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "interrupted"
        checkpoint_step = int(__import__("numpy").load(data_dir / "runs" / run_id / "checkpoint.npz")["step"])
        assert checkpoint_step == run["step"] >= 5  # the shutdown checkpoint holds the last step
    finally:
        again.stop()


def test_kernelscope_serve_answers_and_ctrl_c_stops_it(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout=60, interval=0.05) is None
        assert (tmp_path / "data" / "kernelscope.db").is_file()  # --data reached the app
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert "Traceback" not in process.stderr.read().decode()


def test_ctrl_c_in_kernelscope_train_leaves_a_run_the_server_resumes(tmp_path):
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "train",
            "--preset",
            "small",
            "--steps",
            "100000",
            "--batch-size",
            "8",
            "--snapshot-every",
            "50",
            "--dataset",
            '{"name": "shapes", "n_train": 256, "n_val": 64}',
            "--data",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    from app.store import Store

    def stored_runs():
        if not (data_dir / "kernelscope.db").exists():
            return []
        store = Store(data_dir)
        try:
            return store.list_runs()
        finally:
            store.close()

    deadline = time.monotonic() + 60
    while True:
        runs = stored_runs()
        if runs and runs[0]["step"] >= 20:
            break
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "interrupted" in output

    server = Server(data_dir)
    try:
        (run,) = server.client.get("/api/runs").json()["runs"]
        assert run["status"] == "interrupted" and run["step"] >= 20
        assert server.client.post(f"/api/runs/{run['id']}/resume").status_code == 200
        deadline = time.monotonic() + 60
        while server.client.get(f"/api/runs/{run['id']}").json()["step"] <= run["step"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.client.post(f"/api/runs/{run['id']}/stop")
    finally:
        server.stop()
