"""Teaching routes: compare inits, probe a network at init, fork, overwrite kernels, export.

These are the experiments kernelscope exists for. A comparison starts one run
per init from one base config (same data, seed and order). The init probe
trains nothing: it measures how the signal's std travels through the layers at
initialization and sets the theory beside it. A fork starts a new run from the
weights of any stored snapshot. A kernel overwrite puts a hand-made kernel
into a running or paused run, optionally frozen. Exports give a zip (config,
metrics CSV, every snapshot, torch-loadable weights) and an animated GIF of
one layer's filters over time.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import tempfile
import uuid
import zipfile
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
from fastapi.responses import StreamingResponse
from PIL import Image, ImageDraw

from app import limits, render
from app.deps import CONFLICT, HEAVY, NOT_FOUND, QUEUE_FULL, Manager, Run, StoreDep, run_out
from app.errors import InvalidInput, field_error
from app.runs import QueueFull, RunConflict, comparison_of
from app.storage import LocalStorage
from app.store import RunNotFound, Store, json_safe
from app.teaching_schemas import (
    ComparisonCreate,
    ComparisonOut,
    ForkCreate,
    InitProbeRequest,
    KernelOut,
    KernelPut,
)

router = APIRouter(prefix="/api", tags=["teaching"])

GIF_CAPTION_HEIGHT = 14
ZIP_SPOOL_BYTES = 32 * 1024 * 1024


def init_label(init) -> str:
    """A short readable name of an init: 'he_normal', 'normal(std=0.01)', 'kernel(x, plus, ...)'."""
    if isinstance(init, str):
        return init
    name = str(init.get("name", "?"))
    params = {k: v for k, v in init.items() if k != "name"}
    if name == "kernel":
        kernels = params.get("kernels")
        if kernels is None:
            return "kernel bank"
        entries = [kernels] if isinstance(kernels, str) else kernels
        return "kernel(" + ", ".join(k if isinstance(k, str) else "custom" for k in entries) + ")"
    if not params:
        return name
    return name + "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


# ---------------------------------------------------------------- comparisons


@router.post(
    "/comparisons",
    status_code=status.HTTP_201_CREATED,
    response_model=ComparisonOut,
    responses={429: {"description": "not enough free places for every run of the comparison"}},
)
def create_comparison(manager: Manager, body: Annotated[ComparisonCreate | None, Body()] = None) -> dict:
    """Start one run per init from one base config: same model, data, seed and batch order.

    Every config is checked before any run starts, so a bad init starts nothing.
    If the queue fills up midway, the runs already started are deleted and the
    answer is 429. Fields the base leaves unset take engine/presets.py COMPARISON_DEFAULTS
    (served by GET /api/defaults), then the engine's defaults.
    """
    from engine.presets import COMPARISON_DEFAULTS
    from engine.trainer import RunConfig

    body = body or ComparisonCreate()
    base = {**copy.deepcopy(COMPARISON_DEFAULTS), **body.base.engine_config()}
    configs = []
    for index, init in enumerate(body.inits):
        try:
            config = RunConfig.from_dict({**base, "init": init}).to_dict()
            limits.check_run_config(config)
        except ValueError as error:
            field, _, problem = str(error).partition(": ")
            if field == "init":  # the engine names the run's `init`; here it is this entry of `inits`
                raise InvalidInput(["body", "inits", index], f"inits.{index}: {problem}") from None
            raise field_error(error, "base") from None
        configs.append(config)

    comparison_id = uuid.uuid4().hex[:12]
    labels = [init_label(init) for init in body.inits]
    created: list[dict] = []
    try:
        for index, config in enumerate(configs):
            meta = {
                "origin": "comparison",
                "comparison": comparison_id,
                "comparison_index": index,
                "name": labels[index],
            }
            if body.name:
                meta["comparison_name"] = body.name
            created.append(manager.create_run(config, meta=meta))
    except (QueueFull, ValueError) as error:  # undo: a comparison starts whole or not at all
        for run in created:
            try:
                manager.delete(run["id"])
            except RunNotFound:
                pass
        if isinstance(error, QueueFull):
            raise QueueFull(f"inits: a comparison of {len(configs)} runs does not fit: {error}") from None
        raise field_error(error, "base") from None
    runs = [run_out(manager, manager.get_run(run["id"])) for run in created]
    return {
        "id": comparison_id,
        "name": body.name,
        "inits": body.inits,
        "labels": labels,
        "run_ids": [run["id"] for run in runs],
        "runs": runs,
    }


@router.get(
    "/comparisons/{comparison_id}", response_model=ComparisonOut, responses={404: {"description": "no such comparison"}}
)
def get_comparison(
    manager: Manager,
    comparison_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
) -> dict:
    """The runs of one comparison, in the order of its inits (deleted runs are left out)."""
    runs = [run for run in manager.store.list_runs() if comparison_of(run) == comparison_id]
    if not runs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"comparison_id: no comparison {comparison_id!r}")
    runs.sort(key=lambda run: run["meta"].get("comparison_index", 0))
    return {
        "id": comparison_id,
        "name": runs[0]["meta"].get("comparison_name"),
        "inits": [run["config"]["init"] for run in runs],
        "labels": [run["meta"].get("name") or init_label(run["config"]["init"]) for run in runs],
        "run_ids": [run["id"] for run in runs],
        "runs": [run_out(manager, run) for run in runs],
    }


# ---------------------------------------------------------------- init probe


def probe_cost(layers, batch: int) -> int:
    """Multiply-adds of one forward pass of the normalised layers for `batch` inputs."""
    total = 0
    for layer in layers:
        shapes = layer.param_shapes()
        if "weight" in shapes:
            weight = shapes["weight"]
            positions = int(np.prod(layer.output_shape[1:])) if len(layer.output_shape) == 3 else 1
            total += int(np.prod(weight)) * positions
    return total * batch


def probe_summary(label: str, layers: list[dict]) -> str:
    """One sentence on what the learner sees for one init."""
    stds = [row["act_std"] for row in layers]
    if not stds:
        return f"{label}: the model has no weight layer."
    first, last = stds[0], stds[-1]
    depth = len(stds)
    if first == 0 or last == 0:
        return (
            f"{label}: the signal is exactly 0 after layer {next(i for i, s in enumerate(stds) if s == 0) + 1}; "
            "no input can reach the output and no gradient can flow back: nothing can be learned."
        )
    ratio = last / first
    per_layer = ratio ** (1 / max(1, depth - 1))
    if 0.5 <= ratio <= 2:
        return (
            f"{label}: the activation std stays within ×{max(ratio, 1 / ratio):.2g} of its first-layer value "
            f"over {depth} layers, so signals and gradients keep their scale and deep layers can learn."
        )
    trend = "shrinks" if ratio < 1 else "grows"
    return (
        f"{label}: the activation std {trend} by ×{per_layer:.3g} per layer, from {first:.3g} to {last:.3g} "
        f"at layer {depth}; the last layers see {'almost nothing' if ratio < 1 else 'huge values'}, "
        "so a deep network barely trains."
    )


def average_draws(draws: list[dict]) -> dict:
    """One probe result from several weight draws: each std is the root of the mean variance."""
    result = copy.deepcopy(draws[0])
    for i, entry in enumerate(result["results"]):
        for j, row in enumerate(entry["layers"]):
            for key in ("act_std", "grad_std", "weight_grad_std", "weight_std"):
                row[key] = math.sqrt(sum(draw["results"][i]["layers"][j][key] ** 2 for draw in draws) / len(draws))
    result["repeats"] = len(draws)
    return result


def probe_spec(body: InitProbeRequest):
    """The spec to probe: `spec`, else a plain stack of `depth` × `width`, else the default run's model."""
    from engine.probe import plain_stack_spec, resolve_spec
    from engine.trainer import RunConfig

    if body.spec is not None:
        return body.spec
    if body.depth is None and body.width is None:
        run = RunConfig.from_dict({}).to_dict()
        return resolve_spec(run["model"], run["dataset"])
    if body.depth is None or body.width is None:
        missing = "depth" if body.depth is None else "width"
        raise InvalidInput(
            ["body", missing],
            f"{missing}: a plain conv stack needs both depth and width "
            "(or give `spec`, or neither for the default run's model)",
        )
    if body.kernel % 2 == 0:
        raise InvalidInput(["body", "kernel"], f"kernel: must be odd for a plain stack, got {body.kernel}")
    return plain_stack_spec(body.depth, body.width, body.activation, body.kernel, body.size)


