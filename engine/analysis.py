"""Filter analysis: what a learner should see in raw kernels.

Each conv filter is matched against a bank of canonical detectors (oriented
edges and lines, X, plus, centre-surround blob) built at the filter's own size,
scored by |cosine similarity| after removing means. A score means something
only against chance, so every match carries the 99th percentile of the best
score reached by random Gaussian kernels of that size. Not every filter is a
detector: a dead filter (tiny next to its layer, or never active on the probe
images) and a brightness filter (most of its energy in its mean) get those
labels instead, and never count as beating chance. A filter is "born" at the
first snapshot from which its score stays above chance (`birth_step`). Also
here: the symmetry meter (mean pairwise cosine of a layer's filters), per-layer
activation and gradient statistics on a batch, and conv feature maps for probe
images.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from engine.core import kernels
from engine.core.losses import softmax_cross_entropy

CHANCE_PERCENTILE = 99.0
CHANCE_SAMPLES = 20000
CHANCE_SEED = 12345
FLAT_LABEL = "flat"
DEAD_LABEL = "dead"
BRIGHTNESS_LABEL = "brightness"
# A filter whose weight norm is below this fraction of its layer's median filter norm is dead.
DEAD_NORM_FRACTION = 0.05
# A filter with more than this share of its energy (sum of squares) in its mean is a brightness filter.
BRIGHTNESS_MEAN_SHARE = 0.5
# Snapshots in a row a score must stay above chance for the filter to count as born.
BIRTH_PERSIST = 3


# --------------------------------------------------------------------------
# template bank


def template_bank(kh: int, kw: int | None = None) -> dict[str, np.ndarray]:
    """Canonical detectors at size kh×kw, each mean-removed and unit-norm: the DETECTORS
    patterns of engine.core.kernels (the one home of named kernels; see there for the
    orientation names). A 1×1 kernel has no spatial pattern, so its bank is empty.
    """
    kw = kh if kw is None else kw
    bank = {name: kernels.detector(name, kh, kw) for name in kernels.DETECTORS}
    return {name: template for name, template in bank.items() if template is not None}


@cache
def _bank_matrix(kh: int, kw: int) -> tuple[tuple[str, ...], np.ndarray]:
    bank = template_bank(kh, kw)
    names = tuple(bank)
    matrix = np.stack([bank[n].ravel() for n in names], axis=1) if names else np.zeros((kh * kw, 0))
    return names, matrix


def best_matches(kernels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Best template label and |cos| score for each 2-d kernel in (N, kh, kw).

    A kernel with no spatial variation (all equal, e.g. zeros or a constant)
    gets the label "flat" and score 0.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    n, kh, kw = kernels.shape
    names, matrix = _bank_matrix(kh, kw)
    flat = kernels.reshape(n, kh * kw)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    scale = np.abs(flat).max(axis=1) if flat.size else np.zeros(n)
    is_flat = (norms <= 1e-7 * np.maximum(scale, 1e-30)) | (norms == 0)
    if not names:
        return [FLAT_LABEL] * n, np.zeros(n)
    scores = np.abs(centred @ matrix) / np.where(is_flat, 1.0, norms)[:, None]
    best = scores.argmax(axis=1)
    labels = [FLAT_LABEL if is_flat[i] else names[best[i]] for i in range(n)]
    best_scores = np.where(is_flat, 0.0, scores[np.arange(n), best])
    return labels, best_scores


@cache
def chance_scores(kh: int, kw: int) -> np.ndarray:
    """Sorted best-match scores of random Gaussian kernels of size kh×kw (cached per size)."""
    rng = np.random.default_rng(CHANCE_SEED)
    _, scores = best_matches(rng.standard_normal((CHANCE_SAMPLES, kh, kw)))
    scores.sort()
    scores.setflags(write=False)
    return scores


def chance_level(kh: int, kw: int | None = None) -> float:
    """The score that 99% of random Gaussian kernels of this size stay below."""
    return _chance_level(kh, kh if kw is None else kw)


@cache
def _chance_level(kh: int, kw: int) -> float:
    # every snapshot asks once per conv layer; the percentile of 20,000 scores was most of a label's time
    return float(np.percentile(chance_scores(kh, kw), CHANCE_PERCENTILE))


def score_percentile(score: float, kh: int, kw: int | None = None) -> float:
    """Percentage of random kernels of this size whose best score is below `score`."""
    kw = kh if kw is None else kw
    scores = chance_scores(kh, kw)
    return float(100.0 * np.searchsorted(scores, score, side="left") / len(scores))


def spatial_kernels(weight: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) -> (out, kh, kw): each filter summed over its input channels.

    That is the filter's response pattern to an input that is the same in every
    channel (a gray image for RGB). A sum of Gaussian slices is Gaussian, so the
    chance level for random kernels of the size holds unchanged.
    """
    weight = np.asarray(weight, dtype=np.float64)
    return weight.sum(axis=1)


