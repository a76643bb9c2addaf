"""Datasets: what a model learns from.

A `Dataset` holds a training and a validation split as float32 NCHW arrays,
zero-centred and scaled with statistics of the training split only, plus a
fixed "monitor" batch (for layer statistics) and a few fixed probe images (for
feature maps). Sources: the procedurally generated "shapes" set (default, no
files), MNIST / Fashion-MNIST IDX files, CIFAR-10 python batches, an image
folder (one sub-folder per class), and scikit-learn's digits when installed.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from engine.core import names

SHAPE_CLASSES = (
    "x",
    "plus",
    "circle",
    "square",
    "triangle",
    "horizontal_line",
    "vertical_line",
    "diagonal_line",
    "antidiagonal_line",
    "blob",
)
# Chosen with dataset "classes": solid shapes (borders that are step edges), and classes of
# several small glyphs scattered over the image ("<shape>_marks": X, plus and line dashes).
EXTRA_SHAPE_CLASSES = (
    "filled_square",
    "filled_triangle",
    "filled_diamond",
    "horizontal_bar",
    "x_marks",
    "plus_marks",
    "horizontal_line_marks",
    "vertical_line_marks",
    "diagonal_line_marks",
    "antidiagonal_line_marks",
)
MARKS_CLASSES = ("x_marks", "plus_marks")  # the "marks" dataset
GENERATED_DATASETS = ("shapes", "marks")  # drawn by generate_shapes: no files, sized by n_train, n_val, size
MARKS_PER_IMAGE = 3  # glyphs per "_marks" part of a class
MARK_PARTS = 2  # "_marks" parts one class may join with "+"
MARK_SPACING = 6.0  # least distance between two marks' centres, in pixels at size 28
MARK_HALF = (2.0, 3.5)  # half-extent of one small mark, in pixels at size 28
MARK_STROKE = (1.0, 1.5)  # stroke width of the marks, in pixels at size 28
SHAPES_PROBE_CLASSES = ("x", "plus", "vertical_line", "circle")

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

MONITOR_SIZE = 64
PROBE_COUNT = 4


class DatasetError(ValueError):
    """A dataset file or folder is missing, truncated or in the wrong format."""


@dataclass
class Dataset:
    """Normalised splits plus the fixed monitor batch and probe images."""

    name: str
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    monitor_x: np.ndarray
    monitor_y: np.ndarray
    probe_x: np.ndarray
    probe_labels: list[str]
    params: dict = field(default_factory=dict)
    # the last epochs' orders batch_indices drew, {(seed, epoch): permutation}: drawing one costs
    # about as much as a twentieth of the default run's training step, and every step needs one
    _orders: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], tuple(int(n) for n in self.x_train.shape[1:]))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Training indices of batch number `step` (0-based).

        The order is a fresh permutation per epoch drawn from (seed, epoch), so
        the data position of a run is fully described by its step: a restored
        run sees exactly the batches it would have seen.
        """
        n = len(self.x_train)
        start = step * batch_size
        parts: list[np.ndarray] = []
        taken = 0
        while taken < batch_size:
            epoch, offset = divmod(start, n)
            take = self._epoch_order(seed, epoch)[offset : offset + batch_size - taken]
            parts.append(take)
            taken += len(take)
            start += len(take)
        return np.concatenate(parts).astype(np.int64, copy=False)

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of the training set for (seed, epoch); the last two drawn are kept
        (a batch that spans the end of an epoch needs both)."""
        key = (seed, epoch)
        order = self._orders.get(key)
        if order is None:
            order = np.random.default_rng([seed, epoch]).permutation(len(self.x_train))
            order.flags.writeable = False
            self._orders[key] = order
            while len(self._orders) > 2:
                self._orders.pop(next(iter(self._orders)))
        return order

    def describe(self) -> dict:
        """JSON-able summary: name, classes, sizes, input shape, normalisation."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "n_train": int(len(self.x_train)),
            "n_val": int(len(self.x_val)),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "params": dict(self.params),
        }


def make_dataset(
    name: str,
    classes,
    x_train,
    y_train,
    x_val,
    y_val,
    probe_classes=None,
    params: dict | None = None,
) -> Dataset:
    """Build a Dataset from raw arrays (N, C, H, W) with integer labels.

    uint8 pixels are scaled to [0, 1] first. Per-channel mean and std come
    from the training split only and are applied to every split.
    """
    x_train = _as_float_images(x_train)
    x_val = _as_float_images(x_val)
    y_train = np.asarray(y_train, dtype=np.int64)
    y_val = np.asarray(y_val, dtype=np.int64)
    classes = [str(c) for c in classes]
    if len(x_train) == 0 or len(x_val) == 0:
        raise DatasetError(f"{name}: the training and validation splits must both be non-empty")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise DatasetError(f"{name}: image and label counts differ")
    for labels in (y_train, y_val):
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DatasetError(f"{name}: labels must lie in 0..{len(classes) - 1}")

    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    scale = (1.0 / std).astype(np.float32)[None, :, None, None]
    shift = mean.astype(np.float32)[None, :, None, None]
    x_train = (x_train - shift) * scale
    x_val = (x_val - shift) * scale

    monitor_count = min(MONITOR_SIZE, len(x_val))
    monitor_x = x_val[:monitor_count].copy()
    monitor_y = y_val[:monitor_count].copy()

    probe_indices = _probe_indices(y_val, classes, probe_classes)
    return Dataset(
        name=name,
        classes=classes,
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_val=np.ascontiguousarray(x_val),
        y_val=y_val,
        mean=mean,
        std=std,
        monitor_x=monitor_x,
        monitor_y=monitor_y,
        probe_x=x_val[probe_indices].copy(),
        probe_labels=[classes[y_val[i]] for i in probe_indices],
        params=dict(params or {}),
    )