@router.post("/init-probe", dependencies=HEAVY)
def init_probe(body: Annotated[InitProbeRequest | None, Body()] = None) -> dict:
    """No training: activation and gradient std per weight layer at init, for each init, with the theory.

    Give `spec` (a preset name or a spec with `input`) or `depth` and `width`
    for a plain conv stack; `{}` probes the default run's model under the
    depth-stall demo's inits. Every init sees the same input noise and the
    same output gradient.
    """
    from engine.core.initializers import parse_init
    from engine.core.model import normalize_spec
    from engine.probe import init_probe as run_probe
    from engine.probe import theory_std

    body = body or InitProbeRequest()
    try:
        normalised, layers = normalize_spec(probe_spec(body))
    except ValueError as error:
        raise InvalidInput(["body", "spec"], f"spec: {error}") from None
    cost = probe_cost(layers, body.batch) * body.repeats
    if cost > limits.MAX_PROBE_MACS:
        raise InvalidInput(
            ["body", "spec"],
            f"spec: the probe would need {cost:.3g} multiply-adds per init; at most {limits.MAX_PROBE_MACS:.3g} "
            "(use a smaller model, width or batch)",
        )
    for index, init in enumerate(body.inits):
        try:
            parse_init(init)
        except ValueError as error:
            raise InvalidInput(["body", "inits", index], f"inits.{index}: {error}") from None
    with np.errstate(all="ignore"):  # a huge init overflows; its figures come back as null
        draws = [
            run_probe(normalised, inits=body.inits, batch=body.batch, seed=body.seed + r) for r in range(body.repeats)
        ]
    result = average_draws(draws)
    for entry in result["results"]:
        label = init_label(entry["init"])
        entry["label"] = label
        entry["theory_act_std"] = theory_std(layers, entry["init"])
        entry["summary"] = probe_summary(label, entry["layers"])
    result["depth"] = len(result["results"][0]["layers"]) if result["results"] else 0
    return json_safe(result)  # a huge init overflows: its inf/NaN figures become null


