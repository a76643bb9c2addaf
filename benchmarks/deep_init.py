"""The depth-stall demo, measured: the 20-layer plain ReLU "deep" preset trained with each init.

He et al. (2015, Fig. 3) showed a deep plain ReLU network that trains with
their init and stalls with a smaller one. This script trains kernelscope's
"deep" preset (20 conv + ReLU layers, 8 filters each) on the generated shapes
set with the config of the page's depth-stall demo (app/teaching_schemas.py
DEMOS["depth_stall"]["base"] in engine/presets.py: Adam, lr 0.001, batch 32, 300 steps), once per init, and prints
the mean training loss over windows of steps and the validation accuracy at the
end. Every init sees the same data in the same order (same seed).

    python benchmarks/deep_init.py                 # He, Glorot, N(0, 0.01²), 300 steps
    python benchmarks/deep_init.py --steps 600 --inits he_normal normal:0.01

Chance level for the 10 shape classes is a loss of about ln 10 = 2.30.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# benchmarks/engine.py would shadow the engine package when this file is run as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from engine.presets import DEMOS  # noqa: E402

BASE = DEMOS["depth_stall"]["base"]
from engine.trainer import Trainer  # noqa: E402

WINDOW = 20


def parse_init(text: str):
    """'he_normal' or 'normal:0.01' (normal with that std)."""
    if text.startswith("normal:"):
        return {"name": "normal", "std": float(text.split(":", 1)[1])}
    return text


def train(init, steps: int, seed: int) -> dict:
    trainer = Trainer({**BASE, "init": init, "steps": steps, "seed": seed})
    started = time.perf_counter()
    losses = [trainer.train_step()["loss"] for _ in range(steps)]
    seconds = time.perf_counter() - started
    evaluation = trainer.evaluate()
    windows = [float(np.mean(losses[i : i + WINDOW])) for i in range(0, steps, WINDOW)]
    return {
        "init": init,
        "first_window": windows[0],
        "last_window": windows[-1],
        "windows": windows,
        "val_loss": evaluation["val_loss"],
        "val_acc": evaluation["val_acc"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=BASE["steps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", nargs="+", default=["he_normal", "glorot_uniform", "normal:0.01"])
    parser.add_argument("--json", action="store_true", help="print one JSON object per init instead of a table")
    args = parser.parse_args()
    print(
        f"deep preset, {BASE['optimizer']}, batch {BASE['batch_size']}, "
        f"{args.steps} steps, seed {args.seed}; mean training loss per {WINDOW} steps"
    )
    for text in args.inits:
        result = train(parse_init(text), args.steps, args.seed)
        if args.json:
            print(json.dumps(result))
            continue
        windows = " ".join(f"{w:.2f}" for w in result["windows"])
        print(
            f"{text:>16}: loss {result['first_window']:.3f} -> {result['last_window']:.3f} | "
            f"val_loss {result['val_loss']:.3f} val_acc {result['val_acc']:.3f} | "
            f"{result['seconds']:.0f} s\n{'':>18}windows: {windows}"
        )


if __name__ == "__main__":
    main()
