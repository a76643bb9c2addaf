"""Convs on the flat layout unfolded along the kernel's columns only (engine.fast.conv: narrow
ones and wide ones) give what the full im2col path gives, over one chunk of images or many,
chained or not."""

import numpy as np
import pytest

from engine.fast import conv
from engine.fast.direct_conv import DirectConvBlock
from tests.engine.test_direct_conv import chained_case, fill_new_layouts_with_nan


def run_chain(x, weight, bias, padding, next_weight, next_bias, next_padding, out_padding, dout_seed):
    first = DirectConvBlock((1, 1), padding, relu=True, out_padding=out_padding)
    second = DirectConvBlock((1, 1), next_padding, relu=True)
    flat, first_cache = first.forward(x, weight, bias)
    out, second_cache = second.forward(flat, next_weight, next_bias)
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape)
    dmiddle, dnext_weight, dnext_bias = second.backward(dout, second_cache, next_weight)
    dx, dweight, dbias = first.backward(dmiddle, first_cache, weight)
    return [
        np.array(out),
        np.array(dx.valid() if isinstance(dx, conv.FlatPadded) else dx),
        dweight,
        dbias,
        dnext_weight,
        dnext_bias,
    ]


def run_chain_on_the_im2col(monkeypatch, *chain):
    """run_chain(*chain) with every conv on the full im2col path: the reference."""
    with monkeypatch.context() as im2col:
        im2col.setattr(conv, "_columns_only", lambda rows, out_rows: False)
        return run_chain(*chain)


@pytest.mark.parametrize("chunk_elements", [conv.CHUNK_ELEMENTS, 600])  # one chunk; a few images a chunk
@pytest.mark.parametrize("poisoned", [False, True])
def test_the_narrow_path_matches_the_im2col_path(chunk_elements, poisoned, monkeypatch):
    if poisoned:
        fill_new_layouts_with_nan(monkeypatch)
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(5)
    compared = 0
    for case_number in range(40):
        case = chained_case(rng, ties=False)
        x, weight, _, padding, next_weight, _, next_padding = case
        out_padding = conv.flat_chain_padding(
            (x.shape[0], *x.shape[2:]), weight.shape[2:], (1, 1), padding, next_weight.shape[2:], (1, 1), next_padding
        )
        if out_padding is None:
            continue
        assert conv._columns_only(x.shape[0] * weight.shape[2] * weight.shape[3], weight.shape[0])  # small: narrow
        narrow = run_chain(*case, out_padding, case_number)
        reference = run_chain_on_the_im2col(monkeypatch, *case, out_padding, case_number)
        for got, want in zip(narrow, reference):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)
        compared += 1
    assert compared > 20


@pytest.mark.parametrize("poisoned", [False, True])
def test_wide_chained_convs_match_the_im2col_path(poisoned, monkeypatch):
    """medium's 32 -> 32 -> 64 convs (3x3, padding 1), chained: forward, both input gradients
    and all weight gradients the same on the columns-only path as on the im2col."""
    if poisoned:
        fill_new_layouts_with_nan(monkeypatch)
    rng = np.random.default_rng(11)
    case = (
        rng.standard_normal((32, 3, 9, 7)),
        rng.standard_normal((32, 32, 3, 3)),
        rng.standard_normal(32),
        (1, 1),
        rng.standard_normal((64, 32, 3, 3)),
        rng.standard_normal(64),
        (1, 1),
    )
    assert conv._columns_only(32 * 3 * 3, 32) and conv._columns_only(32 * 3 * 3, 64)
    wide = run_chain(*case, (1, 1), 3)
    reference = run_chain_on_the_im2col(monkeypatch, *case, (1, 1), 3)
    for got, want in zip(wide, reference):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_which_convs_unfold_the_kernel_columns_only():
    assert conv._columns_only(8 * 3 * 3, 8)  # the deep preset's 8 -> 8 convs (and dx)
    assert conv._columns_only(1 * 3 * 3, 8)  # its first conv
    assert not conv._columns_only(8 * 3 * 3, 16)  # small and demo: 8 -> 16 (measured slower)
    assert conv._columns_only(16 * 3 * 3, 8)  # ... but its input gradient, 16 -> 8 (measured faster)
    assert not conv._columns_only(3 * 3 * 3, 32)  # medium's first conv: 3 channels in (measured slower)
    assert conv._columns_only(32 * 3 * 3, 32)  # medium's second conv: wide
    assert conv._columns_only(32 * 3 * 3, 64)  # and its third
    assert not conv._columns_only(16 * 3 * 3, 32)  # between the two: the im2col
