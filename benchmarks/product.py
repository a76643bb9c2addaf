"""Benchmark: speed as the learner feels it (issue 19, goal 1), side by side in one run.

Training steps per second of the default run (`{}`: preset demo, He normal, SGD, batch 64,
snapshot every 10, eval every 100) through each way of training it:

  engine    Trainer.train_step in a loop, in a fresh process: the engine alone, no snapshots
  cli       `kernelscope train` (the worker loop with snapshots, evaluation and files)
  server    `kernelscope serve` + POST /api/runs, nobody watching
  page      the same with the page open on the run in Chromium (/usr/bin/chromium, Playwright)
  explain   the same with the explain drawer open on conv1's second filter, which follows the
            training run
  play      the same with the page playing the run's stored snapshots at 20 a second (the pace
            control) while it trains; explain and play are not in the default list
            (--only page,explain,play)

each quiet (the machine as it is: the load average is printed per round) and busy (a
`python -c "while True: pass"` neighbour started here and killed after). Rounds run the
scenarios in rotated order. Steps/s are taken from the run's own progress between step
`warmup` and the end (polled every 0.25 s for cli/server/page), so start-up is left out.

Then, per phase of a step in the worker, measured in-process with the engine's public API
the way app/worker.py runs them (train_step; at every snapshot step: Trainer.snapshot
without maps, of which the statistics on the monitor batch and the detector labels; feature
maps of the probes; writing the snapshot files; every eval_every: evaluate; every 100:
the checkpoint): ms per call and per training step on average, and the share of training.
With the analyst process (engine/analyst.py, what the worker uses on more than one CPU) the
snapshot, labels, maps and eval run off the training path; what stays on it per snapshot is
"capture" (copying the weights and pickling the job) and "write".

    python benchmarks/product.py              # 600 steps, 2 rounds
    python benchmarks/product.py --quick      # 200 steps, 1 round
    python benchmarks/product.py --only engine,cli --conditions quiet
    python benchmarks/product.py --only "" --path-rounds 3 --no-phases   # the training path's CPU only
    python benchmarks/product.py --config '{"model": "medium", "dataset": {"name": "shapes", "size": 32}}' --steps 300

`--config JSON` measures another run config (RunConfig fields; `steps` comes from --steps) the
same way, for example the `medium` preset that goal 1 names beside the default run. The CLI gets
its fields as its own options (--model, --dataset, --init, ...).

`--path-rounds N` adds the training path measured in CPU time, the steadier figure on a busy
machine: fresh processes, rotated, each training the default run with every part of a batch in
its own process (KERNELSCOPE_SPLIT=never): the engine alone (train_step), Trainer.events with
its side work inline, and with the analyst process (engine/analyst.py); CPU ms per step of the
training process (its reader and writer threads included) and steps/s, after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SCENARIOS = ("engine", "cli", "server", "page")
OPTIONAL_SCENARIOS = ("explain", "play")
CONDITIONS = ("quiet", "busy")
WARMUP = 20


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


# ------------------------------------------------------------------ engine alone


ENGINE_CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
from engine.trainer import Trainer
trainer = Trainer({config!r})
marks = []
for _ in range({steps}):
    trainer.train_step()
    marks.append(time.perf_counter())
w = {warmup}
print(json.dumps((len(marks) - w) / (marks[-1] - marks[w - 1])))
"""


