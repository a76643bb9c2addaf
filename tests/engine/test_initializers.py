"""Every initializer follows its law: empirical mean/std over a large sample, exact constants,
orthonormal rows; hand-made kernels land where asked; the registry describes itself."""

import math

import numpy as np
import pytest

import engine
from engine.core import initializers
from engine.core.initializers import INITIALIZERS, NAMED_KERNELS, describe, fans, initialize

CONV_SHAPE = (128, 64, 5, 5)  # fan_in 1600, fan_out 3200, 204800 samples
DENSE_SHAPE = (400, 500)  # fan_in 500, fan_out 400, 200000 samples

# name, params, expected std(shape), uniform bound(shape) or None
LAWS = [
    ("normal", {}, lambda fi, fo: 0.01, None),
    ("normal", {"std": 0.2}, lambda fi, fo: 0.2, None),
    ("uniform", {}, lambda fi, fo: 0.05 / math.sqrt(3), lambda fi, fo: 0.05),
    ("uniform", {"a": 0.3}, lambda fi, fo: 0.3 / math.sqrt(3), lambda fi, fo: 0.3),
    ("glorot_uniform", {}, lambda fi, fo: math.sqrt(2 / (fi + fo)), lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("xavier_uniform", {}, lambda fi, fo: math.sqrt(2 / (fi + fo)), lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("glorot_normal", {}, lambda fi, fo: math.sqrt(2 / (fi + fo)), None),
    ("he_normal", {}, lambda fi, fo: math.sqrt(2 / fi), None),
    ("kaiming_normal", {}, lambda fi, fo: math.sqrt(2 / fi), None),
    ("he_uniform", {}, lambda fi, fo: math.sqrt(2 / fi), lambda fi, fo: math.sqrt(6 / fi)),
    ("lecun_normal", {}, lambda fi, fo: math.sqrt(1 / fi), None),
]


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
@pytest.mark.parametrize("name, params, std_of, bound_of", LAWS)
def test_empirical_mean_and_std_match_the_law(shape, name, params, std_of, bound_of):
    fan_in, fan_out = fans(shape)
    values = initialize({"name": name, **params}, shape, np.random.default_rng(0), dtype=np.float64)
    expected_std = std_of(fan_in, fan_out)
    assert values.shape == shape
    assert abs(values.mean()) < 5 * expected_std / math.sqrt(values.size)
    assert values.std() == pytest.approx(expected_std, rel=0.01)
    if bound_of is not None:
        bound = bound_of(fan_in, fan_out)
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.99 * bound


def test_normal_laws_are_not_truncated():
    values = initialize("he_normal", CONV_SHAPE, np.random.default_rng(1), dtype=np.float64)
    std = math.sqrt(2 / 1600)
    assert np.abs(values).max() > 4 * std  # a truncated normal would stop at 2 std


def test_fans_follow_the_design():
    assert fans((8, 1, 5, 5)) == (25, 200)
    assert fans((16, 8, 3, 3)) == (72, 144)
    assert fans((10, 400)) == (400, 10)


def test_zeros_and_constant_are_exact():
    rng = np.random.default_rng(0)
    assert np.array_equal(initialize("zeros", CONV_SHAPE, rng), np.zeros(CONV_SHAPE, dtype=np.float32))
    assert np.all(initialize("constant", DENSE_SHAPE, rng) == np.float32(0.1))
    assert np.all(initialize({"name": "constant", "value": -0.25}, (3, 2, 3, 3), rng) == -0.25)


@pytest.mark.parametrize("shape", [(8, 1, 5, 5), (16, 8, 3, 3), (64, 32), (20, 200), (200, 20)])
@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_orthogonal_rows_or_columns_are_orthonormal(shape, gain):
    values = initialize({"name": "orthogonal", "gain": gain}, shape, np.random.default_rng(2), dtype=np.float64)
    matrix = values.reshape(shape[0], -1) / gain
    rows, cols = matrix.shape
    gram = matrix @ matrix.T if rows <= cols else matrix.T @ matrix
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-10)


def test_same_generator_seed_gives_identical_values_and_dtype_follows_request():
    a = initialize("glorot_uniform", (4, 3, 3, 3), np.random.default_rng(5))
    b = initialize("glorot_uniform", (4, 3, 3, 3), np.random.default_rng(5))
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert initialize("he_normal", (2, 2), np.random.default_rng(0), dtype=np.float64).dtype == np.float64


def test_describe_gives_law_fans_and_sigma():
    assert describe("he_normal", (8, 1, 5, 5)) == {
        "name": "he_normal",
        "law": "N(0, 2/fan_in)",
        "fan_in": 25,
        "fan_out": 200,
        "std": 0.282843,
        "bound": None,
        "text": "He normal: N(0, 2/fan_in); fan_in = 1·5·5 = 25 → σ = 0.283",
    }
    glorot = describe("xavier_uniform", (8, 1, 5, 5))
    assert glorot["name"] == "glorot_uniform"
    assert glorot["bound"] == pytest.approx(math.sqrt(6 / 225), abs=1e-6)
    assert "fan_out = 8·5·5 = 200" in glorot["text"]
    assert describe({"name": "normal", "std": 0.02}, (10, 400))["std"] == pytest.approx(0.02)
    assert "0.1" in describe("constant", (3, 3))["text"]


def test_registry_entries_have_law_paper_defaults_and_documented_functions():
    for name in initializers.CANONICAL_NAMES:
        entry = INITIALIZERS[name]
        summary = entry.to_dict()
        assert summary["name"] == name and summary["law"] and summary["paper"]
        assert entry.function.__doc__ and len(entry.function.__doc__) > 20
    assert set(initializers.CANONICAL_NAMES) >= {
        "zeros",
        "constant",
        "normal",
        "uniform",
        "glorot_uniform",
        "glorot_normal",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "orthogonal",
        "kernel",
    }
    assert INITIALIZERS["xavier_uniform"] is INITIALIZERS["glorot_uniform"]
    assert INITIALIZERS["kaiming_normal"] is INITIALIZERS["he_normal"]
    assert engine.INITIALIZERS is INITIALIZERS


def test_unknown_names_and_bad_params_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown init 'kaiming'.*valid names:.*he_normal"):
        initialize("kaiming", (2, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown param 'sigma'"):
        initialize({"name": "normal", "sigma": 0.1}, (2, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="'std' must be >= 0"):
        initialize({"name": "normal", "std": -1}, (2, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="'value' must be a finite number"):
        initialize({"name": "constant", "value": "big"}, (2, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="kernels\\[1\\]: unknown kernel 'star'"):
        initialize({"name": "kernel", "kernels": ["x", "star"]}, (2, 1, 3, 3), np.random.default_rng(0))


# ---- hand-made kernels -------------------------------------------------------------------


def test_named_kernels_exist_and_have_unit_norm_at_odd_and_even_sizes():
    assert set(NAMED_KERNELS) >= {"x", "plus", "sobel_x", "sobel_y", "laplacian", "identity"}
    for name in NAMED_KERNELS:
        for size in [(3, 3), (5, 5), (4, 4), (7, 3), (2, 2)]:
            if name == "laplacian" and min(size) < 3:
                with pytest.raises(ValueError, match="at least 3x3"):
                    initializers.named_kernel(name, size)
                continue
            kernel = initializers.named_kernel(name, size)
            assert kernel.shape == size
            assert np.linalg.norm(kernel) == pytest.approx(1.0)


def test_named_kernels_at_3x3_are_the_classic_patterns():
    def unit(values):
        values = np.array(values, dtype=float)
        return values / np.linalg.norm(values)

    expected = {
        "x": [[1, -1, 1], [-1, 1, -1], [1, -1, 1]],
        "plus": [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]],
        "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
        "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
        "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
        "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(initializers.named_kernel(name, (3, 3)), unit(values), err_msg=name)


def test_x_kernel_at_5x5_marks_both_diagonals():
    kernel = initializers.named_kernel("x", (5, 5))
    positive = kernel > 0
    assert positive.sum() == 9
    assert all(positive[i, i] and positive[i, 4 - i] for i in range(5))


def test_kernel_init_places_named_and_explicit_kernels_then_the_fallback():
    shape = (5, 2, 3, 3)
    custom = [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
    values = initialize(
        {"name": "kernel", "kernels": ["sobel_x", custom], "fallback": "zeros"},
        shape,
        np.random.default_rng(0),
        dtype=np.float64,
    )
    sobel = initializers.named_kernel("sobel_x", (3, 3)) / math.sqrt(2)
    np.testing.assert_allclose(values[0, 0], sobel)
    np.testing.assert_allclose(values[0, 1], sobel)
    assert np.linalg.norm(values[0]) == pytest.approx(1.0)
    np.testing.assert_array_equal(values[1, 0], np.array(custom, dtype=float))
    np.testing.assert_array_equal(values[1, 1], np.array(custom, dtype=float))
    assert np.all(values[2:] == 0)


def test_kernel_init_single_name_fills_every_filter_and_scale_applies():
    values = initialize(
        {"name": "kernel", "kernels": "x", "scale": 2.0}, (4, 1, 5, 5), np.random.default_rng(0), dtype=np.float64
    )
    for f in range(4):
        np.testing.assert_allclose(values[f, 0], 2.0 * initializers.named_kernel("x", (5, 5)))


def test_kernel_init_fallback_is_random_and_dense_layers_use_the_fallback():
    values = initialize({"name": "kernel", "kernels": ["x"]}, (64, 4, 3, 3), np.random.default_rng(0), dtype=np.float64)
    rest = values[1:]
    assert rest.std() == pytest.approx(math.sqrt(2 / 36), rel=0.1)  # he_normal by default
    dense = initialize("kernel", (10, 400), np.random.default_rng(0), dtype=np.float64)
    assert dense.std() == pytest.approx(math.sqrt(2 / 400), rel=0.05)


def test_kernel_init_rejects_a_wrong_sized_grid():
    with pytest.raises(ValueError, match="kernels\\[0\\] has shape \\[2, 2\\]; expected \\[3, 3\\]"):
        initialize({"name": "kernel", "kernels": [[[1, 0], [0, 1]]]}, (2, 1, 3, 3), np.random.default_rng(0))
    with pytest.raises(ValueError, match="fallback must be a random initializer"):
        initialize({"name": "kernel", "fallback": "kernel"}, (2, 1, 3, 3), np.random.default_rng(0))


@pytest.mark.parametrize("size", [3, 5, 7])
def test_every_detector_started_as_a_hand_made_kernel_is_recognised_as_itself(size):
    """One bank (engine.core.kernels): the kernel init's patterns and the analysis's detectors
    share their names and their shapes."""
    from engine import analysis
    from engine.core.kernels import DETECTORS

    kernels = np.stack([initializers.named_kernel(name, (size, size)) for name in DETECTORS])
    labels, scores = analysis.best_matches(kernels)
    assert labels == list(DETECTORS)
    assert np.all(scores > analysis.chance_level(size))
