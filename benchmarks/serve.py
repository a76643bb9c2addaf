"""Benchmark: the server under load, through a real uvicorn on 127.0.0.1.

Figures (the issue's targets in brackets):
  1. throughput: training steps/s of a run in the server, with one live viewer,
     against the engine alone (Trainer.run in a fresh process at the workers'
     niceness), measured in alternating rounds so both see the same machine
     load                                                      [ratio >= 0.9]
  2. step-to-event latency: arrival of a metrics event at the viewer minus the
     `time` the worker stamped when that step finished, over every point  [p95 <= 150 ms]
  3. 200 SSE viewers on one training run while a second run trains:
     GET /api/runs/{id} latency from a separate client               [p99 <= 100 ms]
     (and the CPU the server and the two training processes used meanwhile)
  4. resident memory (server and worker) over a long run with a viewer,
     sampled every second; max/min after warm-up (first 10 % of steps)  [within 10 %]
  5. `kernelscope serve` until the first 200 on /healthz and on /     [<= 2 s]

    python benchmarks/serve.py             # full: 20,000-step memory run, 200 viewers (~15 min)
    python benchmarks/serve.py --quick     # 3,000 steps, 50 viewers (~4 min)
    python benchmarks/serve.py --only startup,latency

Every request goes to 127.0.0.1; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402

PARTS = ("throughput", "viewers", "memory", "startup")
DEMO = {"model": "demo", "batch_size": 64, "snapshot_every": 10, "eval_every": 100}


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def serve_command(port: int, data_dir: Path) -> list[str]:
    script = shutil.which("kernelscope")
    base = [script] if script else [sys.executable, "-m", "app.cli"]
    return [*base, "serve", "--port", str(port), "--data", str(data_dir)]


class Server:
    """`kernelscope serve` in a subprocess on a free port."""

    def __init__(self, data_dir: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, **{k: str(v) for k, v in env.items()}}
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            serve_command(self.port, data_dir), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
        self.healthz_after = self.wait_for("/healthz")
        self.healthz_cpu = cpu_seconds(self.process.pid)  # independent of other load on the machine

    def wait_for(self, path: str, limit: float = 60.0) -> float:
        """Seconds from process start until GET path answers 200."""
        while True:
            try:
                if self.client.get(path).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("kernelscope serve exited")
            if time.monotonic() - self.started > limit:
                raise RuntimeError(f"no 200 on {path} within {limit} s")
            time.sleep(0.005)

    def start_run(self, config: dict) -> str:
        response = self.client.post("/api/runs", json=config)
        response.raise_for_status()
        return response.json()["id"]

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def parse_events(response):
    """Yield (event, data_text) from a text/event-stream response."""
    kind, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield kind, "\n".join(data)
            kind, data = None, []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class Viewer(threading.Thread):
    """One SSE viewer in a thread: records (arrival time, point) for every live metrics point.

    With `cpu_of` (the server's pid) it also records (step, CPU seconds used so
    far by the server and its training processes) at every metrics event.
    """

    def __init__(
        self,
        url: str,
        run_id: str,
        until_status=("completed", "stopped", "failed", "diverged"),
        cpu_of: int | None = None,
    ):
        super().__init__(daemon=True)
        self.url, self.run_id, self.until, self.cpu_of = url, run_id, until_status, cpu_of
        self.points: list[tuple[float, dict]] = []
        self.cpu_marks: list[tuple[int, float]] = []
        self.snapshots = 0
        self.closed = threading.Event()

    def run(self) -> None:
        workers: list[int] = []
        with httpx.Client(base_url=self.url, timeout=httpx.Timeout(60.0)) as client:
            with client.stream("GET", f"/api/runs/{self.run_id}/events") as response:
                for kind, data in parse_events(response):
                    now = time.time()
                    if kind == "metrics":
                        points = json.loads(data)["points"]
                        self.points += [(now, p) for p in points]
                        if self.cpu_of and points:
                            workers = workers or [pid for pid in children(self.cpu_of) if is_spawned_worker(pid)]
                            used = sum(cpu_seconds(pid) for pid in (self.cpu_of, *workers))
                            self.cpu_marks.append((points[-1]["step"], used))
                    elif kind == "snapshot":
                        self.snapshots += 1
                    elif kind == "status" and json.loads(data)["status"] in self.until:
                        break
                    if self.closed.is_set():
                        break


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
            except (FileNotFoundError, IndexError, ProcessLookupError):
                continue
    return found


def wait_for_step(server: Server, run_id: str, step: int, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while server.client.get(f"/api/runs/{run_id}").json()["step"] < step:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not reach step {step} within {limit} s")
        time.sleep(0.2)


def is_spawned_worker(pid: int) -> bool:
    """A run's process (multiprocessing spawn), not the resource tracker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spawn_main" in f.read()
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- 1 + 2: throughput and latency


