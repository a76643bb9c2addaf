"""Distributed mode for real: a redis-server, a PostgreSQL, two web processes and two `kernelscope worker`s.

Every process is separate and shares one data directory (snapshots, checkpoints) and one
PostgreSQL database (`database_env`: a fresh database of the module's server per cluster).
The cases: a run trains on a worker and its events, read from web A, resume on web B with
Last-Event-ID missing nothing; control through the other web process; a worker killed with
SIGKILL mid-run (the other worker finishes it); Redis restarted mid-run; a web process killed
(its viewer reconnects to the other); a class shared by both web processes, whose learner's
training quota the workers keep. No timed assertions: waits are generous deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.settings import Settings
from tests.app.conftest import LONG, TINY, read_events
from tests.live_server import free_port, uvicorn_command, wait_until_healthy
from tests.services_pg import postgres_server
from tests.services_redis import REDIS_SERVER, start_redis

# Skipped without Debian's redis-server on a developer's machine (`make test` needs nothing more);
# in CI (CI set) a missing redis-server fails these tests instead of skipping them.
needs_redis = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists() and not os.environ.get("CI"), reason="needs Debian's redis-server"
)

TIMEOUT = httpx.Timeout(120.0)
DEADLINE = 180.0  # seconds a wait may take on a busy machine before the test fails
HEARTBEAT = "3"  # seconds before a silent worker's run goes to another worker (KERNELSCOPE_WORKER_HEARTBEAT)
MID = {**TINY, "steps": 400, "snapshot_every": 50, "eval_every": 100}  # long enough to act on mid-run


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """One real PostgreSQL for the module (tests/services_pg.py); each cluster gets its own database."""
    server = postgres_server(tmp_path_factory.mktemp("postgres"))
    yield server
    server.remove()


def database_env(postgres, name: str) -> dict[str, str]:
    """The shared database of every process of a cluster: a fresh PostgreSQL database."""
    return {"KERNELSCOPE_DATABASE_URL": postgres.create_database(name)}


class Process:
    """One web or worker process with its log in a file."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """redis + 2 web + 2 workers over one data directory."""

    def __init__(self, tmp_path: Path, database: dict[str, str], workers: int = 2, **env: str):
        self.tmp_path = tmp_path
        self.redis_url, self.redis = start_redis(tmp_path)
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.env = {
            **os.environ,
            "KERNELSCOPE_DATA": str(tmp_path / "data"),
            "KERNELSCOPE_BROKER_URL": self.redis_url,
            "KERNELSCOPE_CHECKPOINT_EVERY": "20",
            "KERNELSCOPE_WORKER_HEARTBEAT": HEARTBEAT,
            **database,
            **env,
        }
        self.webs: list[tuple[Process, str]] = []
        self.workers: list[Process] = []
        for index in range(2):
            self.webs.append(self._start_web(f"web{index}"))
        for index in range(workers):
            self.workers.append(self.start_worker(f"worker{index}"))

    def _start_web(self, name: str) -> tuple[Process, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = Process(name, uvicorn_command(port), self.env, self.logs)
        problem = wait_until_healthy(url, process.process, timeout=90, interval=0.1)
        assert problem is None, f"{name} did not start ({problem}): {process.text()}"
        return process, url

    def start_worker(self, name: str) -> Process:
        command = [sys.executable, "-m", "app.cli", "worker"]
        worker = Process(name, command, self.env, self.logs)
        deadline = time.monotonic() + 90
        while "ready" not in worker.text():
            assert worker.alive(), f"{name} exited: {worker.text()}"
            assert time.monotonic() < deadline, f"{name} did not start: {worker.text()}"
            time.sleep(0.1)
        return worker

    def client(self, index: int) -> httpx.Client:
        return httpx.Client(base_url=self.webs[index][1], timeout=TIMEOUT)

    def close(self) -> None:
        for process in [*self.workers, *(web for web, _ in self.webs)]:
            process.stop()
        self.redis.stop()

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.text()[-3000:]}" for p in [*self.workers, *(w for w, _ in self.webs)])


@pytest.fixture
def cluster(tmp_path, postgres, request):
    running = Cluster(tmp_path, database_env(postgres, _database_name(request)))
    yield running
    running.close()


def _database_name(request) -> str:
    return "ks_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]


def wait_for(predicate, what: str, cluster: Cluster, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}\n{cluster.logs_text()}"
        time.sleep(0.1)


def follow(client: httpx.Client, run_id: str, last_event_id: int | None, events: list, until) -> None:
    """Read the run's events into `events` until until(events) or the stream ends."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200
        for event in read_events(response):
            events.append(event)
            if until(events):
                return