# ---------------------------------------------------------------- fork


def stored_steps(store: Store, run_id: str) -> list[int]:
    """The run's snapshot steps; none yet is a conflict (409): the run has not made its first step."""
    steps = store.snapshot_steps(run_id)
    if not steps:
        raise RunConflict(f"step: run {run_id} has no snapshot yet; wait for its first step")
    return steps


def _snapshot_step_of(store: Store, run_id: str, step) -> int:
    steps = stored_steps(store, run_id)
    if step == "latest":
        return steps[-1]
    if step not in steps:
        nearest = min(steps, key=lambda s: abs(s - step))
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"step: run {run_id} has no snapshot at step {step} (nearest stored: {nearest})",
        )
    return int(step)


def fork_config(parent_config: dict, body: ForkCreate, step: int) -> dict:
    """The fork's config: the parent's, with the body's overrides; `optimizer` is merged."""
    config = copy.deepcopy(parent_config)
    if body.optimizer is not None:
        parent_optimizer = config.get("optimizer", {})
        if "name" in body.optimizer and body.optimizer["name"] != parent_optimizer.get("name"):
            config["optimizer"] = dict(body.optimizer)
        else:
            config["optimizer"] = {**parent_optimizer, **body.optimizer}
    for name in ("batch_size", "seed", "snapshot_every", "eval_every"):
        value = getattr(body, name)
        if value is not None:
            config[name] = value
    if body.steps is not None:
        config["steps"] = body.steps
    elif config["steps"] <= step:
        config["steps"] = step + parent_config["steps"]
    return config


