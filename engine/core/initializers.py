"""Initializers: how weights start. One registry of pure functions (shape, rng, **params).

Each entry knows its law as text, the paper it comes from, its default parameters, and can
describe what it does for a given shape ("He normal: N(0, 2/fan_in); fan_in = 1·5·5 = 25
→ σ = 0.283"). fan_in = in_channels·kh·kw and fan_out = out_channels·kh·kw for conv
weights (out, in, kh, kw); in/out features for dense weights (out, in).

An init is given as a name ("he_normal") or a dict ({"name": "normal", "std": 0.02}).
The hand-made `kernel` init places named kernels (NAMED_KERNELS, from engine.core.kernels:
x, plus, sobel_x, ...) or explicit numbers in the first filters and fills the rest with a
fallback initializer. Each law gives its σ or its bound once (`Initializer.spread`); the draw
and the worked figures of `describe` both come from it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.core import names
from engine.core.kernels import PATTERNS, named_kernel


def fans(shape):
    """(fan_in, fan_out) of a weight shape: conv (out, in, kh, kw), dense (out, in), bias (n,)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[1], shape[0]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def _fan_text(shape, which):
    """'1·5·5 = 25' for the fan_in of (8, 1, 5, 5); '120 = 120' style is shortened to '120'."""
    shape = tuple(int(s) for s in shape)
    fan_in, fan_out = fans(shape)
    value = fan_in if which == "in" else fan_out
    if len(shape) >= 3:
        lead = shape[1] if which == "in" else shape[0]
        factors = "·".join(str(s) for s in (lead, *shape[2:]))
        return f"{factors} = {value}"
    return str(value)


# ----------------------------------------------------------------------------------------
# The laws. A Gaussian law gives its σ, a uniform law its bound a (for U(-a, a)), once, as a
# function of the shape; the registry draws from it and derives the other figure.
# ----------------------------------------------------------------------------------------


def normal(shape, std=0.01):
    """N(0, std²), default std 0.01: the small Gaussian of early CNNs (Krizhevsky et al., 2012)."""
    return float(std)


def uniform(shape, a=0.05):
    """U(-a, a), default a = 0.05: a small uniform start."""
    return float(a)


def glorot_uniform(shape, gain=1.0):
    """U(±gain·√(6/(fan_in+fan_out))). Glorot & Bengio, "Understanding the difficulty of
    training deep feedforward neural networks", AISTATS 2010."""
    fan_in, fan_out = fans(shape)
    return float(gain) * math.sqrt(6.0 / (fan_in + fan_out))


def glorot_normal(shape, gain=1.0):
    """N(0, gain²·2/(fan_in+fan_out)), not truncated. Glorot & Bengio, AISTATS 2010."""
    fan_in, fan_out = fans(shape)
    return float(gain) * math.sqrt(2.0 / (fan_in + fan_out))


def he_normal(shape):
    """N(0, 2/fan_in), not truncated. He et al., "Delving Deep into Rectifiers: Surpassing
    Human-Level Performance on ImageNet Classification", ICCV 2015."""
    return math.sqrt(2.0 / fans(shape)[0])


def he_uniform(shape):
    """U(±√(6/fan_in)). He et al., ICCV 2015."""
    return math.sqrt(6.0 / fans(shape)[0])


def lecun_normal(shape):
    """N(0, 1/fan_in). LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998."""
    return math.sqrt(1.0 / fans(shape)[0])


def _gaussian_draw(law):
    return lambda shape, rng, **params: rng.standard_normal(shape) * law(shape, **params)


def _uniform_draw(law):
    def draw(shape, rng, **params):
        bound = law(shape, **params)
        return rng.uniform(-bound, bound, size=shape)

    return draw


def zeros(shape, rng):
    """All weights 0. Every filter is the same, so gradient descent can never tell them apart."""
    return np.zeros(shape)


def constant(shape, rng, value=0.1):
    """All weights equal to `value` (default 0.1): symmetric like zeros, but signals flow."""
    return np.full(shape, float(value))


def _orthogonal_matrix(shape):
    """(rows, cols) of the weight flattened to (out, fan_in); a vector counts as one row."""
    return (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, int(shape[0]))


