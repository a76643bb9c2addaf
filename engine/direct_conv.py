"""A conv followed by [relu and] max pooling, for the convs the phase grid does not take
(wide ones, with many input rows, and strided ones): the conv itself runs as in engine.conv,
and its bias and relu run after the pool, on the pooled output (a quarter of the size for a
2x2 pool) instead of on the full-size conv output.

Why this is exact. A max commutes with adding a per-channel constant and with relu (both
are non-decreasing): max(relu(a + b)) = relu(max(a) + b). On the way back the pool gives each
window's gradient to its winning cell, and the relu passes it only where the window's output
is positive, so the relu mask can be taken on the pooled output too. Bias and relu before the
pool cost two more passes over the full-size output forward and two backward; here they are
passes over the pooled output.
"""

import numpy as np

from engine.conv import conv2d_backward, conv2d_forward, maxpool_backward, maxpool_forward


class PooledConv:
    """conv (any stride, padding) [+ relu] + maxpool, fused at the bias, relu and pool.

    forward(x, weight, bias) -> (out, cache) and backward(dout, cache, weight, need_input_grad)
    -> (dx, dweight, dbias), on the internal (C, N, H, W) layout, like engine.conv.
    """

    def __init__(self, stride, padding, pool_size, pool_stride, relu=False):
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.pool_size, self.pool_stride = tuple(pool_size), tuple(pool_stride)
        self.relu = relu

    def forward(self, x, weight, bias):
        conv_out, conv_cache = conv2d_forward(x, weight.astype(x.dtype, copy=False), None, self.stride, self.padding)
        out, pool_cache = maxpool_forward(conv_out, self.pool_size, self.pool_stride)  # a new array
        out += bias.astype(x.dtype, copy=False).reshape(-1, 1, 1, 1)
        if self.relu:
            np.maximum(out, 0, out=out)
        return out, (conv_cache, pool_cache, out)

    def backward(self, dout, cache, weight, need_input_grad=True):
        conv_cache, pool_cache, out = cache
        dpooled = dout * (out > 0) if self.relu else dout
        dbias = dpooled.sum(axis=(1, 2, 3))
        dconv = maxpool_backward(dpooled, pool_cache)
        dx, dweight, _ = conv2d_backward(dconv, conv_cache, weight, need_input_grad, need_bias_grad=False)
        return dx, dweight, dbias
