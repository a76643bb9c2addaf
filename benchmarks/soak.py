"""Soak: two runs train for minutes while 200 SSE viewers watch, one of them reading very slowly.

Starts `uvicorn app.main:create_app` on loopback with a fresh data directory,
starts two demo runs, opens the viewers (half on each run's event stream, in a
separate process so their work does not delay the measurements), and for the
whole time asks the REST API the questions the page asks (run list, one run,
new metrics, latest snapshot) from this process, one request at a time. Every
`--sample` seconds it records the resident memory of the server process and of
the training processes. A baseline minute before the viewers connect measures
the same REST requests with the runs training and nobody watching, so the
latency figures come as a side-by-side ratio. Prints memory over time, REST
latency percentiles and what the viewers received; `--json PATH` writes the
same figures as JSON.

    python benchmarks/soak.py                    # 5 minutes, 200 viewers
    python benchmarks/soak.py --minutes 1 --viewers 50

Not a test: it measures this machine. Loopback only; everything it starts is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
from tests.live_server import uvicorn_command  # noqa: E402  (the one server command line)

RUN = {"model": "demo", "steps": 200_000, "snapshot_every": 10, "eval_every": 100}
SLOW_READ_BYTES = 256  # the slow viewer reads this much ...
SLOW_READ_EVERY = 1.0  # ... every this many seconds, through a 4 KiB receive buffer


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "KERNELSCOPE_DATA": str(data_dir), "KERNELSCOPE_MAX_RUNS": "2"}
    env.pop("KERNELSCOPE_TOKEN", None)
    return subprocess.Popen(
        uvicorn_command(port) + ["--limit-concurrency", "1000"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "server.log", "wb"),
    )


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------- the viewers (own process)


async def _viewer(port: int, run_id: str, counters, index: int) -> None:
    """A normal viewer: reads everything as it comes, counting events."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    counters["connected"].value += 1
    tail = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data = tail + chunk
        events = data.count(b"\n\n")  # an SSE event (or keep-alive comment) ends with a blank line
        tail = b"" if data.endswith(b"\n\n") else data[-1:]
        with counters["events"].get_lock():
            counters["events"].value += events
            counters["bytes"].value += len(chunk)
    counters["connected"].value -= 1


