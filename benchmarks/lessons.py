"""Benchmark: how long the lessons take (issue 19, goal 4).

  deep    the depth-stall demo: the `deep` preset under he_normal, glorot_uniform and N(0, 0.01²),
          300 steps each, batch 32, Adam lr 0.001, snapshot every 10, eval every 50
          (app/teaching_schemas.py DEEP_DEMO_BASE)
  inits   a 6-init comparison of the default run (demo preset, batch 64, SGD), 300 steps each

Each lesson is timed two ways, in fresh processes:
  sequential  one process trains the runs one after the other (Trainer loop with snapshots and
              evaluation as Trainer.run schedules them), and reports where the time went:
              train steps, snapshots, evaluation
  parallel    two processes at once, the runs dealt between them (the server trains
              DEFAULT_MAX_RUNS = 2 runs at a time and queues the rest), wall time until both end

Variants, interleaved round by round:
  before  the engine as it was before issue 19's changes: the partner split always
          (KERNELSCOPE_SPLIT=always), polling always (KERNELSCOPE_PARTNER_SPIN=always), no
          narrow-conv path (engine.fast.conv.NARROW_ROWS = 0)
  after   the engine as it is (adaptive split, polling only while a core is spare, narrow convs)
The load average is printed with every figure.

    python benchmarks/lessons.py                       # both lessons, both ways, before and after
    python benchmarks/lessons.py --lessons deep --ways sequential --variants after --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEP_INITS = ["he_normal", "glorot_uniform", {"name": "normal", "std": 0.01}]
SIX_INITS = [
    "he_normal",
    "glorot_uniform",
    "lecun_normal",
    "orthogonal",
    {"name": "normal", "std": 0.01},
    {"name": "uniform", "a": 0.05},
]


def lesson_configs(lesson: str, steps: int) -> list[dict]:
    if lesson == "deep":
        base = {
            "model": "deep",
            "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 32,
            "snapshot_every": 10,
            "eval_every": 50,
        }
        return [{**base, "init": init, "steps": steps} for init in DEEP_INITS]
    return [{"init": init, "steps": steps} for init in SIX_INITS]


CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
if {before!r}:
    from engine.fast import conv
    conv.NARROW_ROWS = 0
from engine.trainer import RunConfig, Trainer
totals = {{"train": 0.0, "snapshot": 0.0, "eval": 0.0, "build": 0.0}}
started = time.perf_counter()
for config in {configs!r}:
    t = time.perf_counter()
    cfg = RunConfig.from_dict(config)
    trainer = Trainer(cfg)
    trainer.snapshot()
    totals["build"] += time.perf_counter() - t
    while trainer.step < cfg.steps:
        t = time.perf_counter(); trainer.train_step(); totals["train"] += time.perf_counter() - t
        last = trainer.step == cfg.steps
        if trainer.step % cfg.eval_every == 0 or last:
            t = time.perf_counter(); trainer.evaluate(); totals["eval"] += time.perf_counter() - t
        if trainer.step % cfg.snapshot_every == 0 or last:
            t = time.perf_counter(); trainer.snapshot(); totals["snapshot"] += time.perf_counter() - t
totals["wall"] = time.perf_counter() - started
print(json.dumps(totals))
"""


VARIANTS = {
    "before": {"KERNELSCOPE_SPLIT": "always", "KERNELSCOPE_PARTNER_SPIN": "always"},
    "after": {"KERNELSCOPE_SPLIT": "auto", "KERNELSCOPE_PARTNER_SPIN": "auto"},
}


def run_children(groups: list[list[dict]], split: str) -> tuple[float, list[dict]]:
    """Start one process per group of configs (each trains its group one run after the other),
    all at once; (wall seconds, their reports)."""
    environment = {**os.environ, **VARIANTS[split], "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=str(ROOT), configs=group, before=split == "before")],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        for group in groups
    ]
    reports = []
    for process in processes:
        out, _ = process.communicate(timeout=3600)
        if process.returncode:
            raise RuntimeError("a lesson process failed")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - started, reports


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", nargs="+", default=["deep", "inits"])
    parser.add_argument("--ways", nargs="+", default=["sequential", "parallel"])
    parser.add_argument("--variants", nargs="+", default=["before", "after"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print(f"load at start {load()} on {os.cpu_count()} CPUs")
    print("| lesson | way | engine | wall s (median) | train s | snapshot s | eval s | build s | load per round |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lesson in args.lessons:
        configs = lesson_configs(lesson, args.steps)
        for way in args.ways:
            groups = [configs] if way == "sequential" else [configs[0::2], configs[1::2]]
            measured = {split: [] for split in args.variants}
            loads = {split: [] for split in args.variants}
            for round_number in range(args.rounds):
                order = (
                    args.variants[round_number % len(args.variants) :]
                    + args.variants[: round_number % len(args.variants)]
                )
                for split in order:
                    loads[split].append(load())
                    measured[split].append(run_children(groups, split))
            for split in args.variants:
                walls = [wall for wall, _ in measured[split]]
                parts = {
                    key: statistics.median(sum(r[key] for r in reports) for _, reports in measured[split])
                    for key in ("train", "snapshot", "eval", "build")
                }
                row = {
                    "lesson": lesson,
                    "way": way,
                    "split": split,
                    "wall": statistics.median(walls),
                    "walls": walls,
                    **parts,
                    "loads": loads[split],
                }
                rows.append(row)
                print(
                    f"| {lesson} | {way} | {split} | {row['wall']:.1f} | {parts['train']:.1f} | {parts['snapshot']:.1f} | "
                    f"{parts['eval']:.1f} | {parts['build']:.1f} | {'; '.join(loads[split])} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