def mean_share(kernels: np.ndarray) -> np.ndarray:
    """Share of each 2-d kernel's energy (sum of squares) held by its mean: n·mean² / Σk².

    1.0 for a uniform kernel, 0.0 for a zero-mean one (every edge, line, X
    template), about 1/n for a random Gaussian kernel of n weights; 0.0 for
    an all-zero kernel.
    """
    flat = np.asarray(kernels, dtype=np.float64).reshape(len(kernels), -1)
    energy = np.sum(flat * flat, axis=1)
    mean_energy = flat.shape[1] * flat.mean(axis=1) ** 2
    return np.where(energy > 0, mean_energy / np.where(energy > 0, energy, 1.0), 0.0)


def dead_filters(weight: np.ndarray, probe_maps: np.ndarray | None = None) -> np.ndarray:
    """Boolean per filter: dead when its weight norm is below DEAD_NORM_FRACTION of the
    layer's median filter norm, or (given the layer's probe feature maps (P, out, H, W),
    i.e. the conv outputs with bias) when it is never positive on any probe image, so a
    following ReLU never lets it through. A layer whose median norm is 0 (all-zero init)
    has no reference, so no filter is dead by norm there.
    """
    weight = np.asarray(weight, dtype=np.float64)
    norms = np.linalg.norm(weight.reshape(len(weight), -1), axis=1)
    median = float(np.median(norms)) if len(norms) else 0.0
    dead = norms < DEAD_NORM_FRACTION * median
    if probe_maps is not None:
        maps = np.asarray(probe_maps)
        if maps.ndim != 4 or maps.shape[1] != len(weight):
            raise ValueError(f"probe_maps: expected shape (P, {len(weight)}, H, W), got {list(maps.shape)}")
        dead |= ~np.any(maps > 0, axis=(0, 2, 3))
    return dead


def detectors(weight: np.ndarray, probe_maps: np.ndarray | None = None) -> list[dict]:
    """Per filter: best canonical detector, score, chance level, percentile, beats_chance,
    mean_share and dead.

    A dead filter (see `dead_filters`) is labelled "dead", a filter with more
    than BRIGHTNESS_MEAN_SHARE of its energy in its mean "brightness" (it mostly
    measures local brightness; its pattern score, taken after removing the
    mean, would call a nearly uniform filter a `blob`). Neither has a detector
    score (0.0) and neither beats chance. A kernel with no spatial variation and
    no mean (all zero in a layer of zeros) stays "flat".
    """
    kernels = spatial_kernels(weight)
    kh, kw = kernels.shape[1:]
    labels, scores = best_matches(kernels)
    shares = mean_share(kernels)
    dead = dead_filters(weight, probe_maps)
    chance = chance_level(kh, kw)
    result = []
    for index, (label, score) in enumerate(zip(labels, scores)):
        score = float(score)
        if dead[index]:
            label, score = DEAD_LABEL, 0.0
        elif shares[index] > BRIGHTNESS_MEAN_SHARE:
            label, score = BRIGHTNESS_LABEL, 0.0
        result.append(
            {
                "filter": index,
                "label": label,
                "score": round(score, 4),
                "chance": round(chance, 4),
                "percentile": round(score_percentile(score, kh, kw), 2),
                "beats_chance": bool(score > chance),
                "mean_share": round(float(shares[index]), 4),
                "dead": bool(dead[index]),
            }
        )
    return result


def birth_step(steps, scores, chance, persist: int = BIRTH_PERSIST) -> int | None:
    """The step at which a filter is born: the first of `persist` consecutive snapshots
    whose detector score is above chance (`chance` one number, or one per snapshot).

    `steps` and `scores` run in snapshot order; a missing score (None or NaN, e.g. a
    dead or brightness snapshot) is not above chance. None when no such run of
    snapshots exists (including a run above chance cut short by the end of the series).
    """
    steps = list(steps)
    values = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    if len(values) != len(steps):
        raise ValueError(f"scores: {len(values)} scores for {len(steps)} steps")
    if isinstance(persist, bool) or not isinstance(persist, (int, np.integer)) or persist < 1:
        raise ValueError(f"persist: must be an integer >= 1, got {persist!r}")
    levels = np.broadcast_to(np.asarray(chance, dtype=np.float64), values.shape)
    above = np.nan_to_num(values, nan=-np.inf) > levels
    run = 0
    for index, is_above in enumerate(above):
        run = run + 1 if is_above else 0
        if run == persist:
            return steps[index - persist + 1]
    return None


# --------------------------------------------------------------------------
# symmetry meter and weight summaries


