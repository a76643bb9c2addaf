"""The fast model: the core Model's maths on the engine's internal (C, N, H, W) layout, with
conv blocks (engine.fast.planner) and the batch split across cores.

A large batch is split into `threads` fixed parts: the first is computed here, the others by
partner processes (engine.fast.partner), each with BLAS on one thread. The split depends only
on the batch size and `threads`, and every part runs the same code wherever it runs, so
results are bit-identical from run to run. Against the core model (engine.core.model) the
results agree to rounding: the products are cut and summed in another order (see
tests/engine/test_fast_vs_core.py for the promised tolerances).
"""

import time
import weakref

import numpy as np

from engine.core import model as core
from engine.core.losses import check_labels, softmax_cross_entropy_sum
from engine.fast import partner
from engine.fast.adaptive import SPLIT, SplitChooser, forced_mode, no_core_spare_for_split
from engine.fast.layers import fast_layer
from engine.fast.memory import blas_on_one_thread, keep_freed_memory
from engine.fast.planner import plan_blocks

# A batch is split across processes only when each part gets at least this many examples.
MIN_EXAMPLES_PER_THREAD = 8
# What a failed or dead partner raises while it is asked or answered: its part is then computed here.
PARTNER_ERRORS = (OSError, EOFError, RuntimeError, ValueError)


def build_model(spec, init="he_normal", seed=0, dtype=np.float32, threads=2):
    """The fast Model for a spec: the same weights as engine.core.model.build_model."""
    normalised, layers, params = core.initial_params(spec, init, seed, dtype)
    keep_freed_memory()
    return Model(normalised, layers, params, threads=threads)


def _to_internal(x):
    """Public (N, C, H, W) -> internal (C, N, H, W); (N, F) stays as it is."""
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)) if x.ndim == 4 else x


def _to_public(x):
    """Internal (C, N, H, W) -> public (N, C, H, W) view; (N, F) stays as it is."""
    return x.transpose(1, 0, 2, 3) if x.ndim == 4 else x


class Model(core.Model):
    """The core Model's public API (docs/ARCHITECTURE.md, Model API), computed by the fast
    kernels and blocks on the internal layout, a batch split across `threads` cores."""

    def __init__(self, spec, layers, params, threads=2):
        super().__init__(spec, layers, params)
        self.threads = max(1, int(threads))
        self._key = None
        self.ops = [fast_layer(layer) for layer in layers]  # the layer-by-layer path
        self.steps = plan_blocks(layers)  # what a pass without keep_outputs runs (conv blocks)
        # partners or not, by measurement, probed only while a core is spare
        self.split_chooser = SplitChooser(forced=forced_mode(), busy=no_core_spare_for_split)

    # -- the split of a batch across cores ----------------------------------------------

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

    def _partner_parts(self, parts, mode):
        """{part number: partner} for parts[1:], as far as there are working partners; none
        when `mode` (engine.fast.adaptive) is not SPLIT: every part is then computed here."""
        if mode != SPLIT or len(parts) < 2:
            return {}
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
            for op, params in zip(self.ops, layer_params):
                x, cache = op.forward(x, params)
                caches.append(cache)
                outputs.append(x)
            return x, caches, outputs
        for first, _, block in self.steps:
            params = layer_params[first]
            if block is None:
                x, cache = self.ops[first].forward(x, params)
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
        remote = self._start(
            self._partner_parts(parts, self.split_chooser.current()),
            lambda number, helper: helper.send_forward(
                self._partner_key(), self.spec, self.params, x[parts[number]], self._logits_shape(parts[number])
            ),
        )
        results = [None] * len(parts)
        with blas_on_one_thread():
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
                grad, grads[first] = self.ops[first].backward(grad, cache, layer_params[first], needs_dx)
            else:
                grad, dweight, dbias = block.backward(grad, cache, layer_params[first]["weight"], needs_dx)
                grads[first] = {"weight": dweight, "bias": dbias}
            if not needs_dx:
                break
        return grad, grads, output_grads

    def backward(self, dlogits, need_input_grad=True):
        """Back-propagate dlogits (the loss gradient w.r.t. the last forward's output).

        Fills model.grads (by state-dict name) and returns the gradient w.r.t. the input
        (NCHW), or None with need_input_grad=False (which skips that work).
        """
        if self._pending is None:
            raise RuntimeError("backward needs a forward first")
        x, parts, remote, caches, layer_params, keep_outputs = self._pending
        dlogits = self._check_dlogits(dlogits, parts[-1].stop)
        started = self._start(
            remote,
            lambda number, helper: helper.send_backward(self._partner_key(), dlogits[parts[number]], need_input_grad),
        )
        results = [None] * len(parts)

        def local(number):
            part_caches = caches[number]
            if part_caches is None:  # computed by a partner that has failed since: redo it here
                part_caches = self._forward_part(_to_internal(x[parts[number]]), layer_params, False)[1]
            grad = _to_internal(dlogits[parts[number]])
            return self._backward_part(grad, part_caches, layer_params, need_input_grad, keep_outputs)

        with blas_on_one_thread():
            for number in range(len(parts)):
                if number not in started:
                    results[number] = local(number)
            for number, helper in started.items():
                answer = self._collect(helper, helper.collect_backward)
                if answer is None:
                    results[number] = local(number)
                else:
                    grads, dx = answer
                    results[number] = (
                        None if dx is None else _to_internal(dx),
                        self._grads_by_layer(grads, self.layers),
                        [],
                    )
        self._store_part_grads([grads for _, grads, _ in results])
        if keep_outputs:
            self.output_grads = [None if g is None else _to_public(g) for g in results[0][2]]
        else:
            self.output_grads = []
        if not need_input_grad:
            return None
        dx = [_to_public(grad) for grad, _, _ in results]
        return dx[0] if len(dx) == 1 else np.concatenate(dx, axis=0)

    def _store_part_grads(self, part_grads):
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
        with blas_on_one_thread():
            logits, loss_sum, grads = self._train_part(x, labels, total, self._layer_params(x.dtype))
        self._store_part_grads([grads])
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
        mode = self.split_chooser.mode() if len(parts) > 1 else None
        began = time.perf_counter()
        started = self._start(
            self._partner_parts(parts, mode),
            lambda number, helper: helper.send_train(
                self._partner_key(),
                self.spec,
                self.params,
                x[parts[number]],
                labels[parts[number]],
                self._logits_shape(parts[number]),
                batch,
            ),
        )
        results = [None] * len(parts)
        with blas_on_one_thread():
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
        self._store_part_grads([grads for _, _, grads in results])
        if mode is not None:
            self.split_chooser.record(mode, time.perf_counter() - began)
        self._pending = None
        self.outputs, self.output_grads = [], []
        loss = sum(loss_sum for _, loss_sum, _ in results) / batch
        logits = results[0][0] if len(results) == 1 else np.concatenate([logits for logits, _, _ in results], axis=0)
        return loss, logits
