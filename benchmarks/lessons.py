"""Benchmark: how long the lessons take (issue 19, goal 4).

  deep    the depth-stall demo: the `deep` preset under he_normal, glorot_uniform and N(0, 0.01²),
          300 steps each, batch 32, Adam lr 0.001, snapshot every 10, eval every 50
          (engine/presets.py DEMOS["depth_stall"])
  inits   a 6-init comparison of the default run (demo preset, batch 64, SGD), 300 steps each

Each lesson is timed two ways, in fresh processes, through the one training loop as the server's
worker runs it (Trainer.events with its snapshot schedule, dense early snapshots included, and its
evaluations; the events are consumed, nothing is written):
  sequential  one process trains the runs one after the other
  parallel    two processes at once, the runs dealt between them (the server trains
              DEFAULT_MAX_RUNS = 2 runs at a time and queues the rest), wall time until both end
and reports wall seconds and CPU seconds (the training process; its partner and analyst
processes) summed over its processes.

Variants, interleaved round by round (rotated order):
  inline   this tree, side work on the training path (analyst_mode="inline")
  process  this tree, side work in an analyst process (analyst_mode="process", what the worker uses)
  before   the tree given with --before (e.g. /work/main), its Trainer.events as it is
The load average is printed with every figure.

    python benchmarks/lessons.py --before /work/main              # both lessons, both ways
    python benchmarks/lessons.py --lessons deep --ways sequential --variants process --rounds 2
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
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
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
        from engine.presets import DEMOS

        demo = DEMOS["depth_stall"]
        return [{**demo["base"], "init": init, "steps": steps} for init in demo["inits"]]
    return [{"init": init, "steps": steps} for init in SIX_INITS]


CHILD = """
import sys, time, json, resource
sys.path.insert(0, {root!r})
from engine.trainer import RunConfig, Trainer
from engine.fast.partner import close_partners
options = {options!r}
started = time.perf_counter()
snapshots = 0
for config in {configs!r}:
    trainer = Trainer(RunConfig.from_dict(config))
    for event in trainer.events(**options):
        snapshots += event["type"] == "snapshot"
wall = time.perf_counter() - started
close_partners()
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"wall": wall, "cpu": own.ru_utime + own.ru_stime,
                  "children_cpu": children.ru_utime + children.ru_stime, "snapshots": snapshots}}))
"""

VARIANT_OPTIONS = {"inline": {"analyst_mode": "inline"}, "process": {"analyst_mode": "process"}, "before": {}}


def run_children(groups: list[list[dict]], variant: str, before: Path | None) -> tuple[float, list[dict]]:
    """Start one process per group of configs (each trains its group one run after the other),
    all at once; (wall seconds, their reports)."""
    root = before if variant == "before" and before is not None else ROOT
    environment = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=str(root), configs=group, options=VARIANT_OPTIONS[variant])],
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
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_OPTIONS))
    parser.add_argument("--before", type=Path, help="a checkout of kernelscope to compare against")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = args.variants or (["before", "inline", "process"] if args.before else ["inline", "process"])
    if "before" in variants and args.before is None:
        parser.error("--before: the variant 'before' needs a tree")
    rows = []
    print(f"load at start {load()} on {os.cpu_count()} CPUs")
    print(
        "| lesson | way | variant | wall s median (range) | CPU s training processes | CPU s partners + analyst "
        "| snapshots | load per round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for lesson in args.lessons:
        configs = lesson_configs(lesson, args.steps)
        for way in args.ways:
            groups = [configs] if way == "sequential" else [configs[0::2], configs[1::2]]
            measured: dict[str, list] = {variant: [] for variant in variants}
            loads: dict[str, list] = {variant: [] for variant in variants}
            for round_number in range(args.rounds):
                shift = round_number % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    loads[variant].append(load())
                    measured[variant].append(run_children(groups, variant, args.before))
                    wall, reports = measured[variant][-1]
                    print(
                        f"  round {round_number + 1} {lesson} {way} {variant}: wall {wall:.1f} s, CPU "
                        f"{sum(r['cpu'] for r in reports):.1f} + {sum(r['children_cpu'] for r in reports):.1f} s "
                        f"(load {loads[variant][-1]})",
                        flush=True,
                    )
            for variant in variants:
                walls = [wall for wall, _ in measured[variant]]
                cpu = statistics.median(sum(r["cpu"] for r in reports) for _, reports in measured[variant])
                children = statistics.median(
                    sum(r["children_cpu"] for r in reports) for _, reports in measured[variant]
                )
                snapshots = sum(r["snapshots"] for r in measured[variant][0][1])
                row = {
                    "lesson": lesson,
                    "way": way,
                    "variant": variant,
                    "wall": statistics.median(walls),
                    "walls": walls,
                    "cpu": cpu,
                    "children_cpu": children,
                    "snapshots": snapshots,
                    "loads": loads[variant],
                }
                rows.append(row)
                print(
                    f"| {lesson} | {way} | {variant} | {row['wall']:.1f} ({min(walls):.1f}-{max(walls):.1f}) | "
                    f"{cpu:.1f} | {children:.1f} | {snapshots} | {'; '.join(loads[variant])} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
