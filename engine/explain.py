"""Explaining one conv filter: what it responds to, and how it got there.

For filter f of conv layer L (spec index) with a model's parameters, this module measures:

- top patches: the receptive-field crops of a fixed image batch (a run's monitor batch) that excite
  the filter most, at most one per image (its strongest position), with value, label and place;
- activation maximization: an input that maximizes the filter's mean activation, found by gradient
  ascent through the engine's own backward pass (regularization in `maximize`'s docstring);
- spectrum: the kernel's zero-padded 2-D Fourier magnitude, dominant orientation, spatial frequency
  and an orientation-selectivity index in [0, 1], with its chance level for random kernels;
- dead share: the share of positions where the ReLU after the conv gives zero;
- expanded weights: the kernel projected through the earlier convs into pixel space (Distill,
  "Visualizing Weights"), the nonlinearities taken as identity, max-pools as average pools;
- trajectory: ||W||, ||W - W0|| / ||W0||, the detector score against chance over snapshots, and the
  birth step (`engine.analysis.birth_step`).

Everything goes through the public engine API (build_model, forward, backward, params) on a
truncated model: the spec's layers up to and including conv L, parameters copied by state-dict name.
Results are JSON-able (floats and nested lists).
"""

from __future__ import annotations

from functools import cache

import numpy as np

import engine
from engine import analysis

TOP_PATCHES = 9
SPECTRUM_MIN_SIZE = 33  # odd, so the frequency grid is symmetric under negation and 90° turns
SELECTIVITY_CHANCE_SAMPLES = 1000
SELECTIVITY_CHANCE_SEED = 4321
SELECTIVITY_PERCENTILE = 95.0
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
POOLS = ("maxpool", "avgpool")

# activation maximization settings (see `maximize`)
MAXIMIZE_STEPS = 96
MAXIMIZE_RATE = 0.05  # step per iteration, as a share of the data's pixel range
MAXIMIZE_DECAY = 0.003  # x <- (1 - decay) x every iteration
MAXIMIZE_JITTER = 1  # random shift of up to ±1 pixel per iteration
MAXIMIZE_BLUR_EVERY = 4  # a [1 2 1]/4 blur in both directions every 4th iteration
MAXIMIZE_BLUR = 0.5  # ... mixed in at half strength
MAXIMIZE_POLISH = 16  # the last 16 iterations without blur and jitter
MAXIMIZE_SEED = 0


class NotAFilter(LookupError):
    """A layer index that is not a conv layer, or a filter index the layer does not have."""


# --------------------------------------------------------------------------
# the model's geometry


def normalized_spec(spec) -> dict:
    """The spec with every layer's defaults filled (a preset name is looked up)."""
    result = engine.normalize_spec(spec)
    return result[0] if isinstance(result, tuple) else result


def conv_layers(spec) -> list[dict]:
    """[{"index": spec index, "label": "conv1"}, ...] in spec order."""
    layers = normalized_spec(spec)["layers"]
    indices = [i for i, layer in enumerate(layers) if layer["type"] == "conv"]
    return [{"index": i, "label": f"conv{n + 1}"} for n, i in enumerate(indices)]


