"""Pydantic models for the teaching routes: comparisons, init probe, fork, kernel overwrite.

Like app/schemas.py, bodies forbid unknown fields and carry limits, so a bad
request is answered with 422 naming the field before anything reaches the
engine; the engine still validates nested parts (specs, inits, optimizers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictInt

from app.schemas import MAX_STEPS, RunCreate, RunOut

InitSpec = str | dict[str, Any]

# The comparison a learner gets by default: every question of the page in one set of runs.
DEFAULT_COMPARISON_INITS: list[InitSpec] = [
    "zeros",
    "constant",
    {"name": "normal", "std": 0.01},
    "glorot_uniform",
    "he_normal",
    {"name": "kernel", "kernels": ["x", "plus", "sobel_x", "sobel_y", "laplacian", "identity"],
     "fallback": "he_normal"},
]
# The depth-stall demo (He et al. 2015, Fig. 3, at small scale): the 20-layer plain ReLU
# "deep" preset trained with Adam; He falls within the budget, N(0, 0.01²) stays at chance.
# benchmarks/deep_init.py measures it; the page starts it as a comparison.
DEEP_DEMO_BASE = {"model": "deep", "optimizer": {"name": "adam", "lr": 0.001}, "batch_size": 32,
                  "steps": 300, "snapshot_every": 10, "eval_every": 50}
DEEP_DEMO_INITS: list[InitSpec] = ["he_normal", "glorot_uniform", {"name": "normal", "std": 0.01}]
DEFAULT_PROBE_INITS: list[InitSpec] = ["he_normal", "glorot_uniform", {"name": "normal", "std": 0.01}]
MAX_COMPARED_INITS = 8
MAX_PROBE_INITS = 8
MAX_KERNEL_SIDE = 32
MAX_KERNEL_CHANNELS = 512


class ComparisonCreate(BaseModel):
    """POST /api/comparisons: one base config, several inits; each init becomes one run."""

    model_config = ConfigDict(extra="forbid")

    base: RunCreate = Field(
        default_factory=RunCreate,
        description="The config every run shares (model, dataset, optimizer, seed, steps...). Its `init` is replaced per run.",
    )
    inits: list[InitSpec] = Field(
        default_factory=lambda: list(DEFAULT_COMPARISON_INITS), min_length=1, max_length=MAX_COMPARED_INITS,
        description="One run per entry: an init name or {\"name\": ..., params}.",
    )
    name: str | None = Field(None, max_length=200, description="A label for the comparison.")


class ComparisonOut(BaseModel):
    id: str
    name: str | None = None
    inits: list[InitSpec]
    labels: list[str]
    run_ids: list[str]
    runs: list[RunOut]


class InitProbeRequest(BaseModel):
    """POST /api/init-probe: a model (spec or preset) or a plain conv stack of `depth` × `width`."""

    model_config = ConfigDict(extra="forbid")

    spec: str | dict[str, Any] | None = Field(None, description="A preset name or a spec with 'input'.")
    depth: int | None = Field(None, ge=1, le=60, description="Plain stack: number of conv layers.")
    width: int | None = Field(None, ge=1, le=256, description="Plain stack: filters (= input channels) per layer.")
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid", "linear"] = "relu"
    kernel: int = Field(3, ge=1, le=7, description="Plain stack: odd kernel size.")
    size: int = Field(16, ge=4, le=64, description="Plain stack: height = width of the input.")
    batch: int = Field(4, ge=1, le=64)
    seed: int = Field(0, ge=0, le=2**32 - 16)
    repeats: int = Field(
        4, ge=1, le=16,
        description="Independent weight draws (seeds seed, seed+1, ...); the variances are averaged. One network "
                    "fluctuates around the theory, which is the average over draws.",
    )
    inits: list[InitSpec] = Field(
        default_factory=lambda: list(DEFAULT_PROBE_INITS), min_length=1, max_length=MAX_PROBE_INITS,
    )


class ForkCreate(BaseModel):
    """POST /api/runs/{id}/fork: start a new run from one stored snapshot, with overrides.

    The model, init and dataset stay the parent's (the weights come from the
    snapshot). `optimizer` is merged into the parent's optimizer settings, so
    {"lr": 0.01} changes only the learning rate.
    """

    model_config = ConfigDict(extra="forbid")

    step: StrictInt | Literal["latest"] = Field("latest", description="A stored snapshot step of the parent, or 'latest'.")
    optimizer: dict[str, Any] | None = Field(None, description='Overrides, e.g. {"lr": 0.01} or {"name": "adam", "lr": 0.001}.')
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Total steps of the fork (it continues from `step`).")
    batch_size: int | None = Field(None, ge=1, le=4096)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    snapshot_every: int | None = Field(None, ge=1, le=MAX_STEPS)
    eval_every: int | None = Field(None, ge=1, le=MAX_STEPS)
    name: str | None = Field(None, max_length=200)
    keep_frozen: bool = Field(True, description="Keep the parent's frozen filters frozen in the fork.")


KernelRows2 = list[list[FiniteFloat]]
KernelRows3 = list[list[list[FiniteFloat]]]


class KernelPut(BaseModel):
    """PUT /api/runs/{id}/kernels/{layer}/{filter}: the new kernel and whether it stays fixed."""

    model_config = ConfigDict(extra="forbid")

    kernel: str | KernelRows2 | KernelRows3 = Field(
        ..., description='A named kernel ("x", "plus", "sobel_x", "laplacian", ...) or numbers: [kh][kw] (copied '
                         "into every input channel) or [in][kh][kw].",
    )
    scale: FiniteFloat = Field(1.0, gt=0, le=1e3, description="Named kernels: unit L2 norm times this.")
    frozen: bool = Field(False, description="Keep this kernel bit-identical from now on.")


class KernelOut(BaseModel):
    run_id: str
    layer: int
    filter: int
    frozen: bool
    kernel: list[list[list[float]]]
    step: int | None = None
