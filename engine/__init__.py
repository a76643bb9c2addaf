"""kernelscope engine: a small CNN written from scratch in numpy.

Public API (see docs/ARCHITECTURE.md): build_model(spec, init, seed) -> Model,
softmax_cross_entropy, accuracy, the INITIALIZERS registry and NAMED_KERNELS, make_optimizer,
and the named architectures in PRESETS. Needs only numpy; never prints.
"""

from engine.initializers import INITIALIZERS, NAMED_KERNELS, describe as describe_init
from engine.losses import accuracy, softmax, softmax_cross_entropy
from engine.model import Model, build_model, normalize_spec
from engine.optimizers import OPTIMIZERS, SGD, Adam, make_optimizer
from engine.presets import PRESETS

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

__all__ += ["DATASETS", "Dataset", "DatasetError", "Diverged", "RunConfig", "Trainer", "TrainingControl",
            "init_probe", "load_dataset"]
