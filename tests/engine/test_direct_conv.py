"""DirectConvBlock (relu in place; bias and relu after a max pool) agrees with conv -> relu -> maxpool."""

import numpy as np
import pytest

from engine.fast import conv
from engine.fast.direct_conv import DirectConvBlock
from tests.engine.block_checks import assert_block_matches_layer_path, layer_path, value_drawer


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
    draw = value_drawer(rng, ties)
    return dict(
        x=draw(shape),
        weight=draw((filters, channels, *kernel)),
        bias=draw(filters),
        stride=stride,
        padding=padding,
        pool_size=pool_size,
        pool_stride=pool_stride,
        relu=bool(rng.integers(0, 2)),
    )


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
        expected, backward = layer_path(
            x,
            weight,
            bias,
            case["stride"],
            case["padding"],
            case["relu"],
            "max" if case["pool_size"] else None,
            case["pool_size"],
            case["pool_stride"],
        )
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


def chained_case(rng, ties):
    """Two stride-1 convs that chain (the second's padding is k1 - 1 - p1), the first with its relu."""
    channels, middle, filters, batch = (int(v) for v in rng.integers(1, 5, 4))
    kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    next_padding = tuple(k - 1 - p for k, p in zip(kernel, padding))
    next_kernel = tuple(int(rng.integers(p + 1, p + 4)) for p in next_padding)
    height, width = (int(v) for v in rng.integers(max(kernel) + max(next_kernel), 14, 2))
    draw = value_drawer(rng, ties)
    return (
        draw((channels, batch, height, width)),
        draw((middle, channels, *kernel)),
        draw(middle),
        padding,
        draw((filters, middle, *next_kernel)),
        draw(filters),
        next_padding,
    )


def fill_new_layouts_with_nan(monkeypatch):
    """Make every FlatPadded.for_output start with NaN where it leaves cells unset, as reused
    memory may: a cell a block forgets to write or zero then poisons what it reaches."""
    unfilled = conv.FlatPadded.for_output.__func__

    def poisoned(cls, shape, padding, dtype):
        flat = unfilled(cls, shape, padding, dtype)
        flat.data[:, flat.offset : flat.length - flat.offset] = np.nan
        return flat

    monkeypatch.setattr(conv.FlatPadded, "for_output", classmethod(poisoned))


@pytest.mark.parametrize("ties, poisoned", [(False, False), (True, False), (False, True)])
def test_chained_blocks_match_the_layer_path(ties, poisoned, monkeypatch):
    """conv -> relu -> conv, the first writing into the second's padded layout and taking its
    input gradient back in that layout, gives what the layer path gives, gradients included,
    whatever the memory of a new layout held before."""
    if poisoned:
        fill_new_layouts_with_nan(monkeypatch)
    rng = np.random.default_rng(21 if ties else 22)
    chained = 0
    for _ in range(60):
        x, weight, bias, padding, next_weight, next_bias, next_padding = chained_case(rng, ties)
        out_padding = conv.flat_chain_padding(
            (x.shape[0], *x.shape[2:]), weight.shape[2:], (1, 1), padding, next_weight.shape[2:], (1, 1), next_padding
        )
        if out_padding is None:  # the flat layout would waste too much on these sizes
            continue
        first = DirectConvBlock((1, 1), padding, relu=True, out_padding=out_padding)
        pool = (2, 2) if rng.integers(0, 2) else None
        second = DirectConvBlock((1, 1), next_padding, relu=bool(rng.integers(0, 2)), pool_size=pool, pool_stride=pool)
        middle, first_backward = layer_path(x, weight, bias, (1, 1), padding, relu=True)
        expected, second_backward = layer_path(
            middle, next_weight, next_bias, (1, 1), next_padding, second.relu, "max" if pool else None, pool, pool
        )
        flat, first_cache = first.forward(x, weight, bias)
        assert isinstance(flat, conv.FlatPadded) and flat.padding == out_padding
        np.testing.assert_allclose(flat.valid(), middle, atol=1e-12)
        pixels = conv.FlatPadded(np.ones(flat.shape), *flat.padding).data == 1
        assert not flat.data[~pixels].any(), "every cell that is not a pixel is zero"
        out, second_cache = second.forward(flat, next_weight, next_bias)
        np.testing.assert_allclose(out, expected, atol=1e-12)

        dout = rng.standard_normal(out.shape)
        dmiddle, dnext_weight, dnext_bias = second.backward(dout, second_cache, next_weight)
        assert isinstance(dmiddle, conv.FlatPadded)
        dx, dweight, dbias = first.backward(dmiddle, first_cache, weight)
        ref_dmiddle, ref_dnext_weight, ref_dnext_bias = second_backward(dout)
        ref_dx, ref_dweight, ref_dbias = first_backward(ref_dmiddle)
        for got, want in (
            (dnext_weight, ref_dnext_weight),
            (dnext_bias, ref_dnext_bias),
            (dx, ref_dx),
            (dweight, ref_dweight),
            (dbias, ref_dbias),
        ):
            np.testing.assert_allclose(got, want, atol=1e-11)
        chained += 1
    assert chained > 30
