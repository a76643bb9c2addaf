"""What the server offers: health, the initializer registry, datasets and presets."""

from __future__ import annotations

from fastapi import APIRouter

from app.schemas import DatasetInfo, DatasetList, Health, InitInfo, InitList, PresetInfo, PresetList

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health)
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/api/inits", response_model=InitList)
def list_inits() -> dict:
    from engine.initializers import CANONICAL_NAMES, INITIALIZERS, NAMED_KERNELS

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

    return {"presets": [PresetInfo(name=name, spec=spec) for name, spec in PRESETS.items()]}