def _as_float_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise DatasetError(f"images must be a 4-d array (N, C, H, W), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def _probe_indices(labels: np.ndarray, classes: list[str], probe_classes) -> list[int]:
    """First validation image of each wanted class, topped up to PROBE_COUNT."""
    wanted = [classes.index(c) for c in (probe_classes or []) if c in classes]
    wanted += [c for c in range(len(classes)) if c not in wanted]
    chosen = []
    for class_index in wanted:
        hits = np.flatnonzero(labels == class_index)
        if len(hits):
            chosen.append(int(hits[0]))
        if len(chosen) == PROBE_COUNT:
            break
    return chosen


# --------------------------------------------------------------------------
# shapes: procedurally generated strokes that make edge and X detectors pay off


def generate_shapes(
    n: int,
    size: int = 28,
    seed: int = 0,
    noise: float = 0.25,
    classes=SHAPE_CLASSES,
    extent: tuple[float, float] = (0.2, 0.38),
    stroke: tuple[float, float] = (1.4, 2.6),
):
    """`n` grayscale shape images (n, 1, size, size) in [0, 1] and labels.

    Labels index `classes` (names from SHAPE_CLASSES + EXTRA_SHAPE_CLASSES:
    the "filled_" shapes and the bar are solid, their borders step edges; the
    "_marks" classes scatter three small glyphs; names joined by "+", such as
    "circle+x_marks", draw every part into one image, a second kind of marks at
    places of its own, and a mark over ink inverts it), balanced, in shuffled
    order. Each image has a random centre, half-extent (a fraction of `size`
    drawn from `extent`), stroke width (pixels at size 28, drawn from
    `stroke`), small rotation, contrast and Gaussian pixel noise of std up to
    `noise`. Deterministic for a seed; vectorised
    (strokes are rendered from distance fields, anti-aliased).
    """
    if n < 0:
        raise ValueError("n: must be >= 0")
    if size < 8:
        raise ValueError("size: must be >= 8")
    available = SHAPE_CLASSES + EXTRA_SHAPE_CLASSES
    unknown = [c for c in classes if any(part not in available for part in c.split("+"))]
    if unknown:
        raise ValueError(f"classes: unknown shape {unknown[0]!r}; choose from {', '.join(available)}")
    crowded = [c for c in classes if sum(part in _MARKS for part in c.split("+")) > MARK_PARTS]
    if crowded:
        raise ValueError(f"classes: {crowded[0]!r} joins more than {MARK_PARTS} kinds of marks")
    if len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise ValueError("classes: give at least two different shapes, each once")
    classes = tuple(classes)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(classes))
    scale = size / 28.0
    half = rng.uniform(*extent, n) * size
    margin = 1.5 * scale
    low = half + margin
    high = size - 1 - half - margin
    cx = low + rng.uniform(0, 1, n) * (high - low)
    cy = low + rng.uniform(0, 1, n) * (high - low)
    stroke_width = rng.uniform(*stroke, n) * scale
    angle = rng.uniform(-0.2, 0.2, n)
    mark_half = rng.uniform(*MARK_HALF, (MARKS_PER_IMAGE, n)) * scale
    mark_cx, mark_cy = _mark_places(rng, seed, n, size)
    mark_stroke = rng.uniform(*MARK_STROKE, n) * scale
    contrast = rng.uniform(0.6, 1.0, n)
    noise_std = rng.uniform(0.0, noise, n)
    pixel_noise = rng.standard_normal((n, size, size)).astype(np.float32)

    coords = np.arange(size, dtype=np.float32)
    images = np.zeros((n, size, size), dtype=np.float32)
    for class_index, class_name in enumerate(classes):
        idx = np.flatnonzero(labels == class_index)
        if len(idx) == 0:
            continue
        geometry = _Geometry(cx[idx], cy[idx], half[idx], angle[idx], coords)
        ink = np.zeros((len(idx), size, size), dtype=np.float32)
        mark_parts = [part for part in class_name.split("+") if part in _MARKS]
        for part in class_name.split("+"):
            if part == "blob":
                inside = geometry.radius * 0.55 - geometry.distance_to_centre()
                part_ink = np.clip(inside + 0.5, 0.0, 1.0)
            elif part in _FILLED:
                part_ink = np.clip(0.5 - _FILLED[part](geometry), 0.0, 1.0)
            elif part in _MARKS:
                glyph = _SHAPE_DISTANCES[_MARKS[part]]
                slot = mark_parts.index(part)
                marks = [
                    _Geometry(mark_cx[slot, k, idx], mark_cy[slot, k, idx], mark_half[k, idx], angle[idx], coords)
                    for k in range(MARKS_PER_IMAGE)
                ]
                distance = np.minimum.reduce([glyph(mark) for mark in marks])
                part_ink = np.clip(mark_stroke[idx, None, None] / 2 + 0.5 - distance, 0.0, 1.0)
            else:
                distance = _SHAPE_DISTANCES[part](geometry)
                part_ink = np.clip(stroke_width[idx, None, None] / 2 + 0.5 - distance, 0.0, 1.0)
            # a mark drawn over ink inverts it (a dark mark on a filled shape), any other part adds ink
            ink = np.abs(ink - part_ink) if part in _MARKS else np.maximum(ink, part_ink)
        images[idx] = ink * contrast[idx, None, None]
    images += pixel_noise * noise_std[:, None, None].astype(np.float32)
    return images[:, None], labels.astype(np.int64)


