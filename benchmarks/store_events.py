"""The store's share of the event path: how many metrics messages a second Store can record.

Each message of a training run's metrics costs the server `next_seq` + `add_metrics` +
`update_run` (app/worker.RunRecorder.record). This loop does exactly that, `--messages`
times with `--points` points each, on a fresh data directory (SQLite) or on
`--database-url` (PostgreSQL, e.g. one started by tests/services_pg.py), and prints
messages per second and the mean time of one message (wall clock and this process's CPU
time, which other work on a shared machine disturbs less), best of `--repeat` rounds.

    python benchmarks/store_events.py
    python benchmarks/store_events.py --database-url postgresql://postgres@127.0.0.1:5432/kernelscope

Not a test: it measures this machine (noisy when other work shares the cores).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import Store  # noqa: E402


def open_store(data_dir: Path, database_url: str | None) -> Store:
    if "database_url" in inspect.signature(Store).parameters:
        return Store(data_dir, database_url=database_url)
    if database_url:
        raise SystemExit("this Store has no database_url (SQLite only)")
    return Store(data_dir)


def one_round(store: Store, messages: int, points: int) -> tuple[float, float]:
    run_id = store.create_run({"steps": messages * points})["id"]
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    for _ in range(messages):
        batch = []
        for _ in range(points):
            step += 1
            batch.append({"step": step, "loss": 1.0 / step, "acc": 0.5})
        seq = store.next_seq(run_id, 4)
        store.add_metrics(run_id, batch, seq)
        store.update_run(run_id, step=step, metrics=batch[-1])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    store.delete_run(run_id)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp), args.database_url)
        rounds = [one_round(store, args.messages, args.points) for _ in range(args.repeat)]
        best, cpu = min(wall for wall, _ in rounds), min(cpu for _, cpu in rounds)
        store.close()
    backend = "postgresql" if args.database_url else "sqlite"
    print(
        f"{backend}: {args.messages / best:,.0f} messages/s ({1e6 * best / args.messages:.0f} µs per message of "
        f"{args.points} points: next_seq + add_metrics + update_run; {1e6 * cpu / args.messages:.0f} µs of CPU), "
        f"best of {args.repeat}"
    )


if __name__ == "__main__":
    main()
