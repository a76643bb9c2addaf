"""Pydantic models for the teaching routes: comparisons, init probe, fork, kernel overwrite.

Like app/schemas.py, bodies forbid unknown fields and take their bounds from
app/limits.py, so a bad request is answered with 422 naming the field before
anything reaches the engine; the engine still validates nested parts (specs,
inits, optimizers). Default inits come from the engine's demos
(engine/presets.py DEMOS).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictInt

from app.limits import MAX_NAME_LENGTH, bounds
from app.schemas import RunCreate, RunOut
from engine.presets import DEMOS

InitSpec = str | dict[str, Any]


def demo_inits(demo: str) -> list[InitSpec]:
    return copy.deepcopy(DEMOS[demo]["inits"])


class ComparisonCreate(BaseModel):
    """POST /api/comparisons: one base config, several inits; each init becomes one run."""

    model_config = ConfigDict(extra="forbid")

    base: RunCreate = Field(
        default_factory=RunCreate,
        description="The config every run shares (model, dataset, optimizer, seed, steps...). Its `init` is replaced per run.",
    )
    inits: list[InitSpec] = Field(
        default_factory=lambda: demo_inits("init_comparison"),
        **bounds("comparison.inits"),
        description='One run per entry: an init name or {"name": ..., params}.',
    )
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="A label for the comparison.")


class ComparisonOut(BaseModel):
    id: str
    name: str | None = None
    inits: list[InitSpec]
    labels: list[str]
    run_ids: list[str]
    runs: list[RunOut]


class InitProbeRequest(BaseModel):
    """POST /api/init-probe: a model (spec or preset) or a plain conv stack of `depth` × `width`.

    With neither, the default run's model on the default dataset is probed, so `{}` works.
    """

    model_config = ConfigDict(extra="forbid")

    spec: str | dict[str, Any] | None = Field(
        None,
        description="A preset name or a spec with 'input'. Default: the default run's model "
        "(unless depth and width are given).",
    )
    depth: int | None = Field(None, **bounds("probe.depth"), description="Plain stack: number of conv layers.")
    width: int | None = Field(
        None, **bounds("probe.width"), description="Plain stack: filters (= input channels) per layer."
    )
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid", "linear"] = "relu"
    kernel: int = Field(3, **bounds("probe.kernel"), description="Plain stack: odd kernel size.")
    size: int = Field(16, **bounds("probe.size"), description="Plain stack: height = width of the input.")
    batch: int = Field(4, **bounds("probe.batch"))
    seed: int = Field(0, ge=0, le=bounds("seed")["le"] - bounds("probe.repeats")["le"])
    repeats: int = Field(
        4,
        **bounds("probe.repeats"),
        description="Independent weight draws (seeds seed, seed+1, ...); the variances are averaged. One network "
        "fluctuates around the theory, which is the average over draws.",
    )
    inits: list[InitSpec] = Field(default_factory=lambda: demo_inits("depth_stall"), **bounds("probe.inits"))


class ForkCreate(BaseModel):
    """POST /api/runs/{id}/fork: start a new run from one stored snapshot, with overrides.

    The model, init and dataset stay the parent's (the weights come from the
    snapshot). `optimizer` is merged into the parent's optimizer settings, so
    {"lr": 0.01} changes only the learning rate.
    """

    model_config = ConfigDict(extra="forbid")

    step: StrictInt | Literal["latest"] = Field(
        "latest", description="A stored snapshot step of the parent, or 'latest'."
    )
    optimizer: dict[str, Any] | None = Field(
        None, description='Overrides, e.g. {"lr": 0.01} or {"name": "adam", "lr": 0.001}.'
    )
    steps: int | None = Field(
        None, **bounds("steps"), description="Total steps of the fork (it continues from `step`)."
    )
    batch_size: int | None = Field(None, **bounds("batch_size"))
    seed: int | None = Field(None, **bounds("seed"))
    snapshot_every: int | None = Field(None, **bounds("snapshot_every"))
    eval_every: int | None = Field(None, **bounds("eval_every"))
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    keep_frozen: bool = Field(True, description="Keep the parent's frozen filters frozen in the fork.")


KernelRows2 = list[list[FiniteFloat]]
KernelRows3 = list[list[list[FiniteFloat]]]


class KernelPut(BaseModel):
    """PUT /api/runs/{id}/kernels/{layer}/{filter}: the new kernel and whether it stays fixed."""

    model_config = ConfigDict(extra="forbid")

    kernel: str | KernelRows2 | KernelRows3 = Field(
        ...,
        description='A named kernel ("x", "plus", "sobel_x", "laplacian", ...) or numbers: [kh][kw] (copied '
        "into every input channel) or [in][kh][kw].",
    )
    scale: FiniteFloat = Field(1.0, **bounds("kernel.scale"), description="Named kernels: unit L2 norm times this.")
    frozen: bool = Field(False, description="Keep this kernel bit-identical from now on.")


class KernelOut(BaseModel):
    run_id: str
    layer: int
    filter: int
    frozen: bool
    kernel: list[list[list[float]]]
    step: int | None = None
