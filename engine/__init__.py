"""kernelscope engine: a small CNN written from scratch in numpy.

The reference engine lives in engine.core (read it first); engine.fast computes the same
faster. Public API (see docs/ARCHITECTURE.md): build_model(spec, init, seed, fast=True) -> Model,
softmax_cross_entropy, accuracy, the INITIALIZERS registry and NAMED_KERNELS, make_optimizer,
and the named architectures in PRESETS. Needs only numpy; never prints.
"""

import numpy as np

from engine.core import model as _core_model
from engine.core.initializers import INITIALIZERS, NAMED_KERNELS
from engine.core.initializers import describe as describe_init
from engine.core.losses import accuracy, softmax, softmax_cross_entropy
from engine.core.model import Model, normalize_spec
from engine.core.optimizers import OPTIMIZERS, SGD, Adam, make_optimizer
from engine.fast import model as _fast_model
from engine.presets import PRESETS


def build_model(spec, init="he_normal", seed=0, dtype=np.float32, threads=2, fast=True):
    """A Model for a spec dict (or a preset name), weights drawn from `init` with `seed`.

    fast=True (the default) gives the fast model (engine.fast, `threads` cores); fast=False
    the reference model of engine.core. Both draw the same weights and share one public API.
    """
    if fast:
        return _fast_model.build_model(spec, init, seed, dtype, threads)
    return _core_model.build_model(spec, init, seed, dtype)


__all__ = [
    "INITIALIZERS",
    "NAMED_KERNELS",
    "OPTIMIZERS",
    "PRESETS",
    "SGD",
    "Adam",
    "Model",
    "accuracy",
    "build_model",
    "describe_init",
    "make_optimizer",
    "normalize_spec",
    "softmax",
    "softmax_cross_entropy",
]

# datasets, training, filter analysis and the init probe (issue 3)
from engine.datasets import DATASETS, Dataset, DatasetError, load_dataset  # noqa: E402
from engine.probe import init_probe  # noqa: E402
from engine.trainer import Diverged, RunConfig, Trainer, TrainingControl  # noqa: E402

__all__ += [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "Diverged",
    "RunConfig",
    "Trainer",
    "TrainingControl",
    "init_probe",
    "load_dataset",
]
