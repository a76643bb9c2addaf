"""Replay storm: many viewers reconnect with `Last-Event-ID: 0` to one long run at once.

Seeds a fresh data directory with a completed run holding `--points` metric points
(as a long run leaves them), starts `uvicorn app.main:create_app` on loopback, and
lets `--clients` viewers (each from its own loopback address, so each is its own
client) replay the whole history, in a separate process so their parsing does not
delay the measurements. Meanwhile this process asks `/healthz` one request at a time
and samples the server's resident memory. Prints /healthz latency percentiles, the
server's peak memory, how long the storm took and what the viewers received;
`--json PATH` writes the same figures.

    python benchmarks/replay_storm.py                      # 40 clients, 200,000 points
    python benchmarks/replay_storm.py --clients 10 --points 50000

Not a test: it measures this machine. The sibling of benchmarks/soak.py (live
viewers); it reuses its server and memory helpers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))  # after the root: benchmarks/engine.py is not the engine

from soak import free_port, percentile, rss_mib, start_server  # noqa: E402


def seed(data_dir: Path, points: int, batch: int = 100) -> str:
    from app.store import Store
    from app.worker import EVENT_ID_STRIDE
    from engine.trainer import RunConfig

    store = Store(data_dir)
    run_id = store.create_run(RunConfig.from_dict({}).to_dict(), status="completed")["id"]
    for start in range(1, points + 1, batch):
        seq = store.next_seq(run_id, EVENT_ID_STRIDE)
        store.add_metrics(run_id, [{"step": s, "loss": 1.0 / s, "acc": 0.5} for s in range(start, start + batch)], seq)
    store.update_run(run_id, step=points)
    store.close()
    return run_id


def viewers_main(url: str, run_id: str, clients: int, results) -> None:
    def one(index: int) -> None:
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{index + 2}")
        received, status = 0, None
        try:
            with httpx.Client(base_url=url, transport=transport, timeout=600.0) as client:
                with client.stream("GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "0"}) as response:
                    status = response.status_code
                    for line in response.iter_lines():
                        if line.startswith("data:") and '"points"' in line:
                            received += line.count('"step"')
        except httpx.HTTPError as error:
            status = type(error).__name__
        results.append((index, status, received))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def healthz_latencies(url: str, until: float) -> list[float]:
    """/healthz latencies (ms), one request at a time every 50 ms, until `until` (time.monotonic)."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60.0) as probe:
        while time.monotonic() < until:
            begin = time.perf_counter()
            probe.get("/healthz")
            latencies.append((time.perf_counter() - begin) * 1000)
            time.sleep(0.05)
    return latencies


def summary(latencies: list[float]) -> dict:
    return {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)} | {
        "max": round(max(latencies), 1),
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument(
        "--baseline", type=float, default=10.0, help="seconds of /healthz before the storm (this machine's noise)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernelscope-replay-") as folder:
        data_dir = Path(folder)
        run_id = seed(data_dir, args.points)
        port = free_port()
        server = start_server(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.1)
            idle = rss_mib(server.pid)
            quiet = healthz_latencies(url, time.monotonic() + args.baseline)
            manager = multiprocessing.Manager()
            results = manager.list()
            viewers = multiprocessing.Process(target=viewers_main, args=(url, run_id, args.clients, results))
            started = time.monotonic()
            viewers.start()
            latencies, peak = [], idle
            with httpx.Client(base_url=url, timeout=60.0) as probe:
                while viewers.is_alive():
                    begin = time.perf_counter()
                    probe.get("/healthz")
                    latencies.append((time.perf_counter() - begin) * 1000)
                    peak = max(peak, rss_mib(server.pid))
                    time.sleep(0.05)
            took = time.monotonic() - started
            after = rss_mib(server.pid)
            rows = list(results)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    complete = sum(1 for _, status, received in rows if status == 200 and received == args.points)
    figures = {
        "clients": args.clients,
        "points": args.points,
        "seconds": round(took, 1),
        "complete_replays": complete,
        "healthz_ms_no_storm": summary(quiet),
        "healthz_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)}
        | {"max": round(max(latencies), 1), "requests": len(latencies)},
        "server_rss_mib": {"idle": round(idle), "peak": round(peak), "after": round(after)},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
