"""A/B of the engine's training step between two checkouts of kernelscope, interleaved.

Usage: python benchmarks/ab_trees.py OLD_TREE NEW_TREE [--presets small medium] [--rounds 6]

Each measurement runs alone in a fresh process with PYTHONPATH set to one tree, and the order
alternates every round (A B, B A, ...), so both sides see the same machine. A measurement
builds the preset at batch 64 through the public API (`engine.build_model`, `train_gradients`,
`make_optimizer`), warms up, then times whole training steps (forward, loss, backward, SGD
with momentum) and reports the median. The table gives, per preset, the median of each side's
medians and the median and range of the per-round ratios new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MEASURE = r"""
import json, sys, time
import numpy as np
import engine
preset, batch, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = engine.build_model(preset, init="he_normal", seed=0)
shape = model.input_shape if hasattr(model, "input_shape") else tuple(model.spec["input"])
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, *shape)).astype(np.float32)
y = rng.integers(0, 10, batch)
opt = engine.make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9})
times = []
for i in range(warmup + steps):
    start = time.perf_counter()
    loss, _ = model.train_gradients(x, y)
    opt.step(model.params, model.grads)
    if i >= warmup:
        times.append(time.perf_counter() - start)
print(json.dumps({"ms": 1000 * float(np.median(times))}))
"""


def measure(tree: str, preset: str, batch: int, steps: int, warmup: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, preset, str(batch), str(steps), str(warmup)],
        env=env,
        cwd=os.path.abspath(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    steps = {"small": 60, "medium": 12}
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| preset | old ms | new ms | new/old median (range over rounds) |")
    print("|---|---|---|---|")
    for preset in args.presets:
        old, new, ratios = [], [], []
        for round_ in range(args.rounds):
            order = [("old", args.old), ("new", args.new)]
            if round_ % 2:
                order.reverse()
            got = {name: measure(tree, preset, args.batch, steps.get(preset, 30), 5) for name, tree in order}
            old.append(got["old"])
            new.append(got["new"])
            ratios.append(got["new"] / got["old"])
        print(
            f"| {preset} | {statistics.median(old):.2f} | {statistics.median(new):.2f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
