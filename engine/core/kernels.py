"""Named kernel patterns: the one home of the small pictures a filter can be compared with or
start as (oriented edges and lines, X, plus, Sobel, Laplacian, blobs, ...), at any size.

`pattern(name, h, w)` draws a pattern on an h x w grid. Lines (and the X and plus made of
them) are drawn one pixel wide with a tent profile. The filter analysis (engine.analysis)
matches learned filters against `detector` (the pattern with its mean removed, at unit norm)
for the names in DETECTORS; the `kernel` initializer starts filters as `named_kernel`: the
pattern at unit L2 norm, where a line pattern is first made two-level (+1 on its line,
-1 elsewhere: the classic 3x3 X is [[1, -1, 1], [-1, 1, -1], [1, -1, 1]]). Orientation follows the image (row 0
at the top): a `diagonal_*` runs from top-left to bottom-right ("\\"), an `antidiagonal_*`
from bottom-left to top-right ("/").
"""

import math

import numpy as np

from engine.core import names


def _grid(h, w):
    """Centred pixel coordinates (v down the rows, u along the columns), 0 at the centre."""
    return np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")


def _middle(n):
    """Indices of the middle of n cells: one for odd n, two for even n."""
    return [n // 2] if n % 2 else [n // 2 - 1, n // 2]


def _plus_minus(mask):
    return np.where(mask, 1.0, -1.0)


def _tent(distance):
    """A one-pixel-wide line profile: 1 on the line, falling to 0 one pixel away."""
    return np.maximum(0.0, 1.0 - np.abs(distance))


def _derivative(n):
    """Central-difference profile: -1 … 0 … +1 (for 3: [-1, 0, 1])."""
    return np.arange(n) - (n - 1) / 2.0


def _smoothing(n):
    """Binomial smoothing profile (for 3: [1, 2, 1])."""
    return np.array([math.comb(n - 1, k) for k in range(n)], dtype=float)


def _lines(h, w, rows=False, cols=False):
    mask = np.zeros((h, w), dtype=bool)
    if rows:
        mask[_middle(h), :] = True
    if cols:
        mask[:, _middle(w)] = True
    return mask


def _line(h, w, kind):
    """A tent line through the centre: vertical, horizontal, diagonal or antidiagonal."""
    v, u = _grid(h, w)
    distance = {"vertical": u, "horizontal": v, "diagonal": (u - v) / np.sqrt(2), "antidiagonal": (u + v) / np.sqrt(2)}
    return _tent(distance[kind])


def _laplacian(h, w):
    centre = np.zeros((h, w), dtype=bool)
    centre[np.ix_(_middle(h), _middle(w))] = True
    kernel = np.where(_lines(h, w, rows=True, cols=True) & ~centre, 1.0, 0.0)
    kernel[centre] = -kernel.sum() / centre.sum()
    return kernel


def _identity(h, w):
    kernel = np.zeros((h, w))
    kernel[np.ix_(_middle(h), _middle(w))] = 1.0 / (len(_middle(h)) * len(_middle(w)))
    return kernel


def _gaussian(h, w, spread):
    v, u = _grid(h, w)
    sigma = max(h, w) / spread
    return np.exp(-(u**2 + v**2) / (2 * sigma**2))


PATTERNS = {
    "x": (
        lambda h, w: np.maximum(_line(h, w, "diagonal"), _line(h, w, "antidiagonal")),
        "+1 on both diagonals, -1 elsewhere: an X detector",
    ),
    "plus": (
        lambda h, w: np.maximum(_line(h, w, "vertical"), _line(h, w, "horizontal")),
        "+1 on the middle row and column, -1 elsewhere: a + detector",
    ),
    "sobel_x": (
        lambda h, w: np.outer(_smoothing(h), _derivative(w)),
        "Sobel: smoothing down the rows times a left-to-right difference; finds vertical edges",
    ),
    "sobel_y": (
        lambda h, w: np.outer(_derivative(h), _smoothing(w)),
        "Sobel: a top-to-bottom difference times smoothing along the columns; finds horizontal edges",
    ),
    "laplacian": (_laplacian, "the 4-neighbour Laplacian: responds to blobs and corners, not to flat regions"),
    "identity": (_identity, "1 at the centre: passes the input through"),
    "vertical_edge": (lambda h, w: np.sign(_grid(h, w)[1]), "-1 on the left half, +1 on the right half"),
    "horizontal_edge": (lambda h, w: np.sign(_grid(h, w)[0]), "-1 on the top half, +1 on the bottom half"),
    "diagonal_edge": (lambda h, w: np.sign(_grid(h, w)[1] - _grid(h, w)[0]), "-1 below the main diagonal, +1 above it"),
    "antidiagonal_edge": (
        lambda h, w: np.sign(_grid(h, w)[1] + _grid(h, w)[0]),
        "-1 above the anti-diagonal, +1 below it",
    ),
    "vertical_line": (lambda h, w: _line(h, w, "vertical"), "+1 on the middle column, -1 elsewhere"),
    "horizontal_line": (lambda h, w: _line(h, w, "horizontal"), "+1 on the middle row, -1 elsewhere"),
    "diagonal_line": (lambda h, w: _line(h, w, "diagonal"), "+1 on the main diagonal, -1 elsewhere"),
    "antidiagonal_line": (lambda h, w: _line(h, w, "antidiagonal"), "+1 on the anti-diagonal, -1 elsewhere"),
    "blob": (lambda h, w: _gaussian(h, w, 5.0), "a narrow Gaussian: centre-surround once its mean is removed"),
    "box": (lambda h, w: np.ones((h, w)), "all ones: a blur"),
    "gaussian": (lambda h, w: _gaussian(h, w, 4.0), "a Gaussian bump: a smooth blur"),
    "checkerboard": (lambda h, w: _plus_minus(np.add.outer(np.arange(h), np.arange(w)) % 2 == 0), "alternating +1/-1"),
}

# Line patterns: as hand-made kernels they start two-level (+1 on the line, -1 elsewhere).
LINES = ("x", "plus", "vertical_line", "horizontal_line", "diagonal_line", "antidiagonal_line")

# The canonical detectors a learned filter is matched against (engine.analysis).
DETECTORS = (
    "vertical_edge",
    "horizontal_edge",
    "diagonal_edge",
    "antidiagonal_edge",
    "vertical_line",
    "horizontal_line",
    "diagonal_line",
    "antidiagonal_line",
    "x",
    "plus",
    "blob",
)


def pattern(name, h, w):
    """The raw pattern `name` on an h x w grid (float64)."""
    if name not in PATTERNS:
        raise ValueError(names.unknown("kernel", name, PATTERNS))
    return np.asarray(PATTERNS[name][0](h, w), dtype=float)


def named_kernel(name, size):
    """The named pattern at size (h, w), scaled to unit L2 norm (what the `kernel` init places).

    Unit norm makes every pattern start at the same magnitude at any odd or even size (the
    classic 3x3 Sobel [-1 0 1; -2 0 2; -1 0 1] becomes that divided by √12).
    """
    h, w = size
    kernel = pattern(name, h, w)
    if name in LINES:
        kernel = _plus_minus(kernel >= kernel.max() - 1e-9)
    norm = np.linalg.norm(kernel)
    if norm == 0:
        raise ValueError(f"kernel {name!r} is all zeros at size {h}x{w}; it needs at least 3x3")
    return kernel / norm


def detector(name, h, w):
    """The pattern with its mean removed, at unit norm; None where it has no spatial variation
    at this size (a 1x1 grid, say)."""
    centred = pattern(name, h, w)
    centred = centred - centred.mean()
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 1e-9 else None
