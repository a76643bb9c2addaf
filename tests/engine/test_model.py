"""build_model: spec validation, shapes, names, per-layer inits, determinism, outputs and
output gradients, state dicts and .npz files."""

import numpy as np
import pytest

import engine
from engine.presets import PRESETS

SPEC = {
    "input": [1, 28, 28],
    "layers": [
        {"type": "conv", "filters": 8, "kernel": 5, "stride": 1, "padding": 0, "init": "he_normal"},
        {"type": "relu"},
        {"type": "maxpool", "size": 2},
        {"type": "conv", "filters": 16, "kernel": 3},
        {"type": "relu"},
        {"type": "maxpool", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}


def test_design_example_builds_with_inferred_shapes_and_state_dict_names():
    model = engine.build_model(SPEC, init="he_normal", seed=0)
    assert model.input_shape == (1, 28, 28)
    assert model.output_shapes == [
        (8, 24, 24),
        (8, 24, 24),
        (8, 12, 12),
        (16, 10, 10),
        (16, 10, 10),
        (16, 5, 5),
        (400,),
        (10,),
    ]
    assert model.conv_indices == [0, 3]
    assert list(model.params) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    assert model.params["0.weight"].shape == (8, 1, 5, 5)
    assert model.params["7.weight"].shape == (10, 400)
    assert model.params["0.weight"].dtype == np.float32
    assert model.spec["layers"][3] == {
        "type": "conv",
        "filters": 16,
        "kernel": 3,
        "stride": 1,
        "padding": 0,
        "init": None,
        "bias_init": None,
    }
    logits = model.forward(np.zeros((2, 1, 28, 28), dtype=np.float32))
    assert logits.shape == (2, 10) and logits.dtype == np.float32


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            [
                {"type": "conv", "filters": 2, "kernel": 3},
                {"type": "maxpool", "size": 2},
                {"type": "relu"},
                {"type": "conv", "filters": 2, "kernel": 5},
            ],
            "layer 3 (conv): kernel 5 larger than input 4x4",
        ),
        ([{"type": "convolution", "filters": 2}], "layer 0: unknown type 'convolution'; valid types: conv, relu"),
        ([{"type": "conv", "filters": -3, "kernel": 3}], "layer 0 (conv): filters must be an integer >= 1, got -3"),
        (
            [{"type": "conv", "filters": 2, "kernel": 3, "padding": -1}],
            "layer 0 (conv): padding must be an integer >= 0",
        ),
        (
            [{"type": "conv", "filters": 2, "kernel": 3}, {"type": "dense", "units": 4}],
            "layer 1 (dense): dense needs a flat vector but gets 2x8x8 feature maps; add a flatten layer before it",
        ),
        (
            [{"type": "flatten"}, {"type": "conv", "filters": 2}],
            "layer 1 (conv): conv needs feature maps \\(C, H, W\\) but gets a flat vector of 100 features",
        ),
        ([{"type": "conv", "filter": 2}], "layer 0 (conv): unknown field 'filter'; valid fields: filters"),
        ([{"type": "conv"}], "layer 0 (conv): filters is required"),
        ([{"type": "maxpool", "size": 11}], "layer 0 \\(maxpool\\): pool size 11x11 larger than input 10x10"),
        ([{"type": "conv", "filters": 2, "init": "kaiming"}], "layer 0 \\(conv\\): unknown init 'kaiming'"),
        ([], "non-empty list"),
    ],
)
def test_bad_specs_name_the_layer_and_the_problem(layers, message):
    with pytest.raises(ValueError, match=message.replace("(conv)", "\\(conv\\)").replace("(dense)", "\\(dense\\)")):
        engine.build_model({"input": [1, 10, 10], "layers": layers})


def test_bad_input_and_init_and_seed_are_rejected():
    with pytest.raises(ValueError, match="input"):
        engine.build_model({"input": [1, 0, 28], "layers": [{"type": "relu"}]})
    with pytest.raises(ValueError, match="unknown init"):
        engine.build_model(SPEC, init="nope")
    with pytest.raises(ValueError, match="seed"):
        engine.build_model(SPEC, seed=-1)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        engine.build_model("huge")
    model = engine.build_model(SPEC)
    with pytest.raises(ValueError, match="input must have shape \\(N, 1, 28, 28\\)"):
        model.forward(np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="input batch is empty"):
        model.forward(np.zeros((0, 1, 28, 28)))


def test_same_seed_gives_bit_identical_weights_and_training():
    def train(seed):
        model = engine.build_model(SPEC, init="glorot_uniform", seed=seed)
        opt = engine.make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9})
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
        labels = rng.integers(0, 10, 32)
        for _ in range(3):
            _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
            model.backward(dlogits, need_input_grad=False)
            opt.step(model.params, model.grads)
        return model.state_dict()

    first, second, other = train(5), train(5), train(6)
    for name in first:
        assert np.array_equal(first[name], second[name])
    assert not np.array_equal(first["0.weight"], other["0.weight"])


def test_adding_a_layer_does_not_change_the_weights_of_earlier_layers():
    short = engine.build_model({"input": [1, 28, 28], "layers": SPEC["layers"][:4]}, seed=3)
    full = engine.build_model(SPEC, seed=3)
    for name in ("0.weight", "3.weight"):
        assert np.array_equal(short.params[name], full.params[name])


