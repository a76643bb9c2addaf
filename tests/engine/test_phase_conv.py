"""Fused conv blocks (engine.fast.phase_conv) agree with the layer-by-layer path they replace."""

import numpy as np
import pytest

import engine
from engine.fast import conv, phase_conv
from engine.fast.direct_conv import DirectConvBlock
from engine.fast.phase_conv import ConvBlock, PhaseGeometry
from tests.engine.block_checks import assert_block_matches_layer_path, layer_path, value_drawer


def random_case(rng, ties):
    channels, filters, batch = (int(v) for v in rng.integers(1, 5, 3))
    kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
    padding = tuple(min(int(p), k - 1) for p, k in zip(rng.integers(0, 3, 2), kernel))
    height, width = (int(v) for v in rng.integers(max(kernel) + 1, 12, 2))
    pool_kind = [None, "max", "avg"][int(rng.integers(0, 3))]
    relu = bool(rng.integers(0, 2)) and pool_kind != "avg"
    pool = (1, 1) if pool_kind is None else tuple(int(v) for v in rng.integers(1, 4, 2))
    shape = (channels, batch, height, width)
    draw = value_drawer(rng, ties)
    return dict(
        x=draw(shape),
        weight=draw((filters, channels, *kernel)),
        bias=draw(filters),
        padding=padding,
        pool=pool,
        pool_kind=pool_kind,
        relu=relu,
    )


@pytest.mark.parametrize("ties, blocks", [(False, False), (True, False), (False, True)])
def test_block_matches_the_layer_path_forward_and_backward(ties, blocks, monkeypatch):
    """With blocks, the block's products are cut into pieces of 16 columns (see
    engine.fast.conv.SMALL_PRODUCT), as the larger convs of real nets are."""
    rng = np.random.default_rng(7 if ties else 8)
    checked = 0
    for _ in range(150):
        case = random_case(rng, ties)
        x, weight, bias = case["x"], case["weight"], case["bias"]
        if blocks:
            monkeypatch.setattr(conv, "SMALL_PRODUCT", 16 * weight.size)
        geometry = PhaseGeometry(
            x.shape[:1] + x.shape[2:], weight.shape[0], weight.shape[2:], case["padding"], case["pool"]
        )
        if min(geometry.out_hw) < 1:
            continue
        block = ConvBlock(geometry, relu=case["relu"], pool_kind=case["pool_kind"])
        expected, backward = layer_path(
            x, weight, bias, (1, 1), case["padding"], case["relu"], case["pool_kind"], case["pool"], case["pool"]
        )
        assert_block_matches_layer_path(block, x, weight, bias, expected, backward, rng)
        checked += 1
    assert checked > 100


def test_chunks_and_kept_columns_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 9, 12, 12))
    weight, bias = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    geometry = PhaseGeometry((3, 12, 12), 4, (3, 3), (1, 1), (2, 2))
    block = ConvBlock(geometry, relu=True, pool_kind="max")
    dout = rng.standard_normal((4, 9, 6, 6))
    results = []
    for chunk, keep in [(10**9, 10**9), (1, 10**9), (1, 0), (5000, 0)]:
        monkeypatch.setattr(phase_conv, "CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(phase_conv, "KEEP_COLUMNS_ELEMENTS", keep)
        out, cache = block.forward(x, weight, bias)
        results.append((out, *block.backward(dout, cache, weight)))
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            np.testing.assert_allclose(got, expected, atol=1e-12)


def test_plan_fuses_conv_relu_maxpool_and_leaves_the_rest_alone():
    small = engine.build_model("small")
    assert [(first, last, block is not None) for first, last, block in small.steps] == [
        (0, 2, True),
        (3, 5, True),
        (6, 6, False),
        (7, 7, False),
    ]
    spec = {
        "input": [2, 12, 12],
        "layers": [
            {"type": "conv", "filters": 3, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "avgpool", "size": 2},  # a mean does not commute with relu: conv+relu only
            {"type": "conv", "filters": 3, "kernel": 3, "stride": 2},  # strided: unfused
            {"type": "relu"},
            {"type": "maxpool", "size": 2, "stride": 1},  # overlapping windows: not absorbed
            {"type": "flatten"},
            {"type": "dense", "units": 2},
        ],
    }
    steps = engine.build_model(spec).steps
    assert [(first, last) for first, last, _ in steps] == [(0, 1), (2, 2), (3, 5), (6, 6), (7, 7)]
    # no pool to absorb: the direct conv with its relu in place
    assert isinstance(steps[0][2], DirectConvBlock) and steps[0][2].relu and steps[0][2].pool_size is None
    # the strided conv keeps the direct kernel, with bias and relu moved after the max pool
    assert isinstance(steps[2][2], DirectConvBlock) and steps[2][2].relu and steps[2][2].pool_size == (2, 2)
    # wide convs (many input rows) too: the direct conv is faster for them than the phase grid
    assert steps[0][2].out_padding is None  # an average pool follows: nothing to chain into
    medium = engine.build_model("medium")
    assert [(first, last, type(block).__name__) for first, last, block in medium.steps][:3] == [
        (0, 1, "DirectConvBlock"),
        (2, 4, "DirectConvBlock"),
        (5, 7, "DirectConvBlock"),
    ]
    # conv 3x3 pad 1 -> relu -> conv 3x3 pad 1: the first writes into the second's padded layout
    assert [block.out_padding for _, _, block in medium.steps[:3]] == [(1, 1), None, None]


@pytest.mark.parametrize("preset", ["small", "demo", "medium", "deep"])
def test_a_fused_model_trains_exactly_like_the_layer_path(preset):
    """Logits, every weight gradient and the input gradient, fused vs layer by layer."""
    fused = engine.build_model(preset, seed=4, dtype=np.float64, threads=1)
    layered = engine.build_model(preset, seed=4, dtype=np.float64, threads=1)
    layered.steps = [(index, index, None) for index in range(len(layered.layers))]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, *fused.input_shape))
    x[:, :, :5] = 0  # blank rows: ties in the max windows, as on real images
    labels = rng.integers(0, 10, 6)
    for model in (fused, layered):
        loss, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
        model.dx = model.backward(dlogits)
    np.testing.assert_allclose(fused.forward(x), layered.forward(x), atol=1e-12)
    for name in fused.grads:
        np.testing.assert_allclose(fused.grads[name], layered.grads[name], atol=1e-11, err_msg=name)
    np.testing.assert_allclose(fused.dx, layered.dx, atol=1e-12)
