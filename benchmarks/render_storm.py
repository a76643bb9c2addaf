"""Render storm: 8 evolution GIFs and 4 exports of one wide run asked at once.

Seeds a fresh data directory with a completed run whose wide conv layer makes the
largest GIF the limits allow (tests/storms.py, the same run the render-storm test
uses), starts `uvicorn app.main:create_app` on loopback, fires the renders (each
asked again after its Retry-After when the render pool answers 429) and meanwhile
asks `/healthz` one request at a time. Prints the server's resident memory (idle,
peak as the kernel's high-water mark VmHWM, right after the storm and a few seconds
later), /healthz latency percentiles (and over `--baseline` seconds before the storm), how long the storm took and what it received;
`--json PATH` writes the same figures.

    python benchmarks/render_storm.py
    python benchmarks/render_storm.py --gifs 4 --exports 2 --snapshots 20

Not a test: it measures this machine. The sibling of benchmarks/soak.py (live
viewers) and benchmarks/replay_storm.py (reconnecting viewers).
"""

from __future__ import annotations

import argparse
import json
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

from replay_storm import healthz_latencies, summary  # noqa: E402
from soak import free_port, percentile, start_server  # noqa: E402

from tests import storms  # noqa: E402
from tests.live_server import wait_until_healthy  # noqa: E402


def storm(url: str, run_id: str, gifs: int, exports: int, answers: list) -> None:
    paths = [f"/api/runs/{run_id}/evolution.gif?layer={storms.WIDE_LAYER}"] * gifs
    paths += [f"/api/runs/{run_id}/export"] * exports

    def ask(path: str) -> None:
        refused = 0
        with httpx.Client(base_url=url, timeout=900.0) as client:
            while True:
                answer = client.get(path)
                if answer.status_code != 429:
                    answers.append(
                        (path.rsplit("/", 1)[-1].split("?")[0], answer.status_code, len(answer.content), refused)
                    )
                    return
                refused += 1
                time.sleep(float(answer.headers["Retry-After"]))

    threads = [threading.Thread(target=ask, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gifs", type=int, default=8)
    parser.add_argument("--exports", type=int, default=4)
    parser.add_argument("--snapshots", type=int, default=40)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before the last memory reading")
    parser.add_argument(
        "--baseline", type=float, default=10.0, help="seconds of /healthz before the storm (this machine's noise)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernelscope-render-") as folder:
        data_dir = Path(folder)
        run_id = storms.seed_wide_run(data_dir, args.snapshots)
        port = free_port()
        server = start_server(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_until_healthy(url, server, timeout=60) is not None:
                raise SystemExit("server did not start")
            idle = storms.memory_mib(server.pid)["VmRSS"]
            quiet = healthz_latencies(url, time.monotonic() + args.baseline)
            answers: list = []
            renders = threading.Thread(target=storm, args=(url, run_id, args.gifs, args.exports, answers))
            started = time.monotonic()
            renders.start()
            latencies = []
            with httpx.Client(base_url=url, timeout=60.0) as probe:
                while renders.is_alive():
                    begin = time.perf_counter()
                    probe.get("/healthz")
                    latencies.append((time.perf_counter() - begin) * 1000)
                    time.sleep(0.05)
            took = time.monotonic() - started
            right_after = storms.memory_mib(server.pid)
            time.sleep(args.settle)
            settled = storms.memory_mib(server.pid)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    figures = {
        "gifs": args.gifs,
        "exports": args.exports,
        "snapshots": args.snapshots,
        "seconds": round(took, 1),
        "answers": sorted(f"{kind} {status}" for kind, status, _, _ in answers),
        "refused_429_then_retried": sum(refused for *_, refused in answers),
        "megabytes_sent": round(sum(size for _, _, size, _ in answers) / 2**20, 1),
        "healthz_ms_no_storm": summary(quiet),
        "healthz_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)}
        | {"max": round(max(latencies), 1), "requests": len(latencies)},
        "server_rss_mib": {
            "idle": round(idle),
            "peak": round(settled["VmHWM"]),
            "right_after": round(right_after["VmRSS"]),
            "settled": round(settled["VmRSS"]),
        },
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