def symmetry(weight: np.ndarray) -> float | None:
    """Mean pairwise cosine similarity between a layer's filters (whole filters, signed).

    1.0 means every filter is the same direction: the init never broke
    symmetry. Two all-zero filters count as identical (1.0), a zero and a
    non-zero filter as unrelated (0.0). None for a layer with one filter.
    """
    filters = np.asarray(weight, dtype=np.float64).reshape(len(weight), -1)
    n = len(filters)
    if n < 2:
        return None
    norms = np.linalg.norm(filters, axis=1)
    zero = norms == 0
    unit = filters / np.where(zero, 1.0, norms)[:, None]
    cosines = np.clip(unit @ unit.T, -1.0, 1.0)
    both_zero = zero[:, None] & zero[None, :]
    cosines = np.where(both_zero, 1.0, cosines)
    upper = np.triu_indices(n, k=1)
    return float(cosines[upper].mean())


def conv_layer_summary(weight: np.ndarray, bias: np.ndarray | None, probe_maps: np.ndarray | None = None) -> dict:
    """Kernels, biases, detectors, symmetry and weight std of one conv layer (JSON-able).

    `probe_maps`, the layer's feature maps of the probe images (P, out, H, W), lets
    a filter that is never active on them count as dead.
    """
    return {
        "shape": [int(n) for n in weight.shape],
        "weight": rounded(weight),
        "bias": rounded(bias) if bias is not None else None,
        "detectors": detectors(weight, probe_maps),
        "symmetry": None if (s := symmetry(weight)) is None else round(s, 7),
        "weight_std": _finite_or_none(np.std(weight)),
    }


# --------------------------------------------------------------------------
# statistics of a model on a batch


def layer_stats(model, x: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per layer, on one batch: activation mean/std, dead fraction, gradient stds.

    dead_fraction is the share of the layer's output units (channel × position,
    or feature) that are <= 0 for every image of the batch: for a ReLU layer,
    its dead units; for a conv or dense layer, the units a following ReLU would
    silence. grad_std is the std of the loss gradient w.r.t. the layer's output,
    weight_grad_std the std of its weight gradient (None without weights).
    Leaves model.grads holding this batch's gradients and model.outputs its layer outputs.
    """
    model.forward(x, keep_outputs=True)
    outputs = list(model.outputs)
    logits = outputs[-1]
    _, dlogits = softmax_cross_entropy(logits, labels)
    model.backward(dlogits, need_input_grad=False)
    stats = []
    for index, (output, out_grad) in enumerate(zip(outputs, model.output_grads)):
        weight_grad = model.grads.get(f"{index}.weight")
        stats.append(
            {
                "index": index,
                "type": model.spec["layers"][index]["type"],
                "act_mean": _finite_or_none(np.mean(output)),
                "act_std": _finite_or_none(np.std(output)),
                "dead_fraction": round(float(np.mean(np.all(output <= 0, axis=0))), 6),
                "grad_std": _finite_or_none(np.std(out_grad)) if out_grad is not None else None,
                "weight_grad_std": _finite_or_none(np.std(weight_grad)) if weight_grad is not None else None,
            }
        )
    return stats


def feature_maps(model, probes: np.ndarray) -> dict[int, np.ndarray]:
    """Output of every conv layer for the probe images: {layer index: (P, out, H, W)}."""
    model.forward(probes, keep_outputs=True)
    return {index: np.array(model.outputs[index]) for index in model.conv_indices}


# --------------------------------------------------------------------------
# JSON helpers

# Significant digits of the numbers a snapshot serves: weights, biases and statistics (feature
# maps keep fewer: engine.analyst.FEATURE_MAP_DIGITS).
SERVED_DIGITS = 5


def rounded(array, digits: int = SERVED_DIGITS) -> list:
    """Nested lists of floats rounded to `digits` significant digits of the array's scale.

    One number of decimals per array (from its largest magnitude) keeps this
    fast for feature maps; values far below the largest keep fewer digits.
    Non-finite values become None.
    """
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    decimals = rounding_decimals(array, finite, digits)
    result = np.round(np.where(finite, array, 0.0), decimals)
    if finite.all():
        return result.tolist()
    # numpy's stubs take no None as a branch of where; it makes an object array, None where not finite
    return np.where(finite, result, None).tolist()  # type: ignore[call-overload]


def rounding_decimals(array: np.ndarray, finite: np.ndarray, digits: int) -> int:
    """The one number of decimals `rounded` keeps for `array` (float64; `finite` its isfinite):
    `digits` significant digits of its largest finite magnitude, between 0 and 12."""
    largest = float(np.max(np.abs(array[finite]))) if finite.any() else 0.0
    return 0 if largest == 0 else int(np.clip(digits - 1 - np.floor(np.log10(largest)), 0, 12))


def _finite_or_none(value, digits: int = SERVED_DIGITS):
    value = float(value)
    if not np.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")
