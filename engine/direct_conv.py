"""A conv on engine.conv's direct kernel together with the relu and the max pool after it,
for convs the phase grid (engine.phase_conv) does not take or does not help: wide and strided
convs before a max pool, and convs with no pool after them. The relu runs in place on the
conv's own output, and when a max pool follows, bias and relu run after the pool, on the
pooled output (a quarter of the size for a 2x2 pool) instead of on the full-size conv output.

Why this is exact. A max commutes with adding a per-channel constant and with relu (both
are non-decreasing): max(relu(a + b)) = relu(max(a) + b). On the way back the pool gives each
window's gradient to its winning cell, and the relu passes it only where the window's output
is positive, so the relu mask can be taken on the pooled output too.
"""

import numpy as np

from engine.conv import conv2d_backward, conv2d_forward, maxpool_backward, maxpool_forward


class DirectConvBlock:
    """conv (any stride, padding) [+ relu] [+ maxpool].

    forward(x, weight, bias) -> (out, cache) and backward(dout, cache, weight, need_input_grad)
    -> (dx, dweight, dbias), on the internal (C, N, H, W) layout, like engine.conv.
    """

    def __init__(self, stride, padding, relu=False, pool_size=None, pool_stride=None):
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.relu = relu
        self.pool_size = None if pool_size is None else tuple(pool_size)
        self.pool_stride = None if pool_stride is None else tuple(pool_stride)

    def forward(self, x, weight, bias):
        weight = weight.astype(x.dtype, copy=False)
        if self.pool_size is None:
            out, conv_cache = conv2d_forward(x, weight, bias, self.stride, self.padding)  # a new array
            pool_cache = None
        else:
            conv_out, conv_cache = conv2d_forward(x, weight, None, self.stride, self.padding)
            out, pool_cache = maxpool_forward(conv_out, self.pool_size, self.pool_stride)  # a new array
            out += bias.astype(x.dtype, copy=False).reshape(-1, 1, 1, 1)
        if self.relu:
            np.maximum(out, 0, out=out)
        return out, (conv_cache, pool_cache, out)

    def backward(self, dout, cache, weight, need_input_grad=True):
        conv_cache, pool_cache, out = cache
        dactivated = dout * (out > 0) if self.relu else dout
        if pool_cache is None:
            return conv2d_backward(dactivated, conv_cache, weight, need_input_grad)
        dbias = dactivated.sum(axis=(1, 2, 3))
        dconv = maxpool_backward(dactivated, pool_cache)
        dx, dweight, _ = conv2d_backward(dconv, conv_cache, weight, need_input_grad, need_bias_grad=False)
        return dx, dweight, dbias