def metric_steps(events: list) -> list[int]:
    return [point["step"] for event in events if event["event"] == "metrics" for point in event["data"]["points"]]


def last_status(events: list) -> str | None:
    statuses = [event["data"]["status"] for event in events if event["event"] == "status"]
    return statuses[-1] if statuses else None


@needs_redis
def test_a_run_trains_on_a_worker_and_its_stream_resumes_on_the_other_web_process(cluster):
    a, b = cluster.client(0), cluster.client(1)
    run = a.post("/api/runs", json={**TINY, "steps": 120}).json()
    assert run["status"] == "queued"
    first: list = []
    follow(a, run["id"], None, first, lambda events: metric_steps(events) and metric_steps(events)[-1] >= 30)
    ids = [event["id"] for event in first]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # web B, with web A's last id: the rest of the run, nothing missed, nothing twice
    rest: list = []
    follow(b, run["id"], ids[-1], rest, lambda events: last_status(events) == "completed")
    assert [event["id"] for event in rest] == sorted(event["id"] for event in rest)
    assert rest[0]["id"] > ids[-1]
    steps = metric_steps(first) + metric_steps(rest)
    assert steps == list(range(1, 121))
    stored = b.get(f"/api/runs/{run['id']}").json()
    assert stored["status"] == "completed" and stored["step"] == 120
    assert len(b.get(f"/api/runs/{run['id']}/metrics").json()["points"]) == 120
    assert b.get(f"/api/runs/{run['id']}/snapshots").json()["steps"][-1] == 120
    # a viewer arriving after the end gets the status, then the latest snapshot, from either web process
    late: list = []
    follow(a, run["id"], None, late, lambda events: False)
    assert [event["event"] for event in late] == ["status", "snapshot"]
    assert late[0]["data"]["status"] == "completed" and late[1]["data"]["step"] == 120


@needs_redis
def test_pause_resume_stop_and_kernel_edits_through_the_other_web_process(cluster):
    a, b = cluster.client(0), cluster.client(1)
    run_id = a.post("/api/runs", json=LONG).json()["id"]
    wait_for(lambda: b.get(f"/api/runs/{run_id}").json()["step"] >= 5, "training to start", cluster)
    paused = b.post(f"/api/runs/{run_id}/pause").json()
    assert paused["status"] == "paused", paused
    step = paused["step"]
    kernel = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
    edit = b.put(f"/api/runs/{run_id}/kernels/0/0", json={"kernel": kernel})
    assert edit.status_code == 200, edit.text
    assert a.get(f"/api/runs/{run_id}").json()["step"] == step  # paused: no training
    resumed = a.post(f"/api/runs/{run_id}/resume").json()
    assert resumed["status"] == "running", resumed
    wait_for(lambda: b.get(f"/api/runs/{run_id}").json()["step"] > step, "training to go on", cluster)
    stopped = b.post(f"/api/runs/{run_id}/stop").json()
    assert stopped["status"] == "stopped", stopped
    events: list = []
    follow(a, run_id, None, events, lambda events: False)
    assert events[0]["data"]["status"] == "stopped"
    # resumed from its checkpoint on whichever worker is free, then stopped again
    again = a.post(f"/api/runs/{run_id}/resume").json()
    assert again["status"] == "queued" and "resuming from step" in again["message"]
    wait_for(lambda: b.get(f"/api/runs/{run_id}").json()["status"] == "running", "the run to restart", cluster)
    assert b.post(f"/api/runs/{run_id}/stop").json()["status"] == "stopped"
    assert b.delete(f"/api/runs/{run_id}").status_code == 204
    assert a.get(f"/api/runs/{run_id}").status_code == 404
    # deleting a run while a worker trains it: the worker lets go without writing, then takes new runs
    doomed = a.post("/api/runs", json=LONG).json()["id"]
    wait_for(lambda: b.get(f"/api/runs/{doomed}").json()["step"] >= 5, "the second run to train", cluster)
    assert b.delete(f"/api/runs/{doomed}").status_code == 204
    wait_for(
        lambda: any(f"run {doomed}: stopped without writing" in worker.text() for worker in cluster.workers),
        "the worker to let go",
        cluster,
    )
    assert not (cluster.tmp_path / "data" / "runs" / doomed).exists()
    assert a.get(f"/api/runs/{doomed}").status_code == 404
    after = a.post("/api/runs", json=TINY).json()["id"]
    wait_for(lambda: b.get(f"/api/runs/{after}").json()["status"] == "completed", "a run after the delete", cluster)


