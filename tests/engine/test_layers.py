"""Finite-difference gradient checks (float64) of the core (engine.core: the reference the fast
path is tested against in test_fast_vs_core.py) for every layer type and for whole models,
and the core's im2col layers against the slow loop references."""

import numpy as np
import pytest

import engine
from engine import reference
from engine.core.layers import make_layer


def numeric_gradient(function, array, indices, eps=1e-6):
    """Central differences of the scalar function() w.r.t. array at the given flat indices."""
    flat = array.reshape(-1)
    grads = []
    for index in indices:
        saved = flat[index]
        flat[index] = saved + eps
        plus = function()
        flat[index] = saved - eps
        minus = function()
        flat[index] = saved
        grads.append((plus - minus) / (2 * eps))
    return np.array(grads)


def check_model_gradients(spec, batch=3, seed=0, samples=25):
    """Compare backward's input and parameter gradients with finite differences of
    loss = sum(output * R) for a fixed random R."""
    rng = np.random.default_rng(seed)
    model = engine.build_model(spec, init={"name": "normal", "std": 0.5}, seed=seed, dtype=np.float64, fast=False)
    for name in model.params:
        if name.endswith(".bias"):
            model.params[name][...] = rng.standard_normal(model.params[name].shape) * 0.3
    x = rng.standard_normal((batch, *model.input_shape))
    out = model.forward(x)
    weights = rng.standard_normal(out.shape)

    def loss():
        return float(np.sum(model.forward(x) * weights))

    model.forward(x)
    dx = model.backward(weights)
    analytic = {name: grad.copy() for name, grad in model.grads.items()}
    checked = [("input", x, dx)] + [(name, model.params[name], analytic[name]) for name in model.params]
    for name, array, grad in checked:
        assert grad.shape == array.shape, name
        indices = rng.choice(array.size, size=min(samples, array.size), replace=False)
        expected = numeric_gradient(loss, array, indices)
        np.testing.assert_allclose(grad.reshape(-1)[indices], expected, rtol=1e-5, atol=1e-7, err_msg=name)


CONV_LAYERS = [
    {"type": "conv", "filters": 3, "kernel": 3},
    {"type": "conv", "filters": 2, "kernel": 3, "stride": 2, "padding": 1},
    {"type": "conv", "filters": 2, "kernel": [2, 3], "stride": [1, 2], "padding": [0, 1]},
    {"type": "conv", "filters": 4, "kernel": 5, "stride": 3, "padding": 2},
    {"type": "conv", "filters": 2, "kernel": 1},
    {"type": "conv", "filters": 2, "kernel": 2, "padding": 2},
    {"type": "conv", "filters": 2, "kernel": 4, "stride": 2},
]


@pytest.mark.parametrize("layer", CONV_LAYERS)
@pytest.mark.parametrize("input_shape", [[2, 7, 7], [1, 8, 5], [3, 9, 6]])
def test_conv_gradients(layer, input_shape):
    check_model_gradients({"input": input_shape, "layers": [layer]})


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_activation_gradients(kind):
    check_model_gradients({"input": [2, 5, 4], "layers": [{"type": kind}]})
    check_model_gradients({"input": [2, 5, 4], "layers": [{"type": "flatten"}, {"type": kind}]})


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize(
    "size, stride, shape",
    [(2, None, [2, 6, 6]), (2, None, [2, 7, 5]), (3, 2, [1, 9, 8]), ([2, 3], [1, 2], [2, 6, 7]), (3, 3, [2, 8, 8])],
)
def test_pool_gradients(kind, size, stride, shape):
    layer = {"type": kind, "size": size}
    if stride is not None:
        layer["stride"] = stride
    check_model_gradients({"input": shape, "layers": [layer]})


def test_flatten_and_dense_gradients():
    check_model_gradients({"input": [3, 4, 5], "layers": [{"type": "flatten"}, {"type": "dense", "units": 6}]})
    check_model_gradients(
        {"input": [7], "layers": [{"type": "dense", "units": 4}, {"type": "tanh"}, {"type": "dense", "units": 3}]}
    )


WHOLE_MODELS = [
    {
        "input": [1, 12, 12],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3},
            {"type": "relu"},
            {"type": "maxpool", "size": 2},
            {"type": "conv", "filters": 5, "kernel": 3, "padding": 1},
            {"type": "leaky_relu", "slope": 0.1},
            {"type": "avgpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 8},
            {"type": "sigmoid"},
            {"type": "dense", "units": 3},
        ],
    },
    {
        "input": [3, 11, 9],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 5, "stride": 2, "padding": 2},
            {"type": "tanh"},
            {"type": "conv", "filters": 3, "kernel": 3, "stride": 2},
            {"type": "relu"},
            {"type": "maxpool", "size": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "units": 4},
        ],
    },
]


