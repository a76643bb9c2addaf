"""Shared check for the fused conv blocks: a block against the layer path it replaces."""

import numpy as np


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