def _mark_places(rng, seed: int, n: int, size: int):
    """Centres (MARK_PARTS, MARKS_PER_IMAGE, n) of the small glyphs. The first "_marks" part
    of a class takes its places from `rng` (the draws every shapes set makes, so a set
    without a second kind of marks is unchanged); a second part takes places of its own from
    a stream of `seed`, each redrawn (a few times at most) while it lies within MARK_SPACING
    of an earlier mark, so that two kinds rarely touch (crossing dashes would draw an X)."""
    scale = size / 28.0
    low, high = 4.0 * scale, size - 1 - 4.0 * scale
    first_x = rng.uniform(low, high, (MARKS_PER_IMAGE, n))
    first_y = rng.uniform(low, high, (MARKS_PER_IMAGE, n))
    extra = np.random.default_rng([seed, 1])
    xs = [*first_x, *extra.uniform(low, high, ((MARK_PARTS - 1) * MARKS_PER_IMAGE, n))]
    ys = [*first_y, *extra.uniform(low, high, ((MARK_PARTS - 1) * MARKS_PER_IMAGE, n))]
    for k in range(MARKS_PER_IMAGE, len(xs)):
        for _ in range(20):
            close = (np.hypot(np.array(xs[:k]) - xs[k], np.array(ys[:k]) - ys[k]) < MARK_SPACING * scale).any(axis=0)
            if not close.any():
                break
            xs[k][close] = extra.uniform(low, high, int(close.sum()))
            ys[k][close] = extra.uniform(low, high, int(close.sum()))
    shape = (MARK_PARTS, MARKS_PER_IMAGE, n)
    return np.array(xs).reshape(shape), np.array(ys).reshape(shape)


