"""The default demo, timed and checked: does it learn shapes and turn its first filters into detectors?

Runs `RunConfig()` (shapes, He normal, preset "demo", SGD) through `Trainer.run`
exactly as the CLI does (snapshot every 10 steps), reports the wall time, the
median cost of a training step and of a snapshot (measured side by side), and
checks the bar of issue 3: validation accuracy >= 90%, at least half of the
first-layer filters beat 99% of random kernels of their size, the best scoring
>= 0.8. Saves the first-layer filters at step 0 and at the end, labelled, to
docs/learned-filters.png. With --deep it also trains the "deep" preset (20 plain
ReLU conv layers, its default optimizer) with He normal and with N(0, 0.01^2)
and reports the losses.

    python benchmarks/demo.py [--steps 3000] [--seed 0] [--deep] [--config JSON --picture PATH]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the engine package, not benchmarks/engine.py beside this script

from engine.trainer import RunConfig, Trainer  # noqa: E402
console = Console()


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB: negative blue, zero white, positive red (saturating at ±scale)."""
    t = np.clip(values / scale, -1.0, 1.0)[..., None]
    white = np.array([247.0, 247.0, 247.0])
    red = np.array([178.0, 24.0, 43.0])
    blue = np.array([33.0, 102.0, 172.0])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return np.round(rgb).astype(np.uint8)


def filter_row(weight: np.ndarray, detectors: list[dict], title: str, pixel: int = 14) -> Image.Image:
    """One labelled row of a layer's filters (channel-summed), each scaled to its own peak."""
    kernels = weight.sum(axis=1)
    count, kh, kw = kernels.shape
    tile_w = max(kw * pixel, 96)
    width = count * (tile_w + 8) + 8
    height = 22 + kh * pixel + 34
    image = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill=(235, 235, 235))
    for index, (kernel, detector) in enumerate(zip(kernels, detectors)):
        peak = float(np.abs(kernel).max()) or 1.0
        tile = Image.fromarray(diverging(kernel, peak)).resize((kw * pixel, kh * pixel), Image.NEAREST)
        x = 8 + index * (tile_w + 8) + (tile_w - kw * pixel) // 2
        image.paste(tile, (x, 22))
        mark = "*" if detector["beats_chance"] else " "
        draw.text((8 + index * (tile_w + 8), 26 + kh * pixel), f"{detector['label']}", fill=(235, 235, 235))
        draw.text((8 + index * (tile_w + 8), 40 + kh * pixel), f"{detector['score']:.2f}{mark}", fill=(235, 235, 235))
    return image


def save_picture(first: dict, last: dict, path: Path, init) -> None:
    layer0, final0 = first["layers"][0], last["layers"][0]
    chance = final0["detectors"][0]["chance"]
    top = filter_row(np.array(layer0["weight"]), layer0["detectors"], f"step {first['step']}: init {json.dumps(init)}")
    bottom = filter_row(np.array(final0["weight"]), final0["detectors"],
                        f"step {last['step']}: learned (* = beats 99% of random {final0['shape'][2]}x{final0['shape'][3]} kernels, |cos| > {chance:.2f})")
    picture = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), (40, 40, 40))
    picture.paste(top, (0, 0))
    picture.paste(bottom, (0, top.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(steps: int, seed: int, picture: Path, overrides: dict) -> bool:
    config = RunConfig.from_dict({"steps": steps, "seed": seed, **overrides})
    start = time.perf_counter()
    trainer = Trainer(config)
    setup_seconds = time.perf_counter() - start
    snapshots = []
    events = {"snapshot": 0, "metrics": 0}

    def emit(event):
        if event["type"] in events:
            events[event["type"]] += 1
        if event["type"] == "snapshot" and (event["step"] == 0 or event["step"] == steps):
            snapshots.append(event["snapshot"])

    start = time.perf_counter()
    status = trainer.run(emit)
    run_seconds = time.perf_counter() - start

    side_by_side = Trainer(config, dataset=trainer.dataset)
    step_median = median_seconds(side_by_side.train_step, 50)
    snapshot_median = median_seconds(side_by_side.snapshot, 10)

    first, last = snapshots[0], snapshots[-1]
    detectors = last["layers"][0]["detectors"]
    beating = [d for d in detectors if d["beats_chance"]]
    best = max(d["score"] for d in detectors)
    x_like = [d for d in beating if d["label"] == "x"]
    val_acc = last["metrics"].get("val_acc", 0.0)
    passed = status == "completed" and val_acc >= 0.9 and 2 * len(beating) >= len(detectors) and best >= 0.8
    save_picture(first, last, picture, config.init)

    title = "default demo" if not overrides else f"demo with {json.dumps(overrides)}"
    table = Table(title=f"{title}: {steps} steps, seed {seed}, status {status}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("setup (dataset + model)", f"{setup_seconds:.2f} s")
    table.add_row("run (train + eval + snapshots)", f"{run_seconds:.1f} s")
    table.add_row("snapshots / metrics events", f"{events['snapshot']} / {events['metrics']}")
    table.add_row("train step, median of 50", f"{step_median * 1000:.1f} ms")
    table.add_row("snapshot, median of 10", f"{snapshot_median * 1000:.1f} ms")
    table.add_row("snapshot / step", f"{snapshot_median / step_median:.1f}x")
    table.add_row("validation accuracy", f"{val_acc:.4f}")
    table.add_row("first-layer filters beating chance", f"{len(beating)} of {len(detectors)} (chance {detectors[0]['chance']:.3f})")
    table.add_row("best score", f"{best:.3f}")
    table.add_row("X-like detectors", str(len(x_like)))
    table.add_row("labels", ", ".join(f"{d['label']} {d['score']:.2f}{'*' if d['beats_chance'] else ''}" for d in detectors))
    table.add_row("bar (val >= 0.9, half beat chance, best >= 0.8)", "PASS" if passed else "FAIL")
    console.print(table)
    console.print(f"picture: {picture}")
    return passed


def run_deep(steps: int, seed: int) -> None:
    optimizer = RunConfig.from_dict({"model": "deep"}).optimizer
    table = Table(title=f"'deep' preset (20 plain ReLU 3x3 conv layers), {steps} steps of {optimizer}, seed {seed}")
    for column in ("init", "loss at step 1", "median loss, last 50 steps", "val_acc", "seconds"):
        table.add_column(column)
    for init in ("he_normal", {"name": "normal", "std": 0.01}):
        trainer = Trainer({"model": "deep", "init": init, "steps": steps, "seed": seed})
        start = time.perf_counter()
        losses = [trainer.train_step()["loss"] for _ in range(steps)]
        seconds = time.perf_counter() - start
        evaluation = trainer.evaluate()
        table.add_row(str(init), f"{losses[0]:.4f}", f"{statistics.median(losses[-50:]):.4f}",
                      f"{evaluation['val_acc']:.3f}", f"{seconds:.1f}")
    console.print(table)


def main(
    steps: int = typer.Option(3000, help="training steps of the demo"),
    seed: int = typer.Option(0, help="run seed"),
    picture: Path = typer.Option(ROOT / "docs" / "learned-filters.png", help="where to save the filter picture"),
    config: str = typer.Option("{}", help="JSON merged into the run config, e.g. a dataset with chosen classes"),
    deep: bool = typer.Option(False, help="also compare He and N(0, 0.01^2) on the deep preset"),
    deep_steps: int = typer.Option(300, help="training steps for each deep run"),
) -> None:
    passed = run_demo(steps, seed, picture, json.loads(config))
    if deep:
        run_deep(deep_steps, seed)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    typer.run(main)
