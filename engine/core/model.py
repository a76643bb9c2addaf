"""The model: a spec (JSON-able dict) turned into layers and named parameters, run forward
and backward, saved and loaded as .npz keyed by PyTorch state-dict names ("0.weight").

`normalize_spec` validates the spec layer by layer (a misfit raises ValueError naming the
layer index and the problem) and infers every shape; `build_model(spec, init, seed)` draws
each layer's weights from its own random generator derived from (seed, layer index), so
adding a layer never changes the weights of the layers before it. The Model runs its layers
one after the other on NCHW batches: forward keeps each layer's cache, backward walks them
back and fills `grads` by state-dict name.
"""

import numpy as np

from engine.core import initializers, names
from engine.core.layers import LAYER_TYPES, make_layer
from engine.core.losses import check_labels, softmax_cross_entropy


def _check_input_shape(value):
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 3):
        raise ValueError(f"input must be [channels, height, width] (or [features]), got {value!r}")
    for size in value:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"input sizes must be positive integers, got {value!r}")
    return [int(size) for size in value]


def normalize_spec(spec):
    """Validate a spec and fill every layer's defaults. Returns (normalised spec, layers)."""
    if isinstance(spec, str):
        from engine.presets import PRESETS  # presets are specs; they import nothing from here

        if spec not in PRESETS:
            raise ValueError(names.unknown("preset", spec, PRESETS, "valid presets"))
        spec = PRESETS[spec]
    if not isinstance(spec, dict):
        raise ValueError(f"model spec must be an object with 'input' and 'layers', got {type(spec).__name__}")
    if "input" not in spec:
        raise ValueError("model spec needs 'input': [channels, height, width]")
    input_shape = _check_input_shape(spec["input"])
    raw_layers = spec.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ValueError("model spec needs 'layers': a non-empty list")
    shape = tuple(input_shape)
    layers, normalised_layers = [], []
    for index, raw in enumerate(raw_layers):
        if not isinstance(raw, dict) or "type" not in raw:
            raise ValueError(f"layer {index}: must be an object with a 'type'")
        kind = raw["type"]
        if kind not in LAYER_TYPES:
            raise ValueError(f"layer {index}: {names.unknown('type', kind, LAYER_TYPES, 'valid types')}")
        fields = LAYER_TYPES[kind].fields
        unknown = [key for key in raw if key != "type" and key not in fields]
        if unknown:
            valid = ", ".join(fields) or "none"
            raise ValueError(f"layer {index} ({kind}): unknown field {unknown[0]!r}; valid fields: {valid}")
        filled = {"type": kind, **fields, **{key: value for key, value in raw.items() if key != "type"}}
        try:
            for key in ("init", "bias_init"):
                if filled.get(key) is not None:
                    initializers.parse_init(filled[key])
            layer = make_layer(filled, shape)
        except ValueError as error:
            raise ValueError(f"layer {index} ({kind}): {error}") from None
        if any(size < 1 for size in layer.output_shape):
            raise ValueError(f"layer {index} ({kind}): output would be empty ({layer.output_shape})")
        layers.append(layer)
        normalised_layers.append(filled)
        shape = layer.output_shape
    normalised = {key: value for key, value in spec.items() if key not in ("input", "layers")}
    normalised.update({"input": input_shape, "layers": normalised_layers})
    return normalised, layers


