"""Benchmark: how long the lessons take (issue 19, goal 4).

  deep    the depth-stall demo: the `deep` preset under he_normal, glorot_uniform and N(0, 0.01²),
          300 steps each, batch 32, Adam lr 0.001 (engine/presets.py DEMOS["depth_stall"], as
          the lesson `scale` starts it)
  inits   a 6-init comparison of the default run (demo preset, batch 64, SGD), 300 steps each
Both are run with the configs POST /api/comparisons makes of them (engine/presets.py
COMPARISON_DEFAULTS for what the request leaves unset).

Each lesson is timed two ways, in fresh processes, through the one training loop as the server's
worker runs it (Trainer.events with its snapshot schedule, dense early snapshots included, and its
evaluations; the events are consumed, nothing is written):
  sequential  one process trains the runs one after the other
  parallel    two processes at once, the runs dealt between them (the server trains
              DEFAULT_MAX_RUNS = 2 runs at a time and queues the rest), wall time until both end
  server      as the product runs them: `kernelscope serve` on an empty data folder (its first run
              draws the dataset, about a second, while the other waits for it), the lesson's
              request POSTed to /api/comparisons (GET /api/lessons' `start` for deep; the default
              run with `steps` for inits), wall time from the POST until every run has ended,
              everything written (snapshots, checkpoints, the store); CPU is the server's and
              its workers' (with their partner and analyst processes), reaped at the end
  server-warm the same on a data folder that already holds the dataset's cache, as after any
              earlier run (the dataset is drawn before the server starts, outside the timing)
and reports wall seconds and CPU seconds (the training process; its partner and analyst
processes) summed over its processes.

Variants, interleaved round by round (rotated order):
  inline   this tree, side work on the training path (analyst_mode="inline")
  process  this tree, side work in an analyst process (analyst_mode="process")
  auto     this tree, the worker's choice (analyst_mode="auto": the process only while a core is spare)
  before   the tree given with --before (e.g. /work/main), its Trainer.events as it is
The load average is printed with every figure.

    python benchmarks/lessons.py --phases --before /work/main     # where the CPU goes, per phase

--phases: each lesson's runs one after the other in one fresh process per tree, through
app/worker.py drive_run as a run's process drives them (files written to a temporary folder;
every part of a batch and the side work in that process: KERNELSCOPE_SPLIT=never, analyst
inline, BLAS on one thread), with the CPU time of each phase on the thread that runs it
(time.thread_time; the snapshot files are written on a writer thread where the tree has one): training steps, snapshot content (statistics, feature maps, layer summaries with
the detector labels), evaluations, snapshot files (recomputing the maps in float64, encoding
them, the zip), checkpoints; "setup" is the rest (build_trainer: the dataset, read from the
folder's cache where the tree has one, and the model; the monitor batch).

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
if __name__ == "__main__":  # imported by the measured processes, it leaves their tree first on sys.path
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


def lesson_request(lesson: str, steps: int) -> dict:
    """The POST /api/comparisons body the page sends for the lesson (`steps` per run)."""
    if lesson == "deep":
        from app.routes.lessons import get_lesson

        body = get_lesson("scale")["start"]["body"]
        return {**body, "base": {**body["base"], "steps": steps}}
    return {"base": {"steps": steps}, "inits": SIX_INITS, "name": "six inits"}


def lesson_configs(lesson: str, steps: int) -> list[dict]:
    """The run configs the server makes of lesson_request (app/routes/teaching.py create_comparison),
    with the engine and app of the tree first on sys.path."""
    try:
        from engine.presets import COMPARISON_DEFAULTS
    except ImportError:  # a tree from before comparisons had defaults of their own
        COMPARISON_DEFAULTS = {}

    body = lesson_request(lesson, steps)
    return [{**COMPARISON_DEFAULTS, **body["base"], "init": init} for init in body["inits"]]


CHILD = """
import sys, time, json, resource
sys.path.insert(0, {root!r})
sys.path.append({here!r})
from lessons import lesson_configs
from engine.trainer import RunConfig, Trainer
from engine.fast.partner import close_partners
options = {options!r}
configs = lesson_configs({lesson!r}, {steps!r})[{first!r}::{every!r}]
started = time.perf_counter()
snapshots = 0
for config in configs:
    trainer = Trainer(RunConfig.from_dict(config))
    for event in trainer.events(**options):
        snapshots += event["type"] == "snapshot"
wall = time.perf_counter() - started
close_partners()
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"wall": wall, "cpu": own.ru_utime + own.ru_stime,
                  "children_cpu": children.ru_utime + children.ru_stime, "snapshots": snapshots}}))