def orthogonal(shape, rng, gain=1.0):
    """gain · orthonormal rows (or columns) of the weight flattened to (out, fan_in).
    Saxe, McClelland & Ganguli, "Exact solutions to the nonlinear dynamics of learning in
    deep linear neural networks", ICLR 2014."""
    shape = tuple(shape)
    if len(shape) < 2:
        return rng.standard_normal(shape) * float(gain)
    rows, cols = _orthogonal_matrix(shape)
    sample = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(sample)
    q = q * np.sign(np.diag(r))  # makes the result uniformly distributed over orthogonal matrices
    if rows < cols:
        q = q.T
    return (float(gain) * q[:rows, :cols]).reshape(shape)


def _orthogonal_spread(shape, gain=1.0):
    if len(shape) < 2:
        return float(gain), None
    rows, cols = _orthogonal_matrix(tuple(shape))
    return float(gain) * math.sqrt(min(rows, cols) / (rows * cols)), None


# ----------------------------------------------------------------------------------------
# Hand-made kernels (the patterns live in engine.core.kernels)
# ----------------------------------------------------------------------------------------

NAMED_KERNELS = PATTERNS


DEFAULT_KERNELS = ["x", "plus", "sobel_x", "sobel_y", "laplacian", "identity"]


def kernel(shape, rng, kernels=None, fallback="he_normal", scale=1.0):
    """Hand-made kernels (engineered filters, e.g. Sobel & Feldman, 1968).

    `kernels` is a list with one entry per filter, from filter 0 on: a name from
    NAMED_KERNELS (unit L2 norm over the whole filter, times `scale`) or explicit numbers,
    (kh, kw) to copy into every input channel or (in, kh, kw), used as given. A single name
    instead of a list puts that kernel in every filter. Filters beyond the list are drawn
    from `fallback` (default he_normal). On non-conv shapes the fallback is used throughout.
    Default kernels: x, plus, sobel_x, sobel_y, laplacian, identity.
    """
    shape = tuple(shape)
    fallback_values = initialize_values(fallback, shape, rng)
    if len(shape) != 4:
        return fallback_values
    out_channels, in_channels, h, w = shape
    if kernels is None:
        kernels = DEFAULT_KERNELS
    if isinstance(kernels, str):
        kernels = [kernels] * out_channels
    values = fallback_values
    for index, entry in enumerate(list(kernels)[:out_channels]):
        if isinstance(entry, str):
            pattern = named_kernel(entry, (h, w)) / math.sqrt(in_channels) * float(scale)
            values[index] = np.broadcast_to(pattern, (in_channels, h, w))
        else:
            numbers = np.asarray(entry, dtype=float)
            if numbers.shape == (h, w):
                numbers = np.broadcast_to(numbers, (in_channels, h, w))
            if numbers.shape != (in_channels, h, w):
                raise ValueError(
                    f"kernels[{index}] has shape {list(np.shape(entry))}; expected [{h}, {w}] or [{in_channels}, {h}, {w}]"
                )
            if not np.all(np.isfinite(numbers)):
                raise ValueError(f"kernels[{index}] contains a non-finite number")
            values[index] = numbers
    return values


def _validate_kernel_params(params):
    if parse_init(params.get("fallback", "he_normal"))[0] == "kernel":
        raise ValueError("fallback must be a random initializer, not kernel")
    kernels = params.get("kernels")
    if kernels is None:
        return
    entries = [kernels] if isinstance(kernels, str) else kernels
    if not isinstance(entries, (list, tuple)):
        raise ValueError("kernels must be a kernel name or a list of names / number grids")
    for index, entry in enumerate(entries):
        if isinstance(entry, str) and entry not in NAMED_KERNELS:
            raise ValueError(f"kernels[{index}]: {names.unknown('kernel', entry, NAMED_KERNELS)}")
        if not isinstance(entry, str):
            try:
                numbers = np.asarray(entry, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"kernels[{index}] must be a kernel name or a grid of numbers") from None
            if numbers.ndim not in (2, 3):
                raise ValueError(f"kernels[{index}] must be a 2-D or 3-D grid of numbers")


