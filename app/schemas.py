"""Pydantic models for every request body and response of the run API.

Bodies forbid unknown fields and take their numeric bounds from
app/limits.py (FIELD_LIMITS), so a bad request is answered with 422 naming the
field and the limit before anything reaches the engine. Unset fields stay unset:
the engine's RunConfig fills its defaults. The engine and limits.check_run_config
still validate the nested parts (model spec, init, dataset, optimizer); their
"field: problem" ValueErrors become 422 too (app/errors.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.limits import MAX_NAME_LENGTH, bounds

RunStatus = Literal["queued", "running", "paused", "completed", "stopped", "diverged", "failed", "interrupted"]


class RunCreate(BaseModel):
    """POST /api/runs: every field optional; `{}` starts the default demo run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | dict[str, Any] | None = Field(
        None,
        description='A preset name ("small", "demo", ...) or a model spec object.',
        examples=["demo"],
    )
    init: str | dict[str, Any] | None = Field(
        None,
        description='Default initializer: a name or {"name": "normal", "std": 0.01}.',
        examples=["he_normal"],
    )
    dataset: str | dict[str, Any] | None = Field(
        None,
        description='"shapes" or {"name": "mnist", "path": ...}.',
        examples=["shapes"],
    )
    optimizer: str | dict[str, Any] | None = Field(
        None,
        description='{"name": "sgd", "lr": 0.05, "momentum": 0.9} or {"name": "adam", ...}.',
    )
    batch_size: int | None = Field(None, strict=True, **bounds("batch_size"))
    steps: int | None = Field(None, strict=True, **bounds("steps"))
    seed: int | None = Field(None, strict=True, **bounds("seed"))
    snapshot_every: int | None = Field(None, strict=True, **bounds("snapshot_every"))
    eval_every: int | None = Field(None, strict=True, **bounds("eval_every"))
    snapshot_schedule: dict[str, Any] | None = Field(
        None,
        description='Dense snapshots at the start: {"dense_steps": int, "growth": number > 1}; defaults in GET /api/defaults.',
    )
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="A label shown in run lists.")

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
    model_spec: dict[str, Any] | None = Field(
        None,
        description="GET /api/runs/{id} only: the model the run trains as the engine normalises it (a preset "
        "adapted to the dataset, every layer's defaults filled in: kernel, stride, padding, slope, pool size), "
        "so a client need not know the engine's defaults; null when the dataset's shape is known only from its files",
    )


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
    datasets: list[DatasetInfo]  # only those that can load on this server
    path_rule: str = ""  # where dataset.path points (app/limits.py DATASET_PATH_RULE)


class PresetInfo(BaseModel):
    name: str
    spec: dict[str, Any]
    optimizer: dict[str, Any] = Field(
        description="what a run of this preset trains with when its config names no optimizer"
    )


class PresetList(BaseModel):
    presets: list[PresetInfo]


class Demo(BaseModel):
    base: dict[str, Any] = Field(description="run config fields every run of the demo shares")
    inits: list[str | dict[str, Any]] = Field(description="one run per init")


class Defaults(BaseModel):
    """What `{}` means and what may be asked: every value read from the engine's and app/limits.py's homes."""

    run: dict[str, Any] = Field(description="the complete default run config (what POST /api/runs {} trains)")
    optimizers: dict[str, dict[str, Any]] = Field(description="each optimizer's settings when only its name is given")
    demos: dict[str, Demo] = Field(description="the page's one-button experiments (engine/presets.py DEMOS)")
    comparison: dict[str, Any] = Field(
        description="what the runs of a comparison take for the fields its base leaves unset "
        "(engine/presets.py COMPARISON_DEFAULTS: no dense early snapshots, one every 20 steps), before the run defaults"
    )
    kernel_bank: list[str] = Field(description="the named kernels the `kernel` init uses when none are given")
    limits: dict[str, dict[str, Any]] = Field(
        description="range of every numeric field: min, max, min_exclusive?, max_exclusive?"
    )


class InitsDescribe(BaseModel):
    """POST /api/inits/describe: what a run's init draws per layer; each field defaults as for a run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | dict[str, Any] | None = Field(None, description="A preset name or a model spec.", examples=["demo"])
    init: str | dict[str, Any] | None = Field(
        None, description="The run's init (a layer's own init overrides it).", examples=["he_normal"]
    )
    dataset: str | dict[str, Any] | None = Field(
        None, description="Gives the input shape and class count.", examples=["shapes"]
    )


class LayerInit(BaseModel):
    index: int = Field(description="spec index of the layer (the key in state-dict names)")
    label: str = Field(description='"conv1", "conv2", ... "dense1": order among layers of its type')
    type: str
    shape: list[int]
    fan_in: int
    fan_out: int
    init: dict[str, Any] = Field(description="the init this layer draws from, with its params filled in")
    law: str
    std: float | None = None
    bound: float | None = None
    text: str = Field(description="the law with this layer's numbers worked out")


class InitsDescribed(BaseModel):
    layers: list[LayerInit]


class Health(BaseModel):
    status: Literal["ok"]
    disk_free_bytes: int | None = None
    disk_low: bool = False  # below limits.MIN_FREE_DISK_BYTES: new runs are refused, running ones may fail


class ErrorOut(BaseModel):
    """Every 4xx answer: `detail` as FastAPI gives it, `message` one readable line."""

    detail: Any
    message: str | None = None