"""

VARIANT_OPTIONS = {
    "inline": {"analyst_mode": "inline"},
    "process": {"analyst_mode": "process"},
    "auto": {"analyst_mode": "auto"},
    "before": {},
}


def run_children(lesson: str, steps: int, groups: int, variant: str, before: Path | None) -> tuple[float, list[dict]]:
    """Start `groups` processes at once, process i training runs i, i + groups, ... of the
    lesson one after the other; (wall seconds, their reports)."""
    root = before if variant == "before" and before is not None else ROOT
    environment = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD.format(
                    root=str(root),
                    here=str(ROOT / "benchmarks"),
                    lesson=lesson,
                    steps=steps,
                    first=group,
                    every=groups,
                    options=VARIANT_OPTIONS[variant],
                ),
            ],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        for group in range(groups)
    ]
    reports = []
    for process in processes:
        out, _ = process.communicate(timeout=3600)
        if process.returncode:
            raise RuntimeError("a lesson process failed")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - started, reports


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process with the children it has reaped, plus its live
    descendants' with theirs: a server's run processes are forked and reaped by its forkserver."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = {
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        }
    except OSError:
        return 0.0  # it ended meanwhile: its CPU is in its parent's figures once reaped
    own = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(server_cpu(child) for child in children)


SERVER_CHILD = """
import json, os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
import httpx
root = {root!r}
sys.path.insert(0, root)
sys.path.append({here!r})
from lessons import lesson_request, server_cpu
body = lesson_request({lesson!r}, {steps!r})
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
with tempfile.TemporaryDirectory() as tmp:
    if {warm!r}:  # the dataset's cache, as an earlier run leaves it
        from app.worker import dataset_cache
        from engine.datasets import open_dataset
        from engine.trainer import RunConfig
        open_dataset(RunConfig.from_dict(body["base"]).dataset, cache=dataset_cache(Path(tmp)))
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data", tmp],
                              cwd=root, env={{**os.environ, "PYTHONPATH": root}},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{{port}}", timeout=60)
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    idle = server_cpu(server.pid)
    started = time.perf_counter()
    answer = client.post("/api/comparisons", json=body)
    answer.raise_for_status()
    comparison = answer.json()["id"]
    while True:
        runs = client.get(f"/api/comparisons/{{comparison}}").json()["runs"]
        if all(run["status"] in ("completed", "stopped", "diverged", "failed", "interrupted") for run in runs):
            break
        time.sleep(0.05)
    wall = time.perf_counter() - started
    statuses = sorted({{run["status"] for run in runs}})
    snapshots = sum(len(client.get(f"/api/runs/{{run['id']}}/snapshots").json()["steps"]) for run in runs)
    time.sleep(0.5)  # the workers end and are reaped
    cpu = server_cpu(server.pid) - idle
    client.close()
    server.send_signal(signal.SIGTERM)
    server.wait(60)
print(json.dumps({{"wall": wall, "cpu": cpu, "children_cpu": 0.0, "snapshots": snapshots, "statuses": statuses}}))
"""


def run_server(
    lesson: str, steps: int, variant: str, before: Path | None, warm: bool = False
) -> tuple[float, list[dict]]:
    """The lesson through `kernelscope serve` of the variant's tree (see the module docstring);
    `warm`: the data folder holds the dataset's cache before the server starts."""
    root = before if variant == "before" and before is not None else ROOT
    code = SERVER_CHILD.format(root=str(root), lesson=lesson, steps=steps, here=str(ROOT / "benchmarks"), warm=warm)
    environment = {**os.environ, "PYTHONPATH": str(root)}
    if variant in ("inline", "process", "auto"):
        environment["KERNELSCOPE_ANALYST"] = variant
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if report["statuses"] != ["completed"]:
        raise RuntimeError(f"a lesson run ended {report['statuses']}")
    return time.perf_counter() - started, [report]


