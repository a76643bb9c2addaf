"""Convolution blocks on a phase grid: a stride-1 conv together with the relu and the
non-overlapping pooling that follow it, as a few large contiguous numpy calls.

The idea. Pooling with a window of (sh, sw) moved by the same (sh, sw) only ever compares
conv outputs whose rows differ by < sh and columns by < sw. Split the zero-padded input into
sh*sw "phases" (phase (p, q) holds the pixels at rows p, p+sh, ... and columns q, q+sw, ...),
each a small grid of Gh x Gw cells laid out flat, one after the other for every image. Then
the conv output at pooling window (r, c), offset (di, dj) in that window, kernel offset
(i, j) reads phase ((di+i) % sh, (dj+j) % sw) at cell (r + (di+i)//sh, c + (dj+j)//sw): the
same flat phase array, shifted by a constant. So the unfolded input (im2col) is sh*sw*kh*kw
contiguous slice copies, one matrix product gives the conv output for every window offset
as its own contiguous block, and the pooling is a max (or mean) over those blocks. Without
pooling, sh = sw = 1 and this is the flat stride-1 convolution on the padded image.

Grid cells past an image's valid outputs hold junk that is computed and then cropped; junk
never reaches a valid output, and its gradient is exactly zero. The bias and the relu are
applied after pooling, on the small pooled output: max(relu(a + b)) = relu(max(a) + b).
Ties in a max window go to the first offset in row-major order, as in PyTorch.

`ConvBlock` is what the model runs for a conv layer and the relu / pool layers it absorbs
when it trains (see engine.fast.planner); the layer-by-layer path (engine.fast.layers) is what it is
tested against. The phase grid pays off for narrow
convs (few input rows) before a non-overlapping pool; every other conv runs as
engine.fast.direct_conv.DirectConvBlock, which measured faster for it.
"""

import numpy as np

from engine.core.layers import output_size
from engine.fast.conv import multiply_column_blocks, multiply_inner_blocks, relu_in_place

# Images are processed in chunks whose unfolded input plus conv output hold about this many
# floats, so a chunk stays in the CPU's cache between the copy, the product and the pooling.
CHUNK_ELEMENTS = 1024 * 1024
# Cells computed on the phase grid per pooled output kept, at most (more is too much junk).
MAX_GRID_WASTE = 2.0
# Fuse only convs whose unfolded input has at most this many rows (kh*kw*C); wider ones run
# as DirectConvBlock, whose input gradient (a full convolution) beats the block's strided
# adds once the matrix products grow. Measured per block at 32 images, interleaved: the phase
# grid wins at 9 rows (small's first conv) and 25 (demo's first), the direct block at 72
# (their second convs) and 288 (medium).
MAX_FUSED_ROWS = 32
# Keep the unfolded input from the forward pass for the weight gradient when a part's whole
# unfolded input is at most this many floats; larger ones are rebuilt chunk by chunk.
KEEP_COLUMNS_ELEMENTS = 4 * 1024 * 1024


