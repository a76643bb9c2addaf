"""The fast convolution and pooling kernels agree with the slow loop references."""

import numpy as np
import pytest

from engine import reference
from engine.fast import conv

CONV_CASES = [
    # (batch, channels, height, width, filters, kernel, stride, padding)
    (2, 1, 7, 7, 3, (3, 3), (1, 1), (0, 0)),
    (3, 2, 8, 6, 4, (3, 2), (1, 1), (1, 2)),
    (2, 3, 9, 9, 2, (5, 5), (2, 2), (2, 2)),
    (2, 2, 10, 7, 3, (3, 3), (3, 2), (0, 1)),
    (1, 2, 6, 6, 2, (2, 2), (2, 2), (0, 0)),
    (2, 1, 5, 5, 2, (1, 1), (1, 1), (0, 0)),
    (2, 2, 5, 4, 3, (4, 4), (1, 1), (3, 3)),  # padding >= kernel - 1: the scatter path
    (2, 3, 11, 8, 5, (3, 3), (2, 3), (1, 0)),  # stride does not divide the input evenly
    (1, 4, 4, 4, 3, (4, 4), (1, 1), (0, 0)),  # kernel covers the whole input
    (2, 4, 7, 6, 3, (3, 3), (1, 1), (1, 1)),  # filters <= channels: dweight from the unfolded dout
    (3, 3, 6, 7, 2, (3, 2), (1, 1), (0, 1)),  # the same, unpadded rows, a padded column
]


def to_internal(x):
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3))


def to_public(x):
    return x.transpose(1, 0, 2, 3)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("flat_max_waste", [0, 10**6])  # row-by-row windows, flattened windows
@pytest.mark.parametrize("products", ["whole", "column blocks", "row blocks"])
def test_fast_conv_matches_loop_reference_forward_and_backward(case, dtype, flat_max_waste, products, monkeypatch):
    monkeypatch.setattr(conv, "FLAT_MAX_WASTE", flat_max_waste)
    batch, channels, height, width, filters, kernel, stride, padding = case
    # medium's products are cut into blocks for OpenBLAS's small-matrix kernels; here the
    # blocks are made small enough to cut these little convs: 16 columns, or 8 rows
    if products == "column blocks":
        monkeypatch.setattr(conv, "SMALL_PRODUCT", 16 * filters * channels * kernel[0] * kernel[1])
    elif products == "row blocks":
        monkeypatch.setattr(conv, "SMALL_PRODUCT", 10**12)
        monkeypatch.setattr(conv, "SMALL_TRANSPOSED_RESULT", 8 * max(filters, channels))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    weight = rng.standard_normal((filters, channels, *kernel)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    out, cache = conv.conv2d_forward(to_internal(x), weight, bias, stride, padding)
    expected = reference.conv2d_reference(x, weight, bias, stride, padding)
    tolerance = 1e-10 if dtype == np.float64 else 1e-4
    assert out.dtype == dtype
    np.testing.assert_allclose(to_public(out), expected, atol=tolerance, rtol=tolerance)

    dout = rng.standard_normal(expected.shape).astype(dtype)
    dx, dweight, dbias = conv.conv2d_backward(to_internal(dout), cache, weight, need_input_grad=True)
    ref_dx, ref_dweight, ref_dbias = reference.conv2d_backward_reference(x, weight, dout, stride, padding)
    np.testing.assert_allclose(to_public(dx), ref_dx, atol=tolerance, rtol=tolerance)
    np.testing.assert_allclose(dweight, ref_dweight, atol=tolerance * 10, rtol=tolerance)
    np.testing.assert_allclose(dbias, ref_dbias, atol=tolerance * 10, rtol=tolerance)

    none_dx, dweight_again, _ = conv.conv2d_backward(to_internal(dout), cache, weight, need_input_grad=False)
    assert none_dx is None
    np.testing.assert_array_equal(dweight_again, dweight)


def test_conv_chunking_gives_the_same_result_as_one_chunk(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 7, 9, 9))  # internal layout: 7 images
    weight = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    dout = rng.standard_normal((4, 7, 9, 9))
    results = []
    for flat_max_waste in (0, 10**6):
        monkeypatch.setattr(conv, "FLAT_MAX_WASTE", flat_max_waste)
        for elements in (10**9, 1, 3000):  # one chunk, one image per chunk, a short last chunk
            monkeypatch.setattr(conv, "CHUNK_ELEMENTS", elements)
            out, cache = conv.conv2d_forward(x, weight, bias, (1, 1), (1, 1))
            results.append((out, *conv.conv2d_backward(dout, cache, weight)))
    for other in results[1:]:
        for one, many in zip(results[0], other):
            np.testing.assert_allclose(one, many, atol=1e-12)