@router.post(
    "/runs/{run_id}/fork",
    status_code=status.HTTP_201_CREATED,
    responses={**NOT_FOUND, **CONFLICT, **QUEUE_FULL},
)
def fork_run(manager: Manager, store: StoreDep, run: Run, body: Annotated[ForkCreate | None, Body()] = None) -> dict:
    """A new run starting from the weights of snapshot `step` of this run, with overrides.

    The fork continues the step count (and so the batch order) from `step`. Its
    optimizer starts fresh (no momentum carried over); the parent's frozen
    filters stay frozen unless keep_frozen is false.
    """
    from engine.trainer import RunConfig

    body = body or ForkCreate()
    step = _snapshot_step_of(store, run["id"], body.step)
    if body.steps is not None and body.steps <= step:
        raise InvalidInput(
            ["body", "steps"], f"steps: must be greater than the fork's starting step {step}, got {body.steps}"
        )
    config = RunConfig.from_dict(fork_config(run["config"], body, step)).to_dict()
    limits.check_run_config(config)
    params = store.read_snapshot_params(run["id"], step)
    snapshot = store.read_snapshot(run["id"], step, feature_maps=False)
    if params is None or snapshot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run['id']} has no snapshot at step {step}")
    checkpoint = {
        "config": np.array(json.dumps(config)),
        "step": np.array(step, dtype=np.int64),
        "metrics": np.array(json.dumps({"train": {}, "eval": {}})),
        "optimizer/steps": np.array(0, dtype=np.int64),
    }
    for name, value in params.items():
        checkpoint[f"params/{name}"] = np.asarray(value)
    if body.keep_frozen:
        for layer in snapshot.get("layers", []):
            if layer.get("frozen"):
                checkpoint[f"optimizer/frozen/{layer['index']}.weight"] = np.array(layer["frozen"], dtype=np.int64)
    meta = {
        "origin": "fork",
        "parent": run["id"],
        "parent_step": step,
        "name": body.name or f"fork of {run['meta'].get('name') or run['id']} @ {step}",
    }
    return run_out(manager, manager.create_run(config, meta=meta, checkpoint=checkpoint))


# ---------------------------------------------------------------- kernels


def _conv_layers(store: Store, run_id: str) -> dict[int, dict]:
    step = store.latest_snapshot_step(run_id)
    snapshot = None if step is None else store.read_snapshot(run_id, step, feature_maps=False)
    if snapshot is None:
        raise RunConflict(f"run {run_id} has no snapshot yet; wait for its first step")
    return {entry["index"]: entry for entry in snapshot["layers"] if entry.get("type") == "conv"}


def kernel_values(body: KernelPut, shape: list[int]) -> np.ndarray:
    """The (in, kh, kw) kernel the body asks for, for a layer of weight shape (out, in, kh, kw)."""
    from engine.core.initializers import NAMED_KERNELS, named_kernel

    _, in_channels, kh, kw = shape
    if isinstance(body.kernel, str):
        if body.kernel not in NAMED_KERNELS:
            raise InvalidInput(
                ["body", "kernel"], f"kernel: unknown kernel {body.kernel!r}; valid names: {', '.join(NAMED_KERNELS)}"
            )
        try:
            pattern = named_kernel(body.kernel, (kh, kw))
        except ValueError as error:
            raise InvalidInput(["body", "kernel"], f"kernel: {error}") from None
        pattern = pattern / math.sqrt(in_channels) * body.scale
        return np.broadcast_to(pattern, (in_channels, kh, kw)).copy()
    try:
        values = np.asarray(body.kernel, dtype=np.float64)
    except ValueError:
        raise InvalidInput(["body", "kernel"], "kernel: rows must all have the same length") from None
    if values.shape == (kh, kw):
        return np.broadcast_to(values, (in_channels, kh, kw)).copy()
    if values.shape != (in_channels, kh, kw):
        raise InvalidInput(
            ["body", "kernel"],
            f"kernel: must have shape [{kh}, {kw}] or [{in_channels}, {kh}, {kw}], got {list(values.shape)}",
        )
    return values