class _Geometry:
    """Pixel grid and per-image centre/extent/rotation for distance fields."""

    def __init__(self, cx, cy, radius, angle, coords):
        self.cx = cx[:, None, None].astype(np.float32)
        self.cy = cy[:, None, None].astype(np.float32)
        self.radius = radius[:, None, None].astype(np.float32)
        self.cos = np.cos(angle)[:, None, None].astype(np.float32)
        self.sin = np.sin(angle)[:, None, None].astype(np.float32)
        self.px = coords[None, None, :]
        self.py = coords[None, :, None]

    def point(self, u: float, v: float):
        """Image coordinates of the rotated point (u, v) given in radii."""
        du = u * self.radius
        dv = v * self.radius
        return self.cx + du * self.cos - dv * self.sin, self.cy + du * self.sin + dv * self.cos

    def segment(self, u0, v0, u1, v1) -> np.ndarray:
        ax, ay = self.point(u0, v0)
        bx, by = self.point(u1, v1)
        dx, dy = bx - ax, by - ay
        t = ((self.px - ax) * dx + (self.py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-6)
        t = np.clip(t, 0.0, 1.0)
        return np.hypot(self.px - ax - t * dx, self.py - ay - t * dy)

    def polyline(self, points) -> np.ndarray:
        pairs = zip(points, points[1:])
        return np.minimum.reduce([self.segment(*a, *b) for a, b in pairs])

    def distance_to_centre(self) -> np.ndarray:
        return np.hypot(self.px - self.cx, self.py - self.cy)

    def local(self):
        """Each pixel in the shape's own rotated frame, in radii: (u, v)."""
        dx, dy = self.px - self.cx, self.py - self.cy
        return (dx * self.cos + dy * self.sin) / self.radius, (dy * self.cos - dx * self.sin) / self.radius

    def convex(self, sides) -> np.ndarray:
        """Signed distance (pixels, approx.; negative inside) to the convex polygon
        {p : a·u + b·v <= reach for every side (a, b, reach)}, (a, b) a unit normal, in radii."""
        u, v = self.local()
        return np.maximum.reduce([a * u + b * v - reach for a, b, reach in sides]) * self.radius


_TRIANGLE = [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5), (0.0, -1.0)]
_SQUARE = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75), (-0.75, -0.75)]
_SHAPE_DISTANCES = {
    "x": lambda g: np.minimum(g.segment(-0.75, -0.75, 0.75, 0.75), g.segment(-0.75, 0.75, 0.75, -0.75)),
    "plus": lambda g: np.minimum(g.segment(-1, 0, 1, 0), g.segment(0, -1, 0, 1)),
    "circle": lambda g: np.abs(g.distance_to_centre() - 0.85 * g.radius),
    "square": lambda g: g.polyline(_SQUARE),
    "triangle": lambda g: g.polyline(_TRIANGLE),
    "horizontal_line": lambda g: g.segment(-1, 0, 1, 0),
    "vertical_line": lambda g: g.segment(0, -1, 0, 1),
    "diagonal_line": lambda g: g.segment(-0.75, -0.75, 0.75, 0.75),
    "antidiagonal_line": lambda g: g.segment(-0.75, 0.75, 0.75, -0.75),
}
# Filled shapes: signed distance to their outline; their borders are step edges, not lines.
# Each is a convex polygon given by its sides' unit normals and distances (in radii).
_FILLED = {
    "filled_square": lambda g: g.convex([(1, 0, 0.75), (-1, 0, 0.75), (0, 1, 0.75), (0, -1, 0.75)]),
    "filled_triangle": lambda g: g.convex([(0, 1, 0.5), (0.866, -0.5, 0.5), (-0.866, -0.5, 0.5)]),
    "filled_diamond": lambda g: g.convex([(a, b, 0.6) for a in (0.7071, -0.7071) for b in (0.7071, -0.7071)]),
    "horizontal_bar": lambda g: g.convex([(1, 0, 0.95), (-1, 0, 0.95), (0, 1, 0.4), (0, -1, 0.4)]),
}
# "<shape>_marks" -> the glyph it scatters, small enough for a 5x5 kernel to see whole
_MARKS = {name: name[: -len("_marks")] for name in EXTRA_SHAPE_CLASSES if name.endswith("_marks")}


def load_shapes(
    n_train: int = 10000,
    n_val: int = 2000,
    size: int = 28,
    noise: float = 0.25,
    seed: int = 0,
    classes=None,
    name: str = "shapes",
) -> Dataset:
    """The default dataset: generated shapes, train and validation from separate streams.

    `classes` picks shapes (default: SHAPE_CLASSES); `name` is what the Dataset is called
    ("marks" for the small-glyph set).
    """
    classes = tuple(classes) if classes else SHAPE_CLASSES
    x_train, y_train = generate_shapes(n_train, size=size, seed=seed * 2 + 1, noise=noise, classes=classes)
    x_val, y_val = generate_shapes(n_val, size=size, seed=seed * 2 + 2, noise=noise, classes=classes)
    params = {"n_train": n_train, "n_val": n_val, "size": size, "noise": noise, "seed": seed, "classes": list(classes)}
    return make_dataset(name, classes, x_train, y_train, x_val, y_val, SHAPES_PROBE_CLASSES, params)


# --------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

_IDX_TYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into an array; errors name the file."""
    path = Path(path)
    data = _read_bytes(path)
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            raise DatasetError(f"{path}: not a valid gzip file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (unknown type code {type_code:#x} or 0 dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header < expected:
        raise DatasetError(
            f"{path}: truncated: expected {expected} data bytes for shape {shape}, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    return path.read_bytes()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (stem, stem + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_idx_folder(
    path, name: str = "mnist", classes=MNIST_CLASSES, limit: int | None = None, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """MNIST-layout folder: train-images-idx3-ubyte, train-labels-idx1-ubyte (raw or .gz).

    The t10k-* files, when present, are the validation split; otherwise
    `val_fraction` of the training files is held out. `limit` caps the
    number of training images.
    """
    folder = _existing_folder(path)
    train_images = _find_idx(folder, "train-images-idx3-ubyte")
    train_labels = _find_idx(folder, "train-labels-idx1-ubyte")
    for stem, found in (("train-images-idx3-ubyte", train_images), ("train-labels-idx1-ubyte", train_labels)):
        if found is None:
            raise DatasetError(f"{folder / stem}: file not found (also tried .gz)")
    assert train_images is not None and train_labels is not None  # the loop above raised otherwise
    x_train, y_train = _idx_pair(train_images, train_labels)
    test_images = _find_idx(folder, "t10k-images-idx3-ubyte")
    test_labels = _find_idx(folder, "t10k-labels-idx1-ubyte")
    if test_images is not None and test_labels is not None:
        x_val, y_val = _idx_pair(test_images, test_labels)
    else:
        x_train, y_train, x_val, y_val = _holdout(x_train, y_train, val_fraction, seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    params = {"path": str(path), "limit": limit}
    return make_dataset(name, classes, x_train, y_train, x_val, y_val, params=params)


def _idx_pair(images_path: Path, labels_path: Path):
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetError(f"{images_path}: expected a 3-d image array (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected a 1-d label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if labels.max(initial=0) > 9:
        raise DatasetError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}")
    return images[:, None].astype(np.uint8), labels.astype(np.int64)


def _holdout(x, y, val_fraction: float, seed: int):
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction: must lie strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _existing_folder(path) -> Path:
    if path is None or str(path) == "":
        raise ValueError("dataset.path: required for this dataset")
    folder = Path(os.path.expanduser(str(path)))
    if not folder.exists():
        raise DatasetError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    return folder


# --------------------------------------------------------------------------
# CIFAR-10 python batches


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, lists, dicts and strings."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path):
    """One CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # pickle raises many types on bad input
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels must lie in 0..9")
    return data.reshape(-1, 3, 32, 32).astype(np.uint8), labels.astype(np.int64)


