"""What the server offers: health, the initializer registry, datasets, presets and the
defaults a run config starts from."""

from __future__ import annotations

from fastapi import APIRouter

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
    return {"run": run, "optimizers": {name: run_optimizer(run["model"], {"name": name}) for name in OPTIMIZERS}}