def check_filter(spec, layer: int, filter: int | None = None) -> str:
    """The label of conv layer `layer`; NotAFilter naming what exists when layer or filter is wrong."""
    convs = conv_layers(spec)
    names = ", ".join(f"{c['index']} ({c['label']})" for c in convs) or "none"
    by_index = {c["index"]: c["label"] for c in convs}
    if layer not in by_index:
        raise NotAFilter(f"layer {layer} is not a conv layer; conv layers: {names}")
    if filter is not None:
        count = int(normalized_spec(spec)["layers"][layer]["filters"])
        if not 0 <= filter < count:
            raise NotAFilter(
                f"filter {filter} does not exist in layer {layer} ({by_index[layer]}); filters: 0..{count - 1}"
            )
    return by_index[layer]


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _window(layer: dict, params: dict, index: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, padding) of a conv or pool layer, each as (rows, cols)."""
    if layer["type"] == "conv":
        kh, kw = params[f"{index}.weight"].shape[2:]
        return (int(kh), int(kw)), _pair(layer.get("stride", 1)), _pair(layer.get("padding", 0))
    size = _pair(layer["size"])
    stride = _pair(layer["stride"] if layer.get("stride") is not None else layer["size"])
    return size, stride, (0, 0)


def receptive_field(spec, params: dict, layer: int) -> dict:
    """Where an output unit of `layer` looks in the input.

    Output position (y, x) of the layer sees input rows y*jump + offset ... + size - 1 (the same for
    columns; square windows are assumed, rows are reported). Padding makes offset negative at the
    border: those pixels are the zeros the conv pads with.
    """
    layers = normalized_spec(spec)["layers"]
    jump, offset, size = 1, 0, 1
    for index in range(layer + 1):
        entry = layers[index]
        if entry["type"] in ("conv", *POOLS):
            (k, _), (s, _), (p, _) = _window(entry, params, index)
            offset -= p * jump
            size += (k - 1) * jump
            jump *= s
        elif entry["type"] not in ACTIVATIONS:
            raise ValueError(f"layer {index} ({entry['type']}): cannot come before a conv layer here")
    return {"size": size, "jump": jump, "offset": offset}


def truncated_model(spec, params: dict, layer: int):
    """A model of the spec's layers 0..layer (ending at the conv's output), with `params` copied in."""
    full = normalized_spec(spec)
    sub = {"input": full["input"], "layers": full["layers"][: layer + 1]}
    model = engine.build_model(sub, seed=0, threads=1)
    for name, value in model.params.items():
        value[...] = params[name]
    return model


# --------------------------------------------------------------------------
# responses to data: top patches and dead share


def conv_responses(model, images: np.ndarray) -> np.ndarray:
    """The truncated model's output (the conv's pre-activation) for images (N, C, H, W)."""
    return np.asarray(model.forward(np.asarray(images, dtype=np.float32), keep_outputs=True), dtype=np.float64)


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """image[:, top:top+size, left:left+size] with zeros outside the image (the conv's padding)."""
    channels, height, width = image.shape
    out = np.zeros((channels, size, size), dtype=np.float64)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, height), min(left + size, width)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
    return out


def top_patches(
    responses: np.ndarray, images: np.ndarray, field: dict, labels=None, class_names=None, count: int = TOP_PATCHES
) -> list[dict]:
    """The `count` images whose strongest position excites the filter most, strongest first.

    responses: (N, H, W) conv output of one filter. One patch per image (at its maximum; the first
    in row-major order on ties), so one image cannot fill the list with shifted copies of itself.
    Ties between images go to the lower image index.
    """
    n, _, width = responses.shape
    flat = responses.reshape(n, -1)
    where = flat.argmax(axis=1)
    best = flat[np.arange(n), where]
    order = sorted(range(n), key=lambda i: (-best[i], i))[:count]
    patches = []
    for i in order:
        y, x = divmod(int(where[i]), width)
        top, left = y * field["jump"] + field["offset"], x * field["jump"] + field["offset"]
        label_index = None if labels is None else int(labels[i])
        patches.append(
            {
                "image": int(i),
                "y": y,
                "x": x,
                "top": top,
                "left": left,
                "activation": float(best[i]),
                "class_index": label_index,
                "label": None if label_index is None or class_names is None else str(class_names[label_index]),
                "pixels": analysis.rounded(crop(np.asarray(images[i], dtype=np.float64), top, left, field["size"])),
            }
        )
    return patches


def dead_share(responses: np.ndarray) -> dict:
    """Share of positions (images × rows × cols) where a ReLU after the conv outputs zero (pre-activation
    <= 0); a filter with share 1 never fires on these images and is called dead."""
    share = float(np.mean(responses <= 0)) if responses.size else 1.0
    return {"share": share, "dead": bool(share >= 1.0), "positions": int(responses.size)}


# --------------------------------------------------------------------------
# activation maximization