@pytest.mark.parametrize("span", [16, 47, 48, 50, 96])  # one block, blocks with and without a tail
def test_products_in_column_blocks_are_the_whole_products(span, monkeypatch):
    monkeypatch.setattr(conv, "SMALL_PRODUCT", 16 * 3 * 5)  # blocks of 16 columns for 3 x 5 weights
    rng = np.random.default_rng(span)
    weight = rng.standard_normal((3, 5))
    unfolded = rng.standard_normal((2, 5, span))
    grid = np.full((3, 2, span + 7), np.nan)  # written through a strided view, as a conv's grid is
    conv.multiply_column_blocks(weight, unfolded, grid[:, :, :span].transpose(1, 0, 2))
    np.testing.assert_allclose(grid[:, :, :span].transpose(1, 0, 2), weight @ unfolded, rtol=1e-12)
    assert np.isnan(grid[:, :, span:]).all(), "nothing past the span is touched"


@pytest.mark.parametrize("rows", [8, 23, 24, 40])  # one block, blocks with and without a tail
def test_products_in_row_blocks_are_the_whole_products(rows, monkeypatch):
    monkeypatch.setattr(conv, "SMALL_TRANSPOSED_RESULT", 8 * 3)  # blocks of 8 rows for 3 columns
    rng = np.random.default_rng(rows)
    unfolded = rng.standard_normal((2, rows, 30))
    other = rng.standard_normal((3, 2, 30)).transpose(1, 2, 0)  # read transposed, as a grid is
    np.testing.assert_allclose(conv.multiply_row_blocks(unfolded, other), unfolded @ other, rtol=1e-12)


