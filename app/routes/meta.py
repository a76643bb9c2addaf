"""What the server offers: health, the initializer registry (and what an init draws per layer),
datasets, presets, and everything a form needs: the defaults a run config starts from, the
demos, the kernel bank and the limits.

Each answer is read from its one home (the engine's registries, RunConfig,
presets.DEMOS; app/limits.py), never re-stated here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from app import limits, security
from app.deps import SettingsDep
from app.schemas import (
    DatasetInfo,
    DatasetList,
    Defaults,
    Health,
    InitInfo,
    InitList,
    InitsDescribe,
    InitsDescribed,
    PresetInfo,
    PresetList,
)

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health)
async def healthz(settings: SettingsDep) -> dict:
    """The server answers; `disk_low` when the data directory's disk has less than
    settings.min_free_disk (KERNELSCOPE_MIN_FREE_DISK) free (reads keep working; writes wait for space).
    Answered on the event loop (one statvfs call): no thread-pool round trip, so it measures the loop."""
    import shutil

    try:
        free = shutil.disk_usage(settings.data_dir).free
    except OSError:
        return {"status": "ok", "disk_free_bytes": None, "disk_low": True}
    return {"status": "ok", "disk_free_bytes": free, "disk_low": free < settings.min_free_disk}


@router.get("/api/inits", response_model=InitList)
def list_inits() -> dict:
    from engine.core.initializers import CANONICAL_NAMES, INITIALIZERS, NAMED_KERNELS

    return {
        "inits": [InitInfo(**INITIALIZERS[name].to_dict()) for name in CANONICAL_NAMES],
        "named_kernels": list(NAMED_KERNELS),
    }


@router.post("/api/inits/describe", response_model=InitsDescribed)
def describe_inits(settings: SettingsDep, body: Annotated[InitsDescribe | None, Body()] = None) -> dict:
    """Per conv and dense layer of a run's model: shape, fans, the init's law, its std or bound and
    the worked numbers (no weights are drawn). Unset fields take the default run's values.
    A dataset that reads files has its `path` checked as a run's is (a folder under DATA/datasets
    that exists; 422 at dataset.path), so the setup form hears of a bad path while it is typed."""
    from engine.probe import describe_layers
    from engine.trainer import RunConfig

    body = body or InitsDescribe()
    run = RunConfig.from_dict({}).to_dict()
    given = body.model_dump(exclude_none=True)
    if isinstance(given.get("dataset"), dict):
        security.check_dataset_path(settings.data_dir, given["dataset"])
    return {"layers": describe_layers(**{**{key: run[key] for key in ("model", "init", "dataset")}, **given})}


@router.get("/api/datasets", response_model=DatasetList)
def list_datasets() -> dict:
    from engine.datasets import DATASETS, dataset_available

    return {
        "datasets": [
            DatasetInfo(name=name, description=entry["description"], params=dict(entry["params"]))
            for name, entry in DATASETS.items()
            if dataset_available(name)
        ],
        "path_rule": limits.DATASET_PATH_RULE,
    }


@router.get("/api/presets", response_model=PresetList)
def list_presets() -> dict:
    from engine import PRESETS
    from engine.trainer import run_optimizer

    return {
        "presets": [PresetInfo(name=name, spec=spec, optimizer=run_optimizer(name)) for name, spec in PRESETS.items()]
    }


@router.get("/api/defaults", response_model=Defaults)
def run_defaults() -> dict:
    """The page fills its setup form from here, so a run started there with nothing
    changed is the same run as `POST /api/runs {}` (and the README's default demo)."""
    from engine import OPTIMIZERS
    from engine.core.initializers import DEFAULT_KERNELS
    from engine.presets import COMPARISON_DEFAULTS, DEMOS
    from engine.trainer import RunConfig, run_optimizer

    run = RunConfig.from_dict({}).to_dict()
    return {
        "run": run,
        "optimizers": {name: run_optimizer(run["model"], {"name": name}) for name in OPTIMIZERS},
        "demos": DEMOS,
        "comparison": COMPARISON_DEFAULTS,
        "kernel_bank": list(DEFAULT_KERNELS),
        "limits": limits.FIELD_LIMITS,
    }
