"""Faults: kill -9 at any moment loses no run and leaves nothing that breaks a later start.

The server test runs real uvicorn processes on loopback: it starts runs, kills
the server with SIGKILL at a random moment (while requests are in flight and
workers write snapshots and checkpoints), restarts it, ten times in a row, and
then checks that every run is listed, every stored snapshot loads, and every
run resumes to the end with one consistent history. The file test kills a
process in the middle of atomic writes. (A killed worker ending `failed` and a
diverging run ending `diverged` are tested in tests/app/test_runs.py.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest

from app import store as files
from engine.trainer import snapshot_steps
from tests.live_server import free_port, uvicorn_command, wait_until_healthy

STEPS = 40
SNAPSHOT_EVERY = 5
MAX_RUNS_CREATED = 5
RUN = {
    "model": "small",
    "dataset": {"name": "shapes", "n_train": 256, "n_val": 64},
    "batch_size": 8,
    "steps": STEPS,
    "snapshot_every": SNAPSHOT_EVERY,
    "eval_every": 30,
}
KILLS = 10


class Server:
    """One uvicorn process (in its own session, so its orphaned workers can be cleaned up)."""

    def __init__(self, data_dir):
        self.port = free_port()
        env = {
            **os.environ,
            "KERNELSCOPE_DATA": str(data_dir),
            "KERNELSCOPE_CHECKPOINT_EVERY": "10",
            "KERNELSCOPE_MAX_RUNS": "2",
            "KERNELSCOPE_MAX_QUEUED": "32",
        }
        env.pop("KERNELSCOPE_TOKEN", None)
        self.process = subprocess.Popen(
            uvicorn_command(self.port),
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=10.0)
        problem = wait_until_healthy(self.url, self.process, timeout=60)
        if problem == "exited":
            raise AssertionError(f"server exited at start: {self.process.stderr.read().decode()[-3000:]}")
        if problem == "timeout":
            raise AssertionError("server did not answer /healthz within 60 s")

    def kill(self) -> None:
        """SIGKILL the server. Its client stays open: a thread still using it then sees the
        server gone (a transport error), not a closed client."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def session_processes(self) -> list[int]:
        """Processes still alive in this server's session (its training processes, once it is gone)."""
        alive = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.process.pid:
                        with open(f"/proc/{entry}/stat") as stat:
                            if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                                alive.append(int(entry))
                except (ProcessLookupError, PermissionError, FileNotFoundError):
                    pass
        return alive

    def kill_session(self) -> None:
        """SIGKILL whatever is left of this server's session (its orphaned training processes)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _busy_until_killed(server: Server, created: list[str], rng: random.Random, stop: threading.Event) -> None:
    """Keep the server busy (create, resume, read) until it dies; remember the runs it confirmed."""
    while not stop.is_set():
        try:
            choice = rng.random()
            if choice < 0.25 and len(created) < MAX_RUNS_CREATED:
                response = server.client.post("/api/runs", json={**RUN, "seed": rng.randrange(1000)})
                if response.status_code == 201:
                    created.append(response.json()["id"])
            elif choice < 0.5:
                for run in server.client.get("/api/runs").json()["runs"]:
                    if run["status"] in ("interrupted", "failed"):
                        server.client.post(f"/api/runs/{run['id']}/resume")
            else:
                for run_id in created[-3:]:
                    server.client.get(f"/api/runs/{run_id}/snapshots/latest")
                    server.client.get(f"/api/runs/{run_id}/metrics")
        except (httpx.TransportError, json.JSONDecodeError):
            return
        time.sleep(rng.uniform(0.0, 0.1))


def _wait_all_done(client: httpx.Client, ids: list[str], timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = {run["id"]: run for run in client.get("/api/runs").json()["runs"]}
        if all(runs[i]["status"] in ("completed", "failed", "diverged", "stopped") for i in ids):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError({i: (runs[i]["status"], runs[i]["step"]) for i in ids})
        time.sleep(0.2)


def test_sigkill_at_random_moments_loses_no_run_and_every_run_resumes(tmp_path):
    data_dir = tmp_path / "data"
    rng = random.Random(8)
    created: list[str] = []
    servers: list[Server] = []
    try:
        for _ in range(KILLS):
            server = Server(data_dir)
            servers.append(server)
            stop = threading.Event()
            busy = threading.Thread(target=_busy_until_killed, args=(server, created, rng, stop))
            busy.start()
            time.sleep(rng.uniform(0.3, 2.0))
            server.kill()
            stop.set()
            busy.join(15)
        assert created, "no run was confirmed before the kills"
        deadline = time.monotonic() + 30  # orphaned training processes notice and exit by themselves
        while any(s.session_processes() for s in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [s.session_processes() for s in servers if s.session_processes()], "orphaned workers kept running"

        server = Server(data_dir)
        servers.append(server)
        client = server.client
        listed = {run["id"]: run for run in client.get("/api/runs").json()["runs"]}
        missing = [run_id for run_id in created if run_id not in listed]
        assert not missing, f"runs lost after kill -9: {missing}"
        for run_id, run in listed.items():
            assert run["status"] in ("interrupted", "completed"), run
            checkpoint = files.read_checkpoint(data_dir, run_id)
            checkpoint_step = int(checkpoint["step"]) if checkpoint is not None else 0
            assert 0 <= checkpoint_step <= STEPS
            steps = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
            for step in [s for s in steps if s <= checkpoint_step]:
                response = client.get(f"/api/runs/{run_id}/snapshots/{step}")
                assert response.status_code == 200, (run_id, step, response.text)
                assert response.json()["step"] == step
                params = files.read_snapshot_params(data_dir, run_id, step)
                assert params is not None and all(np.isfinite(v).all() for v in params.values())
            assert client.get(f"/api/runs/{run_id}/metrics").status_code == 200

        to_resume = [run_id for run_id, run in listed.items() if run["status"] == "interrupted"]
        for run_id in to_resume:
            assert client.post(f"/api/runs/{run_id}/resume").status_code == 200
        runs = _wait_all_done(client, list(listed))
        for run_id in listed:
            assert runs[run_id]["status"] == "completed", (
                runs[run_id]["status"],
                runs[run_id]["message"],
                runs[run_id]["step"],
            )
            assert runs[run_id]["step"] == STEPS
            steps = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
            assert steps == snapshot_steps(runs[run_id]["config"]), (run_id, steps)
            assert set(range(0, STEPS + 1, SNAPSHOT_EVERY)) <= set(steps)
            points = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
            assert [p["step"] for p in points] == list(range(1, STEPS + 1)), run_id
        server.kill()
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.kill()
            server.client.close()
            server.kill_session()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from app import store as files
    data_dir, run_id = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    step = 0
    while True:
        big = {"params/0.weight": rng.standard_normal((64, 64, 16, 16)).astype(np.float32)}
        files.write_npz_atomic(files.checkpoint_path(data_dir, run_id), {**big, "step": np.array(step)})
        snapshot = {"step": step, "layers": [{"index": 0, "weight": big["params/0.weight"][:8].tolist(),
                                              "feature_maps": [[[[0.5] * 64] * 64] * 8]}]}
        files.write_snapshot(data_dir, run_id, snapshot, big)
        step += 1
        print(step, flush=True)
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_during_atomic_writes_leaves_only_whole_files(tmp_path, seed):
    """A process killed while it writes checkpoints and snapshots leaves only complete, loadable files."""
    rng = random.Random(seed)
    data_dir, run_id = tmp_path / "data", "r1"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir), run_id], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(rng.randint(2, 5)):  # let it finish a few rounds, then kill mid-way through one
            writer.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.05))
    finally:
        writer.kill()
        writer.wait(10)
    checkpoint = files.read_checkpoint(data_dir, run_id)
    assert checkpoint is not None and checkpoint["params/0.weight"].shape == (64, 64, 16, 16)
    steps = files.snapshot_steps(data_dir, run_id)
    assert steps == list(range(len(steps))) and steps
    for step in steps:
        snapshot = files.read_snapshot(data_dir, run_id, step, feature_maps=True)
        assert snapshot["step"] == step and "feature_maps" in snapshot["layers"][0]
        assert files.read_snapshot_params(data_dir, run_id, step)["params/0.weight"].shape == (64, 64, 16, 16)


def test_metrics_the_server_never_recorded_come_back_from_the_checkpoint(tmp_path):
    """A server killed before recording a worker's metric points gets them again on resume."""
    from app.worker import build_trainer, drive_run
    from engine.trainer import TrainingControl

    data_dir, run_id = tmp_path / "data", "r1"
    config = {**RUN, "steps": 20}
    lost: list[tuple] = []  # a server that died: it recorded none of these messages
    trainer = build_trainer(data_dir, run_id, config)
    assert drive_run(trainer, data_dir, run_id, lost.append, TrainingControl(), checkpoint_every=10) == "completed"
    assert any(message[0] == "metrics" for message in lost)

    received: list[tuple] = []
    resumed = build_trainer(data_dir, run_id, config)
    assert resumed.step == 20
    drive_run(resumed, data_dir, run_id, received.append, TrainingControl(), checkpoint_every=10)
    points = [point for message in received if message[0] == "metrics" for point in message[1]]
    assert [point["step"] for point in points] == list(range(1, 21))
    sent_first_time = {p["step"]: p for m in lost if m[0] == "metrics" for p in m[1]}
    assert points == [sent_first_time[step] for step in range(1, 21)]


def test_the_server_sweeps_temp_files_a_killed_writer_left_but_not_a_live_writers(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    snapshots = tmp_path / "runs" / "abc123" / "snapshots"
    snapshots.mkdir(parents=True)
    left_behind = snapshots / ".10.json.x1y2.tmp"
    in_progress = snapshots / ".20.json.z3w4.tmp"
    kept = snapshots / "10.json"
    for path in (left_behind, in_progress, kept):
        path.write_text("{}")
    two_hours_ago = time.time() - 7200
    os.utime(left_behind, (two_hours_ago, two_hours_ago))
    os.utime(kept, (two_hours_ago, two_hours_ago))
    with TestClient(create_app(Settings(data_dir=tmp_path))) as client:
        assert client.get("/healthz").status_code == 200
    assert not left_behind.exists()
    assert in_progress.exists() and kept.exists()
