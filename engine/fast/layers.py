"""Fast twins of the layers whose work depends on the layout: conv, pooling and flatten, on
the internal (C, N, H, W) layout of engine.fast.conv. The element-wise layers and dense
compute the same in either layout, so the fast model runs the core layers themselves.

`fast_layer(layer)` gives what the fast model runs layer by layer (with keep_outputs, and
for the layers no conv block absorbs); each twin has the core layer's forward/backward API.
"""

import numpy as np

from engine.fast import conv as convolution


class _Twin:
    def __init__(self, layer):
        self.layer = layer
        self.kind = layer.kind


class FastConv(_Twin):
    def forward(self, x, params):
        return convolution.conv2d_forward(x, params["weight"], params["bias"], self.layer.stride, self.layer.padding)

    def backward(self, dout, cache, params, need_input_grad=True):
        dx, dweight, dbias = convolution.conv2d_backward(dout, cache, params["weight"], need_input_grad)
        return dx, {"weight": dweight, "bias": dbias}


class FastMaxPool(_Twin):
    def forward(self, x, params):
        return convolution.maxpool_forward(x, self.layer.size, self.layer.stride)

    def backward(self, dout, cache, params, need_input_grad=True):
        return convolution.maxpool_backward(dout, cache), {}


class FastAvgPool(_Twin):
    def forward(self, x, params):
        return convolution.avgpool_forward(x, self.layer.size, self.layer.stride)

    def backward(self, dout, cache, params, need_input_grad=True):
        return convolution.avgpool_backward(dout, cache), {}


class FastFlatten(_Twin):
    """Internal (C, N, H, W) -> (N, C*H*W), in PyTorch's (C, H, W) feature order."""

    def forward(self, x, params):
        if x.ndim == 2:
            return x, x.shape
        return x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1), x.shape

    def backward(self, dout, cache, params, need_input_grad=True):
        if len(cache) == 2:
            return dout, {}
        channels, batch, height, width = cache
        return np.ascontiguousarray(dout.reshape(batch, channels, height, width).transpose(1, 0, 2, 3)), {}


TWINS = {"conv": FastConv, "maxpool": FastMaxPool, "avgpool": FastAvgPool, "flatten": FastFlatten}


def fast_layer(layer):
    """The fast twin of a core layer, or the layer itself where the layout does not matter."""
    twin = TWINS.get(layer.kind)
    return layer if twin is None else twin(layer)
