"""Init probe: how the signal's scale travels through a network at initialization.

No training: for a spec, or a plain stack of `depth` conv layers of `width`
filters with one activation, draw the weights from each init, push a batch of
unit-variance noise forward and a unit-variance gradient backward, and report
per weight layer the std of its output (the pre-activation) and of the
gradient reaching that output. This is how Glorot & Bengio (2010) and He et al.
(2015) compared initializations: He keeps both flat through a deep ReLU stack,
Glorot halves the variance at every ReLU layer, a small fixed N(0, 0.01²)
collapses to zero within a few layers.

Beside the measurement, the theory: `theory_std` predicts each layer's output
std from the init's law alone, and `describe_layers` gives, for a run's model,
init and dataset, each weight layer's shape, fans and the init's std or bound
with its worked numbers (what the page shows; it does no init arithmetic itself).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np

from engine import build_model
from engine.core.initializers import INITIALIZERS, describe, fans, parse_init
from engine.core.model import normalize_spec
from engine.datasets import known_shape, normalize_dataset_spec
from engine.presets import PRESETS

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
        rows.append(
            {
                "index": index,
                "type": model.spec["layers"][index]["type"],
                "act_std": float(np.std(output)),
                "grad_std": float(np.std(grad)),
                "weight_grad_std": float(np.std(model.grads[f"{index}.weight"])),
                "weight_std": float(np.std(model.params[f"{index}.weight"])),
            }
        )
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


# ---------------------------------------------------------------- the theory


def theory_std(layers, init) -> list[float] | None:
    """Predicted std of each weight layer's output at init, or None where the theory does not apply.

    `layers` are normalised layers (normalize_spec(spec)[1]). For zero-mean weights
    and zero-mean inputs, Var(out) = fan_in·Var(W)·E[x²] (Glorot & Bengio 2010; He et
    al. 2015). The input is unit-variance noise (E[x²] = 1); after a ReLU E[x²] =
    Var(out)/2, after no activation E[x²] = Var(out). So per ReLU layer the variance
    is multiplied by fan_in·Var(W)/2: 1 for He, fan_in/(fan_in+fan_out) = 1/2 for
    Glorot when fan_in = fan_out. Only plain stacks of conv/dense with ReLU or no
    activation are covered; inits without a zero-mean random law (zeros, constant,
    kernel) give None.
    """
    try:
        name, params = parse_init(init)
    except ValueError:
        return None
    if name in ("zeros", "constant", "kernel"):
        return None
    second_moment = 1.0  # E[x²] of the layer's input
    predicted = []
    for layer in layers:
        shapes = layer.param_shapes()
        if "weight" in shapes:
            std, _ = INITIALIZERS[name].spread(shapes["weight"], **params)
            if std is None:
                return None
            fan_in, _ = fans(shapes["weight"])
            variance = fan_in * std**2 * second_moment
            predicted.append(math.sqrt(variance))
            second_moment = variance
        elif layer.kind == "relu":
            second_moment = second_moment / 2
        else:
            return None
    return predicted


# ---------------------------------------------------------------- a run's layers at init


def resolve_spec(model="demo", dataset="shapes") -> dict:
    """The normalised spec a run of `model` on `dataset` builds, as far as it is known without files.

    A preset takes the dataset's input shape and class count (the trainer's rule,
    engine.trainer.resolve_model_spec); a spec without "input" takes the dataset's.
    ValueError("model: ..." or "dataset...: ...") on bad input.
    """
    from engine.trainer import resolve_model_spec

    full = normalize_dataset_spec(dataset)
    input_shape, classes = known_shape(full)
    if isinstance(model, str) and model not in PRESETS:
        try:
            normalize_spec(model)  # the engine's "unknown preset ...; did you mean ..." error
        except ValueError as error:
            raise ValueError(f"model: {error}") from None
    if not isinstance(model, (str, dict)):
        raise ValueError("model: must be a preset name or a spec object")
    if input_shape is not None and classes is not None:
        stand_in = SimpleNamespace(name=full["name"], input_shape=tuple(input_shape), n_classes=classes)
        return resolve_model_spec(model, stand_in)  # type: ignore[arg-type]  # needs only these three
    spec = copy.deepcopy(PRESETS[model] if isinstance(model, str) else model)
    if input_shape is not None:
        spec["input"] = input_shape
    if "input" not in spec:
        raise ValueError(
            f"model.input: dataset {full['name']} tells its input shape only once loaded; "
            "give the spec an 'input' [channels, height, width]"
        )
    try:
        return normalize_spec(spec)[0]
    except ValueError as error:
        raise ValueError(f"model: {error}") from None


def describe_layers(model="demo", init="he_normal", dataset="shapes") -> list[dict]:
    """Each conv and dense layer of a run's model at init: what its init draws, with the numbers.

    [{"index", "label" ("conv1", "dense1", ...: order among layers of that type), "type",
      "shape", "fan_in", "fan_out", "init" ({"name", ...params}), "law", "std", "bound",
      "text"}, ...]. A layer's own "init" overrides the run's `init`, as in build_model.
    """
    try:
        parse_init(init)
    except ValueError as error:
        raise ValueError(f"init: {error}") from None
    spec = resolve_spec(model, dataset)
    _, layers = normalize_spec(spec)
    counts: dict[str, int] = {}
    rows = []
    for index, (layer_spec, layer) in enumerate(zip(spec["layers"], layers)):
        shapes = layer.param_shapes()
        if "weight" not in shapes:
            continue
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        layer_init = layer_spec["init"] if layer_spec.get("init") is not None else init
        name, params = parse_init(layer_init)
        described = describe(layer_init, shapes["weight"])
        rows.append(
            {
                "index": index,
                "label": f"{layer.kind}{counts[layer.kind]}",
                "type": layer.kind,
                "shape": [int(size) for size in shapes["weight"]],
                "fan_in": described["fan_in"],
                "fan_out": described["fan_out"],
                "init": {"name": name, **INITIALIZERS[name].defaults, **params},
                "law": described["law"],
                "std": described["std"],
                "bound": described["bound"],
                "text": described["text"],
            }
        )
    return rows