@pytest.mark.parametrize("spec", WHOLE_MODELS)
def test_whole_model_gradients(spec):
    check_model_gradients(spec, batch=4, samples=15)


def test_whole_model_gradients_with_the_loss():
    rng = np.random.default_rng(7)
    model = engine.build_model(WHOLE_MODELS[0], seed=3, dtype=np.float64, fast=False)
    x = rng.standard_normal((5, 1, 12, 12))
    labels = rng.integers(0, 3, 5)

    def loss():
        return engine.softmax_cross_entropy(model.forward(x), labels)[0]

    _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
    model.backward(dlogits)
    for name in ("0.weight", "3.bias", "7.weight", "9.weight"):
        indices = rng.choice(model.params[name].size, size=min(10, model.params[name].size), replace=False)
        expected = numeric_gradient(loss, model.params[name], indices)
        np.testing.assert_allclose(model.grads[name].reshape(-1)[indices], expected, rtol=1e-5, atol=1e-8)


def test_parallel_batch_parts_give_the_same_gradients_as_one_part():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((40, 1, 12, 12))
    results = []
    for threads in (1, 2):
        model = engine.build_model(WHOLE_MODELS[0], seed=1, dtype=np.float64, threads=threads)
        out = model.forward(x)
        dx = model.backward(np.ones_like(out))
        results.append((out, dx, model.grads))
    (out1, dx1, grads1), (out2, dx2, grads2) = results
    np.testing.assert_allclose(out1, out2, atol=1e-12)
    np.testing.assert_allclose(dx1, dx2, atol=1e-12)
    for name in grads1:
        np.testing.assert_allclose(grads1[name], grads2[name], atol=1e-10)


@pytest.mark.parametrize("fast", [True, False])
def test_backward_does_not_write_into_the_incoming_gradient(fast):
    model = engine.build_model(WHOLE_MODELS[0], seed=0, dtype=np.float64, fast=fast)
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12))
    out = model.forward(x)
    dlogits = np.random.default_rng(1).standard_normal(out.shape)
    kept = dlogits.copy()
    model.backward(dlogits)
    np.testing.assert_array_equal(dlogits, kept)


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    loss, dlogits = engine.softmax_cross_entropy(logits, labels)
    expected = numeric_gradient(lambda: engine.softmax_cross_entropy(logits, labels)[0], logits, range(20))
    np.testing.assert_allclose(dlogits.reshape(-1), expected, rtol=1e-6, atol=1e-9)
    huge = np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 0.0]])
    loss, dlogits = engine.softmax_cross_entropy(huge, np.array([0, 0]))
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert loss == pytest.approx(1e4, rel=1e-6)  # (0 + 2e4) / 2
    assert engine.accuracy(huge, np.array([0, 1])) == 1.0
    with pytest.raises(ValueError, match="labels"):
        engine.softmax_cross_entropy(logits, np.array([0, 1, 2, 5]))


@pytest.mark.parametrize("stride, padding", [((1, 1), (0, 0)), ((2, 1), (1, 2)), ((2, 2), (1, 1))])
def test_core_conv_matches_the_loop_reference(stride, padding):
    rng = np.random.default_rng(4)
    x, weight, bias = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    layer = make_layer(
        {"type": "conv", "filters": 4, "kernel": [3, 2], "stride": stride, "padding": padding}, (3, 7, 6)
    )
    out, cache = layer.forward(x, {"weight": weight, "bias": bias})
    np.testing.assert_allclose(out, reference.conv2d_reference(x, weight, bias, stride, padding), atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, grads = layer.backward(dout, cache, {"weight": weight, "bias": bias})
    ref_dx, ref_dweight, ref_dbias = reference.conv2d_backward_reference(x, weight, dout, stride, padding)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], ref_dweight, atol=1e-11)
    np.testing.assert_allclose(grads["bias"], ref_dbias, atol=1e-12)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_core_pools_match_the_loop_references(kind):
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((2, 3, 7, 8)), 1)  # ties: the first maximum takes the gradient
    layer = make_layer({"type": kind, "size": 3, "stride": 2}, (3, 7, 8))
    out, cache = layer.forward(x, {})
    dout = rng.standard_normal(out.shape)
    dx, _ = layer.backward(dout, cache, {})
    forward, backward = (
        (reference.maxpool_reference, reference.maxpool_backward_reference)
        if kind == "maxpool"
        else (reference.avgpool_reference, reference.avgpool_backward_reference)
    )
    np.testing.assert_allclose(out, forward(x, (3, 3), (2, 2)), atol=1e-12)
    np.testing.assert_allclose(dx, backward(x, dout, (3, 3), (2, 2)), atol=1e-12)