def _engine_alone_child(config: dict, warmup: int, nice: int, queue) -> None:
    from engine.trainer import RunConfig, Trainer

    os.nice(nice)
    marks: list[tuple[float, float, int]] = []  # (wall, CPU of this process, step)

    def emit(event):
        if event["type"] == "metrics" and event["points"]:
            marks.append((time.monotonic(), time.process_time(), event["points"][-1]["step"]))

    Trainer(RunConfig.from_dict(config)).run(emit)
    kept = [m for m in marks if m[2] >= warmup]
    (t0, c0, s0), (t1, c1, s1) = kept[0], kept[-1]
    queue.put(((s1 - s0) / (t1 - t0), (c1 - c0) / (s1 - s0)))


def engine_alone_rate(config: dict, warmup: int, nice: int) -> tuple[float, float]:
    """(steps/s, CPU seconds per step) of Trainer.run in a fresh process at the
    workers' niceness, from step `warmup` on: same start-up and scheduling
    priority as a server run, so on a busy machine both get the same share."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_engine_alone_child, args=(config, warmup, nice, queue))
    child.start()
    result = queue.get(timeout=900)
    child.join()
    return result


def _rate(marks) -> float:
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def server_rate(server: Server, config: dict, warmup: int) -> tuple[float, float, list[float]]:
    """(steps/s of a server run watched by one viewer, CPU seconds per step of its
    worker plus the server process, per-point latencies in ms)."""
    run_id = server.start_run(config)
    viewer = Viewer(server.url, run_id, cpu_of=server.process.pid)
    viewer.start()
    viewer.join(600)
    points = [(arrival, p) for arrival, p in viewer.points if p["step"] >= warmup and "time" in p]
    rate = _rate([(p["time"], p["step"]) for _, p in points])
    latencies = [(arrival - p["time"]) * 1000 for arrival, p in points]
    kept = [m for m in viewer.cpu_marks if m[0] >= warmup]
    (s0, c0), (s1, c1) = kept[0], kept[-1]
    return rate, (c1 - c0) / (s1 - s0), latencies


def bench_throughput(args, results: dict) -> None:
    steps = 150 if args.quick else 400
    warmup = 30
    config = {**DEMO, "steps": steps}
    rounds = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data")
        try:
            engine_rates, server_rates, engine_cpu, server_cpu, latencies = [], [], [], [], []
            nice = Settings.from_env().worker_nice
            for round_index in range(rounds):
                rate, cpu = engine_alone_rate(config, warmup, nice)
                engine_rates.append(rate)
                engine_cpu.append(cpu)
                rate, cpu, lat = server_rate(server, config, warmup)
                server_rates.append(rate)
                server_cpu.append(cpu)
                latencies += lat
                print(
                    f"  round {round_index + 1}: engine {engine_rates[-1]:.1f} steps/s "
                    f"({engine_cpu[-1] * 1000:.1f} ms CPU/step), server {server_rates[-1]:.1f} steps/s "
                    f"({server_cpu[-1] * 1000:.1f} ms CPU/step)",
                    flush=True,
                )
        finally:
            server.stop()
    engine_median, server_median = statistics.median(engine_rates), statistics.median(server_rates)
    engine_cpu_median, server_cpu_median = statistics.median(engine_cpu), statistics.median(server_cpu)
    results["throughput"] = {
        "config": config,
        "rounds": rounds,
        "engine_steps_per_s": round(engine_median, 2),
        "server_steps_per_s": round(server_median, 2),
        "ratio": round(server_median / engine_median, 3),
        # CPU seconds per step do not depend on what else the machine runs:
        # engine process alone vs the run's worker plus the whole server process
        "engine_cpu_ms_per_step": round(engine_cpu_median * 1000, 2),
        "server_cpu_ms_per_step": round(server_cpu_median * 1000, 2),
        "cpu_ratio": round(engine_cpu_median / server_cpu_median, 3),
    }
    results["latency"] = {
        "points": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "max_ms": round(max(latencies), 1),
    }


# ---------------------------------------------------------------- 3: many viewers


def _viewer_process(url: str, run_id: str, count: int, seconds: float, ready, report) -> None:
    """`count` SSE viewers in one asyncio process; reports events and bytes received."""

    async def one(client, connected, totals):
        async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
            first = True
            async for chunk in response.aiter_bytes():
                if first:
                    first = False
                    connected.append(1)
                    if len(connected) == count:
                        ready.set()
                totals["bytes"] += len(chunk)
                totals["events"] += chunk.count(b"\n\n")

    async def main():
        totals = {"bytes": 0, "events": 0}
        connected: list[int] = []
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0), limits=limits) as client:
            tasks = [asyncio.create_task(one(client, connected, totals)) for _ in range(count)]
            await asyncio.sleep(seconds)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        report.put({"connected": len(connected), **totals})

    asyncio.run(main())


def bench_viewers(args, results: dict) -> None:
    count = 50 if args.quick else args.viewers
    probe_seconds = 8.0 if args.quick else 20.0
    config = {**DEMO, "steps": 100_000, "snapshot_every": 10}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", KERNELSCOPE_MAX_RUNS=2)
        context = multiprocessing.get_context("spawn")
        try:
            watched = server.start_run(config)
            other = server.start_run(config)
            for run_id in (watched, other):  # both past start-up, so both really train
                wait_for_step(server, run_id, 20)
            ready, report = context.Event(), context.Queue()
            viewers = context.Process(
                target=_viewer_process, args=(server.url, watched, count, probe_seconds + 30, ready, report)
            )
            viewers.start()
            if not ready.wait(60):
                print("  not every viewer connected within 60 s", flush=True)
            workers = [pid for pid in children(server.process.pid) if is_spawned_worker(pid)]
            cpu_before = [cpu_seconds(pid) for pid in (server.process.pid, *workers)]
            probe_started = time.monotonic()
            latencies = []
            deadline = time.monotonic() + probe_seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = server.client.get(f"/api/runs/{watched}")
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                time.sleep(0.02)
            probe_elapsed = time.monotonic() - probe_started
            cpu_after = [cpu_seconds(pid) for pid in (server.process.pid, *workers)]
            cores = [round((after - before) / probe_elapsed, 2) for before, after in zip(cpu_before, cpu_after)]
            step_a = server.client.get(f"/api/runs/{watched}").json()["step"]
            step_b = server.client.get(f"/api/runs/{other}").json()["step"]
            viewers.join(probe_seconds + 60)
            received = report.get(timeout=30)
            for run_id in (watched, other):
                server.client.post(f"/api/runs/{run_id}/stop")
        finally:
            server.stop()
    results["viewers"] = {
        "viewers": count,
        "connected": received["connected"],
        "runs_training": 2,
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "events_received": received["events"],
        "mb_received": round(received["bytes"] / 1e6, 1),
        "steps_reached": [step_a, step_b],
        "server_cpu_cores": cores[0],
        "worker_cpu_cores": cores[1:],
    }


# ---------------------------------------------------------------- 4: memory over a long run


def bench_memory(args, results: dict) -> None:
    steps = 3000 if args.quick else args.long_steps
    config = {"model": "small", "batch_size": 32, "snapshot_every": 10, "eval_every": 500, "steps": steps}
    limit = 1800.0
    samples: list[tuple[int, int, int]] = []  # (step, server kB, worker kB)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data")
        try:
            run_id = server.start_run(config)
            viewer = Viewer(server.url, run_id)
            viewer.start()
            started = time.monotonic()
            worker_pid = None
            while viewer.is_alive() and time.monotonic() - started < limit:
                if worker_pid is None:
                    kids = [pid for pid in children(server.process.pid) if is_spawned_worker(pid)]
                    worker_pid = kids[0] if kids else None
                run = server.client.get(f"/api/runs/{run_id}").json()
                samples.append((run["step"], rss_kb(server.process.pid), rss_kb(worker_pid) if worker_pid else 0))
                time.sleep(1.0)
            elapsed = time.monotonic() - started
            viewer.closed.set()
            final = server.client.get(f"/api/runs/{run_id}").json()
            disk = sum(f.stat().st_size for f in (Path(tmp) / "data").rglob("*") if f.is_file())
        finally:
            server.stop()
    warm = [s for s in samples if s[0] >= steps * 0.1 and s[2] > 0]

    def spread(index):
        values = [s[index] for s in warm]
        return {
            "after_warmup_mb": round(values[0] / 1024, 1),
            "min_mb": round(min(values) / 1024, 1),
            "max_mb": round(max(values) / 1024, 1),
            "max_over_min": round(max(values) / min(values), 3),
        }

    results["memory"] = {
        "steps": steps,
        "reached": final["step"],
        "status": final["status"],
        "seconds": round(elapsed, 1),
        "samples": len(warm),
        "server": spread(1),
        "worker": spread(2),
        "viewer_points": len(viewer.points),
        "disk_mb": round(disk / 1e6, 1),
    }


# ---------------------------------------------------------------- 5: start-up


def bench_startup(args, results: dict) -> None:
    healthz, page, cpu = [], [], []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp) / "data")
            healthz.append(server.healthz_after)
            cpu.append(server.healthz_cpu)
            try:
                page.append(server.wait_for("/", limit=10))
            except RuntimeError:
                page.append(float("nan"))
            server.stop()
    results["startup"] = {
        "runs": 3,
        "healthz_s": round(statistics.median(healthz), 3),
        "page_s": round(statistics.median(page), 3),
        "cpu_s_to_healthz": round(statistics.median(cpu), 3),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs and fewer viewers")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--long-steps", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    results: dict = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    runners = {
        "throughput": bench_throughput,
        "viewers": bench_viewers,
        "memory": bench_memory,
        "startup": bench_startup,
    }
    for part in parts:
        print(f"{part} ...", flush=True)
        runners[part](args, results)
        print(json.dumps({k: v for k, v in results.items() if k in (part, "latency")}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
