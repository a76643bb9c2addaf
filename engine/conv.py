"""Convolution and pooling kernels: the fast ones the layers use, and slow loop references.

The fast kernels work on the engine's internal layout (C, N, H, W): channels first, batch
second, so that for one kernel offset (i, j) the whole batch is a single (C, N*Ho*Wo)
matrix and the convolution is a handful of large matrix products. Semantics are PyTorch's
`conv2d` (cross-correlation, zero padding, stride) and `max_pool2d` / `avg_pool2d`
(floor mode, the first maximum of a window takes the gradient).

The `*_reference` functions take the public (N, C, H, W) layout and are plain loops, kept
only to test the fast kernels against something obviously right.
"""

import numpy as np


def output_size(size, kernel, stride, padding):
    """Output length along one axis of a convolution or pooling (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


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

# With few input channels an offset's matmul would have an inner dimension of C (1 or 3),
# which wastes the matmul; below this many rows (C*kh*kw) the kernel offsets are stacked
# into one im2col matrix instead. Above it, offsets are accumulated one matmul at a time.
IM2COL_MAX_ROWS = 64


def conv2d_forward(x, weight, bias, stride=(1, 1), padding=(0, 0)):
    """Cross-correlate x (C, N, H, W) with weight (O, C, kh, kw), add bias (O,).

    Returns (out, cache): out is (O, N, Ho, Wo); cache holds what conv2d_backward needs.
    """
    channels, batch, height, width = x.shape
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    if in_channels != channels:
        raise ValueError(f"conv weight expects {in_channels} input channels, input has {channels}")
    stride_h, stride_w = stride
    pad_h, pad_w = padding
    out_h = output_size(height, kernel_h, stride_h, pad_h)
    out_w = output_size(width, kernel_w, stride_w, pad_w)
    padded = pad_spatial(x, pad_h, pad_w)
    columns = batch * out_h * out_w
    rows = channels * kernel_h * kernel_w
    if rows <= IM2COL_MAX_ROWS:
        cols = np.empty((kernel_h, kernel_w, channels, batch, out_h, out_w), dtype=x.dtype)
        for i in range(kernel_h):
            for j in range(kernel_w):
                cols[i, j] = _window(padded, i, j, out_h, out_w, stride_h, stride_w)
        cols = cols.reshape(rows, columns)
        weight_matrix = weight.transpose(0, 2, 3, 1).reshape(out_channels, rows)
        out = weight_matrix @ cols
    else:
        cols = None
        out = np.empty((out_channels, columns), dtype=x.dtype)
        product = np.empty((out_channels, columns), dtype=x.dtype)
        first = True
        for i in range(kernel_h):
            for j in range(kernel_w):
                patch = np.ascontiguousarray(_window(padded, i, j, out_h, out_w, stride_h, stride_w))
                target = out if first else product
                np.matmul(weight[:, :, i, j], patch.reshape(channels, columns), out=target)
                if not first:
                    out += product
                first = False
    out += bias[:, None]
    cache = (padded, cols, x.shape, tuple(stride), tuple(padding), (out_h, out_w))
    return out.reshape(out_channels, batch, out_h, out_w), cache


def conv2d_backward(dout, cache, weight, need_input_grad=True):
    """Gradients of conv2d_forward: returns (dx or None, dweight, dbias).

    dout is (O, N, Ho, Wo). The input gradient is the full convolution of dout with the
    flipped kernel, computed as matrix products scattered back over the kernel offsets.
    """
    padded, cols, x_shape, (stride_h, stride_w), (pad_h, pad_w), (out_h, out_w) = cache
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    channels, batch, height, width = x_shape
    columns = batch * out_h * out_w
    dout_matrix = dout.reshape(out_channels, columns)
    dbias = dout_matrix.sum(axis=1)
    rows = channels * kernel_h * kernel_w
    if cols is not None:
        dweight = (dout_matrix @ cols.T).reshape(out_channels, kernel_h, kernel_w, channels).transpose(0, 3, 1, 2)
        dweight = np.ascontiguousarray(dweight)
    else:
        dweight = np.empty_like(weight)
        for i in range(kernel_h):
            for j in range(kernel_w):
                patch = np.ascontiguousarray(_window(padded, i, j, out_h, out_w, stride_h, stride_w))
                dweight[:, :, i, j] = dout_matrix @ patch.reshape(channels, columns).T
    if not need_input_grad:
        return None, dweight, dbias
    dpadded = np.zeros(padded.shape, dtype=dout.dtype)
    if cols is not None:
        weight_matrix = weight.transpose(0, 2, 3, 1).reshape(out_channels, rows)
        dcols = (weight_matrix.T @ dout_matrix).reshape(kernel_h, kernel_w, channels, batch, out_h, out_w)
        for i in range(kernel_h):
            for j in range(kernel_w):
                _window(dpadded, i, j, out_h, out_w, stride_h, stride_w)[...] += dcols[i, j]
    else:
        for i in range(kernel_h):
            for j in range(kernel_w):
                part = (weight[:, :, i, j].T @ dout_matrix).reshape(channels, batch, out_h, out_w)
                _window(dpadded, i, j, out_h, out_w, stride_h, stride_w)[...] += part
    dx = dpadded[:, :, pad_h : pad_h + height, pad_w : pad_w + width]
    return np.ascontiguousarray(dx), dweight, dbias


# ----------------------------------------------------------------------------------------
# Pooling, fast (internal layout)
# ----------------------------------------------------------------------------------------


def maxpool_forward(x, size=(2, 2), stride=(2, 2)):
    """Max over (size) windows moved by (stride) on x (C, N, H, W). Returns (out, cache).

    The cache records which offset of each window won (the first maximum, as in PyTorch).
    """
    size_h, size_w = size
    stride_h, stride_w = stride
    out_h = output_size(x.shape[2], size_h, stride_h, 0)
    out_w = output_size(x.shape[3], size_w, stride_w, 0)
    out = _window(x, 0, 0, out_h, out_w, stride_h, stride_w).copy()
    winner = np.zeros(out.shape, dtype=np.uint8 if size_h * size_w < 256 else np.int32)
    offset = 0
    for i in range(size_h):
        for j in range(size_w):
            if offset:
                candidate = _window(x, i, j, out_h, out_w, stride_h, stride_w)
                better = candidate > out
                np.copyto(out, candidate, where=better)
                winner[better] = offset
            offset += 1
    return out, (x.shape, winner, tuple(size), tuple(stride))


def maxpool_backward(dout, cache):
    """Gradient of maxpool_forward: each window's gradient goes to its winning offset."""
    x_shape, winner, (size_h, size_w), (stride_h, stride_w) = cache
    out_h, out_w = dout.shape[2], dout.shape[3]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    overlapping = size_h > stride_h or size_w > stride_w
    offset = 0
    for i in range(size_h):
        for j in range(size_w):
            target = _window(dx, i, j, out_h, out_w, stride_h, stride_w)
            if overlapping:
                target += np.where(winner == offset, dout, 0)
            else:
                np.copyto(target, dout, where=winner == offset)
            offset += 1
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