async def _slow_viewer(port: int, run_id: str, counters) -> None:
    """A viewer on a bad link: a 4 KiB receive buffer read 256 bytes a second."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=SLOW_READ_BYTES)
    writer.write(f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
    await writer.drain()
    while True:
        chunk = await reader.read(SLOW_READ_BYTES)
        if not chunk:
            break
        counters["slow_bytes"].value += len(chunk)
        await asyncio.sleep(SLOW_READ_EVERY)


def viewers_main(port: int, run_ids: list[str], viewers: int, counters) -> None:
    async def main():
        tasks = [asyncio.create_task(_slow_viewer(port, run_ids[0], counters))]
        for index in range(viewers - 1):
            tasks.append(asyncio.create_task(_viewer(port, run_ids[index % len(run_ids)], counters, index)))
            if index % 20 == 19:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# ---------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


KINDS = ("list", "run", "metrics", "snapshot")


class RestProbe:
    """Asks what the page asks, one request at a time, and keeps each latency by kind."""

    def __init__(self, client: httpx.Client, run_ids: list[str]):
        self.client = client
        self.run_ids = run_ids
        self.since = {run_id: -1 for run_id in run_ids}
        self.turn = 0
        self.latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def ask(self) -> None:
        run_id = self.run_ids[self.turn % len(self.run_ids)]
        kind = KINDS[self.turn % len(KINDS)]
        self.turn += 1
        path = {
            "list": "/api/runs",
            "run": f"/api/runs/{run_id}",
            "metrics": f"/api/runs/{run_id}/metrics?since={self.since[run_id]}",
            "snapshot": f"/api/runs/{run_id}/snapshots/latest?feature_maps=false",
        }[kind]
        began = time.perf_counter()
        response = self.client.get(path)
        self.latencies[kind].append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        if kind == "metrics" and response.json()["points"]:
            self.since[run_id] = response.json()["points"][-1]["step"]
        time.sleep(0.02)

    def summary(self) -> dict:
        everything = [value for values in self.latencies.values() for value in values]
        figures = {
            "requests": len(everything),
            "p50": round(percentile(everything, 50), 2),
            "p99": round(percentile(everything, 99), 2),
            "max": round(max(everything), 2),
        }
        figures["by_kind"] = {
            kind: {"p50": round(percentile(v, 50), 2), "p99": round(percentile(v, 99), 2)}
            for kind, v in self.latencies.items()
            if v
        }
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between memory samples")
    parser.add_argument(
        "--baseline",
        type=float,
        default=60.0,
        help="seconds of REST probing with the runs training but no viewer, before the soak",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="kernelscope-soak-"))
    port = free_port()
    server = start_server(data_dir, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
    viewers = None
    try:
        for _ in range(300):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        run_ids = [client.post("/api/runs", json={**RUN, "seed": seed}).json()["id"] for seed in (0, 1)]
        while any(client.get(f"/api/runs/{i}").json()["latest_snapshot"] is None for i in run_ids):
            time.sleep(0.2)

        print(f"baseline: {args.baseline:.0f} s of REST requests while both runs train, no viewer", flush=True)
        baseline = RestProbe(client, run_ids)
        baseline_end = time.monotonic() + args.baseline
        while time.monotonic() < baseline_end:
            baseline.ask()

        print(f"soak: {args.viewers} viewers (one slow) for {args.minutes} minutes", flush=True)
        counters = {name: multiprocessing.Value("q", 0) for name in ("connected", "events", "bytes", "slow_bytes")}
        viewers = multiprocessing.Process(
            target=viewers_main, args=(port, run_ids, args.viewers, counters), daemon=True
        )
        viewers.start()

        probe = RestProbe(client, run_ids)
        samples = []
        start = time.monotonic()
        next_sample = start
        end = start + args.minutes * 60
        while True:
            now = time.monotonic()
            if now >= next_sample:
                workers = children(server.pid)
                steps = [client.get(f"/api/runs/{i}").json()["step"] for i in run_ids]
                samples.append(
                    {
                        "t": round(now - start, 1),
                        "server_rss_mib": round(rss_mib(server.pid), 1),
                        "workers_rss_mib": round(sum(rss_mib(pid) for pid in workers), 1),
                        "viewers_connected": counters["connected"].value + 1,
                        "events_received": counters["events"].value,
                        "slow_viewer_bytes": counters["slow_bytes"].value,
                        "steps": steps,
                    }
                )
                print(
                    "  t={t:6.1f}s  server RSS {server_rss_mib:7.1f} MiB  workers RSS {workers_rss_mib:7.1f} MiB  "
                    "viewers {viewers_connected:4d}  events {events_received:9d}  slow viewer {slow_viewer_bytes:7d} B  "
                    "steps {steps}".format(**samples[-1]),
                    flush=True,
                )
                next_sample += args.sample
                if now >= end:
                    break
            probe.ask()

        summary = {
            "minutes": args.minutes,
            "viewers": args.viewers,
            "rest_ms_no_viewers": baseline.summary(),
            "rest_ms": probe.summary(),
            "load_average": os.getloadavg(),
            "server_rss_mib": {
                "first": samples[0]["server_rss_mib"],
                "last": samples[-1]["server_rss_mib"],
                "max": max(s["server_rss_mib"] for s in samples),
            },
            "samples": samples,
            "runs_status": [client.get(f"/api/runs/{i}").json()["status"] for i in run_ids],
        }
        before, during = summary["rest_ms_no_viewers"], summary["rest_ms"]
        print("REST latency (ms)       requests     p50      p99      max")
        for label, figures in (("no viewer", before), (f"{args.viewers} viewers", during)):
            print(
                f"  {label:20s} {figures['requests']:8d} {figures['p50']:8.2f} {figures['p99']:8.2f} {figures['max']:8.2f}"
            )
        print(
            f"  ratio with viewers: p50 x{during['p50'] / before['p50']:.2f}, p99 x{during['p99'] / before['p99']:.2f}"
        )
        for kind, figures in during["by_kind"].items():
            print(f"  {kind:9s} with viewers: p50 {figures['p50']:8.2f} ms  p99 {figures['p99']:8.2f} ms")
        print(f"load average (1, 5, 15 min) at the end: {summary['load_average']}")
        print(
            f"server RSS: first {summary['server_rss_mib']['first']} MiB, last {summary['server_rss_mib']['last']} MiB, "
            f"max {summary['server_rss_mib']['max']} MiB; runs still {summary['runs_status']}"
        )
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        for run_id in run_ids:
            client.post(f"/api/runs/{run_id}/stop")
    finally:
        if viewers is not None and viewers.is_alive():
            viewers.terminate()
            viewers.join(5)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # anything of its session that is left
        except ProcessLookupError:
            pass
        client.close()


if __name__ == "__main__":
    main()