PHASES_CHILD = """
import json, os, sys, tempfile, time
os.environ["KERNELSCOPE_SPLIT"] = "never"
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # every phase's work on the thread that calls it: thread_time is its CPU
sys.path.insert(0, {root!r})
sys.path.append({here!r})
from pathlib import Path
from lessons import lesson_configs
from app import storage, worker
from engine import analysis, analyst
from engine.trainer import RunConfig, Trainer
times, counts = {{}}, {{}}

def timed(owner, name, label):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            times[label] = times.get(label, 0.0) + time.thread_time() - started
            counts[label] = counts.get(label, 0) + 1
    setattr(owner, name, wrapper)

for owner, name, label in {wrapped!r}:
    timed({{"Trainer": Trainer, "analyst": analyst, "analysis": analysis, "storage": storage,
           "LocalStorage": storage.LocalStorage}}[owner], name, label)
started = time.process_time()
with tempfile.TemporaryDirectory() as folder:
    for number, config in enumerate(lesson_configs({lesson!r}, {steps!r})):
        trainer = worker.build_trainer(Path(folder), f"run{{number}}", RunConfig.from_dict(config).to_dict())
        worker.drive_run(trainer, Path(folder), f"run{{number}}", lambda message: None, None, analyst_mode="inline")
print(json.dumps({{"total": time.process_time() - started, "times": times, "counts": counts}}))
"""
# (owner, function, phase): the phases --phases times; an indented phase is part of the one above
PHASES = [
    ("Trainer", "train_step", "train steps"),
    ("analyst", "snapshot_content", "snapshot content"),
    ("analysis", "layer_stats", "  statistics on the monitor batch"),
    ("analysis", "feature_maps", "  feature maps of the probes"),
    ("analysis", "conv_layer_summary", "  layer summaries (kernels, detector labels, symmetry)"),
    ("analyst", "evaluation", "evaluations"),
    ("LocalStorage", "write_snapshot", "snapshot files"),
    ("storage", "recomputed_maps", "  maps recomputed in float64"),
    ("storage", "encode_map", "  maps encoded"),
    ("storage", "npz_bytes", "  zip (deflate)"),
    ("LocalStorage", "write_checkpoint", "checkpoints"),
]


def phases(lesson: str, steps: int, variant: str, before: Path | None) -> dict:
    root = before if variant == "before" and before is not None else ROOT
    code = PHASES_CHILD.format(
        root=str(root), here=str(ROOT / "benchmarks"), lesson=lesson, steps=steps, wrapped=PHASES
    )
    environment = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def phase_table(lesson: str, measured: dict[str, dict]) -> list[str]:
    variants = list(measured)
    lines = [
        f"| {lesson}: phase | " + " | ".join(f"{v} calls | {v} CPU s" for v in variants) + " |",
        "|---|" + "---|---|" * len(variants),
    ]
    for _, _, label in PHASES:
        cells = []
        for variant in variants:
            report = measured[variant]
            cells.append(f"{report['counts'].get(label, 0)} | {report['times'].get(label, 0.0):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    top = [label for _, _, label in PHASES if not label.startswith(" ")]
    rest = [measured[v]["total"] - sum(measured[v]["times"].get(label, 0.0) for label in top) for v in variants]
    lines.append("| setup (dataset, model, monitor batch) | " + " | ".join(f" | {r:.2f}" for r in rest) + " |")
    lines.append("| **total** | " + " | ".join(f" | **{measured[v]['total']:.2f}**" for v in variants) + " |")
    return lines


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", nargs="+", default=["deep", "inits"])
    parser.add_argument(
        "--ways",
        nargs="+",
        default=["sequential", "parallel"],
        choices=["sequential", "parallel", "server", "server-warm"],
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_OPTIONS))
    parser.add_argument("--before", type=Path, help="a checkout of kernelscope to compare against")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phases", action="store_true", help="CPU per phase instead (see above)")
    args = parser.parse_args()
    variants = args.variants or (["before", "inline", "process"] if args.before else ["inline", "process"])
    if "before" in variants and args.before is None:
        parser.error("--before: the variant 'before' needs a tree")
    if args.phases:
        trees = ["before", "this tree"] if args.before else ["this tree"]
        print(f"load at start {load()} on {os.cpu_count()} CPUs")
        for lesson in args.lessons:
            measured = {tree: phases(lesson, args.steps, tree, args.before) for tree in trees}
            print("\n".join(phase_table(lesson, measured)) + f"\n(load {load()})\n", flush=True)
        return
    rows = []
    print(f"load at start {load()} on {os.cpu_count()} CPUs")
    print(
        "| lesson | way | variant | wall s median (range) | CPU s training processes | CPU s partners + analyst "
        "| snapshots | load per round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for lesson in args.lessons:
        for way in args.ways:
            measured: dict[str, list] = {variant: [] for variant in variants}
            loads: dict[str, list] = {variant: [] for variant in variants}
            for round_number in range(args.rounds):
                shift = round_number % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    loads[variant].append(load())
                    if way.startswith("server"):
                        wall, reports = run_server(lesson, args.steps, variant, args.before, way == "server-warm")
                        measured[variant].append((reports[0]["wall"], reports))
                    else:
                        groups = 1 if way == "sequential" else 2
                        measured[variant].append(run_children(lesson, args.steps, groups, variant, args.before))
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