def _axis_phases(size, pad, factor):
    """For one axis split into `factor` phases: per phase, (first input index, first grid
    cell, count) such that grid cell (first cell + r) of that phase holds input index
    (first input + factor * r) for r < count; the other cells are zero padding."""
    layout = []
    for phase in range(factor):
        first_input = (phase - pad) % factor  # smallest x >= 0 with (x + pad) % factor == phase
        count = len(range(first_input, size, factor))
        layout.append((first_input, (first_input + pad) // factor, count))
    return layout


class PhaseGeometry:
    """Everything about one block's shapes that does not depend on the batch size."""

    def __init__(self, in_shape, out_channels, kernel, padding, pool):
        channels, height, width = in_shape
        self.channels, self.height, self.width = channels, height, width
        self.out_channels = out_channels
        self.kernel, self.padding, self.pool = tuple(kernel), tuple(padding), tuple(pool)
        kernel_h, kernel_w = self.kernel
        pool_h, pool_w = self.pool
        padded_h, padded_w = height + 2 * padding[0], width + 2 * padding[1]
        self.conv_hw = (padded_h - kernel_h + 1, padded_w - kernel_w + 1)
        self.out_hw = (output_size(self.conv_hw[0], pool_h, pool_h, 0), output_size(self.conv_hw[1], pool_w, pool_w, 0))
        self.grid_hw = (-(-padded_h // pool_h), -(-padded_w // pool_w))
        self.cells = self.grid_hw[0] * self.grid_hw[1]  # grid cells per image and phase
        self.phases = pool_h * pool_w
        self.offsets = kernel_h * kernel_w
        # (source phase, flat shift) for output phase d = (di, dj) and kernel offset k = (i, j)
        self.sources = [
            [
                (
                    ((di + i) % pool_h) * pool_w + (dj + j) % pool_w,
                    ((di + i) // pool_h) * self.grid_hw[1] + (dj + j) // pool_w,
                )
                for i in range(kernel_h)
                for j in range(kernel_w)
            ]
            for di in range(pool_h)
            for dj in range(pool_w)
        ]
        self.tail = max(shift for row in self.sources for _, shift in row)
        self.rows_layout = _axis_phases(height, padding[0], pool_h)
        self.cols_layout = _axis_phases(width, padding[1], pool_w)
        self.steps = self._phase_steps()

    def _phase_steps(self):
        """Per kernel offset k, how (source phase, shift) moves with the output phase (di, dj):
        ((phase step, shift step) along di, (phase step, shift step) along dj). With at most
        two phases per axis the move is always a step (two points lie on a line), so one
        strided view reaches all the phases of k; with more it is None (one copy per phase)."""
        pool_h, pool_w = self.pool
        if pool_h > 2 or pool_w > 2:
            return None
        steps = []
        for k in range(self.offsets):
            base_source, base_shift = self.sources[0][k]
            down = self.sources[pool_w][k] if pool_h == 2 else (base_source, base_shift)
            right = self.sources[1][k] if pool_w == 2 else (base_source, base_shift)
            steps.append(
                ((down[0] - base_source, down[1] - base_shift), (right[0] - base_source, right[1] - base_shift))
            )
        return steps

    def waste(self):
        """Grid cells computed per valid output (1.0 means no junk)."""
        return self.cells / (self.out_hw[0] * self.out_hw[1])

    def images_per_chunk(self, batch):
        rows = self.offsets * self.channels
        per_image = (rows + self.out_channels) * self.phases * self.cells
        return max(1, min(batch, CHUNK_ELEMENTS // per_image))

    def phase_views(self, flat, batch):
        """Pairs (grid view, input slicer) linking the flat phase array (phases, C, batch*cells
        + tail) to the input rows and columns each phase holds."""
        grid = flat[:, :, : batch * self.cells].reshape(self.phases, flat.shape[1], batch, *self.grid_hw)
        pairs = []
        pool_h, pool_w = self.pool
        for p, (row_first, row_cell, row_count) in enumerate(self.rows_layout):
            for q, (col_first, col_cell, col_count) in enumerate(self.cols_layout):
                cells = grid[p * pool_w + q, :, :, row_cell : row_cell + row_count, col_cell : col_cell + col_count]
                inputs = (slice(row_first, None, pool_h), slice(col_first, None, pool_w))
                pairs.append((cells, inputs))
        return pairs

    def reads(self, phases):
        """For each kernel offset k, what the output cells read of the phase array, by cell
        (slice the last axis for a chunk): (k, view) pairs with view (pool_h, pool_w, C, cells)
        strided over the phases (one per k), or, for pools wider than 2, (k, d, view) triples
        with view (C, cells), one per output phase d."""
        pool_h, pool_w = self.pool
        channels, length = phases.shape[1], phases.shape[2]
        cells = length - self.tail
        if self.steps is None:
            return [
                (k, d, phases[source, :, shift : shift + cells])
                for d, sources in enumerate(self.sources)
                for k, (source, shift) in enumerate(sources)
            ]
        item = phases.itemsize
        phase_size = channels * length
        views = []
        for k, ((down_phase, down_shift), (right_phase, right_shift)) in enumerate(self.steps):
            source, shift = self.sources[0][k]
            strides = (
                (down_phase * phase_size + down_shift) * item,
                (right_phase * phase_size + right_shift) * item,
                length * item,
                item,
            )
            view = np.ndarray(
                (pool_h, pool_w, channels, cells), phases.dtype, phases, (source * phase_size + shift) * item, strides
            )
            views.append((k, view))
        return views


class ConvBlock:
    """conv (stride 1) [+ relu] [+ maxpool / avgpool with size == stride], fused.

    forward(x, weight, bias) -> (out, cache) and backward(dout, cache, weight, need_input_grad)
    -> (dx, dweight, dbias), on the internal (C, N, H, W) layout, like engine.fast.conv.
    """

    def __init__(self, geometry, relu=False, pool_kind=None):
        self.geometry = geometry
        self.relu = relu
        self.pool_kind = pool_kind  # None, "max" or "avg"

    @staticmethod
    def geometry_for(conv_layer, pool_layer=None):
        """The PhaseGeometry of a conv layer (and the pool layer after it, or None) if they can
        run as a ConvBlock, else None."""
        in_shape = conv_layer.input_shape
        if conv_layer.stride != (1, 1) or conv_layer.kernel[0] * conv_layer.kernel[1] * in_shape[0] > MAX_FUSED_ROWS:
            return None
        if pool_layer is not None and pool_layer.size != pool_layer.stride:
            return None
        pool = (1, 1) if pool_layer is None else pool_layer.size
        geometry = PhaseGeometry(in_shape, conv_layer.filters, conv_layer.kernel, conv_layer.padding, pool)
        return geometry if geometry.waste() <= MAX_GRID_WASTE else None

    # -- helpers -------------------------------------------------------------------------

    def _unfold(self, reads, first_cell, width, out):
        """out (kh*kw, C, phases, width): the input the chunk's output cells read (reads: from
        PhaseGeometry.reads)."""
        pool_h, pool_w = self.geometry.pool
        channels = out.shape[1]
        cells = slice(first_cell, first_cell + width)
        for read in reads:
            if len(read) == 2:
                k, view = read
                out[k].reshape(channels, pool_h, pool_w, width)[...] = view[..., cells].transpose(2, 0, 1, 3)
            else:
                k, d, view = read
                out[k, :, d] = view[:, cells]
        return out

    def _fold(self, dcols, writes, first_cell, width):
        """The transpose of _unfold: add dcols (kh*kw, C, phases, width) into the phase
        gradient through writes (PhaseGeometry.reads of it)."""
        pool_h, pool_w = self.geometry.pool
        channels = dcols.shape[1]
        cells = slice(first_cell, first_cell + width)
        for read in writes:
            if len(read) == 2:  # the phases of one k never overlap, so one strided add is exact
                k, view = read
                target = view[..., cells]
                np.add(target, dcols[k].reshape(channels, pool_h, pool_w, width).transpose(1, 2, 0, 3), out=target)
            else:
                k, d, view = read
                view[:, cells] += dcols[k, :, d]

    @staticmethod
    def _route_max(conv, pooled, dmax, dconv):
        """dconv (O, phases, width): each window's gradient dmax (O, width) goes to the first
        phase holding the window's maximum (pooled) of conv (O, phases, width), as in PyTorch."""
        hits = conv == pooled[:, None, :]
        taken = hits[:, 0].copy()
        for d in range(1, conv.shape[1]):  # a tie goes to the earlier phase
            later = hits[:, d]
            later &= ~taken
            taken |= later
        np.multiply(dmax[:, None, :], hits, out=dconv)

    # -- forward / backward --------------------------------------------------------------

    def forward(self, x, weight, bias):
        g = self.geometry
        channels, batch = x.shape[0], x.shape[1]
        dtype = x.dtype
        out_channels, rows = g.out_channels, g.offsets * channels
        phases = np.zeros((g.phases, channels, batch * g.cells + g.tail), dtype=dtype)
        for cells, (row_slice, col_slice) in g.phase_views(phases, batch):
            cells[...] = x[:, :, row_slice, col_slice]
        weight_matrix = np.ascontiguousarray(
            weight.astype(dtype, copy=False).transpose(0, 2, 3, 1).reshape(out_channels, rows)
        )
        out_h, out_w = g.out_hw
        out = np.empty((out_channels, batch, out_h, out_w), dtype=dtype)
        chunk = g.images_per_chunk(batch)
        keep_columns = rows * g.phases * batch * g.cells <= KEEP_COLUMNS_ELEMENTS
        columns = np.empty(rows * g.phases * (batch if keep_columns else chunk) * g.cells, dtype=dtype)
        keep_conv = self.pool_kind == "max" and g.phases > 1  # backward finds each window's winner in it
        conv_chunks = []  # (conv output, window maxima) per chunk, when keep_conv
        reads = g.reads(phases)
        product = None if keep_conv else np.empty(out_channels * g.phases * chunk * g.cells, dtype=dtype)
        averaged = (
            np.empty((out_channels, chunk * g.cells), dtype=dtype) if self.pool_kind == "avg" and g.phases > 1 else None
        )
        bias_column = bias.astype(dtype, copy=False).reshape(out_channels, 1, 1, 1)
        for first in range(0, batch, chunk):
            last = min(first + chunk, batch)
            width = (last - first) * g.cells
            offset = rows * g.phases * first * g.cells if keep_columns else 0
            unfolded = columns[offset : offset + rows * g.phases * width].reshape(g.offsets, channels, g.phases, width)
            self._unfold(reads, first * g.cells, width, unfolded)
            if keep_conv:
                conv = np.empty((out_channels, g.phases, width), dtype=dtype)
                result = np.empty((out_channels, width), dtype=dtype)
                conv_chunks.append((conv, result))
            else:
                conv = product[: out_channels * g.phases * width].reshape(out_channels, g.phases, width)
            multiply_column_blocks(
                weight_matrix, unfolded.reshape(1, rows, g.phases * width), conv.reshape(1, out_channels, -1)
            )
            if g.phases == 1:
                result = conv[:, 0]
            elif self.pool_kind == "max":
                np.max(conv, axis=1, out=result)
            else:
                result = np.sum(conv, axis=1, out=averaged[:, :width])
                result *= dtype.type(1.0 / g.phases)
            valid = result.reshape(out_channels, last - first, *g.grid_hw)[:, :, :out_h, :out_w]
            np.add(valid, bias_column, out=out[:, first:last])
        if self.relu:
            relu_in_place(out)
        cache = (x.shape, phases, columns if keep_columns else None, conv_chunks, out)
        return out, cache

    def backward(self, dout, cache, weight, need_input_grad=True):
        g = self.geometry
        x_shape, phases, kept_columns, conv_chunks, out = cache
        channels, batch = x_shape[0], x_shape[1]
        dtype = dout.dtype
        out_channels, rows = g.out_channels, g.offsets * channels
        weight = weight.astype(dtype, copy=False)
        dpooled = dout * (out > 0) if self.relu else dout
        dbias = dpooled.sum(axis=(1, 2, 3))
        if self.pool_kind == "avg":
            dpooled = dpooled * dtype.type(1.0 / g.phases)
        out_h, out_w = g.out_hw
        dgrid = np.zeros((out_channels, batch * g.cells), dtype=dtype)
        dgrid.reshape(out_channels, batch, *g.grid_hw)[:, :, :out_h, :out_w] = dpooled
        weight_matrix_t = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(out_channels, rows).T)
        dweight_rows = np.zeros((rows, out_channels), dtype=dtype)  # dW transposed: the faster product
        dphases = np.zeros_like(phases) if need_input_grad else None
        chunk = g.images_per_chunk(batch)
        columns = np.empty(rows * g.phases * chunk * g.cells, dtype=dtype) if kept_columns is None else None
        dconv_buffer = np.empty(out_channels * g.phases * chunk * g.cells, dtype=dtype) if g.phases > 1 else None
        dcols_buffer = np.empty(rows * g.phases * chunk * g.cells, dtype=dtype) if need_input_grad else None
        reads = g.reads(phases) if kept_columns is None else None
        writes = g.reads(dphases) if need_input_grad else None
        for number, first in enumerate(range(0, batch, chunk)):
            last = min(first + chunk, batch)
            width = (last - first) * g.cells
            first_cell = first * g.cells
            if kept_columns is not None:
                offset = rows * g.phases * first_cell
                unfolded = kept_columns[offset : offset + rows * g.phases * width].reshape(
                    g.offsets, channels, g.phases, width
                )
            else:
                unfolded = columns[: rows * g.phases * width].reshape(g.offsets, channels, g.phases, width)
                self._unfold(reads, first_cell, width, unfolded)
            dmax = dgrid[:, first_cell : first_cell + width]
            if g.phases == 1:
                dconv = dmax
            else:
                dconv = dconv_buffer[: out_channels * g.phases * width].reshape(out_channels, g.phases, width)
                if self.pool_kind == "max":
                    self._route_max(*conv_chunks[number], dmax, dconv)
                else:
                    dconv[...] = dmax[:, None, :]
                dconv = dconv.reshape(out_channels, g.phases * width)
            dweight_rows += multiply_inner_blocks(unfolded.reshape(rows, g.phases * width), dconv)
            if need_input_grad:
                dcols = dcols_buffer[: rows * g.phases * width].reshape(rows, g.phases * width)
                np.matmul(weight_matrix_t, dconv, out=dcols)
                self._fold(dcols.reshape(g.offsets, channels, g.phases, width), writes, first_cell, width)
        kernel_h, kernel_w = g.kernel
        dweight = np.ascontiguousarray(
            dweight_rows.T.reshape(out_channels, kernel_h, kernel_w, channels).transpose(0, 3, 1, 2)
        )
        if not need_input_grad:
            return None, dweight, dbias
        dx = np.empty(x_shape, dtype=dtype)
        for cells, (row_slice, col_slice) in g.phase_views(dphases, batch):
            dx[:, :, row_slice, col_slice] = cells
        return dx, dweight, dbias