def test_per_layer_init_overrides_the_default_and_biases_start_at_zero():
    spec = {
        "input": [1, 8, 8],
        "layers": [
            {"type": "conv", "filters": 2, "kernel": 3, "init": {"name": "kernel", "kernels": ["x", "sobel_x"]}},
            {"type": "conv", "filters": 3, "kernel": 3, "bias_init": {"name": "constant", "value": 0.5}},
            {"type": "flatten"},
            {"type": "dense", "units": 2},
        ],
    }
    model = engine.build_model(spec, init="zeros", seed=0)
    from engine.core.initializers import named_kernel

    np.testing.assert_allclose(model.params["0.weight"][0, 0], named_kernel("x", (3, 3)), rtol=1e-6)
    assert np.all(model.params["1.weight"] == 0) and np.all(model.params["3.weight"] == 0)
    assert np.all(model.params["0.bias"] == 0) and np.all(model.params["1.bias"] == 0.5)


def test_params_are_live_and_dtype_follows_the_input():
    model = engine.build_model(SPEC, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    before = model.forward(x.astype(np.float32))
    model.params["7.bias"][...] += 1.0
    np.testing.assert_allclose(model.forward(x.astype(np.float32)), before + 1.0, rtol=1e-5)
    out64 = model.forward(x)
    assert out64.dtype == np.float64
    dx = model.backward(np.ones_like(out64))
    assert dx.dtype == np.float64 and dx.shape == x.shape
    assert model.grads["0.weight"].dtype == np.float32  # grads match their parameter


def test_keep_outputs_and_output_grads():
    model = engine.build_model(SPEC, seed=0)
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    logits = model.forward(x, keep_outputs=True)
    assert [out.shape[1:] for out in model.outputs] == model.output_shapes
    np.testing.assert_array_equal(model.outputs[-1], logits)
    assert np.all(model.outputs[1] >= 0)  # the relu's output, NCHW
    np.testing.assert_allclose(model.outputs[1], np.maximum(model.outputs[0], 0))
    dlogits = np.ones_like(logits)
    model.backward(dlogits)
    assert [g.shape[1:] for g in model.output_grads] == model.output_shapes
    np.testing.assert_array_equal(model.output_grads[-1], dlogits)
    # the gradient w.r.t. the flatten output is the dense weight's column sums
    np.testing.assert_allclose(model.output_grads[6], np.tile(model.params["7.weight"].sum(axis=0), (3, 1)), rtol=1e-5)


def test_state_dict_and_npz_round_trip(tmp_path):
    model = engine.build_model(SPEC, seed=0)
    other = engine.build_model(SPEC, seed=1)
    path = tmp_path / "weights.npz"
    model.save_npz(path)
    with np.load(path) as data:
        assert sorted(data.files) == sorted(model.params)
    other.load_npz(path)
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    state = model.state_dict()
    state["0.weight"][...] = 7  # a copy: the model is unchanged
    assert not np.any(model.params["0.weight"] == 7)
    with pytest.raises(ValueError, match="missing parameter '7.bias'"):
        other.load_state_dict({k: v for k, v in state.items() if k != "7.bias"})
    with pytest.raises(ValueError, match="parameter '0.weight' has shape \\[8, 1, 3, 3\\]"):
        other.load_state_dict({**state, "0.weight": np.zeros((8, 1, 3, 3))})


def test_presets_small_and_medium_match_the_issue():
    small = engine.build_model("small")
    assert small.output_shapes == [
        (8, 26, 26),
        (8, 26, 26),
        (8, 13, 13),
        (16, 11, 11),
        (16, 11, 11),
        (16, 5, 5),
        (400,),
        (10,),
    ]
    medium = engine.build_model("medium")
    assert medium.output_shapes[-3:] == [(64, 8, 8), (4096,), (10,)]
    assert medium.conv_indices == [0, 2, 5]
    assert {"small", "medium"} <= set(PRESETS)


def test_engine_learns_a_tiny_problem():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 1, 8, 8), dtype=np.float32)
    labels = rng.integers(0, 2, 64)
    x[labels == 0, 0, :, 3:5] = 1.0  # vertical bar
    x[labels == 1, 0, 3:5, :] = 1.0  # horizontal bar
    x += rng.normal(0, 0.1, x.shape).astype(np.float32)
    model = engine.build_model(
        {
            "input": [1, 8, 8],
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3},
                {"type": "relu"},
                {"type": "maxpool", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 2},
            ],
        },
        seed=0,
    )
    opt = engine.make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9})
    for _ in range(60):
        loss, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
        model.backward(dlogits, need_input_grad=False)
        opt.step(model.params, model.grads)
    assert loss < 0.05
    assert engine.accuracy(model.forward(x), labels) == 1.0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_can_run_parallel_steps_after_its_parent_did():
    import multiprocessing

    model = engine.build_model("small", threads=2)
    x = np.zeros((64, 1, 28, 28), dtype=np.float32)
    model.forward(x)  # the parent starts its thread pool
    queue = multiprocessing.get_context("fork").Queue()

    def child():
        queue.put(engine.build_model("small", threads=2).forward(x).shape)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert queue.get(timeout=5) == (64, 10)