def engine_rate(config: dict, warmup: int) -> float:
    code = ENGINE_CHILD.format(root=str(ROOT), config=config, steps=config["steps"], warmup=warmup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the training path's CPU


PATH_CHILD = """
import sys, time, json, resource
sys.path.insert(0, {root!r})
from engine.trainer import Trainer
trainer = Trainer({config!r})
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
if {mode!r} == "engine":
    for _ in range({steps}):
        trainer.train_step()
        if trainer.step == {warmup}:
            c, t = cpu(), time.perf_counter()
else:
    for event in trainer.events(analyst_mode={mode!r}):
        if event["type"] == "metrics" and event["points"][0]["step"] <= {warmup} <= event["points"][-1]["step"]:
            c, t = cpu(), time.perf_counter()
steps = {steps} - {warmup}
print(json.dumps({{"cpu_ms": 1000 * (cpu() - c) / steps, "steps_per_s": steps / (time.perf_counter() - t)}}))
"""
PATH_MODES = ("engine", "inline", "process", "auto")


def path_costs(config: dict, warmup: int, rounds: int) -> dict:
    """{mode: [(CPU ms per step of the training process, steps/s), ...]}: the engine alone
    (train_step), the loop with its side work inline, with the analyst process, and "auto" (the
    process only while a core is spare, what the worker uses); every part
    of a batch in the training process (KERNELSCOPE_SPLIT=never), so its CPU is the path's."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "KERNELSCOPE_SPLIT": "never"}
    measured: dict[str, list] = {mode: [] for mode in PATH_MODES}
    for round_number in range(rounds):
        shift = round_number % len(PATH_MODES)
        for mode in PATH_MODES[shift:] + PATH_MODES[:shift]:
            code = PATH_CHILD.format(root=str(ROOT), config=config, steps=config["steps"], warmup=warmup, mode=mode)
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800, env=environment
            )
            report = json.loads(out.stdout.strip().splitlines()[-1])
            measured[mode].append((report["cpu_ms"], report["steps_per_s"]))
            print(
                f"  path round {round_number + 1} {mode}: {report['cpu_ms']:.2f} CPU ms/step, "
                f"{report['steps_per_s']:.1f} steps/s (load {load()})",
                flush=True,
            )
    return measured


def path_table(measured: dict) -> list[str]:
    lines = [
        "| training path | CPU ms/step (median, range) | / engine CPU | steps/s (median) | / engine steps/s (rounds) |",
        "|---|---|---|---|---|",
    ]
    engine = measured["engine"]
    for mode, values in measured.items():
        cpu = [c for c, _ in values]
        rate = [r for _, r in values]
        cpu_ratio = statistics.median(c / e for (c, _), (e, _) in zip(values, engine))
        rate_ratios = [r / e for (_, r), (_, e) in zip(values, engine)]
        lines.append(
            f"| {mode} | {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {cpu_ratio:.2f} | "
            f"{statistics.median(rate):.1f} | {statistics.median(rate_ratios):.2f} "
            f"({min(rate_ratios):.2f}-{max(rate_ratios):.2f}) |"
        )
    return lines


# ------------------------------------------------------------------ progress polling


def rate_from_samples(samples: list[tuple[float, int]], warmup: int, total: int) -> float:
    """steps/s between the first sample at or past `warmup` and the first at `total`."""
    start = next((t, s) for t, s in samples if s >= warmup)
    end = next((t, s) for t, s in samples if s >= total)
    return (end[1] - start[1]) / (end[0] - start[0])


def poll(read_step, total: int, alive, limit: float = 1800.0) -> list[tuple[float, int]]:
    samples = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        step = read_step()
        if step is not None:
            samples.append((time.monotonic(), step))
            if step >= total:
                return samples
        if not alive():
            step = read_step()
            if step is not None and step >= total:
                samples.append((time.monotonic(), step))
                return samples
            raise RuntimeError("the training process ended before its last step")
        time.sleep(0.25)
    raise RuntimeError("no end of training within the limit")


def cli_options(config: dict) -> list[str]:
    """`kernelscope train`'s options for a run config: one per field, JSON where it is not a string."""
    options = []
    for key, value in config.items():
        options += [f"--{key.replace('_', '-')}", value if isinstance(value, str) else json.dumps(value)]
    return options


def cli_rate(config: dict, warmup: int) -> float:
    from app.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "app.cli", "train", "--data", tmp, *cli_options(config)]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        store = None

        def read_step():
            nonlocal store
            try:
                if store is None:
                    store = Store(Path(tmp))
                runs = store.list_runs()
                return int(runs[0]["step"]) if runs else None
            except Exception:  # the database is being created
                return None

        try:
            samples = poll(read_step, config["steps"], lambda: process.poll() is None)
        finally:
            process.wait(120)
        return rate_from_samples(samples, warmup, config["steps"])


