"""A conv on engine.fast.conv's direct kernel together with the relu and the max pool after it,
for convs the phase grid (engine.fast.phase_conv) does not take or does not help: wide and strided
convs before a max pool, and convs with no pool after them. The relu runs in place on the
conv's own output, and when a max pool follows, bias and relu run after the pool, on the
pooled output (a quarter of the size for a 2x2 pool) instead of on the full-size conv output.

Why this is exact. A max commutes with adding a per-channel constant and with relu (both
are non-decreasing): max(relu(a + b)) = relu(max(a) + b). On the way back the pool gives each
window's gradient to its winning cell, and the relu passes it only where the window's output
is positive, so the relu mask can be taken on the pooled output too.

Chained convs. When conv -> relu is followed straight away by a stride-1 conv whose padding
p2 is k1 - 1 - p1 (3x3 convs with padding 1 in a row, say), the first conv's window-start
grid has the very row and image lengths of the second conv's padded input (engine.fast
.conv.FlatPadded): the first block writes its output straight into the second's padded layout
(out_padding) and zeroes the border cells, where its junk window starts land. On the way back
the second conv's input gradient comes in the same layout, junk on the borders; the relu mask,
zero on every border cell, clears the junk, and what is left is the first conv's output
gradient already padded for its own backward pass. Two pad copies and the strided relu passes
are saved, and the bias add and relu run over one contiguous array. In the same way a 2x2 max
pool's gradient is written straight into the padded layout its conv's backward pass reads.
"""

import numpy as np

from engine.fast.conv import (
    FlatPadded,
    conv2d_backward,
    conv2d_forward,
    conv_output_shape,
    flat_chain_padding,
    maxpool_backward,
    maxpool_forward,
    output_gradient_layout,
    relu_in_place,
)


class DirectConvBlock:
    """conv (any stride, padding) [+ relu] [+ maxpool].

    forward(x, weight, bias) -> (out, cache) and backward(dout, cache, weight, need_input_grad)
    -> (dx, dweight, dbias), on the internal (C, N, H, W) layout, like engine.fast.conv. With
    out_padding (a relu and no pool; see chain_blocks) out is a FlatPadded padded by
    out_padding for the next conv, and dout comes back as that conv's dx in the same layout.
    """

    def __init__(self, stride, padding, relu=False, pool_size=None, pool_stride=None, out_padding=None):
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.relu = relu
        self.pool_size = None if pool_size is None else tuple(pool_size)
        self.pool_stride = None if pool_stride is None else tuple(pool_stride)
        if out_padding is not None and (not relu or pool_size is not None):
            raise ValueError("only a conv with a relu and no pool writes into the next conv's layout")
        self.out_padding = None if out_padding is None else tuple(out_padding)

    def forward(self, x, weight, bias):
        weight = weight.astype(x.dtype, copy=False)
        if self.out_padding is not None:
            return self._forward_chained(x, weight, bias)
        if self.pool_size is None:
            out, conv_cache = conv2d_forward(x, weight, bias, self.stride, self.padding)  # a new array
            pool_cache = None
        else:
            conv_out, conv_cache = conv2d_forward(x, weight, None, self.stride, self.padding)
            out, pool_cache = maxpool_forward(conv_out, self.pool_size, self.pool_stride)  # a new array
            out += bias.astype(x.dtype, copy=False).reshape(-1, 1, 1, 1)
        if self.relu:
            relu_in_place(out)
        return out, (conv_cache, pool_cache, out)

    def _forward_chained(self, x, weight, bias):
        out = FlatPadded.for_output(
            conv_output_shape(x.shape, weight.shape, self.stride, self.padding), self.out_padding, x.dtype
        )
        _, conv_cache = conv2d_forward(x, weight, None, self.stride, self.padding, into=out)
        out.data += bias.astype(x.dtype, copy=False).reshape(-1, 1)
        relu_in_place(out.data)
        out.zero_border()
        return out, (conv_cache, None, out)

    def backward(self, dout, cache, weight, need_input_grad=True):
        conv_cache, pool_cache, out = cache
        if isinstance(out, FlatPadded):  # chained: dout is the next conv's dx, junk on its borders
            np.multiply(dout.data, out.data > 0, out=dout.data)
            return conv2d_backward(dout, conv_cache, weight, need_input_grad)
        dactivated = dout * (out > 0) if self.relu else dout
        if pool_cache is None:
            return conv2d_backward(dactivated, conv_cache, weight, need_input_grad)
        dbias = dactivated.sum(axis=(1, 2, 3))
        dconv = output_gradient_layout(conv_cache, weight, dactivated.dtype) if pool_cache[0] == "2x2" else None
        if dconv is not None:  # straight into the layout the conv's backward pass reads it in
            maxpool_backward(dactivated, pool_cache, out=dconv.valid())
            dconv.zero_border()
        else:
            dconv = maxpool_backward(dactivated, pool_cache)
        dx, dweight, _ = conv2d_backward(dconv, conv_cache, weight, need_input_grad, need_bias_grad=False)
        return dx, dweight, dbias


def chain_blocks(steps, layers):
    """Give each DirectConvBlock (conv + relu, no pool) followed straight away by a
    DirectConvBlock that can read its output in place (engine.fast.conv.flat_chain_padding) the
    out_padding that makes it write there. steps as plan_blocks makes them; changed in place."""
    for (first, _, block), (next_first, _, next_block) in zip(steps, steps[1:]):
        if not (isinstance(block, DirectConvBlock) and isinstance(next_block, DirectConvBlock)):
            continue
        if not block.relu or block.pool_size is not None:
            continue
        conv, next_conv = layers[first], layers[next_first]
        block.out_padding = flat_chain_padding(
            conv.input_shape,
            conv.kernel,
            conv.stride,
            conv.padding,
            next_conv.kernel,
            next_conv.stride,
            next_conv.padding,
        )
    return steps
