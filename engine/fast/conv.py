"""Convolution and pooling kernels on the internal (C, N, H, W) layout: what the fast model runs.

The fast kernels work on the engine's internal layout (C, N, H, W): channels first, batch
second, so that for one kernel offset (i, j) a chunk of images is a single (C, n*Ho*Wo)
matrix, the unfolded windows are a few contiguous copies, and the convolution is one matrix
product per image, cut into the blocks OpenBLAS multiplies fastest. Semantics are PyTorch's
`conv2d` (cross-correlation, zero padding, stride) and `max_pool2d` / `avg_pool2d`
(floor mode, the first maximum of a window takes the gradient).

The slow loop references they are tested against live in engine.core.reference.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.core.layers import output_size


def _window(x, i, j, rows, cols, stride_h, stride_w):
    """The strided view of x (.., H, W) read by kernel offset (i, j): shape (.., rows, cols)."""
    return x[..., i : i + stride_h * (rows - 1) + 1 : stride_h, j : j + stride_w * (cols - 1) + 1 : stride_w]


def pad_spatial(x, pad_h, pad_w):
    """Zero-pad the last two axes of x (a new array; x itself when there is no padding)."""
    if pad_h == 0 and pad_w == 0:
        return x
    *lead, height, width = x.shape
    padded = np.zeros((*lead, height + 2 * pad_h, width + 2 * pad_w), dtype=x.dtype)
    padded[..., pad_h : pad_h + height, pad_w : pad_w + width] = x
    return padded


# ----------------------------------------------------------------------------------------
# Convolution, fast (internal layout)
# ----------------------------------------------------------------------------------------

# The batch is processed a few images at a time so that the im2col matrix of a chunk (and
# the matmul's output) stays in the CPU cache: about this many float elements per chunk.
# Measured against 320 * 1024, interleaved in one process, batch 32: deep 0.95-0.97 (its
# narrow convs get 6 images a chunk instead of 4), medium 0.99-1.0, small and demo level.
CHUNK_ELEMENTS = 448 * 1024


def _images_per_chunk(rows, out_rows, pixels):
    """How many images go into one chunk whose im2col is (rows, images * pixels)."""
    return max(1, CHUNK_ELEMENTS // ((rows + out_rows) * pixels))


class FlatPadded:
    """A batch x (C, N, H, W) zero-padded by (pad_h, pad_w) for stride-1 windows, laid out
    flat with shared borders: every row is pad_w zeros then its W values, every image pad_h
    zero rows then its H rows, and pad_h zero rows (and pad_w zeros) close the batch. A row's
    right border is the next row's left zeros, and an image's bottom border the next image's
    top rows, so padded position (r, c) of image n is element n*image + r*row + c of a
    channel's line even where c runs past the row. Kernel offset (i, j) of the window at
    (r, c) is then that window's start shifted by i*row + j: the windows of a whole chunk are
    one contiguous slice per offset, and fewer border cells are computed and thrown away
    than with a fully padded image ((H + pad_h) * (W + pad_w) cells per image)."""

    def __init__(self, x, pad_h, pad_w):
        self._layout(x.shape, (pad_h, pad_w))
        self.data = np.zeros((x.shape[0], self.length), dtype=x.dtype)
        self.valid()[...] = x

    def _layout(self, shape, padding):
        channels, batch, height, width = shape
        self.shape = tuple(shape)
        self.padding = tuple(padding)
        self.row = width + padding[1]
        self.grid_hw = (height + padding[0], self.row)  # window starts per image, valid or not
        self.image = self.grid_hw[0] * self.row
        self.offset = padding[0] * self.row + padding[1]  # where pixel (0, 0) of image 0 lies
        self.length = batch * self.image + self.offset

    @classmethod
    def for_output(cls, shape, padding, dtype):
        """An unfilled layout for shape (C, N, H, W), for a flat correlation to write into
        (see grid): its first and last `offset` cells are zero, the rest is unset until
        filled, and the border cells inside it take the correlation's junk window starts,
        to be zeroed (zero_border) or masked by whoever uses them."""
        flat = cls.__new__(cls)
        flat._layout(shape, padding)
        flat.data = np.empty((shape[0], flat.length), dtype=dtype)
        flat.data[:, : flat.offset] = 0
        flat.data[:, flat.length - flat.offset :] = 0
        return flat

    def body(self):
        """The cells of every image, (C, N, H + pad_h, W + pad_w): each starts with its borders."""
        return self.data[:, : self.length - self.offset].reshape(self.shape[0], self.shape[1], *self.grid_hw)

    def valid(self):
        """The pixels, a (C, N, H, W) view."""
        return self.body()[:, :, self.padding[0] :, self.padding[1] :]

    def grid(self):
        """The view a flat correlation with this layout's row and image lengths writes its
        window starts into, so that window start q lands on pixel q: (C, N * image)."""
        return self.data[:, self.offset :]

    def zero_border(self):
        """Zero every cell that is not a pixel."""
        body = self.body()
        body[:, :, : self.padding[0]] = 0
        body[:, :, :, : self.padding[1]] = 0
        self.data[:, self.length - self.offset :] = 0

    def same_grid(self, other):
        """Whether other has the same row and image lengths (window start q of one is cell q
        of the other)."""
        return (self.row, self.image) == (other.row, other.image)

    @property
    def dtype(self):
        return self.data.dtype

    @staticmethod
    def waste(height, width, pad_h, pad_w, out_hw):
        """Window starts computed per valid output."""
        return (height + pad_h) * (width + pad_w) / (out_hw[0] * out_hw[1])


def _fits_flat(shape, kernel, stride, padding, out_hw):
    """Whether stride-1 windows run on the shared-border flat layout (FlatPadded)."""
    height, width = shape[2], shape[3]
    return (
        stride == (1, 1)
        and padding[0] < kernel[0]
        and padding[1] < kernel[1]
        and FlatPadded.waste(height, width, *padding, out_hw) <= FLAT_MAX_WASTE
    )


def flat_chain_padding(in_shape, kernel, stride, padding, next_kernel, next_stride, next_padding):
    """How a conv over in_shape (C, H, W) lays out its output so that the next conv reads it in
    place (FlatPadded padded by the next conv's padding), or None when the two cannot chain.
    They chain when both run on the flat layout with stride 1 and the next padding is
    kernel - 1 - padding: then the first conv's window-start grid has the row and image
    lengths of the next conv's padded input, and window start q lands on pixel q."""
    if tuple(stride) != (1, 1) or tuple(next_stride) != (1, 1):
        return None
    if tuple(next_padding) != (kernel[0] - 1 - padding[0], kernel[1] - 1 - padding[1]):
        return None
    height, width = in_shape[1], in_shape[2]
    out_hw = (output_size(height, kernel[0], 1, padding[0]), output_size(width, kernel[1], 1, padding[1]))
    next_hw = (
        output_size(out_hw[0], next_kernel[0], 1, next_padding[0]),
        output_size(out_hw[1], next_kernel[1], 1, next_padding[1]),
    )
    if min(*out_hw, *next_hw) < 1:
        return None
    if not (
        _fits_flat((0, 0, height, width), kernel, stride, padding, out_hw)
        and _fits_flat((0, 0, *out_hw), next_kernel, next_stride, next_padding, next_hw)
    ):
        return None
    return tuple(next_padding)


def _im2col(padded, first, last, kernel, out_hw, stride, cols):
    """Fill cols (kh, kw, C, n, Ho, Wo) with the windows of images first..last of padded
    (C, N, Hp, Wp); the flat layout is unfolded by _flat_chunks instead."""
    kernel_h, kernel_w = kernel
    out_h, out_w = out_hw
    images = padded[:, first:last]
    for i in range(kernel_h):
        for j in range(kernel_w):
            cols[i, j] = _window(images, i, j, out_h, out_w, *stride)
    return cols.reshape(-1, (last - first) * out_h * out_w)


# Stride-1 windows are unfolded from the flat layout (one long contiguous copy per channel
# and offset) instead of row by row (many short copies) when the matmul work this wastes on
# window starts that cross the image border, grid cells / output pixels, is at most this.
FLAT_MAX_WASTE = 1.5


def starts_per_image(padded, out_hw):
    """How many window starts of each image of a FlatPadded a flat correlation computes:
    (out_h - 1) * row + out_w, from the image's first start to its last valid one. The starts
    after it (the border columns past the last output row, and the rows past it) are junk
    that feeds no output, so they are skipped, and with them a few percent of every product
    (about 3% for a 32x32 image padded by 1, 17% for 13x13 unpadded under a 3x3 kernel)."""
    return (out_hw[0] - 1) * padded.row + out_hw[1]


def image_starts(grid, image, span, first, last):
    """The first `span` cells of images first..last-1 of a window-start grid (C, N * image), as
    a (last - first, C, span) view: what one chunk of a flat correlation writes or reads."""
    channels = grid.shape[0]
    by_image = grid.reshape(channels, -1, image)  # splits the contiguous last axis: always a view
    return by_image[:, first:last, :span].transpose(1, 0, 2)


def _zero_skipped_starts(grid, image, span):
    """Zero the grid cells past each image's last computed start (see starts_per_image), so an
    output layout handed on (a chained conv's dx, masked by a multiply) never holds garbage."""
    grid.reshape(grid.shape[0], -1, image)[:, :, span:] = 0


def _flat_chunks(padded, kernel, out_hw, out_rows):
    """Walk the images of a FlatPadded a chunk at a time: yields (first, last, unfolded) with
    unfolded (last - first, kh*kw*C, span) the windows of images first..last-1 at their first
    span = starts_per_image window starts, rows ordered (i, j, c); one buffer, reused from
    chunk to chunk. Each image's matrix is contiguous and the products run one image at a time
    (np.matmul over the leading axis): measured against one product per chunk, as fast for
    288-row convs and about twice as fast for the 27-row weight gradient of a 3-channel input."""
    kernel_h, kernel_w = kernel
    channels, batch = padded.shape[:2]
    rows = channels * kernel_h * kernel_w
    source, image = padded.data, padded.image
    span = starts_per_image(padded, out_hw)
    images = min(batch, _images_per_chunk(rows, out_rows, image))
    cols = np.empty(images * rows * span, dtype=source.dtype)
    reach = (kernel_h - 1) * padded.row + kernel_w - 1 + span  # what one image's windows read
    # (C, N, reach): image n's cells from its first window start on, overlapping the next image
    by_image = as_strided(
        source, (channels, batch, reach), (source.strides[0], image * source.itemsize, source.itemsize), writeable=False
    ).transpose(1, 0, 2)
    for first in range(0, batch, images):
        last = min(first + images, batch)
        unfolded = cols[: (last - first) * rows * span].reshape(last - first, kernel_h, kernel_w, channels, span)
        for i in range(kernel_h):
            for j in range(kernel_w):
                shift = i * padded.row + j
                unfolded[:, i, j] = by_image[first:last, :, shift : shift + span]
        yield first, last, unfolded.reshape(last - first, rows, span)


# ----------------------------------------------------------------------------------------
# Matrix products cut to the size of OpenBLAS's small-matrix kernels
# ----------------------------------------------------------------------------------------

# OpenBLAS (SkylakeX kernels, as numpy ships it) multiplies a product of at most 10**6
# multiply-adds (M*N*K) with its small-matrix kernels, which read the operands in place instead
# of packing them first. A conv's product (O x kh*kw*C) @ (kh*kw*C x starts) is far larger, so
# it is cut into column blocks under that size: one image of medium's second conv measured
# 113 GFLOP/s in blocks of 64 starts against 89 in one product (32 x 288 @ 288 x 1056).
# Where the BLAS has no such path the blocks cost nothing measurable (OpenBLAS's Haswell
# kernels: medium's step level).
SMALL_PRODUCT = 10**6


def _blocks_along(length, most, granule):
    """(blocks, size): how an axis of `length` is cut into whole blocks of `size`, the largest
    multiple of `granule` up to `most`; blocks is 0 when fewer than two such blocks fit (then
    the product is not worth cutting), and the cells past blocks * size form one tail."""
    size = most // granule * granule
    blocks = length // size if size else 0
    return (blocks, size) if blocks >= 2 else (0, size)


def multiply_column_blocks(weight_matrix, unfolded, out):
    """out[n] = weight_matrix @ unfolded[n] for every image n (unfolded (n, rows, span), out
    (n, O, span), any strides with contiguous columns), in column blocks of SMALL_PRODUCT."""
    out_rows, rows = weight_matrix.shape
    images, _, span = unfolded.shape
    blocks, width = _blocks_along(span, SMALL_PRODUCT // (out_rows * rows), 16)  # whole AVX-512 registers of floats
    if not blocks:
        np.matmul(weight_matrix, unfolded, out=out)
        return
    head = blocks * width
    np.matmul(
        weight_matrix,
        unfolded[:, :, :head].reshape(images, rows, blocks, width).transpose(0, 2, 1, 3),
        out=out[:, :, :head].reshape(images, out_rows, blocks, width).transpose(0, 2, 1, 3),
    )
    if head < span:
        np.matmul(weight_matrix, unfolded[:, :, head:], out=out[:, :, head:])


# A weight gradient's product (kh*kw*C x starts) @ (starts x O) reads its second operand
# transposed; OpenBLAS takes that form through its small-matrix kernels only while the result
# block has at most this many cells (and M*N*K stays under SMALL_PRODUCT).
SMALL_TRANSPOSED_RESULT = 1200


def multiply_row_blocks(unfolded, other):
    """unfolded[n] @ other[n] for every image n (unfolded (n, rows, span), other (n, span, O)
    read transposed), in blocks of rows small enough for OpenBLAS's small-matrix kernels: the
    rows of the result are independent, so nothing has to be summed afterwards."""
    images, rows, span = unfolded.shape
    out_rows = other.shape[2]
    blocks, height = _blocks_along(
        rows, min(SMALL_PRODUCT // (out_rows * span), SMALL_TRANSPOSED_RESULT // out_rows), 8
    )
    if not blocks:
        return np.matmul(unfolded, other)
    products = np.empty((images, rows, out_rows), dtype=np.result_type(unfolded, other))
    head = blocks * height
    np.matmul(
        unfolded[:, :head].reshape(images, blocks, height, span),
        other[:, None],
        out=products[:, :head].reshape(images, blocks, height, out_rows),
    )
    if head < rows:
        np.matmul(unfolded[:, head:], other, out=products[:, head:])
    return products


def multiply_inner_blocks(left, right):
    """left (rows, length) @ right (O, length).T, as a sum over blocks of the long inner axis
    small enough for SMALL_PRODUCT: for products whose result is tiny (a narrow conv's weight
    gradient, 9 x 8 for small's first conv), so the sum costs nothing. Measured on demo's
    first conv (25 x 8 over 25 088 cells): the whole training step 0.84-0.85 of the time."""
    rows, length = left.shape
    out_rows = right.shape[0]
    blocks, width = _blocks_along(length, SMALL_PRODUCT // (rows * out_rows), 16)
    if not blocks:
        return left @ right.T
    head = blocks * width
    total = np.matmul(
        left[:, :head].reshape(rows, blocks, width).transpose(1, 0, 2),
        right[:, :head].reshape(out_rows, blocks, width).transpose(1, 2, 0),
    ).sum(axis=0)
    if head < length:
        total += left[:, head:] @ right[:, head:].T
    return total


# ----------------------------------------------------------------------------------------
# Convs unfolded along the kernel's columns only: narrow ones and wide ones
# ----------------------------------------------------------------------------------------

# A conv with few channels in and out (the deep preset's 8 -> 8 filters) makes products too
# small for the per-image matmuls above to pay for the full im2col copy (kh*kw*C rows). On the
# flat layout, kernel row i of every window start of a chunk is the j-unfolded chunk shifted
# by i rows: the chunk is copied kw times (rows (j, c)) instead of kh*kw times, and the
# product is kh matmuls of (O x kw*C) @ (kw*C x all the chunk's starts), summed. Measured on
# the deep preset's conv (8 -> 8, 3x3, padding 1, 16 images of 14x14, BLAS on one thread, CPU
# time interleaved in one process): 0.55-0.75 of the im2col forward; the deep preset's whole
# training pass 0.73-0.80 (benchmarks/narrow_ab.py). Used when the unfolded rows and the
# product's rows are both at most these (the shapes decide, never the data, so a part gives
# the same bits wherever it runs). With 16 product rows (small's and demo's second conv,
# 8 -> 16 unpadded) the pass was 1.2-1.3x slower, so those keep the im2col; the input
# gradient of that conv (the flipped kernel: 144 rows, 8 product rows) takes this path. Whole
# training passes, before/after in fresh processes alternating, one process, CPU time (2026-12-03,
# a 2-core Xeon with AVX-512): demo 0.90 (0.82-1.05, 10 rounds), small 0.95 (0.84-1.00, 8),
# where `deep`, whose code path did not change, measured 0.96 (0.91-1.01, 4): this machine's noise.
NARROW_ROWS = 144
NARROW_OUT_ROWS = 8
# Wide convs take this path too: at 32 channels in and out (medium's second conv) the kw copies
# cost a third of the full unfold, and OpenBLAS multiplied (32 x 96) @ (96 x starts) about as
# fast as (32 x 288) @ (288 x starts) here. medium's training pass (32 images, the same A/B)
# measured 0.93 (0.90-0.99, 8 rounds) with its second and third convs on this path. Its first
# conv (3 channels in, 27 rows) keeps the im2col: its forward alone was 1.1-1.3x slower.
WIDE_ROWS = 32 * 3 * 3
WIDE_OUT_ROWS = 32
# Images per chunk of this path: about this many floats of unfolded rows and output.
# Measured on the deep preset's forward of 250 images (CPU time, one process, three rounds):
# 0.77-0.91 of the im2col path with 160 Ki, level with 448 Ki (CHUNK_ELEMENTS), 0.81-0.91 with 96 Ki.
NARROW_CHUNK_ELEMENTS = 160 * 1024


def _columns_only(rows, out_rows):
    """Whether a flat correlation with `rows` unfolded rows (kh*kw*C) and `out_rows` product rows
    unfolds along the kernel's columns only (narrow or wide, see above) or takes the im2col."""
    narrow = rows <= NARROW_ROWS and out_rows <= NARROW_OUT_ROWS
    wide = rows >= WIDE_ROWS and out_rows >= WIDE_OUT_ROWS
    return narrow or wide


def _row_chunks(padded, kernel, out_hw, out_rows):
    """Walk the images of a FlatPadded a chunk at a time: yields (start, count, cols) where the
    chunk's window starts are grid cells start..start+count-1 (its images' starts up to the
    last image's last valid one, see starts_per_image) and cols (kw*C, count + (kh-1)*row) is
    the chunk unfolded along the kernel's columns: cols[(j, c), t] = cell start + t + j of
    channel c, counted from the layout's first cell. One buffer, reused."""
    kernel_h, kernel_w = kernel
    channels, batch = padded.shape[:2]
    source, image, row = padded.data, padded.image, padded.row
    span = starts_per_image(padded, out_hw)
    images = max(1, min(batch, NARROW_CHUNK_ELEMENTS // ((kernel_w * channels + out_rows) * image)))
    buffer = np.empty(kernel_w * channels * ((images - 1) * image + span + (kernel_h - 1) * row), dtype=source.dtype)
    for first in range(0, batch, images):
        last = min(first + images, batch)
        start = first * image
        count = (last - first - 1) * image + span
        width = count + (kernel_h - 1) * row
        # the reads end at cell (last - 1) * image + span + (kh - 1) * row + kw - 2: inside the
        # layout, as for _flat_chunks (the closing pad rows hold the last image's windows)
        shifted = as_strided(
            source[:, start:],
            (kernel_w, channels, width),
            (source.itemsize, source.strides[0], source.itemsize),
            writeable=False,
        )
        cols = buffer[: kernel_w * channels * width].reshape(kernel_w, channels, width)
        np.copyto(cols, shifted)
        yield start, count, cols.reshape(kernel_w * channels, width)


def _by_kernel_row(matrix, kernel_h):
    """(O, kh*kw*C) with columns ordered (i, j, c) -> (kh, O, kw*C), one matrix per kernel row."""
    out_rows, rows = matrix.shape
    return np.ascontiguousarray(matrix.reshape(out_rows, kernel_h, rows // kernel_h).transpose(1, 0, 2))


def _kernel_row_product(matrices, cols, row, count, out, scratch):
    """out (O, count) = sum over kernel rows i of matrices[i] @ cols shifted by i rows."""
    np.matmul(matrices[0], cols[:, :count], out=out)
    for i in range(1, matrices.shape[0]):
        np.matmul(matrices[i], cols[:, i * row : i * row + count], out=scratch[:, :count])
        out += scratch[:, :count]


def _columns_only_correlate(padded, weight_matrix, kernel, out_hw, grid):
    """The flat correlation of _correlate, unfolded along the kernel's columns only, written into
    grid (O, N * image)."""
    matrices = _by_kernel_row(weight_matrix, kernel[0])
    scratch = None
    for start, count, cols in _row_chunks(padded, kernel, out_hw, weight_matrix.shape[0]):
        if scratch is None:
            scratch = np.empty((weight_matrix.shape[0], count), dtype=grid.dtype)
        _kernel_row_product(matrices, cols, padded.row, count, grid[:, start : start + count], scratch)


def _kernel_row_grads(cols, other, kernel_h, row, count, total):
    """total (kh*kw*C', O') += for each kernel row i, cols shifted by i rows @ other[:, :count].T
    (rows ordered (i, j, c')), chunk after chunk in order; total None starts from zero."""
    block = cols.shape[0]
    if total is None:
        total = np.zeros((kernel_h * block, other.shape[0]), dtype=np.result_type(cols, other))
    right = other[:, :count].T
    for i in range(kernel_h):
        total[i * block : (i + 1) * block] += cols[:, i * row : i * row + count] @ right
    return total


def _correlate(padded, weight_matrix, kernel, stride, out_hw, bias=None, into=None):
    """weight_matrix (O, kh*kw*C) times the unfolded windows of padded (a FlatPadded, or an
    ordinary padded array (C, N, Hp, Wp)), a chunk at a time, plus bias (O,) if given: the
    correlation (O, N, Ho, Wo).

    On a FlatPadded each chunk's product goes straight into the grid of every window start,
    and the result is a view of that grid (not contiguous), which saves copying it out. The
    grid is into's (see FlatPadded.for_output) when into is given: then the result is
    into.valid() and into's border cells hold the junk window starts."""
    out_channels, rows = weight_matrix.shape
    kernel_h, kernel_w = kernel
    out_h, out_w = out_hw
    dtype = weight_matrix.dtype
    bias_column = None if bias is None else bias.reshape(out_channels, 1, 1, 1).astype(dtype, copy=False)
    if not isinstance(padded, FlatPadded):
        channels, batch = padded.shape[:2]
        chunk = min(batch, _images_per_chunk(rows, out_channels, out_h * out_w))
        out = np.empty((out_channels, batch, out_h, out_w), dtype=dtype)
        cols = np.empty((kernel_h, kernel_w, channels, chunk, out_h, out_w), dtype=dtype)
        for first in range(0, batch, chunk):
            last = min(first + chunk, batch)
            unfolded = _im2col(padded, first, last, kernel, out_hw, stride, cols[:, :, :, : last - first])
            np.matmul(weight_matrix, unfolded, out=out[:, first:last].reshape(out_channels, -1))
            if bias_column is not None:
                out[:, first:last] += bias_column
        return out
    grid = _output_grid(padded, into, out_channels, dtype)
    span = starts_per_image(padded, out_hw)
    if _columns_only(rows, out_channels):
        _columns_only_correlate(padded, weight_matrix, kernel, out_hw, grid)
    else:
        for first, last, unfolded in _flat_chunks(padded, kernel, out_hw, out_channels):
            multiply_column_blocks(weight_matrix, unfolded, image_starts(grid, padded.image, span, first, last))
    if into is not None:
        _zero_skipped_starts(grid, padded.image, span)
    out = grid.reshape(out_channels, padded.shape[1], *padded.grid_hw)[:, :, :out_h, :out_w]  # the valid window starts
    if bias_column is not None:
        out += bias_column
    return out


def _output_grid(padded, into, channels, dtype):
    """Where a flat correlation over padded writes its window starts: into's grid, or a new
    array (channels, N * image) whose cells past the last valid start stay junk."""
    if into is None:
        return np.empty((channels, padded.shape[1] * padded.image), dtype=dtype)
    if not into.same_grid(padded) or into.shape[:2] != (channels, padded.shape[1]):
        raise ValueError("the output layout does not match the correlation's window starts")
    return into.grid()


def conv_output_shape(x_shape, weight_shape, stride, padding):
    """(O, N, Ho, Wo): the shape of a conv's output for x (C, N, H, W) and weight (O, C, kh, kw)."""
    return (
        weight_shape[0],
        x_shape[1],
        *(
            output_size(size, kernel, step, pad)
            for size, kernel, step, pad in zip(x_shape[2:], weight_shape[2:], stride, padding)
        ),
    )


def _pad_for_windows(x, kernel, stride, padding, out_hw):
    """x zero-padded for the windows of a conv: a FlatPadded when the flat layout fits (x
    itself when it is one already, padded as the conv wants), else an ordinary padded array."""
    if isinstance(x, FlatPadded):
        if x.padding != tuple(padding) or not _fits_flat(x.shape, kernel, stride, padding, out_hw):
            raise ValueError(
                f"a conv with stride {tuple(stride)} and padding {tuple(padding)} cannot read this flat layout"
            )
        return x
    if _fits_flat(x.shape, kernel, stride, padding, out_hw):
        return FlatPadded(x, *padding)
    return pad_spatial(x, *padding)


def conv2d_forward(x, weight, bias, stride=(1, 1), padding=(0, 0), into=None):
    """Cross-correlate x (C, N, H, W) with weight (O, C, kh, kw), add bias (O,) unless None.

    Returns (out, cache): out is (O, N, Ho, Wo); cache holds what conv2d_backward needs.
    A chunk of images at a time is unfolded (im2col, rows ordered (i, j, c)) and multiplied
    by the weight matrix (O, kh*kw*C) in one matmul.

    Chained convs (see engine.fast.direct_conv) pass flat layouts instead of arrays: x may be a
    FlatPadded padded as this conv wants, and into a FlatPadded.for_output (O, N, Ho, Wo)
    with the same row and image lengths as x's flat layout, which out is then a view of.
    """
    channels, batch, height, width = x.shape
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    if in_channels != channels:
        raise ValueError(f"conv weight expects {in_channels} input channels, input has {channels}")
    stride = tuple(stride)
    padding = tuple(padding)
    out_h, out_w = conv_output_shape(x.shape, weight.shape, stride, padding)[2:]
    padded = _pad_for_windows(x, (kernel_h, kernel_w), stride, padding, (out_h, out_w))
    if into is not None and not isinstance(padded, FlatPadded):
        raise ValueError("a conv writes into a flat layout only from a flat layout")
    rows = channels * kernel_h * kernel_w
    weight_matrix = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(out_channels, rows), dtype=x.dtype)
    out = _correlate(padded, weight_matrix, (kernel_h, kernel_w), stride, (out_h, out_w), bias, into)
    cache = (padded, x.shape, stride, padding, (out_h, out_w), padded is x)
    return out, cache


def _flat_weight_grad(padded, dout_padded, kernel, out_hw):
    """dweight as rows (kh*kw*C, O) from the flat windows of the input and dout_padded, the
    FlatPadded of dout by k-1-p. Both flat layouts have the same row and image lengths, so
    dout_padded shifted by its padding is dout at each window start of the input's grid,
    with zeros at the starts that are not valid outputs: they add nothing."""
    out_rows = dout_padded.shape[0]
    if not dout_padded.same_grid(padded):
        raise ValueError("dout_padded does not share the input's flat layout")
    grads = dout_padded.grid()  # dout at each window start q of the input's grid
    span = starts_per_image(padded, out_hw)
    dweight_rows = None
    if _columns_only(padded.shape[0] * kernel[0] * kernel[1], out_rows):
        for start, count, cols in _row_chunks(padded, kernel, out_hw, out_rows):
            dweight_rows = _kernel_row_grads(cols, grads[:, start:], kernel[0], padded.row, count, dweight_rows)
        return dweight_rows
    for first, last, unfolded in _flat_chunks(padded, kernel, out_hw, out_rows):
        dout_starts = image_starts(grads, padded.image, span, first, last).transpose(0, 2, 1)
        dweight_rows = _add_products(dweight_rows, unfolded, dout_starts)
    return dweight_rows


def _add_products(total, unfolded, other):
    """total + the sum over images of unfolded[n] @ other[n] (total None: start from zero),
    image by image in order, so the sum does not depend on the chunking."""
    products = multiply_row_blocks(unfolded, other)
    if total is None:
        total = np.zeros(products.shape[1:], dtype=products.dtype)
    for product in products:
        total += product
    return total


def _flat_grads_from_dout(padded, dout_padded, flipped_matrix, kernel, x_hw, into=None):
    """(dx or None, dweight) in one pass over the unfolded dout_padded (the FlatPadded of dout
    by k-1-p; rows (i', j', o) of the flipped kernel), which both products read while it is
    in the cache: dx as in _correlate when flipped_matrix is given, and dweight from the same
    columns against the input. The input's flat layout matches dout_padded's, so its data
    shifted by its padding is x at each window start of the dx grid, zero at the starts that
    are not pixels, and dweight[o, c, k-1-i', k-1-j'] = sum over starts q of
    unfolded[(i', j', o), q] * x[c, q]. dx is written into into's grid when given (see
    _correlate)."""
    if not dout_padded.same_grid(padded):
        raise ValueError("dout_padded does not share the input's flat layout")
    kernel_h, kernel_w = kernel
    channels, batch = padded.shape[:2]
    out_channels = dout_padded.shape[0]
    inputs = padded.grid()  # x at each window start q of the dx grid
    dtype = dout_padded.data.dtype
    dx_grid = None if flipped_matrix is None else _output_grid(dout_padded, into, channels, dtype)
    span = starts_per_image(dout_padded, x_hw)
    flipped_rows = None
    if _columns_only(kernel_h * kernel_w * out_channels, channels):
        matrices = None if flipped_matrix is None else _by_kernel_row(flipped_matrix, kernel_h)
        scratch = None
        for start, count, cols in _row_chunks(dout_padded, kernel, x_hw, channels):
            if matrices is not None:
                if scratch is None:
                    scratch = np.empty((channels, count), dtype=dtype)
                _kernel_row_product(matrices, cols, dout_padded.row, count, dx_grid[:, start : start + count], scratch)
            flipped_rows = _kernel_row_grads(cols, inputs[:, start:], kernel_h, dout_padded.row, count, flipped_rows)
    else:
        for first, last, unfolded in _flat_chunks(dout_padded, kernel, x_hw, channels):
            if dx_grid is not None:
                multiply_column_blocks(flipped_matrix, unfolded, image_starts(dx_grid, padded.image, span, first, last))
            input_starts = image_starts(inputs, padded.image, span, first, last).transpose(0, 2, 1)
            flipped_rows = _add_products(flipped_rows, unfolded, input_starts)
    if into is not None:
        _zero_skipped_starts(dx_grid, padded.image, span)
    dweight = flipped_rows.reshape(kernel_h, kernel_w, out_channels, channels)[::-1, ::-1].transpose(2, 3, 0, 1)
    dx = None if dx_grid is None else dx_grid.reshape(channels, batch, *padded.grid_hw)[:, :, : x_hw[0], : x_hw[1]]
    return dx, np.ascontiguousarray(dweight)


def conv2d_backward(dout, cache, weight, need_input_grad=True, need_bias_grad=True):
    """Gradients of conv2d_forward: returns (dx or None, dweight, dbias or None).

    Chained convs (see engine.fast.direct_conv): dout may come as a FlatPadded padded by k-1-p,
    with zero borders, and when x came as a FlatPadded, dx goes back in x's flat layout with
    junk in its border cells, which the conv before zeroes with its relu mask.

    With stride 1 the input gradient is the full convolution of dout (padded by k-1-p) with
    the flipped kernel. On the flat layout the weight gradient comes from the unfolded padded
    dout when that is no larger than the unfolded input (out_channels <= in_channels; then dx
    reads the same columns, see _flat_grads_from_dout), else from the unfolded input against
    the padded dout (_flat_weight_grad); the choice depends on the shapes only, so dweight is
    the same bit for bit with or without dx. Off the flat layout dweight is accumulated chunk
    by chunk from the re-built im2col, and with larger strides the input gradient is
    scattered back over the offsets.
    """
    padded, x_shape, stride, padding, (out_h, out_w), chained = cache
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    channels, batch, height, width = x_shape
    kernel = (kernel_h, kernel_w)
    dtype = dout.dtype
    weight = weight.astype(dtype, copy=False)
    dbias = None
    if need_bias_grad:  # border cells of a flat dout are zero
        dbias = (dout.data if isinstance(dout, FlatPadded) else dout.reshape(out_channels, -1)).sum(axis=1)
    full_convolution = need_input_grad and stride == (1, 1) and padding[0] < kernel_h and padding[1] < kernel_w
    full_padding = _full_padding(kernel, padding)
    flipped = None
    if full_convolution:
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 2, 3, 0).reshape(channels, kernel_h * kernel_w * out_channels)
        flipped = np.ascontiguousarray(flipped, dtype=dtype)
    if isinstance(padded, FlatPadded):  # stride 1 and padding < kernel: full_convolution if dx is wanted
        dout_padded = _flat_dout(dout, full_padding)
        into = FlatPadded.for_output(x_shape, padding, dtype) if chained and flipped is not None else None
        if out_channels <= channels:
            dx, dweight = _flat_grads_from_dout(padded, dout_padded, flipped, kernel, (height, width), into)
            return (dx if into is None else into), dweight, dbias
        dx = None if flipped is None else _correlate(dout_padded, flipped, kernel, (1, 1), (height, width), into=into)
        dx = dx if into is None else into
        dweight_rows = _flat_weight_grad(padded, dout_padded, kernel, (out_h, out_w))
    else:
        dx = None
        if full_convolution:  # dout padded by k-1-p, cross-correlated with the flipped kernel, is exactly dx
            dout_padded = _pad_for_windows(dout, kernel, (1, 1), full_padding, (height, width))
            dx = _correlate(dout_padded, flipped, kernel, (1, 1), (height, width))
        scatter = need_input_grad and not full_convolution
        dweight_rows, dpadded = _im2col_weight_grad(padded, dout, weight, kernel, stride, (out_h, out_w), scatter)
        if scatter:
            dx = np.ascontiguousarray(dpadded[:, :, padding[0] : padding[0] + height, padding[1] : padding[1] + width])
    dweight = np.ascontiguousarray(
        dweight_rows.T.reshape(out_channels, kernel_h, kernel_w, channels).transpose(0, 3, 1, 2)
    )
    return (dx if need_input_grad else None), dweight, dbias


def _full_padding(kernel, padding):
    """k - 1 - p: how the output gradient is padded for the input gradient (a full convolution)."""
    return (kernel[0] - 1 - padding[0], kernel[1] - 1 - padding[1])


def output_gradient_layout(cache, weight, dtype):
    """An unfilled FlatPadded (FlatPadded.for_output) for the output gradient of the conv that
    made cache, padded as conv2d_backward reads it, for whoever computes that gradient to write
    straight into; None when the conv did not run on the flat layout."""
    padded, x_shape, stride, padding, out_hw, _ = cache
    if not isinstance(padded, FlatPadded):
        return None
    return FlatPadded.for_output(
        (weight.shape[0], x_shape[1], *out_hw), _full_padding(weight.shape[2:], padding), dtype
    )


def _flat_dout(dout, full_padding):
    """dout padded by k-1-p in the flat layout; a chained conv passes it in that layout."""
    if not isinstance(dout, FlatPadded):
        return FlatPadded(dout, *full_padding)
    if dout.padding != tuple(full_padding):
        raise ValueError(f"a flat dout must be padded by {tuple(full_padding)}, not {dout.padding}")
    return dout


def _im2col_weight_grad(padded, dout, weight, kernel, stride, out_hw, scatter):
    """dweight as rows (kh*kw*C, O) from the im2col of padded (C, N, Hp, Wp), a chunk of images
    at a time; with scatter, also the gradient of padded (each offset's product added back
    over its windows, for strided convs), else None."""
    out_channels = weight.shape[0]
    channels, batch = padded.shape[:2]
    kernel_h, kernel_w = kernel
    out_h, out_w = out_hw
    rows = channels * kernel_h * kernel_w
    dtype = dout.dtype
    chunk = _images_per_chunk(rows, out_channels, out_h * out_w)
    cols = np.empty((kernel_h, kernel_w, channels, min(chunk, batch), out_h, out_w), dtype=dtype)
    dweight_rows = np.zeros((rows, out_channels), dtype=dtype)
    product = np.empty((rows, out_channels), dtype=dtype)
    weight_matrix = weight.transpose(0, 2, 3, 1).reshape(out_channels, rows) if scatter else None
    dpadded = np.zeros(padded.shape, dtype=dtype) if scatter else None
    for first in range(0, batch, chunk):
        last = min(first + chunk, batch)
        unfolded = _im2col(padded, first, last, kernel, out_hw, stride, cols[:, :, :, : last - first])
        dchunk = dout[:, first:last].reshape(out_channels, -1)
        np.matmul(unfolded, dchunk.T, out=product)
        dweight_rows += product
        if scatter:
            part = (weight_matrix.T @ dchunk).reshape(kernel_h, kernel_w, channels, last - first, out_h, out_w)
            images = dpadded[:, first:last]
            for i in range(kernel_h):
                for j in range(kernel_w):
                    _window(images, i, j, out_h, out_w, *stride)[...] += part[i, j]
    return dweight_rows, dpadded


# ----------------------------------------------------------------------------------------
# ReLU in place
# ----------------------------------------------------------------------------------------

_zeros: dict[np.dtype, np.ndarray] = {}  # dtype -> a read-only zero vector, grown as needed


def relu_in_place(x):
    """x = max(x, 0), in place; returns x. On a contiguous x the zero is a zero array, not the
    scalar 0: numpy's vectorised maximum runs only when both operands advance, and was
    measured 2.6x faster that way here (a float32 array of a million, numpy 2.4)."""
    if not x.flags.c_contiguous:
        return np.maximum(x, 0, out=x)
    zeros = _zeros.get(x.dtype)
    if zeros is None or zeros.size < x.size:
        zeros = np.zeros(x.size, dtype=x.dtype)
        zeros.flags.writeable = False
        _zeros[x.dtype] = zeros
    flat = x.reshape(-1)
    np.maximum(flat, zeros[: flat.size], out=flat)
    return x


# ----------------------------------------------------------------------------------------
# Pooling, fast (internal layout)
# ----------------------------------------------------------------------------------------


def maxpool_forward(x, size=(2, 2), stride=(2, 2)):
    """Max over (size) windows moved by (stride) on x (C, N, H, W). Returns (out, cache).

    The cache records which offset of each window won (the first maximum in row-major order,
    as in PyTorch), so the backward pass routes each window's gradient to exactly one cell.
    """
    size, stride = tuple(size), tuple(stride)
    if size == (2, 2) and stride == (2, 2):
        return _maxpool_2x2_forward(x)
    size_h, size_w = size
    stride_h, stride_w = stride
    out_h = output_size(x.shape[2], size_h, stride_h, 0)
    out_w = output_size(x.shape[3], size_w, stride_w, 0)
    out = _window(x, 0, 0, out_h, out_w, stride_h, stride_w).copy()
    winner = np.zeros(out.shape, dtype=np.int16)
    for offset in range(1, size_h * size_w):
        candidate = _window(x, offset // size_w, offset % size_w, out_h, out_w, stride_h, stride_w)
        better = candidate > out
        np.maximum(out, candidate, out=out)
        winner += better * (offset - winner)
    return out, ("loop", x.shape, winner, size, stride)


def _maxpool_2x2_forward(x):
    """The common 2x2 / stride 2 case as a small tournament: (a b / c d) -> max of the pairs."""
    out_h, out_w = x.shape[2] // 2, x.shape[3] // 2
    a, b, c, d = (_window(x, i, j, out_h, out_w, 2, 2) for i in (0, 1) for j in (0, 1))
    top_pair = np.maximum(a, b)
    bottom_pair = np.maximum(c, d)
    right_wins_top = b > a  # ties go to the first (left, upper) cell, as in PyTorch
    right_wins_bottom = d > c
    bottom_wins = bottom_pair > top_pair
    out = np.maximum(top_pair, bottom_pair, out=top_pair)
    return out, ("2x2", x.shape, right_wins_top, right_wins_bottom, bottom_wins)


def maxpool_backward(dout, cache, out=None):
    """Gradient of maxpool_forward: each window's gradient goes to its winning offset. With
    out (an array of the input's shape, any strides) the gradient is written there and out is
    returned (the 2x2 case only)."""
    if cache[0] == "2x2":
        _, x_shape, right_wins_top, right_wins_bottom, bottom_wins = cache
        out_h, out_w = dout.shape[2], dout.shape[3]
        if out is not None:
            dx = out
            if x_shape[2] % 2 or x_shape[3] % 2:  # the last row or column is in no window
                dx[:, :, 2 * out_h :] = 0
                dx[:, :, :, 2 * out_w :] = 0
        elif x_shape[2] % 2 or x_shape[3] % 2:
            dx = np.zeros(x_shape, dtype=dout.dtype)
        else:
            dx = np.empty(x_shape, dout.dtype)
        to_top = dout * ~bottom_wins
        to_bottom = dout * bottom_wins
        np.multiply(to_top, ~right_wins_top, out=_window(dx, 0, 0, out_h, out_w, 2, 2))
        np.multiply(to_top, right_wins_top, out=_window(dx, 0, 1, out_h, out_w, 2, 2))
        np.multiply(to_bottom, ~right_wins_bottom, out=_window(dx, 1, 0, out_h, out_w, 2, 2))
        np.multiply(to_bottom, right_wins_bottom, out=_window(dx, 1, 1, out_h, out_w, 2, 2))
        return dx
    if out is not None:
        raise ValueError("maxpool_backward writes into an array only for 2x2 windows moved by 2")
    _, x_shape, winner, (size_h, size_w), (stride_h, stride_w) = cache
    out_h, out_w = dout.shape[2], dout.shape[3]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for offset in range(size_h * size_w):
        target = _window(dx, offset // size_w, offset % size_w, out_h, out_w, stride_h, stride_w)
        target += dout * (winner == offset)
    return dx


def avgpool_forward(x, size=(2, 2), stride=(2, 2)):
    """Mean over (size) windows moved by (stride) on x (C, N, H, W). Returns (out, cache)."""
    size_h, size_w = size
    stride_h, stride_w = stride
    out_h = output_size(x.shape[2], size_h, stride_h, 0)
    out_w = output_size(x.shape[3], size_w, stride_w, 0)
    out = _window(x, 0, 0, out_h, out_w, stride_h, stride_w).copy()
    for i in range(size_h):
        for j in range(size_w):
            if i or j:
                out += _window(x, i, j, out_h, out_w, stride_h, stride_w)
    out *= x.dtype.type(1.0 / (size_h * size_w))
    return out, (x.shape, tuple(size), tuple(stride))


def avgpool_backward(dout, cache):
    """Gradient of avgpool_forward: each window's gradient is shared equally by its cells."""
    x_shape, (size_h, size_w), (stride_h, stride_w) = cache
    out_h, out_w = dout.shape[2], dout.shape[3]
    share = dout * dout.dtype.type(1.0 / (size_h * size_w))
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(size_h):
        for j in range(size_w):
            _window(dx, i, j, out_h, out_w, stride_h, stride_w)[...] += share
    return dx