# ----------------------------------------------------------------------------------------
# Slow, obvious references (public layout N, C, H, W), for tests only
# ----------------------------------------------------------------------------------------


def conv2d_reference(x, weight, bias, stride=(1, 1), padding=(0, 0)):
    """Loop convolution (PyTorch conv2d semantics) on x (N, C, H, W); returns (N, O, Ho, Wo)."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    out_h = output_size(height, kernel_h, stride[0], padding[0])
    out_w = output_size(width, kernel_w, stride[1], padding[1])
    out = np.zeros((batch, out_channels, out_h, out_w), dtype=x.dtype)
    for n in range(batch):
        for o in range(out_channels):
            for r in range(out_h):
                for c in range(out_w):
                    top, left = r * stride[0], c * stride[1]
                    patch = padded[n, :, top : top + kernel_h, left : left + kernel_w]
                    out[n, o, r, c] = np.sum(patch * weight[o]) + bias[o]
    return out


def conv2d_backward_reference(x, weight, dout, stride=(1, 1), padding=(0, 0)):
    """Loop gradients of conv2d_reference: returns (dx, dweight, dbias) in the public layout."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    dpadded = np.zeros_like(padded)
    dweight = np.zeros_like(weight)
    dbias = np.zeros(out_channels, dtype=x.dtype)
    for n in range(batch):
        for o in range(out_channels):
            for r in range(dout.shape[2]):
                for c in range(dout.shape[3]):
                    top, left = r * stride[0], c * stride[1]
                    g = dout[n, o, r, c]
                    dweight[o] += g * padded[n, :, top : top + kernel_h, left : left + kernel_w]
                    dpadded[n, :, top : top + kernel_h, left : left + kernel_w] += g * weight[o]
                    dbias[o] += g
    dx = dpadded[:, :, padding[0] : padding[0] + height, padding[1] : padding[1] + width]
    return dx, dweight, dbias


def maxpool_reference(x, size=(2, 2), stride=(2, 2)):
    """Loop max-pool on x (N, C, H, W)."""
    batch, channels, height, width = x.shape
    out_h = output_size(height, size[0], stride[0], 0)
    out_w = output_size(width, size[1], stride[1], 0)
    out = np.zeros((batch, channels, out_h, out_w), dtype=x.dtype)
    for n in range(batch):
        for ch in range(channels):
            for r in range(out_h):
                for c in range(out_w):
                    top, left = r * stride[0], c * stride[1]
                    out[n, ch, r, c] = x[n, ch, top : top + size[0], left : left + size[1]].max()
    return out


def maxpool_backward_reference(x, dout, size=(2, 2), stride=(2, 2)):
    """Loop gradient of max-pool: each window's gradient goes to its first maximum."""
    dx = np.zeros_like(x)
    for n in range(dout.shape[0]):
        for ch in range(dout.shape[1]):
            for r in range(dout.shape[2]):
                for c in range(dout.shape[3]):
                    top, left = r * stride[0], c * stride[1]
                    window = x[n, ch, top : top + size[0], left : left + size[1]]
                    a, b = np.unravel_index(np.argmax(window), window.shape)
                    dx[n, ch, top + a, left + b] += dout[n, ch, r, c]
    return dx


def avgpool_reference(x, size=(2, 2), stride=(2, 2)):
    """Loop average-pool on x (N, C, H, W)."""
    batch, channels, height, width = x.shape
    out_h = output_size(height, size[0], stride[0], 0)
    out_w = output_size(width, size[1], stride[1], 0)
    out = np.zeros((batch, channels, out_h, out_w), dtype=x.dtype)
    for n in range(batch):
        for ch in range(channels):
            for r in range(out_h):
                for c in range(out_w):
                    top, left = r * stride[0], c * stride[1]
                    out[n, ch, r, c] = x[n, ch, top : top + size[0], left : left + size[1]].mean()
    return out


def avgpool_backward_reference(x, dout, size=(2, 2), stride=(2, 2)):
    """Loop gradient of average-pool."""
    dx = np.zeros_like(x)
    share = 1.0 / (size[0] * size[1])
    for n in range(dout.shape[0]):
        for ch in range(dout.shape[1]):
            for r in range(dout.shape[2]):
                for c in range(dout.shape[3]):
                    top, left = r * stride[0], c * stride[1]
                    dx[n, ch, top : top + size[0], left : left + size[1]] += dout[n, ch, r, c] * share
    return dx
