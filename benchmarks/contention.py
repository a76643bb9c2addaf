"""Benchmark: the engine's training step with and without the partner split, quiet and with a
CPU-bound neighbour (issue 19, goal 2).

Modes (each in a fresh process, through engine.fast's public switches):
  old       split always, partner and main poll the pipe up to 2 ms before blocking
            (KERNELSCOPE_SPLIT=always KERNELSCOPE_PARTNER_SPIN=always: the code before the change)
  split     split always, polling only while a core is spare (KERNELSCOPE_SPLIT=always)
  local     every part of the batch computed in the main process (KERNELSCOPE_SPLIT=never):
            the single-process path, bit-identical results
  adaptive  the default: engine.fast.adaptive measures split against local and picks

Conditions: quiet (as the machine is: the load average is printed with every figure) and busy
(a `python -c "while True: pass"` neighbour started here and killed after). Rounds alternate
the modes in rotated order in fresh processes; a mode's figure per round is its median step
time (train_gradients + SGD, after warm-up, the adaptive probe included in the warm-up
only when --warmup covers it); the table gives the median over rounds and the ratio to local
per round (min-max), plus CPU seconds per step of the main process and its partner.

    python benchmarks/contention.py                    # small, demo, medium at 64; deep at 32
    python benchmarks/contention.py --presets small --rounds 3 --steps 60
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
MODES = {
    "old": {"KERNELSCOPE_SPLIT": "always", "KERNELSCOPE_PARTNER_SPIN": "always"},
    "split": {"KERNELSCOPE_SPLIT": "always", "KERNELSCOPE_PARTNER_SPIN": "auto"},
    "local": {"KERNELSCOPE_SPLIT": "never", "KERNELSCOPE_PARTNER_SPIN": "auto"},
    "adaptive": {"KERNELSCOPE_SPLIT": "auto", "KERNELSCOPE_PARTNER_SPIN": "auto"},
}
BATCH = {"small": 64, "demo": 64, "medium": 64, "deep": 32}
sys.path.insert(0, str(ROOT))
from engine.fast import adaptive  # noqa: E402

# the warm-up passes and the longest probe (pairs that disagree), so adaptive is timed after its verdict
PROBE_PASSES = adaptive.WARMUP_PASSES + 2 * adaptive.MAX_PROBE_ROUNDS


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as source:
        fields = source.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(preset: str, batch: int, steps: int, warmup: int) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import engine
    from engine.fast import partner

    model = engine.build_model(preset, seed=0)
    shape = model.input_shape if hasattr(model, "input_shape") else tuple(engine.PRESETS[preset]["input"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    optimizer = engine.make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9})
    times = []
    cpu_main = cpu_partner = 0.0
    for step in range(steps):
        if step == warmup:
            helpers = partner.partners(1) if partner._partners else []
            partner_pid = helpers[0].process.pid if helpers else None
            cpu_main = cpu_seconds(os.getpid())
            cpu_partner = cpu_seconds(partner_pid) if partner_pid else 0.0
        started = time.perf_counter()
        model.train_gradients(x, labels)
        optimizer.step(model.params, model.grads)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    measured = steps - warmup
    cpu_main = (cpu_seconds(os.getpid()) - cpu_main) / measured
    cpu_partner = ((cpu_seconds(partner_pid) - cpu_partner) / measured) if partner_pid else 0.0
    chooser = model.split_chooser
    print(
        json.dumps(
            {
                "ms": 1000 * statistics.median(times),
                "mean_ms": 1000 * statistics.fmean(times),
                "cpu_main_ms": 1000 * cpu_main,
                "cpu_partner_ms": 1000 * cpu_partner,
                "decisions": [
                    [n, mode, round(1000 * s, 2), round(1000 * loc, 2)] for n, mode, s, loc in chooser.decisions
                ],
            }
        )
    )


def measure(mode: str, preset: str, steps: int, warmup: int) -> dict:
    environment = {**os.environ, **MODES[mode], "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", preset, str(BATCH[preset]), str(steps), str(warmup)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(presets, modes, rounds, steps_for, warmup) -> list[dict]:
    rows = []
    for preset in presets:
        for condition in ("quiet", "busy"):
            per_mode = {mode: [] for mode in modes}
            loads = []
            for round_number in range(rounds):
                order = modes[round_number % len(modes) :] + modes[: round_number % len(modes)]
                busy = neighbour() if condition == "busy" else None
                try:
                    if busy:
                        time.sleep(0.3)
                    loads.append(load())
                    for mode in order:
                        per_mode[mode].append(measure(mode, preset, steps_for(preset), warmup))
                finally:
                    if busy:
                        busy.kill()
                        busy.wait()
            local = [r["ms"] for r in per_mode["local"]] if "local" in per_mode else None
            for mode in modes:
                figures = per_mode[mode]
                ms = [r["ms"] for r in figures]
                ratios = [a / b for a, b in zip(ms, local)] if local else []
                row = {
                    "preset": preset,
                    "batch": BATCH[preset],
                    "condition": condition,
                    "mode": mode,
                    "ms": statistics.median(ms),
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_min": min(ratios) if ratios else None,
                    "ratio_max": max(ratios) if ratios else None,
                    "cpu_main_ms": statistics.median(r["cpu_main_ms"] for r in figures),
                    "cpu_partner_ms": statistics.median(r["cpu_partner_ms"] for r in figures),
                    "choices": [d[1] for r in figures for d in r["decisions"]],
                    "load": loads,
                }
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
    choices = ",".join(sorted(set(row["choices"]))) or "-"
    return (
        f"| {row['preset']} | {row['batch']} | {row['condition']} | {row['mode']} | {row['ms']:.2f} | {ratio} | "
        f"{row['cpu_main_ms']:.2f} + {row['cpu_partner_ms']:.2f} | {choices} | {'; '.join(row['load'])} |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "demo", "medium", "deep"])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80, help="steps per process (medium: a quarter)")
    parser.add_argument(
        "--warmup", type=int, default=PROBE_PASSES, help="steps not timed (by default the longest adaptive probe)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"load average at start: {load()} on {os.cpu_count()} CPUs")
    print(
        "| preset | batch | machine | mode | step ms (median) | / local (rounds) | CPU ms/step main + partner | adaptive chose | load avg per round |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = run(
        args.presets,
        args.modes,
        args.rounds,
        lambda preset: max(args.warmup + 8, args.steps // 4 if preset == "medium" else args.steps),
        args.warmup,
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