# ----------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Initializer:
    """One registry entry: how it draws, its spread, and what the API and page show about it.

    Build Gaussian and uniform laws with `gaussian(...)` / `uniform_law(...)`: their one
    function gives σ (or the bound a) and both the draw and the spread follow from it.
    """

    name: str
    function: object  # its docstring is the law's doc; the draw for the laws with their own
    draw: object
    spread_of: object  # (shape, **params) -> (std, bound)
    title: str
    law: str
    paper: str
    defaults: dict = field(default_factory=dict)
    aliases: tuple = ()

    def __call__(self, shape, rng, **params):
        return self.draw(shape, rng, **{**self.defaults, **params})

    def spread(self, shape, **params):
        """(std, bound) of the weights this law draws for shape; bound is None if unbounded,
        both None where the law has no single spread (hand-made kernels)."""
        return self.spread_of(tuple(shape), **{**self.defaults, **params})

    def describe(self, shape, **params):
        """What this law does for one weight shape, as numbers and one line of text."""
        params = {**self.defaults, **params}
        shape = tuple(int(s) for s in shape)
        fan_in, fan_out = fans(shape)
        std, bound = self.spread(shape, **params)
        law = self.law
        uses_in = "fan_in" in law
        uses_out = "fan_out" in law
        parts = []
        if uses_in:
            parts.append(f"fan_in = {_fan_text(shape, 'in')}")
        if uses_out:
            parts.append(f"fan_out = {_fan_text(shape, 'out')}")
        text = f"{self.title}: {law}"
        if parts:
            text += "; " + ", ".join(parts)
        if self.name == "constant":
            text += f" → every weight = {float(params['value']):.3g}"
        elif self.name == "kernel":
            kernels = params.get("kernels") or DEFAULT_KERNELS
            names = [kernels] if isinstance(kernels, str) else [k if isinstance(k, str) else "custom" for k in kernels]
            text += f" → filters start as {', '.join(names)}; the rest from {parse_init(params['fallback'])[0]}"
        elif bound is not None and self.name != "zeros":
            text += f" → bound = {bound:.3g}, σ = {std:.3g}"
        elif std is not None and self.name != "zeros":
            text += f" → σ = {std:.3g}"
        return {
            "name": self.name,
            "law": law,
            "fan_in": fan_in,
            "fan_out": fan_out,
            "std": None if std is None else round(std, 6),
            "bound": None if bound is None else round(bound, 6),
            "text": text,
        }

    def to_dict(self):
        """JSON-able summary for GET /api/inits."""
        return {
            "name": self.name,
            "title": self.title,
            "law": self.law,
            "paper": self.paper,
            "params": dict(self.defaults),
            "aliases": list(self.aliases),
            "doc": (self.function.__doc__ or "").strip(),
        }


def gaussian(name, law, *about, **extra):
    """A registry entry for N(0, σ²) with σ = law(shape, **params)."""
    return Initializer(name, law, _gaussian_draw(law), lambda shape, **p: (law(shape, **p), None), *about, **extra)


def uniform_law(name, law, *about, **extra):
    """A registry entry for U(-a, a) with a = law(shape, **params); σ = a/√3."""

    def spread(shape, **params):
        bound = law(shape, **params)
        return bound / math.sqrt(3), bound

    return Initializer(name, law, _uniform_draw(law), spread, *about, **extra)


def _entry(
    name: str, function: Callable[..., Any], spread: Callable[..., Any], *about: Any, **extra: Any
) -> Initializer:
    return Initializer(name, function, function, spread, *about, **extra)