def _blur(x: np.ndarray) -> np.ndarray:
    """[1 2 1]/4 along rows and columns, edges repeated."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    x = (padded[:, :, :-2] + 2 * padded[:, :, 1:-1] + padded[:, :, 2:]) / 4
    padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)), mode="edge")
    return (padded[:, :, :, :-2] + 2 * padded[:, :, :, 1:-1] + padded[:, :, :, 2:]) / 4


def field_model(spec, params: dict, layer: int, size: int):
    """The truncated model on an input of one receptive field (size×size), every conv's padding 0.

    Its output at `layer` is 1×1: the computation of one interior output position of the full model.
    """
    full = normalized_spec(spec)
    layers = [{**entry, "padding": 0} if entry["type"] == "conv" else entry for entry in full["layers"][: layer + 1]]
    sub = {"input": [full["input"][0], size, size], "layers": layers}
    model = engine.build_model(sub, seed=0, threads=1)
    for name, value in model.params.items():
        value[...] = params[name]
    return model


def maximize(
    spec,
    params: dict,
    layer: int,
    filter: int,
    pixel_range: tuple[float, float],
    steps: int = MAXIMIZE_STEPS,
    seed: int = MAXIMIZE_SEED,
) -> dict:
    """An input that maximizes the filter's mean activation, the size of its receptive field.

    The input is one receptive field (`receptive_field(...)["size"]` square), fed to the truncated
    model with the convs' padding removed, so the filter has exactly one output position there and
    its mean activation is that one value: the result sits beside the top patches and compares
    with them like for like. The objective is the conv's pre-activation (which a dead ReLU after it
    would not block). Gradient ascent through model.backward, regularized:
    - jitter: the image lives on a canvas 1 pixel wider on each side; every iteration a random
      field-sized window of it is evaluated and only that window moves;
    - step: 5% of the data's pixel range per unit of mean |gradient| (a normalized step);
    - decay: the canvas shrinks by 0.3% every iteration (an L2 pull towards 0, the data mean);
    - blur: every 4th iteration the canvas is averaged half and half with its [1 2 1]/4 blur along
      rows and columns;
    - polish: the last 16 iterations use neither jitter nor blur (they sharpen what blur smoothed);
    - clip: to `pixel_range` (the data's min and max), so it stays an image the data could hold.
    Starts from small seeded noise; 96 iterations. The image returned is the centre window.
    A dead filter (its ReLU never fires on the data) may end below its best patch: the gradient
    through the earlier ReLUs can vanish.
    """
    lo, hi = float(pixel_range[0]), float(pixel_range[1])
    span = max(hi - lo, 1e-6)
    size = receptive_field(spec, params, layer)["size"]
    model = field_model(spec, params, layer, size)
    pad = MAXIMIZE_JITTER
    rng = np.random.default_rng(seed)
    channels = int(model.input_shape[0])
    canvas = np.clip(rng.normal(0.0, 0.05 * span, (1, channels, size + 2 * pad, size + 2 * pad)), lo, hi)
    direction = np.zeros((1, *model.output_shapes[-1]), dtype=np.float32)
    direction[0, filter] = 1.0 / float(np.prod(model.output_shapes[-1][1:]))
    for iteration in range(steps):
        polishing = iteration >= steps - MAXIMIZE_POLISH
        dy, dx = (pad, pad) if polishing else (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
        model.forward(canvas[:, :, dy : dy + size, dx : dx + size].astype(np.float32))
        grad = np.asarray(model.backward(direction), dtype=np.float64)
        scale = float(np.mean(np.abs(grad)))
        if scale > 0:
            canvas[:, :, dy : dy + size, dx : dx + size] += (MAXIMIZE_RATE * span / scale) * grad
        canvas *= 1.0 - MAXIMIZE_DECAY
        if iteration % MAXIMIZE_BLUR_EVERY == MAXIMIZE_BLUR_EVERY - 1 and not polishing:
            canvas = (1.0 - MAXIMIZE_BLUR) * canvas + MAXIMIZE_BLUR * _blur(canvas)
        canvas = np.clip(canvas, lo, hi)
    image = canvas[0, :, pad : pad + size, pad : pad + size].astype(np.float32)
    activation = float(np.mean(model.forward(image[None])[0, filter]))
    return {
        "image": image,
        "activation": activation,
        "steps": steps,
        "regularization": {
            "decay": MAXIMIZE_DECAY,
            "jitter": MAXIMIZE_JITTER,
            "blur_every": MAXIMIZE_BLUR_EVERY,
            "rate": MAXIMIZE_RATE,
            "clip": [lo, hi],
        },
    }


# --------------------------------------------------------------------------
# spectrum and orientation


def _spectrum_size(kh: int, kw: int) -> int:
    return max(SPECTRUM_MIN_SIZE, 2 * max(kh, kw) + 1) | 1


def _power(kernels: np.ndarray, n: int) -> np.ndarray:
    """Σ over input channels of |FFT|² at n×n; kernels (..., in, kh, kw) -> (..., n, n)."""
    return (np.abs(np.fft.fft2(kernels, s=(n, n))) ** 2).sum(axis=-3)


@cache
def _frequency_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(n)[:, None] * np.ones((1, n))
    fx = np.fft.fftfreq(n)[None, :] * np.ones((n, 1))
    theta = np.arctan2(-fy, fx)  # angle of the frequency vector with y pointing up (row 0 is the top)
    inside = np.hypot(fx, fy) <= 0.5  # the Nyquist disc: the square grid's corners would favour diagonals
    inside[0, 0] = False  # DC has no orientation
    return fx, fy, np.where(inside, np.exp(2j * theta), 0.0)


def _selectivity(power: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(selectivity, doubled-angle mean vector) for power spectra (..., n, n), the DC bin left out."""
    _, _, rotor = _frequency_grid(n)
    weights = np.where(rotor != 0, power, 0.0)
    total = weights.sum(axis=(-2, -1))
    vector = (weights * rotor).sum(axis=(-2, -1)) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, np.abs(vector), 0.0), vector


