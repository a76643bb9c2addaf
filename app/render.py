"""Draw convolution filters as pictures: a diverging colormap centred at zero.

`diverging_rgb(values, scale)` maps numbers to colours (negative blue, zero
white, positive red; |value| >= scale saturates). `filter_grid(weight, scale)`
lays out a conv layer's kernels (out, in, kh, kw) as a grid of blocks, one
block per filter, the filter's input channels side by side inside its block,
and returns a Pillow image. `png_bytes(image)` encodes it. The same functions
draw each frame of the evolution GIF, so a fixed `scale` keeps colours
comparable across frames.

`RenderSlots` is the one bounded pool every heavy render (filter PNGs, the GIF,
exports, filter explanations, the init probe) runs under: limits.MAX_RENDERS at
once, limits.MAX_RENDERS_WAITING more wait their turn, and beyond that the
request is answered 429 with Retry-After, so a burst of renders cannot take the
server's memory or both cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math

import numpy as np
from PIL import Image

# Anchors of a blue-white-red map (ColorBrewer RdBu, reversed), from -1 to +1.
_ANCHORS = np.array(
    [
        [5, 48, 97],
        [33, 102, 172],
        [67, 147, 195],
        [146, 197, 222],
        [209, 229, 240],
        [247, 247, 247],
        [253, 219, 199],
        [244, 165, 130],
        [214, 96, 77],
        [178, 24, 43],
        [103, 0, 31],
    ],
    dtype=np.float64,
)
_ANCHOR_POSITIONS = np.linspace(-1.0, 1.0, len(_ANCHORS))
BACKGROUND = (40, 40, 40)


def auto_scale(weight: np.ndarray) -> float:
    """The default scale: the largest |weight|, or 1.0 for an all-zero layer."""
    peak = float(np.max(np.abs(weight))) if np.size(weight) else 0.0
    return peak if peak > 0 and math.isfinite(peak) else 1.0


def diverging_rgb(values: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB array of shape values.shape + (3,); 0 is white, ±scale the darkest red/blue."""
    if not scale > 0:
        raise ValueError(f"scale: must be > 0, got {scale}")
    values = np.asarray(values, dtype=np.float64)
    t = np.clip(np.nan_to_num(values / scale, nan=0.0), -1.0, 1.0)
    rgb = np.empty(values.shape + (3,), dtype=np.float64)
    for channel in range(3):
        rgb[..., channel] = np.interp(t, _ANCHOR_POSITIONS, _ANCHORS[:, channel])
    return np.round(rgb).astype(np.uint8)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding `count` blocks."""
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    return rows, cols


def filter_grid_size(shape, pixel: int = 12, gap: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of filter_grid's picture of a (out, in, kh, kw) weight."""
    out_channels, in_channels, kh, kw = shape
    rows, cols = grid_shape(out_channels)
    block_w = in_channels * kw * pixel + (in_channels - 1) * gap
    return cols * block_w + (cols + 1) * 2 * gap, rows * kh * pixel + (rows + 1) * 2 * gap


def largest_pixel_within(shape, pixel: int, max_pixels: int, extra_height: int = 0, gap: int = 2) -> int | None:
    """The largest screen pixels per weight, at most `pixel`, whose filter grid (plus
    extra_height rows) has at most max_pixels pixels; None if even 1 is too many."""
    for candidate in range(pixel, 0, -1):
        width, height = filter_grid_size(shape, candidate, gap)
        if width * (height + extra_height) <= max_pixels:
            return candidate
    return None


def filter_grid(weight, scale: float | None = None, pixel: int = 12, gap: int = 2) -> Image.Image:
    """Picture of a conv layer's kernels, shape (out, in, kh, kw).

    pixel: screen pixels per kernel weight (nearest-neighbour, so weights stay crisp).
    gap: background pixels between kernels and around the grid.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 2:
        weight = weight[None, None]
    if weight.ndim != 4:
        raise ValueError(f"weight: expected shape (out, in, kh, kw), got {weight.shape}")
    if pixel < 1 or pixel > 64:
        raise ValueError(f"pixel: must be between 1 and 64, got {pixel}")
    if gap < 0 or gap > 64:
        raise ValueError(f"gap: must be between 0 and 64, got {gap}")
    scale = auto_scale(weight) if scale is None else float(scale)
    colors = diverging_rgb(weight, scale)  # (out, in, kh, kw, 3)
    out_channels, in_channels, kh, kw = weight.shape
    kernel_h, kernel_w = kh * pixel, kw * pixel
    block_w = in_channels * kernel_w + (in_channels - 1) * gap
    rows, cols = grid_shape(out_channels)
    width, height = filter_grid_size(weight.shape, pixel, gap)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for index in range(out_channels):
        row, col = divmod(index, cols)
        top = 2 * gap + row * (kernel_h + 2 * gap)
        left = 2 * gap + col * (block_w + 2 * gap)
        for channel in range(in_channels):
            tile = colors[index, channel].repeat(pixel, axis=0).repeat(pixel, axis=1)
            x = left + channel * (kernel_w + gap)
            canvas[top : top + kernel_h, x : x + kernel_w] = tile
    return Image.fromarray(canvas)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class RenderSlots:
    """A bounded pool of render slots with a bounded wait (see the module docstring)."""

    def __init__(self, running: int, waiting: int, retry_after: int):
        self.running, self.waiting_limit, self.retry_after = running, waiting, retry_after
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def slot(self):
        from app.runs import QueueFull

        if self._semaphore is None:  # made in the serving loop
            self._semaphore = asyncio.Semaphore(self.running)
        if self._semaphore.locked():
            if self.waiting >= self.waiting_limit:
                raise QueueFull(
                    f"render: {self.running} pictures or exports are being made and "
                    f"{self.waiting} wait; retry in {self.retry_after} s",
                    retry_after=self.retry_after,
                )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()
