"""How long does explaining one filter take for the default model? (issue 20: at most 1 s)

Starts the app in-process on a temporary data folder, trains the default run (`POST /api/runs {}`,
or with --steps fewer steps), waits for it to complete, then times GET
/api/runs/{id}/snapshots/latest/filters/{layer}/{filter} for every filter of every conv layer:
- first: the very first request of the process (reads the run's monitor batch and every
  snapshot's weights of that layer; computes the chance levels the engine caches per process);
- uncached: every other filter (a new explanation; weight history already in memory);
- cached: the same filter asked again;
and the layer summary route: the first summary of the run (every snapshot, in as many parts as
the route answers with `pending` > 0; the count column says how many) and a repeated one.
Prints a table; nothing is asserted.

With --data DIR the data folder is kept: a completed run already there (the first one) is
measured instead of training a new one, so runs of this script (each a fresh process, each
"first" request a real first) can be repeated and interleaved with another version of the code.

    python benchmarks/explain.py [--steps 3000] [--data DIR]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

console = Console(width=150)  # the table unwrapped, also when piped


def timed(client: TestClient, url: str) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one GET; the app runs in-process, so the CPU time is
    the request's own work, which a busy machine inflates less than the wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    answer = client.get(url)
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    if answer.status_code != 200:
        raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
    return elapsed, used


def train(client: TestClient, steps: int | None) -> str:
    body = {} if steps is None else {"steps": steps}
    started = time.perf_counter()
    run = client.post("/api/runs", json=body).json()
    run_id = run["id"]
    while (status := client.get(f"/api/runs/{run_id}").json()["status"]) not in (
        "completed",
        "failed",
        "diverged",
        "stopped",
    ):
        time.sleep(0.5)
    console.print(
        f"run {run_id}: {status} after {time.perf_counter() - started:.0f} s ({run['config']['steps']} steps)"
    )
    return run_id


def main(
    steps: int = typer.Option(None, help="train this many steps instead of the default run's"),
    data: Annotated[
        Path | None, typer.Option(help="keep the data folder here and measure its completed run if it has one")
    ] = None,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=data or Path(folder) / "data")
        with TestClient(create_app(settings)) as client:
            done = [r for r in client.get("/api/runs").json()["runs"] if r["status"] == "completed"]
            run_id = done[0]["id"] if data is not None and done else train(client, steps)
            snapshots = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
            snapshot = client.get(f"/api/runs/{run_id}/snapshots/latest", params={"feature_maps": False}).json()
            convs = [(entry["index"], entry["shape"][0]) for entry in snapshot["layers"] if entry["type"] == "conv"]
            base = f"/api/runs/{run_id}/snapshots/latest/filters"
            table = Table(title=f"explaining one filter ({len(snapshots)} snapshots, default model)")
            for name in ("what", "median wall s", "max wall s", "median CPU s", "max CPU s", "count"):
                table.add_column(name)

            def row(what: str, times: list[tuple[float, float]], digits: int = 3) -> None:
                walls, cpus = [t[0] for t in times], [t[1] for t in times]
                cells = (statistics.median(walls), max(walls), statistics.median(cpus), max(cpus))
                table.add_row(what, *(f"{v:.{digits}f}" for v in cells), str(len(times)))

            row("first request (monitor batch, history, chance levels)", [timed(client, f"{base}/{convs[0][0]}/0")])
            for layer, count in convs:
                times = [timed(client, f"{base}/{layer}/{f}") for f in range(count) if (layer, f) != (convs[0][0], 0)]
                row(f"uncached, layer {layer} (max: its first)", times)
            row("cached", [timed(client, f"{base}/{convs[-1][0]}/1") for _ in range(5)], 4)
            for layer, _ in convs:
                url = f"/api/runs/{run_id}/layers/{layer}/summary"
                started, cpu, parts = time.perf_counter(), time.process_time(), 0
                while True:  # a first summary comes in parts until nothing is pending
                    parts += 1
                    answer = client.get(url)
                    if answer.status_code != 200:
                        raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
                    if not answer.json().get("pending"):
                        break
                once = (time.perf_counter() - started, time.process_time() - cpu)
                row(f"layer {layer} first summary, all {parts} part(s)", [once])
                row(f"layer {layer} summary again", [timed(client, url)])
            console.print(table)


if __name__ == "__main__":
    typer.run(main)