@pytest.mark.parametrize("length", [16, 47, 48, 50, 96])  # one block, blocks with and without a tail
def test_products_summed_over_inner_blocks_are_the_whole_products(length, monkeypatch):
    monkeypatch.setattr(conv, "SMALL_PRODUCT", 16 * 4 * 3)  # inner blocks of 16 for a 4 x 3 result
    rng = np.random.default_rng(length)
    left, right = rng.standard_normal((4, length)), rng.standard_normal((3, length))
    np.testing.assert_allclose(conv.multiply_inner_blocks(left, right), left @ right.T, rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_flat_layout_windows_are_the_padded_windows(seed):
    """FlatPadded shares borders between rows and images; what each kernel offset reads for
    every valid output must still be exactly the zero-padded image's window."""
    rng = np.random.default_rng(seed)
    channels, batch = (int(v) for v in rng.integers(1, 4, 2))
    kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    height, width = (int(v) for v in rng.integers(max(kernel), 9, 2))
    x = rng.standard_normal((channels, batch, height, width))
    out_hw = (height + 2 * padding[0] - kernel[0] + 1, width + 2 * padding[1] - kernel[1] + 1)
    flat = conv.FlatPadded(x, *padding)
    padded = conv.pad_spatial(x, *padding)
    row = width + padding[1]  # one border column per row, one border band per image, one closing band
    assert flat.data.shape == (channels, batch * (height + padding[0]) * row + padding[0] * row + padding[1])
    # what _flat_chunks unfolds, one chunk for the whole batch: per image, rows (i, j, c) and one
    # column per window start up to the image's last valid one
    chunks = list(conv._flat_chunks(flat, kernel, out_hw, out_rows=1))
    assert len(chunks) == 1
    first, last, unfolded = chunks[0]
    span = conv.starts_per_image(flat, out_hw)
    assert (first, last, unfolded.shape) == (0, batch, (batch, kernel[0] * kernel[1] * channels, span))
    grid = np.full((*kernel, channels, batch, flat.image), np.nan)
    grid[..., :span] = unfolded.reshape(batch, *kernel, channels, span).transpose(1, 2, 3, 0, 4)
    starts = grid.reshape(*kernel, channels, batch, *flat.grid_hw)[..., : out_hw[0], : out_hw[1]]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            np.testing.assert_array_equal(starts[i, j], padded[:, :, i : i + out_hw[0], j : j + out_hw[1]])


def test_a_conv_writes_into_the_next_convs_padded_layout():
    """The chained layout (see engine.fast.direct_conv): a same-padded 3x3 conv's window-start grid
    is the next 3x3 conv's padded input, cell for cell; pixels land where FlatPadded puts them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 7))
    weight, bias = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    assert conv.flat_chain_padding((2, 6, 7), (3, 3), (1, 1), (1, 1), (3, 3), (1, 1), (1, 1)) == (1, 1)
    into = conv.FlatPadded.for_output((4, 3, 6, 7), (1, 1), x.dtype)
    out, _ = conv.conv2d_forward(conv.FlatPadded(x, 1, 1), weight, bias, (1, 1), (1, 1), into=into)
    expected, _ = conv.conv2d_forward(x, weight, bias, (1, 1), (1, 1))
    np.testing.assert_allclose(into.valid(), expected, atol=1e-12)
    assert np.shares_memory(out, into.data)
    into.zero_border()
    np.testing.assert_array_equal(into.data, conv.FlatPadded(into.valid().copy(), 1, 1).data)


@pytest.mark.parametrize(
    "first, second, chains",
    [
        (((3, 3), (1, 1), (1, 1)), ((3, 3), (1, 1), (1, 1)), True),
        (((5, 5), (1, 1), (1, 1)), ((5, 5), (1, 1), (3, 3)), True),  # k1 - 1 - p1 = 3, as the second pads
        (((3, 3), (1, 1), (1, 1)), ((3, 3), (1, 1), (0, 0)), False),  # padding 0 after padding 1
        (((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)), False),  # strided first conv
        (((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), False),  # strided second conv
    ],
)
def test_which_convs_chain(first, second, chains):
    padding = conv.flat_chain_padding((4, 16, 16), *first, *second)
    assert padding == (second[2] if chains else None)


def test_relu_in_place_is_max_with_zero_for_any_layout():
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((5, 3, 4)).astype(np.float32), rng.standard_normal((6, 8))[:, ::2]):
        expected = np.maximum(x, 0)
        assert conv.relu_in_place(x) is x
        np.testing.assert_array_equal(x, expected)
    nan = np.array([np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(conv.relu_in_place(nan), [np.nan, 0.0, 2.0])  # a diverged run stays visible


POOL_CASES = [
    # (height, width, size, stride)
    ((4, 4), (2, 2), (2, 2)),
    ((7, 5), (2, 2), (2, 2)),  # odd sizes: the last row/column is dropped (floor mode)
    ((9, 9), (3, 3), (2, 2)),  # overlapping windows
    ((8, 6), (3, 2), (1, 2)),
    ((5, 5), (5, 5), (5, 5)),
    ((6, 6), (2, 3), (3, 1)),
]


@pytest.mark.parametrize("shape, size, stride", POOL_CASES)
def test_fast_maxpool_matches_loop_reference(shape, size, stride):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, *shape))
    out, cache = conv.maxpool_forward(to_internal(x), size, stride)
    np.testing.assert_array_equal(to_public(out), reference.maxpool_reference(x, size, stride))
    dout = rng.standard_normal(out.shape)
    dx = conv.maxpool_backward(dout, cache)
    np.testing.assert_allclose(
        to_public(dx), reference.maxpool_backward_reference(x, to_public(dout), size, stride), atol=1e-12
    )


@pytest.mark.parametrize("shape, size, stride", POOL_CASES)
def test_maxpool_ties_send_the_gradient_to_the_first_maximum_like_pytorch(shape, size, stride):
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((2, 2, *shape)), 0).round(0)  # many equal values (0, 1, 2)
    out, cache = conv.maxpool_forward(to_internal(x), size, stride)
    dout = rng.standard_normal(out.shape)
    dx = conv.maxpool_backward(dout, cache)
    np.testing.assert_allclose(
        to_public(dx), reference.maxpool_backward_reference(x, to_public(dout), size, stride), atol=1e-12
    )


@pytest.mark.parametrize("shape", [(4, 4), (7, 5), (5, 8)])
def test_maxpool_gradient_written_into_a_padded_layout_fills_every_pixel(shape):
    """The 2x2 pool's gradient can go straight into a conv's flat layout (its valid() view,
    full of junk before): every pixel is set, the ones in no window (odd sizes) to zero."""
    rng = np.random.default_rng(6)
    x = np.maximum(rng.standard_normal((3, 2, *shape)), 0).round(0)  # ties too
    out, cache = conv.maxpool_forward(x)
    dout = rng.standard_normal(out.shape)
    target = conv.FlatPadded.for_output(x.shape, (1, 1), x.dtype)
    target.data[:, target.offset : target.length - target.offset] = np.nan  # junk
    assert conv.maxpool_backward(dout, cache, out=target.valid()) is not None
    np.testing.assert_array_equal(target.valid(), conv.maxpool_backward(dout, cache))
    with pytest.raises(ValueError, match="2x2"):
        conv.maxpool_backward(*conv.maxpool_forward(x, (3, 3), (1, 1)), out=target.valid())


@pytest.mark.parametrize("shape, size, stride", POOL_CASES)
def test_fast_avgpool_matches_loop_reference(shape, size, stride):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, *shape))
    out, cache = conv.avgpool_forward(to_internal(x), size, stride)
    np.testing.assert_allclose(to_public(out), reference.avgpool_reference(x, size, stride), atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx = conv.avgpool_backward(dout, cache)
    np.testing.assert_allclose(
        to_public(dx), reference.avgpool_backward_reference(x, to_public(dout), size, stride), atol=1e-12
    )


def test_reference_conv_is_cross_correlation_like_pytorch():
    # a kernel with a single 1 at (0, 1) picks the top-middle pixel of each window:
    # cross-correlation, not a flipped convolution
    x = np.arange(16, dtype=float).reshape(1, 1, 4, 4)
    weight = np.zeros((1, 1, 3, 3))
    weight[0, 0, 0, 1] = 1.0
    out = reference.conv2d_reference(x, weight, np.zeros(1))
    np.testing.assert_array_equal(out[0, 0], [[1, 2], [5, 6]])
    fast, _ = conv.conv2d_forward(to_internal(x), weight, np.zeros(1))
    np.testing.assert_array_equal(to_public(fast)[0, 0], [[1, 2], [5, 6]])
