"""The teacher's wall under a full class: its page's redraw rate and the server's CPU for its stream.

A real server (uvicorn, its own data directory, a token) gets a class of
`--learners` learners who join through the API. Each learner then has one run
"training": by default the runs are simulated (this script writes their rows
and snapshots into the server's data directory, exactly the files a training
process writes, one new snapshot per run every `--interval` seconds), because
60 real training processes do not fit a small machine; `--real` starts real
runs through the API instead (the server trains `KERNELSCOPE_MAX_RUNS` of
them at once and queues the rest, as a class server would).

Measured, each over `--seconds`:
  1. the server's CPU (user + system, /proc) with no wall open: the baseline;
  2. the same with the wall open in Chromium (one event stream for all tiles),
     and the page's redraws per second and tile events per second
     (window.__kernelscope.wall.redraws / tilesReceived).

    python benchmarks/classroom.py                    # 60 simulated learners, 20 s per phase
    python benchmarks/classroom.py --learners 30 --real --max-runs 2

Distributed mode (issue 21), `--distributed`: a real redis-server and PostgreSQL, one web process and W
`kernelscope worker`s (each of `--workers`, default "1,2"). Each learner starts the default run
(`POST /api/runs {}`, or `--steps N` shorter) and follows its event stream to the end.
Reported per W: runs per minute, queue wait p50/p95 (POST answered -> the `running` status
event), step-to-event latency p95 at the viewer (receive time - the point's wall-clock `time`),
events lost (metric steps never seen, plus ids that did not increase: must be 0), and the
scaling from the first W to the last.

    python benchmarks/classroom.py --distributed --learners 60 --workers 1,2
    python benchmarks/classroom.py --distributed --learners 3 --steps 200   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# benchmarks/engine.py would shadow the engine package when this file is run as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from tests.live_server import uvicorn_command  # noqa: E402  (the one server command line)

TOKEN = "benchmark-teacher-token"
CHROMIUM = "/usr/bin/chromium"
RUN = {
    "model": "small",
    "dataset": {"name": "shapes", "n_train": 512, "n_val": 64},
    "batch_size": 16,
    "steps": 100_000,
    "snapshot_every": 10,
    "eval_every": 1000,
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, max_runs: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSCOPE_")}
    env.update(
        KERNELSCOPE_DATA=str(data),
        KERNELSCOPE_TOKEN=TOKEN,
        KERNELSCOPE_MAX_RUNS=str(max_runs),
        KERNELSCOPE_MAX_QUEUED="1000",
    )
    process = subprocess.Popen(
        uvicorn_command(port),
        cwd=REPO,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


class SimulatedClass:
    """Runs of the learners, advanced by writing the files and rows a training process writes."""

    def __init__(self, data: Path, class_id: str, learners: list[dict], interval: float):
        from app.store import Store
        from engine.trainer import RunConfig, Trainer

        self.store = Store(data)
        self.interval = interval
        config = RunConfig.from_dict({**RUN, "steps": 3000}).to_dict()
        trainer = Trainer(config)
        snapshot, params = trainer.snapshot(feature_maps=False)
        self.template, self.params = snapshot, params
        inits = ["zeros", "he_normal", "glorot_uniform", "normal"]
        self.runs = []
        for index, learner in enumerate(learners):
            meta = {"owner": {"class": class_id, "learner": learner["id"], "name": learner["name"]}}
            run = self.store.create_run({**config, "init": inits[index % len(inits)]}, status="running", meta=meta)
            self.runs.append(run["id"])
        self.rng = np.random.default_rng(0)
        self.stop = threading.Event()
        self.written = 0

    def advance(self, step: int) -> None:
        from app.store import write_snapshot

        for run_id in self.runs:
            snapshot = dict(self.template, step=step)
            layers = []
            for layer in snapshot["layers"]:
                layer = dict(layer)
                if layer.get("type") == "conv":
                    weight = np.asarray(layer["weight"])
                    layer["weight"] = (weight + 0.01 * self.rng.standard_normal(weight.shape)).round(5).tolist()
                layers.append(layer)
            snapshot["layers"] = layers
            write_snapshot(self.store.data_dir, run_id, snapshot, self.params, feature_maps={})
            self.store.update_run(run_id, step=step, metrics={"step": step, "loss": 2.3 / (1 + step / 100)})
            self.written += 1

    def run(self) -> None:
        step = 0
        while not self.stop.is_set():
            began = time.monotonic()
            step += 10
            self.advance(step)
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - began)))


def measure_cpu(pid: int, seconds: float) -> float:
    began, cpu = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - began)


# ---------------------------------------------------------------- distributed mode


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _learner(base: str, body: dict, result: dict) -> None:
    """Start a run, follow its events to the end; fill `result` with what was seen."""
    import json

    with httpx.Client(base_url=base, timeout=httpx.Timeout(600.0)) as client:
        posted = client.post("/api/runs", json=body)
        posted.raise_for_status()
        run = posted.json()
        result.update(posted=time.time(), run_id=run["id"], steps=run["steps"], seen=set(), latencies=[], ids=[])
        result["bad_ids"] = 0
        last_id = None
        while True:  # reconnect with Last-Event-ID if the stream breaks
            headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
            try:
                with client.stream("GET", f"/api/runs/{run['id']}/events", headers=headers) as response:
                    kind, data, event_id = None, [], None
                    for line in response.iter_lines():
                        if line.startswith("id:"):
                            event_id = int(line[3:].strip())
                        elif line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            now = time.time()
                            payload = json.loads("\n".join(data))
                            if event_id is not None:
                                if last_id is not None and event_id <= last_id:
                                    result["bad_ids"] += 1
                                last_id = event_id
                            if kind == "metrics":
                                for point in payload["points"]:
                                    result["seen"].add(point["step"])
                                    if "time" in point:
                                        result["latencies"].append(now - point["time"])
                            elif kind == "status":
                                if payload["status"] == "running" and "running" not in result:
                                    result["running"] = now
                                if payload["status"] not in ("queued", "running", "paused"):
                                    result["final"], result["done"] = payload["status"], now
                                    return
                            kind, data, event_id = None, [], None
            except httpx.HTTPError:
                time.sleep(0.5)


def distributed_main(args) -> None:
    from tests.services_pg import start_postgres
    from tests.services_redis import start_redis

    body = {} if args.steps is None else {"steps": args.steps}
    rows = []
    for workers in [int(part) for part in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            redis_url, redis = start_redis(Path(folder))
            database_url, stop_postgres = start_postgres(Path(folder))
            env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSCOPE_")}
            env.update(
                KERNELSCOPE_DATA=str(Path(folder) / "data"),
                KERNELSCOPE_BROKER_URL=redis_url,
                KERNELSCOPE_DATABASE_URL=database_url,
                PYTHONPATH=str(REPO),
            )
            port = free_port()
            web = subprocess.Popen(uvicorn_command(port), cwd=REPO, env=env)
            started = [
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "worker"],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(workers)
            ]
            base = f"http://127.0.0.1:{port}"
            try:
                for _ in range(600):
                    try:
                        if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                time.sleep(3.0)  # the workers import the engine and connect
                results: list[dict] = [{} for _ in range(args.learners)]
                threads = [
                    threading.Thread(target=_learner, args=(base, body, result), daemon=True) for result in results
                ]
                began = time.time()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                for process in [*started, web]:
                    process.terminate()
                for process in [*started, web]:
                    try:
                        process.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                redis.stop()
                stop_postgres()
        span = max(result["done"] for result in results) - began
        waits = [result["running"] - result["posted"] for result in results if "running" in result]
        latencies = [value for result in results for value in result["latencies"]]
        lost = sum(result["steps"] - len(result["seen"] & set(range(1, result["steps"] + 1))) for result in results)
        lost += sum(result["bad_ids"] for result in results)
        failed = sum(result.get("final") != "completed" for result in results)
        rows.append((workers, 60 * len(results) / span, waits, latencies, lost, failed))
    print(f"{args.learners} learners, run {body or 'default'}; 1 web process, redis-server and PostgreSQL on loopback")
    print("workers | runs/min | queue wait p50 / p95 (s) | step-to-event p95 (s) | events lost | not completed")
    for workers, rate, waits, latencies, lost, failed in rows:
        print(
            f"{workers:7d} | {rate:8.2f} | {_percentile(waits, 50):10.1f} / {_percentile(waits, 95):6.1f} | "
            f"{_percentile(latencies, 95):21.2f} | {lost:11d} | {failed}"
        )
    if len(rows) > 1:
        print(f"scaling {rows[0][0]} -> {rows[-1][0]} workers: {rows[-1][1] / rows[0][1]:.2f}x runs/min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--interval", type=float, default=1.0, help="simulated runs: seconds between snapshots")
    parser.add_argument("--real", action="store_true", help="real training runs through the API")
    parser.add_argument("--max-runs", type=int, default=2, help="with --real: runs the server trains at once")
    parser.add_argument("--distributed", action="store_true", help="runs on Dramatiq workers (see above)")
    parser.add_argument("--workers", default="1,2", help="with --distributed: worker counts to compare")
    parser.add_argument("--steps", type=int, default=None, help="with --distributed: steps per run (default run's)")
    args = parser.parse_args()
    if args.distributed:
        distributed_main(args)
        return

    from playwright.sync_api import sync_playwright

    teacher = {"Authorization": f"Bearer {TOKEN}"}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        server, base = start_server(data, args.max_runs)
        simulated = None
        try:
            with httpx.Client(base_url=base, timeout=60) as api:
                klass = api.post("/api/classes", json={"name": "benchmark", "max_queued": 3}, headers=teacher).json()
                learners = []
                for index in range(args.learners):
                    joined = api.post(
                        "/api/classes/join", json={"code": klass["join_code"], "name": f"learner {index:02d}"}
                    )
                    learners.append({**joined.json()["learner"], "token": joined.json()["token"]})
                if args.real:
                    inits = ["zeros", "he_normal", "glorot_uniform", "normal"]
                    for index, learner in enumerate(learners):
                        api.post(
                            "/api/runs",
                            json={**RUN, "init": inits[index % 4]},
                            headers={"Authorization": f"Bearer {learner['token']}"},
                        ).raise_for_status()
                else:
                    simulated = SimulatedClass(data, klass["id"], learners, args.interval)
                    writer = threading.Thread(target=simulated.run, daemon=True)
                    writer.start()
            time.sleep(2.0)
            baseline = measure_cpu(server.pid, args.seconds)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox"])
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                context.add_cookies([{"name": "kernelscope_session", "value": TOKEN, "url": base}])
                page = context.new_page()
                page.goto(f"{base}/class/{klass['id']}")
                page.wait_for_function(f"window.__kernelscope.wall.live.size === {args.learners}", timeout=120_000)
                before = page.evaluate(
                    "({r: window.__kernelscope.wall.redraws, t: window.__kernelscope.wall.tilesReceived})"
                )
                began = time.monotonic()
                with_wall = measure_cpu(server.pid, args.seconds)
                elapsed = time.monotonic() - began
                after = page.evaluate(
                    "({r: window.__kernelscope.wall.redraws, t: window.__kernelscope.wall.tilesReceived})"
                )
                drawn = page.locator(".wall-tile canvas").count()
                browser.close()
        finally:
            if simulated is not None:
                simulated.stop.set()
                writer.join()  # before the data directory goes
                simulated.store.close()
            server.terminate()
            server.wait(timeout=30)
    mode = "real runs" if args.real else f"simulated runs, one snapshot each per {args.interval:g} s"
    print(f"{args.learners} learners ({mode}); each phase {args.seconds:g} s")
    print(f"server CPU without the wall: {100 * baseline:.1f}% of one core")
    print(
        f"server CPU with the wall open: {100 * with_wall:.1f}% of one core "
        f"(the wall's stream: {100 * (with_wall - baseline):+.1f}%)"
    )
    print(
        f"wall page: {(after['r'] - before['r']) / elapsed:.1f} redraws/s, "
        f"{(after['t'] - before['t']) / elapsed:.1f} tile events/s, {drawn} tiles with filters"
    )


if __name__ == "__main__":
    main()