@router.put(
    "/runs/{run_id}/kernels/{layer}/{filter}",
    response_model=KernelOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def put_kernel(
    manager: Manager,
    store: StoreDep,
    run: Run,
    layer: Annotated[int, Path(ge=0, le=limits.MAX_LAYER_INDEX, description="spec index of a conv layer")],
    filter_index: Annotated[
        int, Path(ge=0, le=limits.MAX_FILTER_INDEX, alias="filter", description="filter (output channel) index")
    ],
    body: KernelPut,
) -> dict:
    """Overwrite one kernel of a running or paused run; `frozen` keeps it bit-identical from then on."""
    conv = _conv_layers(store, run["id"])
    if layer not in conv:
        raise InvalidInput(["path", "layer"], f"layer: {layer} is not a conv layer; conv layers are {sorted(conv)}")
    shape = conv[layer]["shape"]
    if filter_index >= shape[0]:
        raise InvalidInput(
            ["path", "filter"], f"filter: must be between 0 and {shape[0] - 1} for layer {layer}, got {filter_index}"
        )
    values = kernel_values(body, shape)
    if run["status"] not in ("running", "paused"):
        raise RunConflict(f"run {run['id']} is {run['status']}; kernels can be set on a running or paused run")
    manager.set_kernel(run["id"], layer, filter_index, values.tolist(), frozen=body.frozen)
    return {
        "run_id": run["id"],
        "layer": layer,
        "filter": filter_index,
        "frozen": body.frozen,
        "kernel": values.astype(np.float32).astype(float).tolist(),
        "step": store.latest_snapshot_step(run["id"]),
    }


# ---------------------------------------------------------------- exports


def resolved_spec(config: dict, snapshot: dict, params: dict) -> dict:
    """The spec the run trained, as built by the engine (input and class count filled in).

    A preset takes the dataset's input shape (the probe images' shape) and its
    last dense layer the class count (the last weight's rows).
    """
    from engine.core.model import normalize_spec
    from engine.presets import PRESETS

    model = config["model"]
    spec = copy.deepcopy(PRESETS[model] if isinstance(model, str) else model)
    probes = np.asarray(snapshot.get("probes", []))
    if probes.ndim == 4:
        spec["input"] = list(probes.shape[1:])
    last = len(spec["layers"]) - 1
    if spec["layers"][last]["type"] == "dense" and f"{last}.weight" in params:
        spec["layers"][last]["units"] = int(params[f"{last}.weight"].shape[0])
    normalised, _ = normalize_spec(spec)
    return normalised


TORCH_README = """kernelscope export of run {run_id}

config.json      the run's complete config, status and meta
spec.json        the model spec the run trained (input shape and class count filled in)
metrics.csv      step, loss, acc, val_loss, val_acc (validation figures at evaluation steps)
snapshots/       every stored snapshot: <step>.json (kernels, detectors, layer statistics),
                 <step>.maps.npz (feature maps of the probe images per conv layer), <step>.npz (all parameters)
weights.npz      the parameters at step {step}, named like a torch.nn.Sequential state dict

Load the weights into PyTorch:

    import json, numpy as np, torch
    from torch import nn
    spec = json.load(open("spec.json"))
    make = {{
        "conv": lambda l, c: nn.Conv2d(c, l["filters"], l["kernel"], l["stride"], l["padding"]),
        "dense": lambda l, c: nn.Linear(c, l["units"]),
        "relu": lambda l, c: nn.ReLU(), "tanh": lambda l, c: nn.Tanh(), "sigmoid": lambda l, c: nn.Sigmoid(),
        "leaky_relu": lambda l, c: nn.LeakyReLU(l["slope"]),
        "maxpool": lambda l, c: nn.MaxPool2d(l["size"], l["stride"]),
        "avgpool": lambda l, c: nn.AvgPool2d(l["size"], l["stride"]),
        "flatten": lambda l, c: nn.Flatten(),
    }}
    weights = np.load("weights.npz")
    layers, channels = [], spec["input"][0]
    for index, layer in enumerate(spec["layers"]):
        if layer["type"] == "dense":
            channels = weights[f"{{index}}.weight"].shape[1]
        layers.append(make[layer["type"]](layer, channels))
        if layer["type"] == "conv":
            channels = layer["filters"]
    model = nn.Sequential(*layers)
    model.load_state_dict({{k: torch.from_numpy(weights[k]) for k in weights.files}})

(Check spec.json for the exact field names of each layer type.)
"""


def metrics_csv(points: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "loss", "acc", "val_loss", "val_acc"])
    for point in points:
        writer.writerow([point["step"], *(point.get(name, "") for name in ("loss", "acc", "val_loss", "val_acc"))])
    return buffer.getvalue()


