"""Init probe: how the signal's scale travels through a network at initialization.

No training: for a spec, or a plain stack of `depth` conv layers of `width`
filters with one activation, draw the weights from each init, push a batch of
unit-variance noise forward and a unit-variance gradient backward, and report
per weight layer the std of its output (the pre-activation) and of the
gradient reaching that output. This is how Glorot & Bengio (2010) and He et al.
(2015) compared initializations: He keeps both flat through a deep ReLU stack,
Glorot halves the variance at every ReLU layer, a small fixed N(0, 0.01²)
collapses to zero within a few layers.
"""

from __future__ import annotations

import numpy as np

from engine import build_model
from engine.core.model import normalize_spec

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
MAX_DEPTH = 200
MAX_WIDTH = 512


def plain_stack_spec(depth: int, width: int, activation: str = "relu", kernel: int = 3, size: int = 16) -> dict:
    """`depth` conv layers (`width` filters, `kernel`×`kernel`, 'same' padding) each followed by `activation`.

    The input has `width` channels, so every layer has fan_in = fan_out: the
    setting of the Glorot and He analyses. Kernel must be odd for 'same' padding.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth: must be an integer between 1 and {MAX_DEPTH}, got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"width: must be an integer between 1 and {MAX_WIDTH}, got {width!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: must be a positive odd integer, got {kernel!r}")
    layers = []
    for _ in range(depth):
        layers.append({"type": "conv", "filters": width, "kernel": kernel, "padding": kernel // 2})
        if activation != "linear":
            layers.append({"type": activation})
    return {"input": [width, size, size], "layers": layers}


def probe_model(model, x: np.ndarray, out_grad: np.ndarray) -> list[dict]:
    """Per weight layer of `model`: std of its output, of the gradient at that output, of its weight gradient."""
    model.forward(x, keep_outputs=True)
    model.backward(out_grad)
    rows = []
    for index, (output, grad) in enumerate(zip(model.outputs, model.output_grads)):
        if f"{index}.weight" not in model.params:
            continue
        rows.append({
            "index": index,
            "type": model.spec["layers"][index]["type"],
            "act_std": float(np.std(output)),
            "grad_std": float(np.std(grad)),
            "weight_grad_std": float(np.std(model.grads[f"{index}.weight"])),
            "weight_std": float(np.std(model.params[f"{index}.weight"])),
        })
    return rows


def init_probe(
    spec: dict | str | None = None,
    inits=("he_normal",),
    depth: int | None = None,
    width: int | None = None,
    activation: str = "relu",
    kernel: int = 3,
    size: int = 16,
    batch: int = 4,
    seed: int = 0,
) -> dict:
    """Activation and gradient std per weight layer at initialization, for each init.

    Give a `spec` (dict or preset name) or `depth` and `width` for a plain
    conv stack. Every init sees the same input noise and the same output
    gradient (float64, so tiny scales stay visible). Returns
    {"spec": normalised spec, "results": [{"init": init, "layers": [{"index",
    "type", "act_std", "grad_std", "weight_grad_std", "weight_std"}, ...]}, ...]}.
    """
    if spec is None:
        if depth is None or width is None:
            raise ValueError("spec: give a model spec, or depth and width for a plain conv stack")
        spec = plain_stack_spec(depth, width, activation, kernel, size)
    if isinstance(inits, (str, dict)):
        inits = [inits]
    if not inits:
        raise ValueError("inits: give at least one initializer")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 256:
        raise ValueError(f"batch: must be an integer between 1 and 256, got {batch!r}")
    try:
        normalised, layers = normalize_spec(spec)
    except ValueError as error:
        raise ValueError(f"spec: {error}") from None
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *normalised["input"]))
    out_grad = rng.standard_normal((batch, *layers[-1].output_shape))
    results = []
    for init in inits:
        try:
            model = build_model(normalised, init=init, seed=seed)
        except ValueError as error:
            raise ValueError(f"inits: {error}") from None
        results.append({"init": init, "layers": probe_model(model, x, out_grad)})
    return {"spec": normalised, "results": results}
