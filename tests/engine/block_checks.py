"""Shared check for the fused conv blocks: a block against the layer path it replaces."""

import numpy as np

from engine.fast import conv


def value_drawer(rng, ties):
    """draw(shape) -> float64 array: small integers in -1..1 when ties (windows often hold their
    maximum twice, and many are all <= 0), else standard normal values."""
    if ties:
        return lambda size: rng.integers(-1, 2, size).astype(np.float64)
    return rng.standard_normal


def layer_path(x, weight, bias, stride, padding, relu=False, pool_kind=None, pool_size=None, pool_stride=None):
    """conv -> [relu] -> [max or avg pool] with the engine's unfused kernels: returns (out,
    backward), backward(dout) giving the layer path's (dx, dweight, dbias)."""
    out, conv_cache = conv.conv2d_forward(x, weight, bias, stride, padding)
    activated = np.maximum(out, 0) if relu else out
    pools = {"max": (conv.maxpool_forward, conv.maxpool_backward), "avg": (conv.avgpool_forward, conv.avgpool_backward)}
    if pool_kind is None:
        result, pool_cache = activated, None
    else:
        result, pool_cache = pools[pool_kind][0](activated, pool_size, pool_stride)

    def backward(dout):
        grad = dout if pool_kind is None else pools[pool_kind][1](dout, pool_cache)
        if relu:
            grad = grad * (out > 0)
        return conv.conv2d_backward(grad, conv_cache, weight, need_input_grad=True)

    return result, backward


def assert_block_matches_layer_path(block, x, weight, bias, expected, backward, rng):
    """block.forward(x, weight, bias) gives `expected`; its backward, with and without the
    input gradient, gives what `backward(dout)` (the layer path's (dx, dweight, dbias)) gives."""
    out, cache = block.forward(x, weight, bias)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dweight, dbias = block.backward(dout, cache, weight, need_input_grad=True)
    ref_dx, ref_dweight, ref_dbias = backward(dout)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-12)
    np.testing.assert_allclose(dweight, ref_dweight, atol=1e-11)
    np.testing.assert_allclose(dbias, ref_dbias, atol=1e-11)
    none_dx, dweight_again, _ = block.backward(dout, cache, weight, need_input_grad=False)
    assert none_dx is None
    np.testing.assert_allclose(dweight_again, dweight, atol=1e-12)