_ENTRIES = [
    _entry("zeros", zeros, lambda shape: (0.0, 0.0), "Zeros", "0", "—"),
    _entry(
        "constant", constant, lambda shape, value: (0.0, abs(float(value))), "Constant", "value", "—", {"value": 0.1}
    ),
    gaussian(
        "normal", normal, "Small Gaussian", "N(0, std²)", "Krizhevsky, Sutskever & Hinton, NeurIPS 2012", {"std": 0.01}
    ),
    uniform_law("uniform", uniform, "Small uniform", "U(-a, a)", "—", {"a": 0.05}),
    uniform_law(
        "glorot_uniform",
        glorot_uniform,
        "Glorot/Xavier uniform",
        "U(±√(6/(fan_in+fan_out)))",
        "Glorot & Bengio, AISTATS 2010",
        {"gain": 1.0},
        ("xavier_uniform",),
    ),
    gaussian(
        "glorot_normal",
        glorot_normal,
        "Glorot/Xavier normal",
        "N(0, 2/(fan_in+fan_out))",
        "Glorot & Bengio, AISTATS 2010",
        {"gain": 1.0},
        ("xavier_normal",),
    ),
    gaussian("he_normal", he_normal, "He normal", "N(0, 2/fan_in)", "He et al., ICCV 2015", {}, ("kaiming_normal",)),
    uniform_law(
        "he_uniform", he_uniform, "He uniform", "U(±√(6/fan_in))", "He et al., ICCV 2015", {}, ("kaiming_uniform",)
    ),
    gaussian(
        "lecun_normal",
        lecun_normal,
        "LeCun normal",
        "N(0, 1/fan_in)",
        "LeCun, Bottou, Orr & Müller, Efficient BackProp, 1998",
    ),
    _entry(
        "orthogonal",
        orthogonal,
        _orthogonal_spread,
        "Orthogonal",
        "gain · orthonormal rows of the (out, fan_in) matrix",
        "Saxe, McClelland & Ganguli, ICLR 2014",
        {"gain": 1.0},
    ),
    _entry(
        "kernel",
        kernel,
        lambda shape, **params: (None, None),
        "Hand-made kernels",
        "named or given kernels in the first filters, the rest from the fallback",
        "engineered filters, e.g. Sobel & Feldman, 1968",
        {"kernels": None, "fallback": "he_normal", "scale": 1.0},
    ),
]

INITIALIZERS: dict[str, Initializer] = {}
for _initializer in _ENTRIES:  # not `_entry`, which would shadow the builder above
    INITIALIZERS[_initializer.name] = _initializer
    for _alias in _initializer.aliases:
        INITIALIZERS[_alias] = _initializer

CANONICAL_NAMES = [entry.name for entry in _ENTRIES]


def parse_init(init):
    """Validate an init given as a name or {"name": ..., **params}: returns (canonical name, params).

    Unknown names raise ValueError listing the valid names; unknown or bad params name the param.
    """
    if isinstance(init, str):
        name, params = init, {}
    elif isinstance(init, dict):
        if "name" not in init:
            raise ValueError(f"init needs a 'name'; valid names: {', '.join(sorted(INITIALIZERS))}")
        name = init["name"]
        params = {key: value for key, value in init.items() if key != "name"}
    else:
        raise ValueError(f"init must be a name or {{'name': ..., ...}}, got {init!r}")
    if name not in INITIALIZERS:
        raise ValueError(names.unknown("init", name, sorted(INITIALIZERS)))
    entry = INITIALIZERS[name]
    for key, value in params.items():
        if key not in entry.defaults:
            valid = ", ".join(entry.defaults) or "none"
            raise ValueError(f"init {entry.name}: unknown param {key!r}; valid params: {valid}")
        if key in ("value", "std", "a", "gain", "scale"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"init {entry.name}: param {key!r} must be a finite number, got {value!r}")
            if key in ("std", "a") and value < 0:
                raise ValueError(f"init {entry.name}: param {key!r} must be >= 0, got {value!r}")
    if entry.name == "kernel":
        _validate_kernel_params(params)
    return entry.name, params


def initialize_values(init, shape, rng):
    """Draw float64 values of `shape` from an init (name or dict) with the generator rng."""
    name, params = parse_init(init)
    return np.asarray(INITIALIZERS[name](tuple(shape), rng, **params), dtype=np.float64)


def initialize(init, shape, rng, dtype=np.float32):
    """Draw an array of `shape` from an init (name or dict); values are drawn in float64."""
    return initialize_values(init, shape, rng).astype(dtype)


def describe(init, shape):
    """Describe an init (name or dict) for one weight shape; see Initializer.describe."""
    name, params = parse_init(init)
    return INITIALIZERS[name].describe(shape, **params)