def _autocorrelation(kernels: np.ndarray) -> np.ndarray:
    """A(d) = Σ_c Σ_v k_c(v + d) k_c(v) for every lag d: (..., in, kh, kw) -> (..., 2kh-1, 2kw-1),
    lag (0, 0) in the centre. Its DFT is the power spectrum that `_power` sums over channels."""
    kh, kw = kernels.shape[-2:]
    out = np.empty((*kernels.shape[:-3], 2 * kh - 1, 2 * kw - 1))
    for dy in range(1 - kh, kh):
        for dx in range(1 - kw, kw):
            shifted = kernels[..., max(dy, 0) : kh + min(dy, 0), max(dx, 0) : kw + min(dx, 0)]
            base = kernels[..., max(-dy, 0) : kh - max(dy, 0), max(-dx, 0) : kw - max(dx, 0)]
            out[..., dy + kh - 1, dx + kw - 1] = (shifted * base).sum(axis=(-3, -2, -1))
    return out


@cache
def _lag_weights(n: int, kh: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """The DFTs of the Nyquist-disc mask (DC left out) and of its doubled-angle rotor, at the lags
    of a kh×kw kernel's autocorrelation: Σ_f w(f) P(f) = Σ_d A(d) ŵ(d) for any weighting w."""
    _, _, rotor = _frequency_grid(n)
    rows, cols = np.arange(1 - kh, kh) % n, np.arange(1 - kw, kw) % n
    mask = np.fft.fft2((rotor != 0).astype(np.float64))[np.ix_(rows, cols)].real
    return mask, np.fft.fft2(rotor)[np.ix_(rows, cols)]


def _selectivity_of(kernels: np.ndarray) -> np.ndarray:
    """The selectivity index of kernels (..., in, kh, kw): what `_selectivity(_power(k, n), n)`
    gives (equal up to rounding), computed from the autocorrelation at (2kh-1)(2kw-1) lags
    instead of an n×n FFT per channel, so a layer or a thousand random kernels cost little."""
    kernels = np.asarray(kernels, dtype=np.float64)
    kh, kw = kernels.shape[-2:]
    mask, rotor = _lag_weights(_spectrum_size(kh, kw), kh, kw)
    lags = _autocorrelation(kernels)
    total = (lags * mask).sum(axis=(-2, -1))
    vector = (lags * rotor).sum(axis=(-2, -1))
    positive = total > 1e-12 * np.maximum(np.abs(lags).max(axis=(-2, -1)), 1e-300)
    return np.where(positive, np.abs(vector) / np.where(positive, total, 1.0), 0.0)


@cache
def selectivity_chance(channels: int, kh: int, kw: int) -> float:
    """95th percentile of the selectivity index of random Gaussian kernels (channels, kh, kw).

    95th, not the 99th of the detector chance: a few random numbers are often oriented by chance.
    At 3×3 even a Sobel kernel (0.55) stays just below this level (0.57); at 5×5 it is above (0.48
    against 0.41): the index tells most for kernels of 5×5 and more.
    """
    rng = np.random.default_rng(SELECTIVITY_CHANCE_SEED)
    values = _selectivity_of(rng.standard_normal((SELECTIVITY_CHANCE_SAMPLES, channels, kh, kw)))
    return float(np.percentile(values, SELECTIVITY_PERCENTILE))


def spectrum(kernel: np.ndarray) -> dict:
    """Fourier magnitude, orientation and selectivity of a kernel (kh, kw) or (in, kh, kw).

    The kernel is zero-padded to n×n (n odd, at least 33) and its power |FFT|² summed over input
    channels. With θ the angle of each frequency vector (y up) and P its power (over the bins
    inside the Nyquist disc |f| <= 0.5 cycles/pixel, the DC bin left out), the doubled-angle mean z = Σ P e^{2iθ} / Σ P gives:
    - selectivity = |z| in [0, 1]: 0 when power is spread evenly over orientations (a constant or
      any 90°-symmetric kernel), 1 when all of it lies on one line through the origin;
    - orientation = the direction of the stripes/edges the kernel matches, in degrees in [0, 180),
      counter-clockwise from horizontal with y up: arg(z)/2 + 90° (stripes run across their
      frequency vector). sobel_x (finds vertical edges) gives 90°, sobel_y 0°, a "\\" edge 135°.
      None when the kernel has no power away from DC or no preferred orientation (selectivity 0);
    - frequency = the radial frequency (cycles per pixel) of the strongest non-DC bin.
    `magnitude` is sqrt(P), shifted so the zero frequency is in the centre (row 0 = highest +fy).
    `selective` compares selectivity with `chance`, the 95th percentile for random Gaussian kernels.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 2:
        kernel = kernel[None]
    channels, kh, kw = kernel.shape
    n = _spectrum_size(kh, kw)
    power = _power(kernel, n)
    raw_selectivity, raw_vector = _selectivity(power, n)
    selectivity, vector = float(raw_selectivity), complex(raw_vector)
    fx, fy, _ = _frequency_grid(n)
    off_dc = power.copy()
    off_dc[0, 0] = -1.0
    peak = np.unravel_index(int(off_dc.argmax()), off_dc.shape)
    has_power = bool(power.sum() - power[0, 0] > 0)
    orientation = None
    if has_power and selectivity > 1e-9:
        orientation = float((np.degrees(np.angle(vector)) / 2 + 90.0) % 180.0)
    chance = selectivity_chance(channels, kh, kw)
    return {
        "size": n,
        "magnitude": np.fft.fftshift(np.sqrt(power))[::-1],
        "orientation": orientation,
        "frequency": float(np.hypot(fx[peak], fy[peak])) if has_power else None,
        "selectivity": selectivity,
        "chance": chance,
        "selective": bool(selectivity > chance),
    }


# --------------------------------------------------------------------------
# expanded weights


def _compose(kernel: np.ndarray, lower: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """Kernel (F, C, K, K') applied on top of a linear layer with weight (C, C', k, k') and `stride`:
    the equivalent kernel (F, C', (K-1)s+k, (K'-1)s'+k') on that layer's input."""
    f, _, big_h, big_w = kernel.shape
    _, channels, kh, kw = lower.shape
    sh, sw = stride
    out = np.zeros((f, channels, (big_h - 1) * sh + kh, (big_w - 1) * sw + kw))
    for a in range(big_h):
        for b in range(big_w):
            out[:, :, a * sh : a * sh + kh, b * sw : b * sw + kw] += np.einsum(
                "fc,cpuv->fpuv", kernel[:, :, a, b], lower
            )
    return out


def expanded_weights(spec, params: dict, layer: int) -> np.ndarray:
    """The kernels of conv `layer` projected into pixel space: (filters, input channels, size, size).

    The network below the layer is made linear: activations become the identity, a max-pool
    becomes an average pool of the same size and stride (the linear map that spreads a unit's
    weight evenly over the window it picks from), biases are left out. Each conv below is then
    composed with the kernel (a transposed convolution of the kernel by the lower weights). The
    result's size is the receptive field; entry [f, c, u, v] is the linearized response of filter
    f at an output position to a unit impulse at offset (u, v) of its receptive field in channel c.
    For the first conv it is the kernel itself.
    """
    layers = normalized_spec(spec)["layers"]
    kernel = np.asarray(params[f"{layer}.weight"], dtype=np.float64)
    for index in range(layer - 1, -1, -1):
        entry = layers[index]
        if entry["type"] == "conv":
            _, stride, _ = _window(entry, params, index)
            kernel = _compose(kernel, np.asarray(params[f"{index}.weight"], dtype=np.float64), stride)
        elif entry["type"] in POOLS:
            size, stride, _ = _window(entry, params, index)
            channels = kernel.shape[1]
            average = np.eye(channels)[:, :, None, None] * np.full(size, 1.0 / (size[0] * size[1]))
            kernel = _compose(kernel, average, stride)
        elif entry["type"] not in ACTIVATIONS:
            raise ValueError(f"layer {index} ({entry['type']}): cannot come before a conv layer here")
    return kernel


# --------------------------------------------------------------------------
# history


def trajectory(steps, weights, filter: int) -> dict:
    """||W||, ||W - W0|| / ||W0|| and the detector score of one filter over snapshots.

    weights: the layer's weight (out, in, kh, kw) at each of `steps` (ascending); W0 is the first.
    relative_change is None throughout when ||W0|| = 0 (an all-zero start). The score is the
    detector match of engine.analysis (the filter summed over input channels) and chance its 99th
    percentile for random kernels; the birth step is engine.analysis.birth_step.
    """
    stacked = np.stack([np.asarray(w[filter], dtype=np.float64) for w in weights])
    norms = np.sqrt((stacked**2).sum(axis=(1, 2, 3)))
    start = norms[0]
    change = np.sqrt(((stacked - stacked[0]) ** 2).sum(axis=(1, 2, 3)))
    labels, scores = analysis.best_matches(stacked.sum(axis=1))
    kh, kw = stacked.shape[2:]
    chance = analysis.chance_level(kh, kw)
    return {
        "steps": [int(s) for s in steps],
        "norm": [float(v) for v in norms],
        "relative_change": [float(v / start) for v in change] if start > 0 else [None] * len(steps),
        "score": [float(v) for v in scores],
        "label": list(labels),
        "chance": chance,
        "birth_step": analysis.birth_step(steps, scores, chance),
    }


# --------------------------------------------------------------------------
# all of it


def explain_filter(
    spec,
    params: dict,
    layer: int,
    filter: int,
    images: np.ndarray,
    labels=None,
    class_names=None,
    history: tuple[list, list] | None = None,
    maximize_steps: int = MAXIMIZE_STEPS,
) -> dict:
    """Every measure for filter `filter` of conv `layer`, JSON-able.

    images: the probe batch (N, C, H, W) in the model's input scale (a run's monitor batch), with
    `labels` (class indices) and `class_names`. history: (steps, layer weights) for the trajectory
    (left out when None). Raises NotAFilter for a bad layer or filter index.
    """
    label = check_filter(spec, layer, filter)
    spec = normalized_spec(spec)
    images = np.asarray(images, dtype=np.float32)
    weight = np.asarray(params[f"{layer}.weight"], dtype=np.float64)
    model = truncated_model(spec, params, layer)
    responses = conv_responses(model, images)[:, filter]
    field = receptive_field(spec, params, layer)
    patches = top_patches(responses, images, field, labels, class_names)
    pixel_range = (float(images.min()), float(images.max())) if images.size else (-1.0, 1.0)
    best = maximize(spec, params, layer, filter, pixel_range, steps=maximize_steps)
    best["image"] = analysis.rounded(best["image"])
    best["best_patch_activation"] = patches[0]["activation"] if patches else None
    spec_entry = spectrum(weight[filter])
    spec_entry["magnitude"] = analysis.rounded(spec_entry["magnitude"])
    following = spec["layers"][layer + 1]["type"] if layer + 1 < len(spec["layers"]) else None
    detector = analysis.detectors(weight[filter : filter + 1])[0]
    detector.pop("filter")
    result = {
        "layer": layer,
        "label": label,
        "filter": filter,
        "shape": [int(v) for v in weight.shape[1:]],
        "weight": analysis.rounded(weight[filter]),
        "bias": float(params[f"{layer}.bias"][filter]) if f"{layer}.bias" in params else None,
        "receptive_field": field,
        "detector": detector,
        "patches": {"images": int(len(images)), "items": patches},
        "maximize": best,
        "spectrum": spec_entry,
        "dead": {**dead_share(responses), "activation": following if following in ACTIVATIONS else None},
        "expanded": {
            "weight": analysis.rounded(expanded_weights(spec, params, layer)[filter]),
            "linearization": "activations as identity, max-pools as average pools, biases left out",
        },
    }
    if history is not None:
        result["trajectory"] = trajectory(history[0], history[1], filter)
    return result


def layer_param_names(spec, layer: int) -> list[str]:
    """The state-dict names of the parameters conv `layer`'s output depends on (layers 0..layer):
    all a reader of a snapshot needs for `layer_summary` or `truncated_model`."""
    check_filter(spec, layer)
    full = normalized_spec(spec)
    sub = {"input": full["input"], "layers": full["layers"][: layer + 1]}
    return sorted(engine.build_model(sub, seed=0, threads=1).params)


def layer_summary(spec, params: dict, layer: int, images: np.ndarray, model=None) -> dict:
    """One conv layer at one snapshot: dead filters on `images`, orientation-selective share, detector scores.

    model: a truncated_model(spec, ..., layer) to reuse (its parameters are overwritten with
    `params`), so a summary over many snapshots builds the model once.
    """
    check_filter(spec, layer)
    if model is None:
        model = truncated_model(spec, params, layer)
    else:
        for name, value in model.params.items():
            value[...] = params[name]
    return summary_row(params[f"{layer}.weight"], never_fire(conv_responses(model, images)))


def never_fire(responses: np.ndarray) -> np.ndarray:
    """Per filter of a conv's responses (N, out, H, W): True where it is <= 0 for every image
    and position (a following ReLU would pass nothing: the filter is dead on these images)."""
    return np.all(np.asarray(responses) <= 0, axis=(0, 2, 3))


def summary_row(weight: np.ndarray, dead: np.ndarray) -> dict:
    """A conv layer's summary row: `dead` (per filter, never_fire on the monitor batch), the
    orientation-selective share and the detector scores of `weight` (out, in, kh, kw), each with
    its chance level. The analyst stores it with every snapshot (from the monitor batch's forward
    pass it makes anyway); layer_summary computes it for a snapshot stored without one."""
    weight = np.asarray(weight, dtype=np.float64)
    selectivity = _selectivity_of(weight)
    chance = selectivity_chance(*weight.shape[1:])
    found = analysis.detectors(weight)
    return {
        "filters": int(len(weight)),
        "dead_filters": int(np.count_nonzero(dead)),
        "selective_share": float(np.mean(selectivity > chance)),
        "selectivity_chance": chance,
        "mean_score": float(np.mean([d["score"] for d in found])),
        "score_chance": float(found[0]["chance"]),
        "detector_share": float(np.mean([d["beats_chance"] for d in found])),
    }
