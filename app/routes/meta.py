"""What the server offers: health, the initializer registry, datasets, presets and the
defaults a run config starts from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict

from app.schemas import DatasetInfo, DatasetList, Defaults, Health, InitInfo, InitList, PresetInfo, PresetList

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health)
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/api/inits", response_model=InitList)
def list_inits() -> dict:
    from engine.core.initializers import CANONICAL_NAMES, INITIALIZERS, NAMED_KERNELS

    return {
        "inits": [InitInfo(**INITIALIZERS[name].to_dict()) for name in CANONICAL_NAMES],
        "named_kernels": list(NAMED_KERNELS),
    }


@router.get("/api/datasets", response_model=DatasetList)
def list_datasets() -> dict:
    from engine.datasets import DATASETS

    return {
        "datasets": [
            DatasetInfo(name=name, description=entry["description"], params=dict(entry["params"]))
            for name, entry in DATASETS.items()
        ]
    }


@router.get("/api/presets", response_model=PresetList)
def list_presets() -> dict:
    from engine.presets import PRESETS
    from engine.trainer import run_optimizer

    return {"presets": [PresetInfo(name=name, spec=spec, optimizer=run_optimizer(name)) for name, spec in PRESETS.items()]}


@router.get("/api/defaults", response_model=Defaults)
def run_defaults() -> dict:
    """The page fills its setup form from here, so a run started there with nothing
    changed is the same run as `POST /api/runs {}` (and the README's default demo)."""
    from engine.core.optimizers import OPTIMIZERS
    from engine.trainer import RunConfig, run_optimizer

    run = RunConfig.from_dict({}).to_dict()
    return {
        "run": run,
        "optimizers": {name: run_optimizer(run["model"], {"name": name}) for name in OPTIMIZERS},
        **_defaults_extras(),
    }


def _served_limits() -> dict:
    """The bounds of every numeric field of the setup form, from app/limits.py and the engine."""
    from app import limits
    from app.teaching_schemas import InitProbeRequest

    return {
        "steps": {"min": 1, "max": limits.MAX_STEPS, "integer": True},
        "batch_size": {"min": 1, "max": limits.MAX_BATCH_SIZE, "integer": True},
        "snapshot_every": {"min": 1, "max": limits.MAX_STEPS, "integer": True},
        "seed": {"min": 0, "max": limits.MAX_SEED, "integer": True},
        "lr": {"min": 0, "min_exclusive": True, "max": limits.MAX_LR},
        "momentum": {"min": 0, "max": 1},
        "weight_decay": {"min": 0},
        **{f"init_probe.{name}": _field_bounds(InitProbeRequest, name) for name in ("depth", "width")},
    }


def _field_bounds(model, name: str) -> dict:
    """{min, max} of a body field, read from its pydantic constraints (ge/le)."""
    bounds = {}
    for rule in model.model_fields[name].metadata:
        if getattr(rule, "ge", None) is not None:
            bounds["min"] = rule.ge
        if getattr(rule, "le", None) is not None:
            bounds["max"] = rule.le
    return bounds


def _defaults_extras() -> dict:
    from app.teaching_schemas import DEEP_DEMO_BASE, DEEP_DEMO_INITS
    from engine.core.initializers import DEFAULT_KERNELS

    return {
        "demos": {"depth_stall": {"base": dict(DEEP_DEMO_BASE), "inits": list(DEEP_DEMO_INITS)}},
        "kernel_bank": list(DEFAULT_KERNELS),
        "limits": _served_limits(),
    }


class DescribeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | dict[str, Any] | None = None
    init: str | dict[str, Any] | None = None
    dataset: str | dict[str, Any] | None = None


@router.post("/api/inits/describe")
def describe_inits(body: DescribeBody) -> dict:
    """Each conv and dense layer's init law with its figures for the layer's fans."""
    from app.limits import dataset_input_shape
    from engine.core.initializers import describe
    from engine.core.model import normalize_spec
    from engine.presets import PRESETS
    from engine.trainer import RunConfig

    try:
        config = RunConfig.from_dict({k: v for k, v in body.model_dump().items() if v is not None}).to_dict()
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    model = config["model"]
    spec = dict(PRESETS[model]) if isinstance(model, str) else dict(model)
    input_shape = dataset_input_shape(config["dataset"])
    if input_shape is not None and (isinstance(model, str) or "input" not in spec):
        spec["input"] = input_shape
    try:
        normalised, built = normalize_spec(spec)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=f"model: {error}") from None
    layers, convs = [], 0
    for index, (entry, layer) in enumerate(zip(normalised["layers"], built)):
        if entry["type"] not in ("conv", "dense"):
            continue
        convs += entry["type"] == "conv"
        init = entry.get("init") or config["init"]
        shape = list(layer.param_shapes()["weight"])
        figures = describe(init, shape)
        layers.append({
            "index": index,
            "label": f"conv{convs}" if entry["type"] == "conv" else f"dense{index}",
            "type": entry["type"],
            "shape": shape,
            "init": init if isinstance(init, dict) else {"name": init},
            **figures,
        })
    return {"layers": layers}
