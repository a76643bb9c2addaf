"""The default demo over several seeds: does conv1 grow edge and X detectors, and is their formation stored?

Trains the default run (`RunConfig.from_dict({})`: the shapes dataset, He
normal, preset "demo", SGD; `--config` JSON is merged in) for each seed and
prints, per seed: conv1 filters whose detector score beats chance (the 99th
percentile of random kernels of their size), the best X-like filter (label `x`
or `plus`) with its score and that chance level, validation accuracy, the step
at which conv1 has moved half of its total distance ||W_t - W_0|| (measured
every step), and how many stored snapshots lie before that step (the stored
steps are `engine.trainer.snapshot_steps(config)`).

The bar (issue 18, item 5): in at least 4 of the seeds, conv1 has an X-like
filter above chance and at least half of its filters above chance. Saves the
first seed's conv1 filters at step 0 and at the end, labelled, to
docs/learned-filters.png. With --deep it also trains the "deep" preset (20
plain ReLU conv layers, its default optimizer) with He normal and with
N(0, 0.01^2) and reports the losses.

    python benchmarks/demo.py [--seeds 0,1,2,3,4] [--steps N] [--config JSON] [--picture PATH] [--deep]
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

from engine import analysis  # noqa: E402
from engine.trainer import RunConfig, Trainer, snapshot_steps  # noqa: E402

console = Console(width=160)
X_LIKE = ("x", "plus")
SEEDS_NEEDED = 4


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
    top = filter_row(
        np.array(layer0["weight"]), layer0["detectors"], f"conv1, step {first['step']}: init {json.dumps(init)}"
    )
    bottom = filter_row(
        np.array(final0["weight"]),
        final0["detectors"],
        f"conv1, step {last['step']}: learned (* = beats 99% of random {final0['shape'][2]}x{final0['shape'][3]} kernels, |cos| > {chance:.2f})",
    )
    picture = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), (40, 40, 40))
    picture.paste(top, (0, 0))
    picture.paste(bottom, (0, top.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def stored_steps(config: RunConfig) -> list[int]:
    """Every step a run of `config` stores a snapshot at (the engine's schedule)."""
    return sorted(int(s) for s in snapshot_steps(config))


def half_distance_step(distances: list[float]) -> int:
    """First step at which ||W_t - W_0|| reaches half of its final value."""
    final = distances[-1]
    return next(step for step, d in enumerate(distances) if d >= 0.5 * final)


def x_like_score(weight: np.ndarray) -> float:
    """Highest |cos| of any filter (channel-summed, mean removed) with the x or plus template."""
    kernels = analysis.spatial_kernels(weight)
    bank = analysis.template_bank(*kernels.shape[1:])
    flat = kernels.reshape(len(kernels), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    templates = np.stack([bank[name].ravel() for name in X_LIKE], axis=1)
    return float((np.abs(centred @ templates) / np.where(norms > 0, norms, 1.0)[:, None]).max())


def run_seed(overrides: dict, seed: int, steps: int | None) -> dict:
    """Train one seed of the (default) run step by step, following conv1's distance from its init."""
    config = RunConfig.from_dict({**overrides, "seed": seed, **({} if steps is None else {"steps": steps})})
    start = time.perf_counter()
    trainer = Trainer(config)
    conv1 = f"{trainer.model.conv_indices[0]}.weight"
    w0 = np.array(trainer.model.params[conv1], dtype=np.float64)
    first, _ = trainer.snapshot(feature_maps=False)
    distances = [0.0]
    for _ in range(config.steps):
        trainer.train_step()
        distances.append(float(np.linalg.norm(trainer.model.params[conv1] - w0)))
    trainer.evaluate()
    last, _ = trainer.snapshot(feature_maps=False)
    seconds = time.perf_counter() - start

    detectors = last["layers"][0]["detectors"]
    beating = [d for d in detectors if d["beats_chance"]]
    x_like = [d for d in beating if d["label"] in X_LIKE]
    best_x = max(x_like, key=lambda d: d["score"]) if x_like else None
    half = half_distance_step(distances)
    stored = stored_steps(config)
    return {
        "seed": seed,
        "config": config,
        "first": first,
        "last": last,
        "seconds": seconds,
        "beating": len(beating),
        "filters": len(detectors),
        "chance": detectors[0]["chance"],
        "best_x": best_x,
        "x_like_cos": x_like_score(trainer.model.params[conv1]),
        "val_acc": last["metrics"].get("val_acc", 0.0),
        "half_step": half,
        "snapshots_before_half": sum(1 for s in stored if s < half),
        "labels": ", ".join(f"{d['label']} {d['score']:.2f}{'*' if d['beats_chance'] else ''}" for d in detectors),
        "passed": best_x is not None and 2 * len(beating) >= len(detectors),
    }


def run_demo(seeds: list[int], steps: int | None, picture: Path, overrides: dict) -> bool:
    results = []
    for seed in seeds:
        results.append(run_seed(overrides, seed, steps))
        result = results[-1]
        console.print(f"seed {seed}: {result['seconds']:.0f} s, conv1 {result['labels']}")
    config = results[0]["config"]
    save_picture(results[0]["first"], results[0]["last"], picture, config.init)

    title = "default run" if not overrides else f"run with {json.dumps(overrides)}"
    table = Table(
        title=f"{title}: dataset {config.dataset['name']}, {config.steps} steps, snapshots from engine.trainer.snapshot_steps"
    )
    for column in (
        "seed",
        "conv1 above chance",
        "best X-like (chance)",
        "x/plus |cos| max",
        "val acc",
        "half-distance step",
        "snapshots before it",
        "bar",
    ):
        table.add_column(column, justify="right")
    for r in results:
        best = (
            f"{r['best_x']['label']} {r['best_x']['score']:.2f} ({r['chance']:.2f})"
            if r["best_x"]
            else f"none ({r['chance']:.2f})"
        )
        table.add_row(
            str(r["seed"]),
            f"{r['beating']} of {r['filters']}",
            best,
            f"{r['x_like_cos']:.2f}",
            f"{r['val_acc']:.4f}",
            str(r["half_step"]),
            str(r["snapshots_before_half"]),
            "PASS" if r["passed"] else "FAIL",
        )
    console.print(table)
    passing = sum(r["passed"] for r in results)
    needed = min(SEEDS_NEEDED, len(results))
    console.print(
        f"seeds with an X-like conv1 filter above chance and half of conv1 above chance: {passing} of "
        f"{len(results)} (bar: {needed}) -> {'PASS' if passing >= needed else 'FAIL'}"
    )
    console.print(f"picture (seed {results[0]['seed']}): {picture}")
    return passing >= needed


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
        table.add_row(
            str(init),
            f"{losses[0]:.4f}",
            f"{statistics.median(losses[-50:]):.4f}",
            f"{evaluation['val_acc']:.3f}",
            f"{seconds:.1f}",
        )
    console.print(table)


# A module-level option (not a call in the signature) because its default is a computed Path.
PictureOption = typer.Option(
    ROOT / "docs" / "learned-filters.png", help="where to save the first seed's filter picture"
)


def main(
    seeds: str = typer.Option("0,1,2,3,4", help="comma-separated run seeds"),
    steps: int = typer.Option(None, help="training steps (default: the run config's)"),
    picture: Path = PictureOption,
    config: str = typer.Option("{}", help="JSON merged into the run config, e.g. a dataset with chosen classes"),
    deep: bool = typer.Option(False, help="also compare He and N(0, 0.01^2) on the deep preset"),
    deep_steps: int = typer.Option(300, help="training steps for each deep run"),
) -> None:
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    passed = run_demo(seed_list, steps, picture, json.loads(config))
    if deep:
        run_deep(deep_steps, seed_list[0])
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    typer.run(main)
