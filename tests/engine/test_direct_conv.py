"""DirectConvBlock (relu in place; bias and relu after a max pool) agrees with conv -> relu -> maxpool."""

import numpy as np
import pytest

from engine import conv
from engine.direct_conv import DirectConvBlock
from tests.engine.block_checks import assert_block_matches_layer_path, layer_path


def random_case(rng, ties):
    channels, filters, batch = (int(v) for v in rng.integers(1, 5, 3))
    kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = tuple(min(int(p), k - 1) for p, k in zip(rng.integers(0, 3, 2), kernel))
    pooled = bool(rng.integers(0, 4))  # most cases with a pool, some without
    pool_size = tuple(int(v) for v in rng.integers(1, 4, 2)) if pooled else None
    pool_stride = tuple(int(v) for v in rng.integers(1, 4, 2)) if pooled else None
    height, width = (int(v) for v in rng.integers(max(kernel) + 4, 14, 2))
    shape = (channels, batch, height, width)
    if ties:  # small integers: windows often hold their maximum twice, and many are all <= 0
        draw = lambda size: rng.integers(-1, 2, size).astype(np.float64)  # noqa: E731
    else:
        draw = rng.standard_normal
    return dict(x=draw(shape), weight=draw((filters, channels, *kernel)), bias=draw(filters), stride=stride,
                padding=padding, pool_size=pool_size, pool_stride=pool_stride, relu=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("ties", [False, True])
def test_direct_block_matches_the_layer_path_forward_and_backward(ties):
    rng = np.random.default_rng(11 if ties else 12)
    checked = 0
    for _ in range(150):
        case = random_case(rng, ties)
        x, weight, bias = case["x"], case["weight"], case["bias"]
        conv_h = conv.output_size(x.shape[2], weight.shape[2], case["stride"][0], case["padding"][0])
        conv_w = conv.output_size(x.shape[3], weight.shape[3], case["stride"][1], case["padding"][1])
        if case["pool_size"] is not None and (conv_h < case["pool_size"][0] or conv_w < case["pool_size"][1]):
            continue
        block = DirectConvBlock(case["stride"], case["padding"], case["relu"], case["pool_size"], case["pool_stride"])
        expected, backward = layer_path(x, weight, bias, case["stride"], case["padding"], case["relu"],
                                        "max" if case["pool_size"] else None, case["pool_size"], case["pool_stride"])
        assert_block_matches_layer_path(block, x, weight, bias, expected, backward, rng)
        checked += 1
    assert checked > 80


@pytest.mark.parametrize("pool", [None, (2, 2)])
def test_direct_block_keeps_float32_and_leaves_its_inputs_alone(pool):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 10, 10)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    before = (x.copy(), weight.copy(), bias.copy())
    block = DirectConvBlock((1, 1), (1, 1), relu=True, pool_size=pool, pool_stride=pool)
    out, cache = block.forward(x, weight, bias)
    dx, dweight, dbias = block.backward(np.ones_like(out), cache, weight)
    assert out.shape == ((4, 2, 5, 5) if pool else (4, 2, 10, 10)) and (out >= 0).all()
    assert {out.dtype, dx.dtype, dweight.dtype, dbias.dtype} == {np.dtype(np.float32)}
    for value, original in zip((x, weight, bias), before):
        np.testing.assert_array_equal(value, original)