@router.get(
    "/runs/{run_id}/export",
    response_class=StreamingResponse,
    dependencies=HEAVY,
    responses={
        200: {"content": {"application/zip": {}}, "description": "zip of config, metrics, snapshots, weights"},
        **NOT_FOUND,
        **CONFLICT,
    },
)
def export_run(store: StoreDep, run: Run) -> StreamingResponse:
    """A zip with config.json, spec.json, metrics.csv, every snapshot and weights.npz (latest snapshot)."""
    run_id = run["id"]
    steps = stored_steps(store, run_id)
    latest = steps[-1]
    params = store.read_snapshot_params(run_id, latest)
    snapshot = store.read_snapshot(run_id, latest, feature_maps=False)
    if params is None or snapshot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot at step {latest}")
    spec = resolved_spec(run["config"], snapshot, params)
    spool = tempfile.SpooledTemporaryFile(max_size=ZIP_SPOOL_BYTES)
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr("README.txt", TORCH_README.format(run_id=run_id, step=latest))
        described = {key: run[key] for key in ("id", "status", "step", "meta", "created", "updated", "message")}
        archive.writestr(
            "config.json", json.dumps({**described, "config": run["config"], "weights_step": latest}, indent=2)
        )
        archive.writestr("spec.json", json.dumps(spec, indent=2))
        archive.writestr("metrics.csv", metrics_csv(store.metrics(run_id)))
        storage = LocalStorage(store.data_dir)
        for step in steps:  # in the layout of the earlier files, whatever the stored format
            for name, data in storage.snapshot_files(run_id, step).items():
                archive.writestr(f"snapshots/{name}", data)
        buffer = io.BytesIO()
        np.savez(buffer, **params)
        archive.writestr("weights.npz", buffer.getvalue())
    size = spool.tell()
    spool.seek(0)

    def chunks():
        try:
            while True:
                chunk = spool.read(1 << 16)
                if not chunk:
                    break
                yield chunk
        finally:
            spool.close()

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="kernelscope-{run_id}.zip"',
            "Content-Length": str(size),
        },
    )


def evenly_spaced(steps: list[int], cap: int) -> list[int]:
    """All steps when there are at most `cap`; else `cap` of them evenly spread, first and last included."""
    if len(steps) <= cap:
        return list(steps)
    indices = np.unique(np.round(np.linspace(0, len(steps) - 1, cap)).astype(int))
    return [steps[i] for i in indices]


