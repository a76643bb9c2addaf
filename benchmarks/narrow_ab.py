"""A/B of engine.fast.conv's columns-only path (narrow and wide convs, `_columns_only`) against the
full im2col path, in fresh processes, interleaved: CPU time and wall time per training pass
(train_gradients + Adam, all parts in this process: KERNELSCOPE_SPLIT=never) and per
evaluation forward of 500 images.
CPU time is what a busy machine changes least; the load average is printed per round.

    python benchmarks/narrow_ab.py [--presets deep small demo] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = {"deep": 32, "small": 64, "demo": 64, "medium": 64}
CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
import numpy as np
import engine
from engine.fast import conv
if not {narrow}:
    conv._columns_only = lambda rows, out_rows: False
model = engine.build_model({preset!r}, seed=0)
rng = np.random.default_rng(0)
shape = tuple(engine.PRESETS[{preset!r}]["input"])
x = rng.standard_normal(({batch}, *shape)).astype(np.float32); y = rng.integers(0, 10, {batch})
big = rng.standard_normal((500, *shape)).astype(np.float32)
opt = engine.make_optimizer({{"name": "adam", "lr": 0.001}})
def passes(n):
    cpu, wall = [], []
    for _ in range(n):
        c, w = time.process_time(), time.perf_counter()
        model.train_gradients(x, y); opt.step(model.params, model.grads)
        cpu.append(time.process_time() - c); wall.append(time.perf_counter() - w)
    return cpu, wall
passes(5)
cpu, wall = passes({steps})
c, w = time.process_time(), time.perf_counter()
for _ in range(3): model.forward(big)
print(json.dumps({{"cpu": sum(cpu) / len(cpu), "wall": sorted(wall)[len(wall) // 2],
                  "eval_cpu": (time.process_time() - c) / 3, "eval_wall": (time.perf_counter() - w) / 3}}))
"""


def measure(preset: str, narrow: bool, steps: int) -> dict:
    code = CHILD.format(root=str(ROOT), narrow=narrow, preset=preset, batch=BATCH[preset], steps=steps)
    environment = {**os.environ, "KERNELSCOPE_SPLIT": "never", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["deep", "small", "demo"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(
        "| preset | batch | old CPU ms/pass | new CPU ms/pass | new/old CPU (rounds) | new/old wall (rounds) "
        "| eval 500: new/old CPU (rounds) | load per round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        old, new, loads = [], [], []
        for round_number in range(args.rounds):
            loads.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
            for narrow in (False, True) if round_number % 2 == 0 else (True, False):
                (new if narrow else old).append(measure(preset, narrow, args.steps))
        ratio = lambda key, new=new, old=old: [n[key] / o[key] for n, o in zip(new, old)]  # noqa: E731
        fmt = lambda r: f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"  # noqa: E731
        print(
            f"| {preset} | {BATCH[preset]} | {1000 * statistics.median(o['cpu'] for o in old):.2f} | "
            f"{1000 * statistics.median(n['cpu'] for n in new):.2f} | {fmt(ratio('cpu'))} | {fmt(ratio('wall'))} | "
            f"{fmt(ratio('eval_cpu'))} | {'; '.join(loads)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
