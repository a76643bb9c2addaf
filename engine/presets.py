"""Presets: named model specs (architectures) a run can ask for by name.

"small" and "medium" are the benchmark architectures of the engine (see benchmarks/engine.py):
small is an MNIST-sized net, medium a CIFAR-sized one.
"""

PRESETS = {
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
            *[layer for _ in range(20) for layer in ({"type": "conv", "filters": 8, "kernel": 3, "padding": 1}, {"type": "relu"})],
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    },
}