def fit_gif(shape, pixel: int, frames: int) -> tuple[int, int]:
    """(pixel, frames) within limits.MAX_FRAME_PIXELS per frame and limits.MAX_GIF_PIXELS in all."""
    fitting = render.largest_pixel_within(shape, pixel, limits.MAX_FRAME_PIXELS, extra_height=GIF_CAPTION_HEIGHT)
    if fitting is None:
        width, height = render.filter_grid_size(shape, 1)
        raise InvalidInput(
            ["query", "layer"],
            f"layer: {list(shape)} is too large to draw "
            f"({width * (height + GIF_CAPTION_HEIGHT)} pixels per frame; at most {limits.MAX_FRAME_PIXELS})",
        )
    width, height = render.filter_grid_size(shape, fitting)
    return fitting, max(2, min(frames, limits.MAX_GIF_PIXELS // (width * (height + GIF_CAPTION_HEIGHT))))


def captioned(image: Image.Image, text: str) -> Image.Image:
    """The indexed image (render.filter_grid_indexed) with a dark band on top holding `text`."""
    frame = Image.new("P", (max(image.width, 80), image.height + GIF_CAPTION_HEIGHT), render.BACKGROUND_INDEX)
    frame.putpalette(render.palette())
    frame.paste(image, (0, GIF_CAPTION_HEIGHT))
    ImageDraw.Draw(frame).text((3, 1), text, fill=render.CAPTION_INDEX)
    return frame


@router.get(
    "/runs/{run_id}/evolution.gif",
    response_class=Response,
    dependencies=HEAVY,
    responses={
        200: {"content": {"image/gif": {}}, "description": "the layer's filters over time"},
        **NOT_FOUND,
        **CONFLICT,
    },
)
def evolution_gif(
    store: StoreDep,
    run: Run,
    layer: Annotated[
        int | None, Query(ge=0, le=limits.MAX_LAYER_INDEX, description="spec index of a conv layer; default the first")
    ] = None,
    frames: Annotated[
        int, Query(ge=2, le=limits.MAX_GIF_FRAMES, description="at most this many frames")
    ] = limits.MAX_GIF_FRAMES,
    duration: Annotated[
        int, Query(ge=limits.MIN_GIF_FRAME_MS, le=limits.MAX_GIF_FRAME_MS, description="milliseconds per frame")
    ] = 120,
    pixel: Annotated[int, Query(ge=1, le=limits.MAX_GIF_PIXEL, description="screen pixels per weight")] = 8,
) -> Response:
    """One frame per stored snapshot (evenly subsampled beyond `frames`), one colour scale for all frames.

    Very wide layers are drawn with fewer pixels per weight and fewer frames
    (limits.MAX_FRAME_PIXELS, limits.MAX_GIF_PIXELS), so a GIF never takes the server's memory.
    """
    run_id = run["id"]
    steps = stored_steps(store, run_id)
    conv = _conv_layers(store, run_id)
    if not conv:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="layer: this model has no conv layer")
    index = min(conv) if layer is None else layer
    if index not in conv:
        raise InvalidInput(["query", "layer"], f"layer: {index} is not a conv layer; conv layers are {sorted(conv)}")
    pixel, frames = fit_gif(conv[index]["shape"], pixel, frames)
    weights = []
    for step in evenly_spaced(steps, frames):
        params = store.read_snapshot_params(run_id, step)
        if params is not None and f"{index}.weight" in params:
            weights.append((step, params[f"{index}.weight"]))
    if not weights:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no stored weights")
    scale = max(render.auto_scale(weight) for _, weight in weights)
    # frames drawn as the encoder takes them, as palette indices: it keeps one byte per pixel of
    # each frame (to compare neighbours), never every frame in RGB at once, and quantizes nothing
    drawn = (captioned(render.filter_grid_indexed(w, scale=scale, pixel=pixel), f"step {s}") for s, w in weights)
    buffer = io.BytesIO()
    next(drawn).save(buffer, format="GIF", save_all=True, append_images=drawn, duration=duration, loop=0)
    return Response(
        buffer.getvalue(),
        media_type="image/gif",
        headers={"Content-Disposition": f'inline; filename="kernelscope-{run_id}-layer{index}.gif"'},
    )