def _layer_rng(seed, index, stream):
    """The generator for one layer's weights (stream 0) or biases (stream 1)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index, stream))))


def initial_params(spec, init="he_normal", seed=0, dtype=np.float32):
    """(normalised spec, layers, params) for a spec dict (or a preset name): the weights drawn
    from `init` with `seed`. A layer's own "init" overrides `init`; biases are zero unless the
    layer gives "bias_init"."""
    initializers.parse_init(init)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    normalised, layers = normalize_spec(spec)
    params = {}
    for index, (layer, layer_spec) in enumerate(zip(layers, normalised["layers"])):
        shapes = layer.param_shapes()
        if not shapes:
            continue
        weight_init = layer_spec["init"] if layer_spec.get("init") is not None else init
        bias_init = layer_spec["bias_init"] if layer_spec.get("bias_init") is not None else "zeros"
        try:
            params[f"{index}.weight"] = initializers.initialize(
                weight_init, shapes["weight"], _layer_rng(seed, index, 0), dtype
            )
            params[f"{index}.bias"] = initializers.initialize(
                bias_init, shapes["bias"], _layer_rng(seed, index, 1), dtype
            )
        except ValueError as error:
            raise ValueError(f"layer {index} ({layer.kind}): {error}") from None
    return normalised, layers, params


def build_model(spec, init="he_normal", seed=0, dtype=np.float32):
    """The reference Model for a spec (see initial_params). engine.build_model(fast=False)."""
    return Model(*initial_params(spec, init, seed, dtype))


class Model:
    """Layers plus parameters keyed by state-dict name; see docs/ARCHITECTURE.md (Model API)."""

    def __init__(self, spec, layers, params):
        self.spec = spec
        self.input_shape = tuple(spec["input"])
        self.layers = layers
        self.output_shapes = [layer.output_shape for layer in layers]
        self.conv_indices = [index for index, layer in enumerate(layers) if layer.kind == "conv"]
        self.params = params
        self.grads = {name: np.zeros_like(value) for name, value in params.items()}
        self.outputs = []  # with forward(keep_outputs=True): every layer's output ...
        self.output_grads = []  # ... and after backward the loss gradient w.r.t. each of them
        self._pending = None

    def param_names(self, index):
        """The state-dict names of layer `index`'s parameters (empty for layers without)."""
        return [f"{index}.{part}" for part in self.layers[index].param_shapes()]

    def _layer_params(self, dtype):
        """Per layer, {"weight": ..., "bias": ...} in the dtype of the batch (float64 checks)."""
        return [
            {name.split(".", 1)[1]: self.params[name].astype(dtype, copy=False) for name in self.param_names(index)}
            for index in range(len(self.layers))
        ]

    def _check_input(self, x):
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must have shape (N, {', '.join(map(str, self.input_shape))}), got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty (N = 0)")
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(next(iter(self.params.values())).dtype if self.params else np.float32)
        return x

    def _check_dlogits(self, dlogits, batch):
        dlogits = np.asarray(dlogits)
        expected = (batch, *self.output_shapes[-1])
        if dlogits.shape != expected:
            raise ValueError(f"dlogits must have shape {list(expected)}, got {list(dlogits.shape)}")
        return dlogits

    def _first_param_layer(self):
        """Below this layer no gradient is needed unless the input's is asked for."""
        return next((index for index, layer in enumerate(self.layers) if layer.param_shapes()), len(self.layers))

    def _store_grads(self, index, grads):
        for part, value in grads.items():
            name = f"{index}.{part}"
            self.grads[name] = value.astype(self.params[name].dtype, copy=False)

    def forward(self, x, keep_outputs=False):
        """Logits for x (N, C, H, W). With keep_outputs, model.outputs holds every layer's output
        (NCHW or (N, F)) and the next backward fills model.output_grads."""
        x = self._check_input(x)
        layer_params = self._layer_params(x.dtype)
        caches, outputs = [], []
        for layer, params in zip(self.layers, layer_params):
            x, cache = layer.forward(x, params)
            caches.append(cache)
            outputs.append(x)
        self._pending = (caches, layer_params, x.shape[0], keep_outputs)
        self.outputs = outputs if keep_outputs else []
        return x

    def backward(self, dlogits, need_input_grad=True):
        """Back-propagate dlogits (the loss gradient w.r.t. the last forward's output).

        Fills model.grads (by state-dict name) and returns the gradient w.r.t. the input
        (NCHW), or None with need_input_grad=False (which skips that work).
        """
        if self._pending is None:
            raise RuntimeError("backward needs a forward first")
        caches, layer_params, batch, keep_outputs = self._pending
        grad = self._check_dlogits(dlogits, batch)
        last_needed = 0 if need_input_grad else self._first_param_layer()
        output_grads = [None] * len(self.layers)
        for index in reversed(range(len(self.layers))):
            output_grads[index] = grad
            needs_dx = index > last_needed or need_input_grad
            grad, grads = self.layers[index].backward(grad, caches[index], layer_params[index], needs_dx)
            self._store_grads(index, grads)
            if not needs_dx:
                break
        self.output_grads = output_grads if keep_outputs else []
        return grad if need_input_grad else None

    def train_gradients(self, x, labels):
        """One training pass: forward, mean softmax cross-entropy against integer labels, and
        backward without the input gradient. Fills model.grads; returns (loss, logits)."""
        x = self._check_input(x)
        if len(self.output_shapes[-1]) != 1:
            raise ValueError("train_gradients needs a model whose output is (N, classes)")
        labels = check_labels(labels, x.shape[0], self.output_shapes[-1][0])
        logits = self.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, labels)
        self.backward(dlogits, need_input_grad=False)
        self._pending = None
        return loss, logits

    # -- persistence -------------------------------------------------------------------

    def state_dict(self):
        """{state-dict name: copy of the parameter array}."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state):
        """Copy parameters in by name; missing, unexpected or mis-shaped entries raise ValueError."""
        missing = sorted(set(self.params) - set(state))
        unexpected = sorted(set(state) - set(self.params))
        if missing:
            raise ValueError(f"missing parameter {missing[0]!r} (model has {', '.join(self.params)})")
        if unexpected:
            raise ValueError(f"unexpected parameter {unexpected[0]!r} (model has {', '.join(self.params)})")
        for name, value in state.items():
            value = np.asarray(value)
            if value.shape != self.params[name].shape:
                raise ValueError(
                    f"parameter {name!r} has shape {list(value.shape)}, model expects {list(self.params[name].shape)}"
                )
        for name, value in state.items():
            np.copyto(self.params[name], np.asarray(value), casting="same_kind")

    def save_npz(self, path):
        """Write the parameters to an .npz keyed by state-dict name (loads into torch by name)."""
        np.savez(path, **self.state_dict())

    def load_npz(self, path):
        """Read parameters written by save_npz (or any .npz with the same names and shapes)."""
        with np.load(path) as data:
            self.load_state_dict({name: data[name] for name in data.files})