def _worker_holding(cluster: Cluster, run_id: str) -> Process:
    def holder():
        for worker in cluster.workers:
            if f"run {run_id}: training from step" in worker.text():
                return worker
        return None

    return wait_for(holder, "a worker to log the run", cluster)


@needs_redis
def test_a_worker_killed_mid_run_the_other_worker_finishes_it(cluster):
    a, b = cluster.client(0), cluster.client(1)
    run_id = a.post("/api/runs", json=MID).json()["id"]
    wait_for(lambda: a.get(f"/api/runs/{run_id}").json()["step"] >= 60, "a checkpoint past step 40", cluster)
    owner = _worker_holding(cluster, run_id)
    events: list = []
    follow(a, run_id, None, events, lambda events: True)  # a viewer's place before the kill
    owner.kill()
    follow(b, run_id, events[-1]["id"], events, lambda events: last_status(events) == "completed")
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ids continuous and increasing
    messages = [event["data"]["message"] or "" for event in events if event["event"] == "status"]
    assert any("requeued" in message for message in messages), messages
    run = b.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "completed" and run["step"] == MID["steps"]
    stored = [point["step"] for point in b.get(f"/api/runs/{run_id}/metrics").json()["points"]]
    assert stored == list(range(1, MID["steps"] + 1))  # no step counted twice, none missing
    assert set(metric_steps(events)) >= set(range(events[0]["data"]["step"] + 1, MID["steps"] + 1))
    steps = b.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
    assert steps == sorted(set(steps)) and steps[-1] == MID["steps"]


@needs_redis
def test_redis_restarted_mid_run_the_run_completes_and_the_stream_resumes(cluster):
    a, b = cluster.client(0), cluster.client(1)
    run_id = a.post("/api/runs", json=MID).json()["id"]
    events: list = []
    follow(a, run_id, None, events, lambda events: metric_steps(events) and metric_steps(events)[-1] >= 40)
    cluster.redis.stop()
    # while Redis is away the workers wait for it; a new run is refused with 503, nothing half-written
    refused = b.post("/api/runs", json=TINY)
    assert refused.status_code == 503, refused.text
    assert refused.json()["message"].startswith("broker: Redis cannot be reached")
    assert [run["id"] for run in b.get("/api/runs").json()["runs"]] == [run_id]
    cluster.redis.start()
    follow(b, run_id, events[-1]["id"], events, lambda events: last_status(events) == "completed")
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(metric_steps(events)) == set(range(1, MID["steps"] + 1))
    run = a.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "completed"
    stored = [point["step"] for point in a.get(f"/api/runs/{run_id}/metrics").json()["points"]]
    assert stored == list(range(1, MID["steps"] + 1))
    # and the cluster still takes new runs after the restart
    second = b.post("/api/runs", json=TINY).json()["id"]
    wait_for(lambda: a.get(f"/api/runs/{second}").json()["status"] == "completed", "a new run after", cluster)


