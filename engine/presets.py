"""Presets: named model specs (architectures) a run can ask for by name, and the demos built on them.

"small" and "medium" are the benchmark architectures of the engine (see benchmarks/engine.py):
small is an MNIST-sized net, medium a CIFAR-sized one. DEMOS are the experiments the page
starts with one button: a base run config and the inits it is compared under.
"""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "input": [1, 28, 28],
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "conv", "filters": 16, "kernel": 3},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
    "medium": {
        "input": [3, 32, 32],
        "layers": [
            {"type": "conv", "filters": 32, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "conv", "filters": 32, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "conv", "filters": 64, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
    "demo": {
        "input": [1, 28, 28],
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 5},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "conv", "filters": 16, "kernel": 3},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
    "deep": {
        "input": [1, 28, 28],
        "layers": [
            {"type": "maxpool", "size": 2},
            *[
                layer
                for _ in range(20)
                for layer in ({"type": "conv", "filters": 8, "kernel": 3, "padding": 1}, {"type": "relu"})
            ],
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
}


# What the runs of a comparison (POST /api/comparisons: every demo and lesson too) take for the
# fields their base leaves unset: no dense early snapshots (dense_steps 0 and a first gap of 10
# steps, so none between the multiples of snapshot_every when it is 10 or less), and a snapshot
# every 20 steps (0, 10, 20, 40, ...). A comparison trains several runs at once and its views
# (the compare view's shared step slider, a lesson's reveal) read snapshots at shared steps,
# their loss curves every step's metrics; in a 300-step lesson the dense early snapshots were 36
# of a run's 67 and most of its side work, and in the 6-init comparison of the default run the
# snapshots every 10 steps were still 31 a run, about a sixth of its CPU (issue 19, goal 4).
# A single run (POST /api/runs) keeps the dense ones: that is where a learner watches a kernel move.
COMPARISON_DEFAULTS: dict[str, Any] = {"snapshot_every": 20, "snapshot_schedule": {"dense_steps": 0, "growth": 10.0}}

# Each demo: a base run config (RunConfig fields; unset ones take their defaults) and the
# inits it is run under, one run per init (POST /api/comparisons {"base", "inits"}).
DEMOS: dict[str, dict[str, Any]] = {
    # The depth-stall demo (He et al. 2015, Fig. 3, at small scale): the 20-layer plain ReLU
    # "deep" preset trained with Adam; He falls within the budget, N(0, 0.01²) stays at chance.
    # benchmarks/deep_init.py measures it; the init probe compares the same inits by default.
    # A snapshot of this 20-layer net (statistics on the monitor batch, forward and backward)
    # costs about four training steps and an evaluation of the validation split twenty: one every
    # 20 steps (with COMPARISON_DEFAULTS: 0, 10, 20, 40, ..., 300) show the stall, and the
    # validation split is evaluated once, at the end (eval_every = steps), which is the figure
    # the lesson reads; the training loss of every step shows when each init learns. The
    # evaluations at 100 and 200 were 1.6 s of CPU of a lesson that has to fit in 10 s (issue 19).
    "depth_stall": {
        "base": {
            "model": "deep",
            "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 32,
            "steps": 300,
            "snapshot_every": 20,
            "eval_every": 300,
        },
        "inits": ["he_normal", "glorot_uniform", {"name": "normal", "std": 0.01}],
    },
    # Every question of the page in one set of runs: the default run under each kind of init.
    "init_comparison": {
        "base": {},
        "inits": [
            "zeros",
            "constant",
            {"name": "normal", "std": 0.01},
            "glorot_uniform",
            "he_normal",
            {
                "name": "kernel",
                "kernels": ["x", "plus", "sobel_x", "sobel_y", "laplacian", "identity"],
                "fallback": "he_normal",
            },
        ],
    },
}
