"""Slow, obvious references: convolution and pooling as plain loops over every output cell,
in the public (N, C, H, W) layout. Nothing runs them in training; they exist so that the
im2col layers (engine.core.layers) and the fast kernels (engine.fast) can be tested against
something obviously right (numpy-ml's conv2D_naive).
"""

import numpy as np

from engine.core.layers import output_size


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
