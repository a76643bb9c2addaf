"""Pydantic models for every request body and response of the run API.

Bodies forbid unknown fields and carry the same limits as the engine's
RunConfig, so a bad request is answered with 422 naming the field and the limit
before anything reaches the engine. The engine still validates the nested parts
(model spec, init, dataset, optimizer); its "field: problem" ValueErrors become
422 too (see app/main.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.limits import MAX_BATCH_SIZE, MAX_NAME_LENGTH, MAX_SEED, MAX_SNAPSHOTS_PER_RUN, MAX_STEPS
RunStatus = Literal[
    "queued", "running", "paused", "completed", "stopped", "diverged", "failed", "interrupted"
]


class RunCreate(BaseModel):
    """POST /api/runs: every field optional; `{}` starts the default demo run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | dict[str, Any] | None = Field(
        None, description='A preset name ("small", "demo", ...) or a model spec object.',
        examples=["demo"],
    )
    init: str | dict[str, Any] | None = Field(
        None, description='Default initializer: a name or {"name": "normal", "std": 0.01}.',
        examples=["he_normal"],
    )
    dataset: str | dict[str, Any] | None = Field(
        None, description='"shapes" or {"name": "mnist", "path": ...}.', examples=["shapes"],
    )
    optimizer: str | dict[str, Any] | None = Field(
        None, description='{"name": "sgd", "lr": 0.05, "momentum": 0.9} or {"name": "adam", ...}.',
    )
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, strict=True)
    steps: int | None = Field(None, ge=0, le=MAX_STEPS, strict=True)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True)
    snapshot_every: int | None = Field(None, ge=1, le=MAX_STEPS, strict=True)
    eval_every: int | None = Field(None, ge=1, le=MAX_STEPS, strict=True)
    snapshot_schedule: dict[str, Any] | None = Field(
        None, description='Dense snapshots at the start: {"dense_steps": int, "growth": number > 1}; defaults in GET /api/defaults.',
    )
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="A label shown in run lists.")

    @model_validator(mode="after")
    def _bounded_history(self) -> "RunCreate":
        steps = self.steps if self.steps is not None else 3000
        every = self.snapshot_every if self.snapshot_every is not None else 10
        if steps // every > MAX_SNAPSHOTS_PER_RUN:
            raise ValueError(
                f"snapshot_every: a run keeps at most {MAX_SNAPSHOTS_PER_RUN} snapshots; "
                f"with steps={steps} use snapshot_every >= {-(-steps // MAX_SNAPSHOTS_PER_RUN)}"
            )
        return self

    def engine_config(self) -> dict:
        """The fields the engine's RunConfig takes (unset ones get its defaults)."""
        return self.model_dump(exclude_none=True, exclude={"name"})


class RunOut(BaseModel):
    """One run as the API shows it."""

    id: str
    status: RunStatus
    config: dict[str, Any]
    meta: dict[str, Any] = Field(default_factory=dict, description="name, origin (fork, comparison, cli)")
    step: int
    steps: int
    created: float
    updated: float
    message: str | None = None
    metrics: dict[str, Any] | None = Field(None, description="latest step, loss, acc (and val_loss, val_acc)")
    latest_snapshot: int | None = None
    queue_position: int | None = None


class RunList(BaseModel):
    runs: list[RunOut]


class MetricPoint(BaseModel):
    step: int
    loss: float | None = None
    acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None


class MetricsOut(BaseModel):
    run_id: str
    points: list[MetricPoint]


class SnapshotSteps(BaseModel):
    run_id: str
    steps: list[int]


class InitInfo(BaseModel):
    name: str
    title: str
    law: str
    paper: str | None = None
    params: dict[str, Any]
    aliases: list[str] = Field(default_factory=list)
    doc: str = ""


class InitList(BaseModel):
    inits: list[InitInfo]
    named_kernels: list[str]


class DatasetInfo(BaseModel):
    name: str
    description: str
    params: dict[str, Any]


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


class PresetInfo(BaseModel):
    name: str
    spec: dict[str, Any]
    optimizer: dict[str, Any] = Field(description="what a run of this preset trains with when its config names no optimizer")


class PresetList(BaseModel):
    presets: list[PresetInfo]


class Defaults(BaseModel):
    """What `{}` means: the complete default run, and each optimizer's settings when only its name is given."""

    run: dict[str, Any]
    optimizers: dict[str, dict[str, Any]]


class Health(BaseModel):
    status: Literal["ok"]


class ErrorOut(BaseModel):
    """Every 4xx answer: `detail` as FastAPI gives it, `message` one readable line."""

    detail: Any
    message: str | None = None
