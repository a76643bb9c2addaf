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

console = Console()


def timed(client: TestClient, url: str) -> float:
    start = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - start
    if answer.status_code != 200:
        raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
    return elapsed


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
            first = timed(client, f"{base}/{convs[0][0]}/0")
            table = Table(title=f"explaining one filter ({len(snapshots)} snapshots, default model)")
            for name in ("what", "median s", "max s", "count"):
                table.add_column(name)
            table.add_row("first request (loads dataset + history)", f"{first:.3f}", f"{first:.3f}", "1")
            for layer, count in convs:
                times = [timed(client, f"{base}/{layer}/{f}") for f in range(count) if (layer, f) != (convs[0][0], 0)]
                table.add_row(
                    f"uncached, layer {layer}", f"{statistics.median(times):.3f}", f"{max(times):.3f}", str(len(times))
                )
            cached = [timed(client, f"{base}/{convs[-1][0]}/1") for _ in range(5)]
            table.add_row("cached", f"{statistics.median(cached):.4f}", f"{max(cached):.4f}", "5")
            for layer, _ in convs:
                url = f"/api/runs/{run_id}/layers/{layer}/summary"
                started, parts = time.perf_counter(), 0
                while True:  # a first summary comes in parts until nothing is pending
                    parts += 1
                    answer = client.get(url)
                    if answer.status_code != 200:
                        raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
                    if not answer.json().get("pending"):
                        break
                once = time.perf_counter() - started
                again = timed(client, url)
                table.add_row(
                    f"layer {layer} summary (first, all parts / again)", f"{once:.3f}", f"{again:.3f}", str(parts)
                )
            console.print(table)


if __name__ == "__main__":
    typer.run(main)
