"""The model: a spec (JSON-able dict) turned into layers and named parameters, run forward
and backward, saved and loaded as .npz keyed by PyTorch state-dict names ("0.weight").

`build_model(spec, init, seed)` validates the spec layer by layer (a misfit raises
ValueError naming the layer index and the problem), infers every shape, and draws each
layer's weights from its own random generator derived from (seed, layer index), so adding a
layer never changes the weights of the layers before it.

Inside, feature maps use the (C, N, H, W) layout of engine.conv; the public arrays
(inputs, outputs, gradients) are NCHW. A large batch is split into `threads` fixed parts:
the first is computed here, the others by partner processes (engine.partner), each with
BLAS on one thread. The split depends only on the batch size and `threads`, and every part
runs the same code wherever it runs, so results are bit-identical from run to run.
"""

import ctypes
import os
import sys
import weakref

import numpy as np

from engine import initializers, names, partner
from engine.losses import check_labels, softmax_cross_entropy_sum
from engine.phase_conv import plan_blocks
from engine.layers import LAYER_TYPES, make_layer

try:  # optional: pins BLAS to one thread while the parts of a batch run on separate cores
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - exercised only where threadpoolctl is missing
    ThreadpoolController = None

# A batch is split across processes only when each part gets at least this many examples.
MIN_EXAMPLES_PER_THREAD = 8
# What a failed or dead partner raises while it is asked or answered: its part is then computed here.
PARTNER_ERRORS = (OSError, EOFError, RuntimeError, ValueError)

_blas_controller = None
_memory_tuned = False


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates the same large arrays every time; by default glibc serves each
    from fresh mmap'd pages (and trims freed heap), so every step pays page faults again. This
    is the tuning of GLIBC_TUNABLES=glibc.malloc.mmap_threshold/trim_threshold, applied from
    inside the process: arrays up to 32 MiB come from the heap and freed memory is kept.
    Linux with glibc only (elsewhere nothing happens); KERNELSCOPE_MALLOC_TUNING=0 skips it.
    Called once by build_model. Returns True when the setting was applied.
    """
    global _memory_tuned
    if _memory_tuned or not sys.platform.startswith("linux") or os.environ.get("KERNELSCOPE_MALLOC_TUNING") == "0":
        return _memory_tuned
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD in malloc.h
    _memory_tuned = bool(mallopt(mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(trim_threshold, 2**31 - 1))
    return _memory_tuned


def _blas_on_one_thread():
    """A context that limits numpy's BLAS to one thread (a no-op without threadpoolctl)."""
    global _blas_controller
    if ThreadpoolController is None:
        return _NoLimit()
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------
# Spec validation
# ----------------------------------------------------------------------------------------


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
        from engine.presets import PRESETS

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


def build_model(spec, init="he_normal", seed=0, dtype=np.float32, threads=2):
    """Build a Model from a spec dict (or a preset name); weights drawn from `init` with `seed`.

    A layer's own "init" overrides `init`; biases are zero unless the layer gives "bias_init".
    """
    initializers.parse_init(init)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    normalised, layers = normalize_spec(spec)
    keep_freed_memory()
    params = {}
    for index, (layer, layer_spec) in enumerate(zip(layers, normalised["layers"])):
        shapes = layer.param_shapes()
        if not shapes:
            continue
        weight_init = layer_spec["init"] if layer_spec.get("init") is not None else init
        bias_init = layer_spec["bias_init"] if layer_spec.get("bias_init") is not None else "zeros"
        try:
            params[f"{index}.weight"] = initializers.initialize(weight_init, shapes["weight"], _layer_rng(seed, index, 0), dtype)
            params[f"{index}.bias"] = initializers.initialize(bias_init, shapes["bias"], _layer_rng(seed, index, 1), dtype)
        except ValueError as error:
            raise ValueError(f"layer {index} ({layer.kind}): {error}") from None
    return Model(normalised, layers, params, threads=threads)


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


def _to_internal(x):
    """Public (N, C, H, W) -> internal (C, N, H, W); (N, F) stays as it is."""
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)) if x.ndim == 4 else x


def _to_public(x):
    """Internal (C, N, H, W) -> public (N, C, H, W) view; (N, F) stays as it is."""
    return x.transpose(1, 0, 2, 3) if x.ndim == 4 else x