def load_cifar10(path, limit: int | None = None, grayscale: bool = False) -> Dataset:
    """CIFAR-10 folder (data_batch_1..5 and test_batch, python pickle format).

    At least data_batch_1 and test_batch must exist; missing later training
    batches are skipped. `grayscale` averages the colour channels.
    """
    folder = _existing_folder(path)
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6) if (folder / f"data_batch_{i}").exists()]
    if not train_files:
        raise DatasetError(f"{folder / 'data_batch_1'}: file not found")
    parts = [read_cifar_batch(f) for f in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_val, y_val = read_cifar_batch(folder / "test_batch")
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if grayscale:
        x_train = x_train.mean(axis=1, keepdims=True).astype(np.float32) / 255.0
        x_val = x_val.mean(axis=1, keepdims=True).astype(np.float32) / 255.0
    params = {"path": str(path), "limit": limit, "grayscale": grayscale}
    return make_dataset("cifar10", CIFAR10_CLASSES, x_train, y_train, x_val, y_val, params=params)


# --------------------------------------------------------------------------
# image folder and scikit-learn digits


def _visible(path: Path) -> bool:
    """False for hidden entries (".ipynb_checkpoints", ".DS_Store"): never a class or an image."""
    return not path.name.startswith(".")


def image_folder_contents(path) -> tuple[Path, list[Path], list[list[Path]]]:
    """(folder, class folders, image files of each class) of an image-folder dataset.

    Hidden folders and files are ignored. A class folder or image file that is a
    symlink must stay inside the dataset folder (DatasetError otherwise), like the
    folder's own path. Every class folder must hold at least one image.
    """
    folder = _existing_folder(path)
    real = folder.resolve()

    def confined(entry: Path) -> bool:
        if not entry.is_symlink():
            return True
        target = entry.resolve()
        return target == real or real in target.parents

    class_dirs = []
    for entry in sorted(folder.iterdir()):
        if _visible(entry) and entry.is_dir():
            if not confined(entry):
                raise DatasetError(f"{entry}: a symlink leading out of the dataset folder")
            class_dirs.append(entry)
    if not class_dirs:
        raise DatasetError(f"{folder}: no class sub-folders found (one folder of images per class)")
    files = []
    for class_dir in class_dirs:
        images = []
        for entry in sorted(class_dir.iterdir()):
            if _visible(entry) and entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                if not confined(entry):
                    raise DatasetError(f"{entry}: a symlink leading out of the dataset folder")
                images.append(entry)
        if not images:
            raise DatasetError(f"{class_dir}: no .png/.jpg/.jpeg images in this class folder")
        files.append(images)
    return folder, class_dirs, files


def check_image_folder(path, size: int | None, color: bool, max_images: int, max_side: int, scan: int) -> list[int]:
    """Check an image folder cheaply before training on it; returns its input shape [C, H, W].

    Counts the images against `max_images`, and on a bounded sample (the first
    `scan` images, spread over the classes) checks that each one decodes and,
    without `size`, that they share one size of at most `max_side` pixels per side.
    DatasetError names the problem.
    """
    from PIL import Image

    folder, _, files = image_folder_contents(path)
    count = sum(len(images) for images in files)
    if count > max_images:
        raise DatasetError(f"{folder}: {count} images; at most {max_images} can be trained on")
    if count < 2:
        raise DatasetError(f"{folder}: need at least 2 images for a training and a validation split")
    per_class = max(1, scan // len(files))
    first = None
    for images in files:
        for file in images[:per_class]:
            try:
                with Image.open(file) as image:
                    image.load()  # decodes: a cut or garbled file fails here
                    shape = (image.height, image.width)
            except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "damaged"
                raise DatasetError(f"{file}: cannot be read as an image ({error})") from None
            if size is None:
                if max(shape) > max_side:
                    raise DatasetError(
                        f"{file}: {shape[1]}x{shape[0]} pixels; at most {max_side} per side, "
                        "or give dataset.size to resize"
                    )
                if first is not None and shape != first[0]:
                    raise DatasetError(
                        f"{file}: {shape[1]}x{shape[0]} pixels but {first[1]} is "
                        f"{first[0][1]}x{first[0][0]}; give dataset.size to resize all"
                    )
                if first is None:
                    first = (shape, file.name)
    if size is not None:
        height, width = size, size
    else:
        assert first is not None  # the sample above holds at least one image, or it raised
        height, width = first[0]
    return [3 if color else 1, height, width]


def load_image_folder(
    path, size: int | None = None, color: bool = False, val_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Folder with one sub-folder per class holding PNG/JPEG images (image_folder_contents:
    hidden entries ignored, symlinks confined to the folder).

    Images are read with Pillow as grayscale (or RGB with `color`), resized to
    `size`×`size` when given; otherwise they must all share one size.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        raise DatasetError("image_folder: Pillow is needed to read images (pip install pillow)") from None
    folder, class_dirs, class_files = image_folder_contents(path)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for class_index, files in enumerate(class_files):
        for file in files:
            try:
                with Image.open(file) as opened:
                    image = opened.convert("RGB" if color else "L")
                    if size is not None:
                        image = image.resize((size, size))
                    pixels = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as error:
                raise DatasetError(f"{file}: cannot read image ({error})") from None
            if images and pixels.shape != images[0].shape:
                raise DatasetError(
                    f"{file}: size {pixels.shape[:2]} differs from {images[0].shape[:2]}; give dataset.size to resize"
                )
            images.append(pixels)
            labels.append(class_index)
    x = np.stack(images)
    x = x.transpose(0, 3, 1, 2) if color else x[:, None]
    y = np.asarray(labels, dtype=np.int64)
    if len(x) < 2:
        raise DatasetError(f"{folder}: need at least 2 images for a training and a validation split")
    x_train, y_train, x_val, y_val = _holdout(x, y, val_fraction, seed)
    params = {"path": str(path), "size": size, "color": color, "val_fraction": val_fraction}
    return make_dataset("image_folder", [d.name for d in class_dirs], x_train, y_train, x_val, y_val, params=params)


DIGITS_SIZE = 28  # sklearn_digits' 8×8 images are upscaled to this side, the size the default model expects


def upscale_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Images (N, C, h, w) resized to (N, C, size, size) by bilinear interpolation between pixel
    centres, so a digit keeps its place and its range of values."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"images: expected shape (N, C, h, w), got {x.shape}")

    def weights(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(centres).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (centres - low).astype(np.float32)

    top, bottom, fy = weights(x.shape[2])
    left, right, fx = weights(x.shape[3])
    rows = x[:, :, top] * (1 - fy)[:, None] + x[:, :, bottom] * fy[:, None]
    return rows[..., left] * (1 - fx) + rows[..., right] * fx


def digits_dataset(images, target, val_fraction: float = 0.2, seed: int = 0, size: int = DIGITS_SIZE) -> Dataset:
    """The sklearn_digits Dataset from load_digits()'s `images` (N, 8, 8, values 0..16) and `target`:
    scaled to 0..1 and upscaled to size×size."""
    x = upscale_bilinear(np.asarray(images, dtype=np.float32)[:, None] / 16.0, size)
    y = np.asarray(target, dtype=np.int64)
    x_train, y_train, x_val, y_val = _holdout(x, y, val_fraction, seed)
    params = {"val_fraction": val_fraction, "size": size}
    return make_dataset("sklearn_digits", MNIST_CLASSES, x_train, y_train, x_val, y_val, params=params)


def load_sklearn_digits(val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits (1797 images) upscaled to 28×28, when scikit-learn is installed
    (the `sklearn` extra: pip install 'kernelscope[sklearn]')."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "sklearn_digits: scikit-learn is not installed (pip install 'kernelscope[sklearn]')"
        ) from None
    digits = load_digits()
    return digits_dataset(digits.images, digits.target, val_fraction, seed)


# --------------------------------------------------------------------------
# registry: name -> loader and the parameters it takes

DATASETS: dict[str, dict[str, Any]] = {
    "shapes": {
        "description": "Generated grayscale shapes (X, plus, circle, square, triangle, lines, blob), no files needed; "
        "`classes` picks a subset or adds filled shapes (filled_square, filled_triangle, filled_diamond, "
        "horizontal_bar) or small glyphs a 5x5 kernel sees whole (x_marks, plus_marks and the four "
        '*_line_marks dashes); a class such as "circle+x_marks" draws its parts into one image',
        "loader": load_shapes,
        "params": {"n_train": 10000, "n_val": 2000, "size": 28, "noise": 0.25, "seed": 0, "classes": None},
        "shape": lambda p: ([1, p["size"], p["size"]], len(p["classes"] or SHAPE_CLASSES)),
    },
    "marks": {
        "description": "Generated small x and + marks, three per image, each small enough for one 5x5 kernel "
        "to see whole: the set on which first-layer filters become X and plus detectors; no files needed",
        "loader": lambda **params: load_shapes(**params, name="marks"),
        "params": {
            "n_train": 10000,
            "n_val": 2000,
            "size": 28,
            "noise": 0.25,
            "seed": 0,
            "classes": list(MARKS_CLASSES),
        },
        "shape": lambda p: ([1, p["size"], p["size"]], len(p["classes"] or SHAPE_CLASSES)),
    },
    "mnist": {
        "description": "MNIST handwritten digits from IDX files in `path` (raw or .gz)",
        "loader": lambda path=None, limit=None, val_fraction=0.1, seed=0: load_idx_folder(
            path, "mnist", MNIST_CLASSES, limit, val_fraction, seed
        ),
        "params": {"path": None, "limit": None, "val_fraction": 0.1, "seed": 0},
        "shape": lambda p: ([1, 28, 28], 10),
    },
    "fashion_mnist": {
        "description": "Fashion-MNIST from IDX files in `path` (raw or .gz)",
        "loader": lambda path=None, limit=None, val_fraction=0.1, seed=0: load_idx_folder(
            path, "fashion_mnist", FASHION_MNIST_CLASSES, limit, val_fraction, seed
        ),
        "params": {"path": None, "limit": None, "val_fraction": 0.1, "seed": 0},
        "shape": lambda p: ([1, 28, 28], 10),
    },
    "cifar10": {
        "description": "CIFAR-10 python batches in `path` (data_batch_1..5, test_batch)",
        "loader": load_cifar10,
        "params": {"path": None, "limit": None, "grayscale": False},
        "shape": lambda p: ([1 if p["grayscale"] else 3, 32, 32], len(CIFAR10_CLASSES)),
    },
    "image_folder": {
        "description": "One sub-folder per class of PNG/JPEG images in `path`",
        "loader": load_image_folder,
        "params": {"path": None, "size": None, "color": False, "val_fraction": 0.2, "seed": 0},
        "shape": lambda p: ([3 if p["color"] else 1, p["size"], p["size"]] if p["size"] else None, None),
    },
    "sklearn_digits": {
        "description": f"scikit-learn's 8x8 digits (1797 images) upscaled to {DIGITS_SIZE}x{DIGITS_SIZE}; "
        "listed only where scikit-learn is installed (the `sklearn` extra)",
        "loader": load_sklearn_digits,
        "needs": "sklearn",
        "params": {"val_fraction": 0.2, "seed": 0},
        "shape": lambda p: ([1, DIGITS_SIZE, DIGITS_SIZE], 10),
    },
}


def normalize_dataset_spec(spec) -> dict:
    """`"shapes"` or `{"name": ..., params}` -> complete dict with every default filled in."""
    if spec is None:
        spec = "shapes"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError("dataset: must be a dataset name or an object with a 'name'")
    name = spec.get("name", "shapes")
    if name not in DATASETS:
        raise ValueError(f"dataset.name: {names.unknown('dataset', name, DATASETS, 'choose one of')}")
    defaults = DATASETS[name]["params"]
    unknown = sorted(set(spec) - set(defaults) - {"name"})
    if unknown:
        key = unknown[0]
        # a key that is no name (empty, spaces, dots) is quoted at `dataset`, not made into a field path
        where, what = (f"dataset.{key}", "") if key.isidentifier() else ("dataset", f" {key!r}")
        raise ValueError(f"{where}: unknown parameter{what} for {name}; allowed: {', '.join(defaults)}")
    full = {"name": name, **defaults, **{k: v for k, v in spec.items() if k != "name"}}
    if "path" in defaults and not full["path"]:
        raise ValueError(f"dataset.path: required for {name}")
    for key in ("n_train", "n_val", "size", "limit"):
        value = full.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"dataset.{key}: must be a positive integer")
    if name in GENERATED_DATASETS:
        if full["size"] < 8:
            raise ValueError("dataset.size: must be >= 8")
        if (
            not isinstance(full["noise"], (int, float))
            or isinstance(full["noise"], bool)
            or not 0 <= full["noise"] <= 10
        ):
            raise ValueError("dataset.noise: must be a number between 0 and 10")
        if full["classes"] is not None:
            if not isinstance(full["classes"], (list, tuple)) or not all(isinstance(c, str) for c in full["classes"]):
                raise ValueError("dataset.classes: must be a list of shape names")
            try:
                generate_shapes(0, classes=tuple(full["classes"]))
            except ValueError as error:
                raise ValueError(f"dataset.{error}") from None
            full["classes"] = list(full["classes"])
    return full


def dataset_available(name: str) -> bool:
    """True when a dataset's loader can run here (an entry's `needs` names an optional module)."""
    import importlib.util

    needs = DATASETS[name].get("needs")
    return needs is None or importlib.util.find_spec(needs) is not None


def known_shape(spec) -> tuple[list[int] | None, int | None]:
    """(input shape [C, H, W], class count) a dataset gives, each None when only its files can tell;
    read from its DATASETS entry's `shape`, the one place each dataset states them."""
    full = normalize_dataset_spec(spec)
    return DATASETS[full["name"]]["shape"](full)


def load_dataset(spec="shapes") -> Dataset:
    """Load a dataset from its name or spec dict (see DATASETS for the parameters)."""
    return open_dataset(normalize_dataset_spec(spec))


def open_dataset(full: dict, cache: str | Path | None = None) -> Dataset:
    """Load a dataset from a spec normalize_dataset_spec already completed (not checked again).

    `cache`: a folder where a generated dataset (GENERATED_DATASETS) is kept once drawn and read
    from afterwards (`cached_dataset`); other datasets are read from their files as always.
    """
    if cache is not None and full["name"] in GENERATED_DATASETS:
        return cached_dataset(full, Path(cache))
    params = {k: v for k, v in full.items() if k != "name"}
    return DATASETS[full["name"]]["loader"](**params)


# --------------------------------------------------------------------------
# the cache of generated datasets
#
# Drawing and normalising the 12,000 images of the default shapes set costs about a second of
# CPU, more than a short lesson run's training; every run's process used to do it again. A
# generated dataset is a pure function of its spec and of this module's code, so a cache folder
# keeps each one as plain .npy files (exact float32, read memory-mapped and never written) under
# a key of the spec, this file's bytes and numpy's version: a changed generator is a new key.

CACHE_ENTRIES = 8  # datasets a cache folder keeps; the least recently written go first
_CACHED_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "mean", "std", "monitor_x", "monitor_y", "probe_x")
_MAPPED_ARRAYS = ("x_train", "x_val")  # the large ones: pages are read as batches touch them


def cache_key(full: dict) -> str:
    """The cache entry of a completed spec: spec, generator code and numpy version, hashed."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(np.__version__.encode())
    return digest.hexdigest()[:32]


def cached_dataset(full: dict, cache: Path) -> Dataset:
    """The dataset of `full` from `cache` (written there first if missing or unreadable).

    The same arrays, bit for bit, as the loader gives. Processes that miss at once take turns (a
    lock file per entry), so the second reads what the first wrote. A cache that cannot be
    written (a full disk, a read-only folder) only costs the time: the dataset is drawn here.
    """
    folder = cache / cache_key(full)
    dataset = _read_cached(folder)
    if dataset is not None:
        return dataset
    params = {k: v for k, v in full.items() if k != "name"}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f"{folder.name}.lock", "a")
    except OSError:
        return DATASETS[full["name"]]["loader"](**params)
    with lock:
        _lock(lock)
        dataset = _read_cached(folder)
        if dataset is not None:
            return dataset
        dataset = DATASETS[full["name"]]["loader"](**params)
        try:
            _write_cached(folder, dataset)
        except OSError:
            pass
        _evict(cache, keep=folder)
    return dataset


def _lock(file) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks here: two misses both draw the set
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # released when the file is closed


def _write_cached(folder: Path, dataset: Dataset) -> None:
    import json
    import shutil
    import tempfile

    shutil.rmtree(folder, ignore_errors=True)  # a damaged entry (the caller holds its lock)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        for name in _CACHED_ARRAYS:
            np.save(temporary / f"{name}.npy", getattr(dataset, name), allow_pickle=False)
        about = {"name": dataset.name, "classes": dataset.classes, "probe_labels": dataset.probe_labels}
        (temporary / "dataset.json").write_text(json.dumps({**about, "params": dataset.params}))
        os.replace(temporary, folder)  # whole or not at all
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _read_cached(folder: Path) -> Dataset | None:
    """The dataset kept in `folder`, or None when it is missing or damaged (it is then drawn again)."""
    import json

    try:
        about = json.loads((folder / "dataset.json").read_text())
        arrays = {
            name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r" if name in _MAPPED_ARRAYS else None))
            for name in _CACHED_ARRAYS
        }
    except (OSError, ValueError, KeyError):
        return None
    return Dataset(
        name=about["name"],
        classes=list(about["classes"]),
        probe_labels=list(about["probe_labels"]),
        params=dict(about["params"]),
        **arrays,
    )


def _evict(cache: Path, keep: Path) -> None:
    """Remove the least recently written entries beyond CACHE_ENTRIES (never `keep`)."""
    import shutil

    try:
        entries = [entry for entry in cache.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
        entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    except OSError:
        return
    for entry in entries[CACHE_ENTRIES:]:
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            try:
                os.unlink(cache / f"{entry.name}.lock")
            except OSError:
                pass
