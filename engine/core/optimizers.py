"""Optimizers: how gradients move the parameters. SGD (momentum, Nesterov) and Adam.

`backward` computes the gradients, the optimizer applies them: `opt.step(params, grads)`
updates the arrays in place and keeps its state (velocity, moments) per parameter name.
Weight decay is L2 added to the gradient (PyTorch's `weight_decay`). Freezing a parameter,
or chosen filters of it (rows along axis 0), keeps those values bit-identical: no step, no
decay, no momentum. Updates follow PyTorch's formulas, so both move the same way.
"""

import math

import numpy as np

from engine.core import names


def _number(config, key, minimum=None, exclusive=False, maximum=None):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"optimizer.{key} must be a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (exclusive and value == minimum)):
        relation = ">" if exclusive else ">="
        raise ValueError(f"optimizer.{key} must be {relation} {minimum}, got {value!r}")
    if maximum is not None and value >= maximum:
        raise ValueError(f"optimizer.{key} must be < {maximum}, got {value!r}")
    return float(value)


class Optimizer:
    """Base: learning rate, weight decay, frozen parameters/filters and per-name state."""

    name = ""
    defaults: dict[str, float] = {}

    def __init__(self, **config):
        config = {**self.defaults, **config}
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"optimizer.{unknown[0]}: unknown field for {self.name}; valid fields: {', '.join(self.defaults)}"
                if str(unknown[0]).isidentifier()
                else f"optimizer: unknown field {unknown[0]!r} for {self.name}; valid fields: {', '.join(self.defaults)}"
            )
        self.lr = _number(config, "lr", 0.0, exclusive=True)
        self.weight_decay = _number(config, "weight_decay", 0.0)
        self.frozen = {}  # name -> None (whole parameter) or sorted list of filter indices
        self.state = {}  # name -> {slot: array}
        self.steps = 0

    def config(self):
        """The optimizer's settings as a dict make_optimizer accepts."""
        raise NotImplementedError

    # -- freezing --------------------------------------------------------------------

    def freeze(self, name, filters=None):
        """Keep parameter `name` (or only these filters / rows of it) fixed from now on."""
        if filters is None:
            self.frozen[name] = None
            return
        current = self.frozen.get(name, [])
        if current is None:
            return
        self.frozen[name] = sorted(set(current) | {int(f) for f in filters})

    def unfreeze(self, name, filters=None):
        """Let parameter `name` (or only these filters of it) train again."""
        if name not in self.frozen:
            return
        if filters is None or self.frozen[name] is None:
            del self.frozen[name]
            return
        remaining = sorted(set(self.frozen[name]) - {int(f) for f in filters})
        if remaining:
            self.frozen[name] = remaining
        else:
            del self.frozen[name]

    def is_frozen(self, name):
        return name in self.frozen and self.frozen[name] is None

    # -- the step --------------------------------------------------------------------

    def step(self, params, grads):
        """Update every parameter of `params` that has a gradient in `grads`, in place."""
        self.steps += 1
        for name, param in params.items():
            if name not in grads or self.is_frozen(name):
                continue
            grad = grads[name]
            if grad.shape != param.shape:
                raise ValueError(f"gradient for {name} has shape {grad.shape}, parameter has {param.shape}")
            rows = self.frozen.get(name)
            kept = param[rows].copy() if rows else None
            if self.weight_decay:
                grad = grad + param.dtype.type(self.weight_decay) * param
            self._update(name, param, grad.astype(param.dtype, copy=False))
            if rows:
                param[rows] = kept
                for slot in self.state.get(name, {}).values():
                    if slot.shape == param.shape:
                        slot[rows] = 0

    def _update(self, name, param, grad):
        raise NotImplementedError

    def _slot(self, name, slot, like):
        slots = self.state.setdefault(name, {})
        if slot not in slots or slots[slot].shape != like.shape or slots[slot].dtype != like.dtype:
            slots[slot] = np.zeros_like(like)
        return slots[slot]

    # -- persistence -----------------------------------------------------------------

    def state_dict(self):
        """Flat {key: array}: "steps", "<slot>/<param name>" for state, "frozen/<name>" (-1 = all)."""
        out = {"steps": np.array(self.steps, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                out[f"{slot}/{name}"] = value.copy()
        for name, rows in self.frozen.items():
            out[f"frozen/{name}"] = np.array([-1] if rows is None else rows, dtype=np.int64)
        return out

    def load_state_dict(self, state):
        """Restore what state_dict returned (the settings come from the config)."""
        self.steps = int(np.asarray(state["steps"]))
        self.state = {}
        self.frozen = {}
        for key, value in state.items():
            if key == "steps":
                continue
            slot, _, name = key.partition("/")
            if not name:
                raise ValueError(f"optimizer state key {key!r} is not '<slot>/<name>'")
            if slot == "frozen":
                rows = [int(v) for v in np.asarray(value).ravel()]
                self.frozen[name] = None if rows == [-1] else rows
            else:
                self.state.setdefault(name, {})[slot] = np.array(value)


class SGD(Optimizer):
    """Stochastic gradient descent; momentum v = μv + g, step -lr·v (Nesterov: -lr·(g + μv))."""

    name = "sgd"
    defaults = {"lr": 0.05, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}

    def __init__(self, **config):
        super().__init__(**config)
        merged = {**self.defaults, **config}
        self.momentum = _number(merged, "momentum", 0.0, maximum=1.0)
        if not isinstance(merged["nesterov"], bool):
            raise ValueError(f"optimizer.nesterov must be true or false, got {merged['nesterov']!r}")
        self.nesterov = merged["nesterov"]
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")

    def config(self):
        return {
            "name": self.name,
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, param, grad):
        lr = param.dtype.type(self.lr)
        if not self.momentum:
            param -= lr * grad
            return
        momentum = param.dtype.type(self.momentum)
        slots = self.state.setdefault(name, {})
        if "velocity" not in slots:
            velocity = slots["velocity"] = grad.copy()  # PyTorch starts the buffer at the first gradient
        else:
            velocity = slots["velocity"]
            velocity *= momentum
            velocity += grad
        if self.nesterov:
            param -= lr * (grad + momentum * velocity)
        else:
            param -= lr * velocity


class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015): bias-corrected first/second moments, PyTorch's formula."""

    name = "adam"
    defaults = {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

    def __init__(self, **config):
        super().__init__(**config)
        merged = {**self.defaults, **config}
        self.beta1 = _number(merged, "beta1", 0.0, maximum=1.0)
        self.beta2 = _number(merged, "beta2", 0.0, maximum=1.0)
        self.eps = _number(merged, "eps", 0.0, exclusive=True)

    def config(self):
        return {
            "name": self.name,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, param, grad):
        first = self._slot(name, "m", param)
        second = self._slot(name, "v", param)
        count = self._slot(name, "t", np.zeros(1, dtype=np.float64))
        count += 1
        t = float(count[0])
        dtype = param.dtype.type
        first *= dtype(self.beta1)
        first += dtype(1 - self.beta1) * grad
        second *= dtype(self.beta2)
        second += dtype(1 - self.beta2) * grad * grad
        step_size = self.lr / (1 - self.beta1**t)
        denominator = np.sqrt(second) / dtype(math.sqrt(1 - self.beta2**t))
        denominator += dtype(self.eps)
        param -= dtype(step_size) * first / denominator


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(config):
    """Build an optimizer from {"name": "sgd" | "adam", ...}; ValueError names a bad field."""
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, dict):
        raise ValueError(f"optimizer must be a name or an object, got {config!r}")
    name = config.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name: {names.unknown('optimizer', name, OPTIMIZERS)}")
    return OPTIMIZERS[name](**{key: value for key, value in config.items() if key != "name"})