# ------------------------------------------------------------------ who takes the CPU

# What each process of the server's and the browser's trees is, by its command line (first match).
PROCESS_KINDS = (
    ("analyst", "engine.analyst"),
    ("partner", "partner_main"),
    ("chromium renderer", "--type=renderer"),
    ("chromium gpu", "--type=gpu-process"),
    ("chromium utility", "--type=utility"),
    ("chromium browser", "chromium"),
    ("playwright driver", "playwright"),
    ("run worker", "multiprocessing"),
    ("server", "app.cli"),
    ("this benchmark", "product.py"),
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """root and its descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_by_process(roots: list[int]) -> dict[int, tuple[str, float]]:
    """{pid: (kind by PROCESS_KINDS, CPU seconds so far, user + system)} of every live process under `roots`."""
    found = {}
    for root in roots:
        for pid in process_tree(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            kind = next((name for name, mark in PROCESS_KINDS if mark in command), "other")
            found[pid] = (kind, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


class CpuWatch:
    """CPU per process kind between the first reading and each process's last: read() at every
    poll, so a process that ends (the run's worker at its last step) keeps its last reading."""

    def __init__(self, roots: list[int]):
        self.roots = roots
        self.first: dict[int, float] | None = None
        self.last: dict[int, tuple[str, float]] = {}
        self.steps = (0, 0)

    def read(self, step: int) -> None:
        now = cpu_by_process(self.roots)
        if self.first is None:
            self.first = {pid: cpu for pid, (_, cpu) in now.items()}
            self.steps = (step, step)
        for pid, (kind, cpu) in now.items():
            # a process that has ended but is not yet reaped has no command line left: it keeps its kind
            known = self.last.get(pid)
            self.last[pid] = (known[0] if known and kind == "other" else kind, cpu)
        self.steps = (self.steps[0], step)

    def ms_per_step(self) -> dict[str, float]:
        first = self.first or {}
        steps = max(1, self.steps[1] - self.steps[0])
        totals: dict[str, float] = {}
        for pid, (kind, cpu) in self.last.items():
            totals[kind] = totals.get(kind, 0.0) + 1000 * (cpu - first.get(pid, 0.0)) / steps
        return totals


CPU_SHARES: dict[str, list[dict[str, float]]] = {}  # scenario -> per round, CPU ms/step by kind


def server_rate(config: dict, warmup: int, scenario: str) -> float:
    """Steps/s of the run through `kernelscope serve` in one of the server scenarios: "server"
    (nobody watching), "page", "explain" or "play" (the page open, and so on)."""
    import httpx

    Server = serve_harness().Server

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data")
        try:
            run_id = server.start_run(config)
            watch = CpuWatch([server.process.pid, os.getpid()])

            def read():
                step = server.client.get(f"/api/runs/{run_id}").json()["step"]
                if warmup <= step:
                    watch.read(step)
                return step

            def keep_shares():
                CPU_SHARES.setdefault(scenario, []).append(watch.ms_per_step())

            if scenario == "server":
                samples = poll(read, config["steps"], lambda: server.process.poll() is None)
                keep_shares()
                return rate_from_samples(samples, warmup, config["steps"])
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                view = browser.new_page(viewport={"width": 1280, "height": 800})
                view.goto(f"{server.url}/#run={run_id}")
                view.wait_for_selector("body[data-ready=true]")
                if scenario == "explain":
                    view.click("#filter-board .layer-panel .filter-card >> nth=1")
                if scenario == "play":
                    view.wait_for_selector("#filter-board .layer-panel .filter-card")
                    view.select_option("#pace", "20")
                samples = poll(read, config["steps"], lambda: server.process.poll() is None)
                keep_shares()
                browser.close()
            httpx.get(f"{server.url}/healthz")
            return rate_from_samples(samples, warmup, config["steps"])
        finally:
            server.stop()


def serve_harness():
    """benchmarks/serve.py as a module (its Server: `kernelscope serve` on a free port)."""
    import importlib.util

    if "benchmarks_serve" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmarks_serve", ROOT / "benchmarks" / "serve.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_serve"] = module
        spec.loader.exec_module(module)
    return sys.modules["benchmarks_serve"]


def measure(scenario: str, config: dict, warmup: int) -> float:
    if scenario == "engine":
        return engine_rate(config, warmup)
    if scenario == "cli":
        return cli_rate(config, warmup)
    return server_rate(config, warmup, scenario)


# ------------------------------------------------------------------ phases


PHASES = (
    "train",
    "snapshot",
    "  of which stats",
    "  of which labels",
    "maps",
    "eval",
    "write",
    "checkpoint",
    "capture",
)


CLOCK = time.perf_counter  # --cpu-phases: time.process_time (this process's CPU, steadier when busy)


def phases(config: dict) -> dict:
    """{phase: [seconds per call]} over config["steps"] steps, the way app/worker.py runs them."""
    import numpy as np

    from app import store as files
    from engine import analysis, analyst
    from engine.trainer import RunConfig, Trainer, snapshot_rule

    cfg = RunConfig.from_dict(config)
    is_snapshot_step = snapshot_rule(cfg)  # the default schedule: dense early snapshots, then every 10
    trainer = Trainer(cfg)
    times = {name: [] for name in PHASES}

    def timed(name, function, *args, **kwargs):
        started = CLOCK()
        result = function(*args, **kwargs)
        times[name].append(CLOCK() - started)
        return result

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        files.run_dir(data_dir, "bench").mkdir(parents=True, exist_ok=True)
        files.snapshot_dir(data_dir, "bench").mkdir(parents=True, exist_ok=True)
        model, data = trainer.model, trainer.dataset
        for _ in range(cfg.steps):
            timed("train", trainer.train_step)
            step = trainer.step
            if step % cfg.eval_every == 0:
                timed("eval", trainer.evaluate)
            if is_snapshot_step(step):
                snapshot, params = timed("snapshot", trainer.snapshot, feature_maps=False)
                # what stays on the training path when an analyst process computes the snapshot:
                # the copy of the weights and the job sent to it (engine/analyst.py)
                started = CLOCK()
                job = analyst.Job(step, step % cfg.eval_every == 0, True, trainer.model.state_dict())
                pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
                times["capture"].append(CLOCK() - started)
                timed("  of which stats", analysis.layer_stats, model, data.monitor_x, data.monitor_y)
                for index in model.conv_indices:
                    started = CLOCK()
                    analysis.conv_layer_summary(model.params[f"{index}.weight"], model.params.get(f"{index}.bias"))
                    times["  of which labels"].append(CLOCK() - started)
                maps = timed("maps", analysis.feature_maps, model, data.probe_x)
                timed("write", files.write_snapshot, data_dir, "bench", snapshot, params, feature_maps=maps)
            if step % 100 == 0:
                state = trainer.checkpoint()
                state["recent_metrics"] = np.array("[]")
                timed("checkpoint", files.write_npz_atomic, files.checkpoint_path(data_dir, "bench"), state)
    return times


def phase_table(times: dict, steps: int, warmup_steps: int = 10) -> list[str]:
    train = statistics.median(times["train"][warmup_steps:])
    lines = ["| phase | calls | ms per call (median) | ms per step | share of train |", "|---|---|---|---|---|"]
    for name in PHASES:
        values = times[name]
        if not values:
            continue
        per_call = statistics.median(values) * 1000
        per_step = sum(values) / steps * 1000 if name != "train" else train * 1000
        share = per_step / (train * 1000)
        lines.append(f"| {name} | {len(values)} | {per_call:.2f} | {per_step:.2f} | {share:.0%} |")
    return lines


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 steps, one round")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--no-phases", action="store_true")
    parser.add_argument("--cpu-phases", action="store_true", help="time the phases in CPU time of this process")
    parser.add_argument("--path-rounds", type=int, default=0, help="rounds of the training-path CPU comparison")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--config", type=json.loads, default={}, help="a run config (JSON) instead of the default run's"
    )
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 600)
    rounds = args.rounds or (1 if args.quick else 2)
    scenarios = [s for s in args.only.split(",") if s]
    unknown = sorted(set(scenarios) - set(SCENARIOS) - set(OPTIONAL_SCENARIOS))
    if unknown:
        parser.error(
            f"--only: unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS + OPTIONAL_SCENARIOS)}"
        )
    config = {**args.config, "steps": steps}
    results = {"config": config, "rounds": rounds, "rates": {}, "loads": {}}
    which = f"run {json.dumps(args.config)}" if args.config else "default run"
    print(
        f"{which}, {steps} steps, warm-up {WARMUP}, {rounds} round(s); load at start {load()} on {os.cpu_count()} CPUs",
        flush=True,
    )
    for condition in args.conditions.split(",") if scenarios else []:
        rates = {s: [] for s in scenarios}
        loads = []
        for round_number in range(rounds):
            order = scenarios[round_number % len(scenarios) :] + scenarios[: round_number % len(scenarios)]
            busy = neighbour() if condition == "busy" else None
            try:
                for scenario in order:
                    loads.append(load())
                    rates[scenario].append(measure(scenario, config, WARMUP))
                    print(
                        f"  {condition} round {round_number + 1} {scenario}: {rates[scenario][-1]:.1f} steps/s "
                        f"(load {loads[-1]})",
                        flush=True,
                    )
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
        results["rates"][condition] = rates
        results["loads"][condition] = loads
    if scenarios:
        print("\n| scenario | " + " | ".join(f"{c} steps/s | {c} / engine" for c in results["rates"]) + " |")
        print("|---|" + "---|---|" * len(results["rates"]))
    for scenario in scenarios:
        cells = []
        for rates in results["rates"].values():
            median = statistics.median(rates[scenario])
            ratios = [a / b for a, b in zip(rates[scenario], rates["engine"])] if "engine" in rates else []
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
            cells.append(f"{median:.1f} | {ratio}")
        print(f"| {scenario} | " + " | ".join(cells) + " |")
    for condition, loads in results["loads"].items():
        print(f"load averages ({condition}): {'; '.join(loads)}")
    if CPU_SHARES:
        print("\nCPU ms per training step by process, server and page scenarios (median over rounds and conditions):")
        for scenario, rounds_measured in CPU_SHARES.items():
            kinds = sorted({kind for shares in rounds_measured for kind in shares})
            cells = {kind: statistics.median(shares.get(kind, 0.0) for shares in rounds_measured) for kind in kinds}
            total = sum(cells.values())
            listed = ", ".join(f"{kind} {ms:.2f}" for kind, ms in sorted(cells.items(), key=lambda item: -item[1]))
            print(f"  {scenario}: total {total:.2f} ({listed})")
        results["cpu_shares"] = CPU_SHARES
    if args.path_rounds:
        measured = path_costs(config, WARMUP, args.path_rounds)
        print(f"\ntraining path, {steps} steps, every part in the training process (load {load()}):")
        print("\n".join(path_table(measured)))
        results["path"] = measured
    if not args.no_phases:
        global CLOCK
        CLOCK = time.process_time if args.cpu_phases else time.perf_counter
        times = phases(config)
        table = phase_table(times, steps)
        print(f"\nper phase, in-process, {steps} steps (load {load()}):")
        print("\n".join(table))
        results["phases"] = {name: values for name, values in times.items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