@needs_redis
def test_a_web_process_killed_its_viewer_reconnects_to_the_other_and_misses_nothing(cluster):
    a, b = cluster.client(0), cluster.client(1)
    run_id = a.post("/api/runs", json=MID).json()["id"]
    events: list = []
    with pytest.raises(httpx.HTTPError):  # the connection breaks when web A dies
        with a.stream("GET", f"/api/runs/{run_id}/events") as response:
            for event in read_events(response):
                events.append(event)
                if metric_steps(events) and metric_steps(events)[-1] >= 40 and cluster.webs[0][0].alive():
                    cluster.webs[0][0].kill()
    follow(b, run_id, events[-1]["id"], events, lambda events: last_status(events) == "completed")
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert metric_steps(events) == list(range(1, MID["steps"] + 1))


def test_the_broker_url_is_a_redis_url_or_unset_for_embedded_mode():
    assert Settings.from_env({}).broker_url is None
    assert Settings.from_env({"KERNELSCOPE_BROKER_URL": " "}).broker_url is None
    assert Settings.from_env({"KERNELSCOPE_BROKER_URL": "redis://h:6379/0"}).broker_url == "redis://h:6379/0"
    with pytest.raises(ValueError, match="KERNELSCOPE_BROKER_URL: expected a Redis URL"):
        Settings.from_env({"KERNELSCOPE_BROKER_URL": "http://h:6379"})
    with pytest.raises(ValueError, match="KERNELSCOPE_WORKER_HEARTBEAT"):
        Settings.from_env({"KERNELSCOPE_WORKER_HEARTBEAT": "0"})


