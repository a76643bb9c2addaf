"""Draw convolution filters as pictures: a diverging colormap centred at zero.

`diverging_rgb(values, scale)` maps numbers to colours (negative blue, zero
white, positive red; |value| >= scale saturates). `filter_grid(weight, scale)`
lays out a conv layer's kernels (out, in, kh, kw) as a grid of blocks, one
block per filter, the filter's input channels side by side inside its block,
and returns a Pillow image. `png_bytes(image)` encodes it. `filter_grid_indexed`
draws the same picture as palette indices (one byte per pixel, the map in
PALETTE_LEVELS steps): the frames of the evolution GIF, which then need no
colour quantization, so a GIF costs a fraction of the memory and time; a fixed
`scale` keeps colours comparable across frames.

`RenderSlots` is the one bounded pool every heavy render (filter PNGs, the GIF,
exports, filter explanations, the init probe) runs under: limits.MAX_RENDERS at
once, limits.MAX_RENDERS_WAITING more wait their turn, and beyond that the
request is answered 429 with Retry-After, so a burst of renders cannot take the
server's memory or both cores. When the last render of a burst is done, the memory the
renders freed is given back to the system (malloc_trim), not kept for the next burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math

import numpy as np
from PIL import Image

from engine.fast.memory import return_freed_memory

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
CAPTION = (235, 235, 235)
# An indexed picture: indices 0 .. PALETTE_LEVELS-1 are the map from -scale to +scale (an odd
# count, so zero has its own white), then the background and the caption text.
PALETTE_LEVELS = 253
BACKGROUND_INDEX, CAPTION_INDEX = PALETTE_LEVELS, PALETTE_LEVELS + 1


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


def _checked_weight(weight, pixel: int, gap: int) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 2:
        weight = weight[None, None]
    if weight.ndim != 4:
        raise ValueError(f"weight: expected shape (out, in, kh, kw), got {weight.shape}")
    if pixel < 1 or pixel > 64:
        raise ValueError(f"pixel: must be between 1 and 64, got {pixel}")
    if gap < 0 or gap > 64:
        raise ValueError(f"gap: must be between 0 and 64, got {gap}")
    return weight


def _layout(cells: np.ndarray, background, pixel: int, gap: int) -> np.ndarray:
    """The grid canvas of per-weight cells (out, in, kh, kw, *colour): blocks of pixel×pixel."""
    out_channels, in_channels, kh, kw = cells.shape[:4]
    kernel_h, kernel_w = kh * pixel, kw * pixel
    block_w = in_channels * kernel_w + (in_channels - 1) * gap
    _, cols = grid_shape(out_channels)
    width, height = filter_grid_size(cells.shape[:4], pixel, gap)
    canvas = np.empty((height, width, *cells.shape[4:]), dtype=np.uint8)
    canvas[:] = background
    # every kernel enlarged at once, then each filter's input channels side by side with `gap` between
    tiles = cells.repeat(pixel, axis=2).repeat(pixel, axis=3)  # (out, in, kernel_h, kernel_w, *colour)
    padded = np.empty((out_channels, in_channels, kernel_h, kernel_w + gap, *cells.shape[4:]), dtype=np.uint8)
    padded[:] = background
    padded[:, :, :, :kernel_w] = tiles
    order = (0, 2, 1, 3, *range(4, padded.ndim))
    blocks = padded.transpose(order).reshape(out_channels, kernel_h, -1, *cells.shape[4:])[:, :, :block_w]
    for index in range(out_channels):
        row, col = divmod(index, cols)
        top = 2 * gap + row * (kernel_h + 2 * gap)
        left = 2 * gap + col * (block_w + 2 * gap)
        canvas[top : top + kernel_h, left : left + block_w] = blocks[index]
    return canvas


def filter_grid(weight, scale: float | None = None, pixel: int = 12, gap: int = 2) -> Image.Image:
    """Picture of a conv layer's kernels, shape (out, in, kh, kw).

    pixel: screen pixels per kernel weight (nearest-neighbour, so weights stay crisp).
    gap: background pixels between kernels and around the grid.
    """
    weight = _checked_weight(weight, pixel, gap)
    scale = auto_scale(weight) if scale is None else float(scale)
    return Image.fromarray(_layout(diverging_rgb(weight, scale), BACKGROUND, pixel, gap))


def palette() -> list[int]:
    """The flat RGB palette of an indexed picture (see PALETTE_LEVELS)."""
    levels = diverging_rgb(np.linspace(-1.0, 1.0, PALETTE_LEVELS), 1.0)
    return [int(v) for v in levels.ravel()] + [*BACKGROUND, *CAPTION]


def diverging_index(values: np.ndarray, scale: float) -> np.ndarray:
    """uint8 palette indices of values.shape: 0 is -scale (or below), PALETTE_LEVELS // 2 zero."""
    if not scale > 0:
        raise ValueError(f"scale: must be > 0, got {scale}")
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64) / scale, nan=0.0), -1.0, 1.0)
    return np.round((t + 1.0) * ((PALETTE_LEVELS - 1) / 2)).astype(np.uint8)


def filter_grid_indexed(weight, scale: float | None = None, pixel: int = 12, gap: int = 2) -> Image.Image:
    """filter_grid as a palette ("P") image: one byte per pixel, colours from palette()."""
    weight = _checked_weight(weight, pixel, gap)
    scale = auto_scale(weight) if scale is None else float(scale)
    indices = _layout(diverging_index(weight, scale), BACKGROUND_INDEX, pixel, gap)
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    image.putpalette(palette())
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class RenderSlots:
    """A bounded pool of render slots with a bounded wait (see the module docstring)."""

    def __init__(self, running: int, waiting: int, retry_after: int):
        self.running, self.waiting_limit, self.retry_after = running, waiting, retry_after
        self.waiting = 0
        self.active = 0
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
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._semaphore.release()
            if self.active == 0 and self.waiting == 0:
                await asyncio.to_thread(return_freed_memory)