class Model:
    """Layers plus parameters keyed by state-dict name; see docs/ARCHITECTURE.md (Model API)."""

    def __init__(self, spec, layers, params, threads=2):
        self.spec = spec
        self.input_shape = tuple(spec["input"])
        self.layers = layers
        self.output_shapes = [layer.output_shape for layer in layers]
        self.conv_indices = [index for index, layer in enumerate(layers) if layer.kind == "conv"]
        self.params = params
        self.grads = {name: np.zeros_like(value) for name, value in params.items()}
        self.threads = max(1, int(threads))
        self.outputs = []
        self.output_grads = []
        self._pending = None
        self._key = None
        self.steps = plan_blocks(layers)  # what a pass without keep_outputs runs (conv blocks)

    # -- helpers -------------------------------------------------------------------------

    def param_names(self, index):
        """The state-dict names of layer `index`'s parameters (empty for layers without)."""
        return [f"{index}.{part}" for part in self.layers[index].param_shapes()]

    def num_params(self):
        return int(sum(value.size for value in self.params.values()))

    def summary(self):
        """One row per layer: index, type, output shape, parameter count."""
        rows = []
        for index, layer in enumerate(self.layers):
            count = sum(self.params[name].size for name in self.param_names(index))
            rows.append({"index": index, "type": layer.kind, "output_shape": list(layer.output_shape), "params": int(count)})
        return rows

    def _layer_params(self, dtype):
        out = []
        for index in range(len(self.layers)):
            names = self.param_names(index)
            out.append({name.split(".", 1)[1]: self.params[name].astype(dtype, copy=False) for name in names})
        return out

    def _check_input(self, x):
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must have shape (N, {', '.join(map(str, self.input_shape))}), got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty (N = 0)")
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(next(iter(self.params.values())).dtype if self.params else np.float32)
        return x

    def _parts(self, batch):
        """Slices of the batch computed on separate cores (a fixed split of the batch)."""
        count = min(self.threads, batch // MIN_EXAMPLES_PER_THREAD) if batch else 1
        count = max(1, count)
        bounds = [round(k * batch / count) for k in range(count + 1)]
        return [slice(bounds[k], bounds[k + 1]) for k in range(count)]

    def _partner_key(self):
        """This model's key with the partner processes (forgotten when the model is collected)."""
        if self._key is None:
            self._key = partner.new_model_key()
            weakref.finalize(self, partner.forget_model, self._key)
        return self._key

    def _start(self, helpers, send):
        """send(number, helper) to each of {part number: partner}, each under its partner's lock
        (held until _collect): {part number: partner} of those that took it."""
        started = {}
        for number, helper in helpers.items():
            helper.lock.acquire()
            try:
                send(number, helper)
                started[number] = helper
            except PARTNER_ERRORS:
                helper.broken = True
                helper.lock.release()
        return started

    def _partner_parts(self, parts):
        """{part number: partner} for parts[1:], as far as there are working partners."""
        return dict(enumerate(partner.partners(len(parts) - 1), start=1))

    def _logits_shape(self, part):
        return (part.stop - part.start, *self.output_shapes[-1])

    @staticmethod
    def _collect(helper, collect):
        """collect() from a partner, then release it; None when the partner failed."""
        try:
            return collect()
        except PARTNER_ERRORS:
            helper.broken = True
            return None
        finally:
            helper.lock.release()

    # -- forward / backward ------------------------------------------------------------

    def _forward_part(self, x, layer_params, keep_outputs):
        """Run one part of the batch forward: layer by layer when every output is kept, else by
        self.steps (conv blocks fused with their relu and pooling). Returns (out, caches,
        outputs)."""
        caches, outputs = [], []
        if keep_outputs:
            for layer, params in zip(self.layers, layer_params):
                x, cache = layer.forward(x, params)
                caches.append(cache)
                outputs.append(x)
            return x, caches, outputs
        for first, _, block in self.steps:
            params = layer_params[first]
            if block is None:
                x, cache = self.layers[first].forward(x, params)
            else:
                x, cache = block.forward(x, params["weight"], params["bias"])
            caches.append(cache)
        return x, caches, outputs

    def forward(self, x, keep_outputs=False):
        """Logits for x (N, C, H, W). With keep_outputs, model.outputs holds every layer's output
        (NCHW or (N, F)) and the next backward fills model.output_grads."""
        x = self._check_input(x)
        dtype = x.dtype
        layer_params = self._layer_params(dtype)
        parts = [slice(0, x.shape[0])] if keep_outputs else self._parts(x.shape[0])
        remote = self._start(self._partner_parts(parts), lambda number, helper: helper.send_forward(
            self._partner_key(), self.spec, self.params, x[parts[number]], self._logits_shape(parts[number])))
        results = [None] * len(parts)
        with _blas_on_one_thread():
            for number, part in enumerate(parts):
                if number not in remote:
                    results[number] = self._forward_part(_to_internal(x[part]), layer_params, keep_outputs)
            for number, helper in remote.items():
                logits = self._collect(helper, helper.collect_forward)
                if logits is None:  # the partner failed: this part is computed here
                    del remote[number]
                    results[number] = self._forward_part(_to_internal(x[parts[number]]), layer_params, keep_outputs)
                else:
                    results[number] = (_to_internal(logits), None, [])
        self._pending = (x, parts, remote, [caches for _, caches, _ in results], layer_params, keep_outputs)
        if keep_outputs:
            self.outputs = [_to_public(out) for out in results[0][2]]
        else:
            self.outputs = []
        logits = [_to_public(out) for out, _, _ in results]
        return logits[0] if len(logits) == 1 else np.concatenate(logits, axis=0)

    def _backward_part(self, grad, caches, layer_params, need_input_grad, keep_outputs):
        grads = [None] * len(self.layers)
        output_grads = [None] * len(self.layers)
        last_needed = 0 if need_input_grad else self._first_param_layer()
        steps = [(index, index, None) for index in range(len(self.layers))] if keep_outputs else self.steps
        for (first, _, block), cache in zip(reversed(steps), reversed(caches)):
            if keep_outputs:
                output_grads[first] = grad
            needs_dx = first > last_needed or (need_input_grad and first == 0)
            if block is None:
                grad, grads[first] = self.layers[first].backward(grad, cache, layer_params[first], needs_dx)
            else:
                grad, dweight, dbias = block.backward(grad, cache, layer_params[first]["weight"], needs_dx)
                grads[first] = {"weight": dweight, "bias": dbias}
            if not needs_dx:
                break
        return grad, grads, output_grads

    def _first_param_layer(self):
        for index, layer in enumerate(self.layers):
            if layer.param_shapes():
                return index
        return len(self.layers)

    def backward(self, dlogits, need_input_grad=True):
        """Back-propagate dlogits (the loss gradient w.r.t. the last forward's output).

        Fills model.grads (by state-dict name) and returns the gradient w.r.t. the input
        (NCHW), or None with need_input_grad=False (which skips that work).
        """
        if self._pending is None:
            raise RuntimeError("backward needs a forward first")
        x, parts, remote, caches, layer_params, keep_outputs = self._pending
        dlogits = np.asarray(dlogits)
        expected = (parts[-1].stop, *self.output_shapes[-1])
        if dlogits.shape != expected:
            raise ValueError(f"dlogits must have shape {list(expected)}, got {list(dlogits.shape)}")
        started = self._start(remote, lambda number, helper: helper.send_backward(
            self._partner_key(), dlogits[parts[number]], need_input_grad))
        results = [None] * len(parts)

        def local(number):
            part_caches = caches[number]
            if part_caches is None:  # computed by a partner that has failed since: redo it here
                part_caches = self._forward_part(_to_internal(x[parts[number]]), layer_params, False)[1]
            grad = _to_internal(dlogits[parts[number]])
            return self._backward_part(grad, part_caches, layer_params, need_input_grad, keep_outputs)

        with _blas_on_one_thread():
            for number in range(len(parts)):
                if number not in started:
                    results[number] = local(number)
            for number, helper in started.items():
                answer = self._collect(helper, helper.collect_backward)
                if answer is None:
                    results[number] = local(number)
                else:
                    grads, dx = answer
                    results[number] = (None if dx is None else _to_internal(dx), self._grads_by_layer(grads, self.layers), [])
        self._store_grads([grads for _, grads, _ in results])
        if keep_outputs:
            self.output_grads = [None if g is None else _to_public(g) for g in results[0][2]]
        else:
            self.output_grads = []
        if not need_input_grad:
            return None
        dx = [_to_public(grad) for grad, _, _ in results]
        return dx[0] if len(dx) == 1 else np.concatenate(dx, axis=0)

    def _store_grads(self, part_grads):
        """model.grads = the sum over parts (in part order) of each part's per-layer grads."""
        for index in range(len(self.layers)):
            for part_name in self.layers[index].param_shapes():
                name = f"{index}.{part_name}"
                total = part_grads[0][index][part_name]
                for grads in part_grads[1:]:
                    total = total + grads[index][part_name]
                self.grads[name] = total.astype(self.params[name].dtype, copy=False)

    @staticmethod
    def _grads_by_layer(grads, layers):
        """{"3.weight": array, ...} -> per-layer [{"weight": array, ...}, ...]."""
        per_layer = [{} for _ in layers]
        for name, value in grads.items():
            index, part_name = name.split(".", 1)
            per_layer[int(index)][part_name] = value
        return per_layer

    # -- a whole training pass ---------------------------------------------------------

    def _train_part(self, x, labels, total, layer_params):
        out, caches, _ = self._forward_part(_to_internal(x), layer_params, False)
        logits = _to_public(out)
        loss_sum, dlogits = softmax_cross_entropy_sum(logits, labels, total)
        _, grads, _ = self._backward_part(_to_internal(dlogits), caches, layer_params, False, False)
        return logits, loss_sum, grads

    def train_part(self, x, labels, total):
        """train_gradients for a part of a batch of `total` examples, all computed here: fills
        model.grads with this part's share; returns (logits, summed loss of the part)."""
        x = self._check_input(x)
        labels = check_labels(labels, x.shape[0], self.output_shapes[-1][0])
        with _blas_on_one_thread():
            logits, loss_sum, grads = self._train_part(x, labels, total, self._layer_params(x.dtype))
        self._store_grads([grads])
        return logits, loss_sum

    def train_gradients(self, x, labels):
        """One training pass: forward, mean softmax cross-entropy against integer labels, and
        backward without the input gradient. Each part of the batch runs start to finish on
        its own core (one exchange with a partner instead of two). Fills model.grads, exactly
        as forward + engine.softmax_cross_entropy + backward(need_input_grad=False) would
        (the loss may differ in its last bit: it is summed part by part); returns (loss, logits)."""
        x = self._check_input(x)
        if len(self.output_shapes[-1]) != 1:
            raise ValueError("train_gradients needs a model whose output is (N, classes)")
        batch = x.shape[0]
        labels = check_labels(labels, batch, self.output_shapes[-1][0])
        layer_params = self._layer_params(x.dtype)
        parts = self._parts(batch)
        started = self._start(self._partner_parts(parts), lambda number, helper: helper.send_train(
            self._partner_key(), self.spec, self.params, x[parts[number]], labels[parts[number]],
            self._logits_shape(parts[number]), batch))
        results = [None] * len(parts)
        with _blas_on_one_thread():
            for number, part in enumerate(parts):
                if number not in started:
                    results[number] = self._train_part(x[part], labels[part], batch, layer_params)
            for number, helper in started.items():
                answer = self._collect(helper, helper.collect_train)
                if answer is None:  # the partner failed: this part is computed here
                    part = parts[number]
                    results[number] = self._train_part(x[part], labels[part], batch, layer_params)
                else:
                    logits, loss_sum, grads = answer
                    results[number] = (logits, loss_sum, self._grads_by_layer(grads, self.layers))
        self._store_grads([grads for _, _, grads in results])
        self._pending = None
        self.outputs, self.output_grads = [], []
        loss = sum(loss_sum for _, loss_sum, _ in results) / batch
        logits = results[0][0] if len(results) == 1 else np.concatenate([logits for logits, _, _ in results], axis=0)
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
                raise ValueError(f"parameter {name!r} has shape {list(value.shape)}, model expects {list(self.params[name].shape)}")
        for name, value in state.items():
            np.copyto(self.params[name], np.asarray(value), casting="same_kind")

    def save_npz(self, path):
        """Write the parameters to an .npz keyed by state-dict name (loads into torch by name)."""
        np.savez(path, **self.state_dict())

    def load_npz(self, path):
        """Read parameters written by save_npz (or any .npz with the same names and shapes)."""
        with np.load(path) as data:
            self.load_state_dict({name: data[name] for name in data.files})