def test_kernelscope_worker_without_a_broker_url_says_what_to_set(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "KERNELSCOPE_BROKER_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--data", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "KERNELSCOPE_BROKER_URL" in done.stderr


@needs_redis
def test_a_worker_sent_sigterm_checkpoints_and_its_run_continues_on_the_other_worker(cluster):
    a = cluster.client(0)
    run_id = a.post("/api/runs", json=MID).json()["id"]
    wait_for(lambda: a.get(f"/api/runs/{run_id}").json()["step"] >= 30, "training to start", cluster)
    owner = _worker_holding(cluster, run_id)
    owner.stop()  # SIGTERM, as a supervisor stopping the machine sends
    assert owner.process.returncode == 0, owner.text()
    events: list = []
    follow(cluster.client(1), run_id, 0, events, lambda events: last_status(events) == "completed")
    assert last_status(events) == "completed"
    entries = redis.Redis.from_url(cluster.redis_url).xrange(f"kernelscope:run:{run_id}:events")
    statuses = [json.loads(fields[b"data"]) for _, fields in entries if fields[b"kind"] == b"status"]
    requeued = [
        s for s in statuses if s["status"] == "queued" and (s["message"] or "").startswith("requeued: its worker")
    ]
    assert requeued, statuses  # the run went back to the queue, then ran on again
    assert statuses.index(requeued[0]) < len(statuses) - 2 and statuses[-1]["status"] == "completed"
    stored = [point["step"] for point in a.get(f"/api/runs/{run_id}/metrics").json()["points"]]
    assert stored == list(range(1, MID["steps"] + 1))


@needs_redis
def test_a_class_is_shared_by_both_web_processes_and_workers_keep_a_learners_training_quota(cluster):
    """A class made on web A is joined on web B. Its learner (max_training 1) starts a run, then a
    second; a run outside the class, queued after that second one, takes the free worker while
    the learner's second run waits, and it starts once the learner's first run is stopped."""
    a, b = cluster.client(0), cluster.client(1)
    klass = a.post("/api/classes", json={"name": "quota", "max_training": 1, "max_queued": 3})
    assert klass.status_code == 201, klass.text
    joined = b.post("/api/classes/join", json={"code": klass.json()["join_code"], "name": "Ada"})
    assert joined.status_code == 201, joined.text
    b.cookies.clear()
    ada = {"Authorization": f"Bearer {joined.json()['token']}"}
    assert a.get("/api/classes/me", headers=ada).json()["learner"]["name"] == "Ada"

    def status(run_id: str) -> str:
        return a.get(f"/api/runs/{run_id}").json()["status"]

    first = b.post("/api/runs", json=LONG, headers=ada).json()["id"]
    wait_for(lambda: status(first) == "running", "the learner's first run to start", cluster)
    second = a.post("/api/runs", json=LONG, headers=ada).json()["id"]
    other = b.post("/api/runs", json=LONG).json()["id"]  # queued after `second`, outside any class
    wait_for(lambda: status(other) == "running", "the run outside the class to take the free worker", cluster)
    assert status(second) == "queued"  # FIFO would have given it the free worker: the quota held it back
    assert a.post(f"/api/runs/{first}/stop", headers=ada).status_code == 200
    wait_for(lambda: status(second) == "running", "the learner's second run to start", cluster)
    assert status(first) == "stopped"
    for run_id in (second, other):
        assert a.post(f"/api/runs/{run_id}/stop").status_code == 200


@needs_redis
def test_two_workers_deciding_at_once_never_both_take_a_learners_last_training_slot(tmp_path, postgres, request):
    """The worker's final look at the quota and the write of "running" happen under the learner's
    start lock: the second worker's look, made while the first is between the two, waits and
    then counts the first run as training."""
    from app.jobs import WorkerContext

    redis_url, redis_server = start_redis(tmp_path)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_env(postgres, _database_name(request))["KERNELSCOPE_DATABASE_URL"],
        broker_url=redis_url,
    )
    workers = [WorkerContext(settings) for _ in range(2)]
    try:
        rooms, store = workers[0].gate.classroom, workers[0].store
        klass = rooms.create_class("race", max_training=1)
        ada, _ = rooms.join(klass["join_code"], "Ada")
        owner = {"class": klass["id"], "learner": ada["id"], "name": "Ada"}
        runs = [store.create_run(TINY, meta={"owner": owner}) for _ in range(2)]
        started: list[str] = []
        both_looked = threading.Barrier(2, timeout=30)

        def decide(worker: WorkerContext, run: dict) -> None:
            assert worker.may_start(run)  # the look without the lock: both see a free slot
            both_looked.wait()
            with worker.training_slot(run) as allowed:
                if allowed:
                    time.sleep(0.5)  # widens the window between the look and the write (no assertion on time)
                    worker.store.update_run(run["id"], status="running")
                    started.append(run["id"])

        threads = [threading.Thread(target=decide, args=pair) for pair in zip(workers, runs, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(started) == 1, started
        assert sorted(store.get_run(run["id"])["status"] for run in runs) == ["queued", "running"]
    finally:
        for worker in workers:
            worker.gate.classroom.close()
            worker.store.close()
        redis_server.stop()


@needs_redis
def test_history_older_than_the_trimmed_stream_is_replayed_from_the_store(tmp_path, postgres, request):
    cluster = Cluster(
        tmp_path, database_env(postgres, _database_name(request)), workers=1, KERNELSCOPE_STREAM_MAXLEN="100"
    )
    try:
        a, b = cluster.client(0), cluster.client(1)
        run_id = a.post("/api/runs", json={**MID, "steps": 1200, "snapshot_every": 400}).json()["id"]
        wait_for(lambda: a.get(f"/api/runs/{run_id}").json()["status"] == "completed", "the run to end", cluster)
        oldest = redis.Redis.from_url(cluster.redis_url).xrange(f"kernelscope:run:{run_id}:events", count=1)
        assert oldest and int(oldest[0][0].split(b"-")[0]) > 100  # the stream no longer holds the start
        events: list = []
        follow(b, run_id, 1, events, lambda events: False)  # from the very first event on
        ids = [event["id"] for event in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert metric_steps(events) == list(range(1, 1201))  # store, then stream: each step once
        assert [event["event"] for event in events[-2:]] == ["status", "snapshot"]
    finally:
        cluster.close()
