"""engine.explain: each measure of one filter, checked against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import explain
from engine.core.kernels import named_kernel

DEMO = engine.PRESETS["demo"]


@pytest.fixture(scope="module")
def demo():
    """The demo net with hand-made conv1 kernels (x, plus, sobels, edges...) and a random conv2."""
    model = engine.build_model(DEMO, init="he_normal", seed=3, threads=1)
    params = model.state_dict()
    names = ["x", "plus", "sobel_x", "sobel_y", "vertical_edge", "horizontal_edge", "diagonal_edge", "laplacian"]
    for i, name in enumerate(names):
        params["0.weight"][i, 0] = named_kernel(name, (5, 5))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((24, 1, 28, 28)).astype(np.float32)
    images[:, :, 10:18, 10:18] += 2.0  # a bright square: edges in every image
    labels = rng.integers(0, 3, 24)
    return model.spec, params, images, labels


def test_bad_layer_and_filter_name_what_exists(demo):
    spec = demo[0]
    with pytest.raises(explain.NotAFilter, match=r"layer 5 is not a conv layer; conv layers: 0 \(conv1\), 3 \(conv2\)"):
        explain.check_filter(spec, 5, 0)
    with pytest.raises(explain.NotAFilter, match=r"filter 16 does not exist in layer 3 \(conv2\); filters: 0..15"):
        explain.check_filter(spec, 3, 16)
    assert explain.check_filter(spec, 3, 15) == "conv2"


def test_receptive_field_of_the_demo_net(demo):
    spec, params = demo[0], demo[1]
    assert explain.receptive_field(spec, params, 0) == {"size": 5, "jump": 1, "offset": 0}
    assert explain.receptive_field(spec, params, 3) == {"size": 10, "jump": 2, "offset": 0}
    padded = {"input": [1, 12, 12], "layers": [{"type": "conv", "filters": 2, "kernel": 3, "padding": 1}]}
    model = engine.build_model(padded, threads=1)
    assert explain.receptive_field(padded, model.params, 0) == {"size": 3, "jump": 1, "offset": -1}


def test_top_patches_are_the_strongest_positions_and_crop_what_the_filter_saw(demo):
    spec, params, images, labels = demo
    model = explain.truncated_model(spec, params, 3)
    responses = explain.conv_responses(model, images)[:, 7]
    field = explain.receptive_field(spec, params, 3)
    patches = explain.top_patches(responses, images, field, labels, ["a", "b", "c"])
    assert len(patches) == 9
    values = [p["activation"] for p in patches]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(responses.max())
    assert len({p["image"] for p in patches}) == 9  # one per image
    top = patches[0]
    assert responses[top["image"], top["y"], top["x"]] == pytest.approx(top["activation"])
    assert top["label"] == ["a", "b", "c"][labels[top["image"]]]
    # the crop alone, run through a field-sized copy of the net, gives the same activation
    crop = np.asarray(top["pixels"], dtype=np.float32)
    assert crop.shape == (1, 10, 10)
    field_net = explain.field_model(spec, params, 3, 10)
    np.testing.assert_allclose(field_net.forward(crop[None])[0, 7, 0, 0], top["activation"], rtol=1e-3, atol=1e-3)


def test_crop_pads_with_zeros_outside_the_image():
    image = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    out = explain.crop(image, -1, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [2, 3, 0]


def test_maximization_excites_the_filter_more_than_the_best_patch(demo):
    spec, params, images, _ = demo
    pixel_range = (float(images.min()), float(images.max()))
    checked = 0
    for layer, count in ((0, 8), (3, 16)):
        model = explain.truncated_model(spec, params, layer)
        responses = explain.conv_responses(model, images)
        for f in range(count):
            best = float(responses[:, f].max())
            if best <= 0:  # a filter that never fires: its gradient can vanish (see maximize)
                continue
            result = explain.maximize(spec, params, layer, f, pixel_range)
            assert result["activation"] > best, (layer, f)
            image = result["image"]
            assert image.min() >= pixel_range[0] - 1e-5 and image.max() <= pixel_range[1] + 1e-5
            checked += 1
    assert checked >= 16


def test_spectrum_sobels_are_90_degrees_apart_and_constant_has_no_selectivity():
    sx = explain.spectrum(named_kernel("sobel_x", (3, 3)))
    sy = explain.spectrum(named_kernel("sobel_y", (3, 3)))
    assert sx["orientation"] == pytest.approx(90.0, abs=1e-9)  # finds vertical edges
    assert sy["orientation"] == pytest.approx(0.0, abs=1e-9)
    assert abs(sx["orientation"] - sy["orientation"]) == pytest.approx(90.0, abs=1e-9)
    assert sx["selectivity"] == pytest.approx(sy["selectivity"], rel=1e-9)
    assert 0 < sx["selectivity"] <= 1
    constant = explain.spectrum(np.full((5, 5), 0.3))
    assert constant["selectivity"] < 1e-12 and constant["orientation"] is None
    zero = explain.spectrum(np.zeros((3, 3)))
    assert zero["selectivity"] == 0.0 and zero["frequency"] is None
    assert explain.spectrum(named_kernel("diagonal_edge", (5, 5)))["orientation"] == pytest.approx(135.0, abs=1e-9)
    assert explain.spectrum(named_kernel("x", (5, 5)))["selectivity"] < 1e-12  # 90° symmetric


def test_spectrum_of_a_grating_finds_its_frequency_and_is_selective():
    cols = np.arange(9)
    grating = np.tile(np.cos(2 * np.pi * cols / 4), (9, 1))  # vertical stripes, 1/4 cycle per pixel
    result = explain.spectrum(grating)
    assert result["orientation"] == pytest.approx(90.0, abs=1e-6)
    assert result["frequency"] == pytest.approx(0.25, abs=1 / result["size"])
    assert result["selective"] and result["selectivity"] > 0.8
    magnitude = result["magnitude"]
    assert magnitude.shape == (result["size"], result["size"])


def test_dead_share_counts_positions_where_relu_gives_zero():
    responses = np.array([[[1.0, -1.0], [0.0, -2.0]]])
    assert explain.dead_share(responses) == {"share": 0.75, "dead": False, "positions": 4}
    assert explain.dead_share(-np.ones((2, 3, 3)))["dead"] is True


def test_dead_share_of_a_filter_with_a_large_negative_bias(demo):
    spec, params, images, labels = demo
    params = {k: v.copy() for k, v in params.items()}
    params["0.bias"][2] = -1e6
    result = explain.explain_filter(spec, params, 0, 2, images, labels, maximize_steps=4)
    assert result["dead"]["dead"] is True and result["dead"]["share"] == 1.0
    assert result["dead"]["activation"] == "relu"


def test_expanded_weights_match_the_impulse_response_of_the_linearized_net(demo):
    spec, params = demo[0], demo[1]
    expanded = explain.expanded_weights(spec, params, 3)
    assert expanded.shape == (16, 1, 10, 10)
    # the net below conv2 made linear by hand: no relu, max-pool -> avg-pool, no biases
    linear = {
        "input": [1, 28, 28],
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 5},
            {"type": "avgpool", "size": 2},
            {"type": "conv", "filters": 16, "kernel": 3},
        ],
    }
    model = engine.build_model(linear, dtype=np.float64, threads=1)
    model.params["0.weight"][...] = params["0.weight"]
    model.params["2.weight"][...] = params["3.weight"]
    model.params["0.bias"][...] = 0
    model.params["2.bias"][...] = 0
    # one impulse per pixel of the receptive field of output (2, 3): top-left (4, 6)
    impulses = np.zeros((100, 1, 28, 28))
    for u in range(10):
        for v in range(10):
            impulses[u * 10 + v, 0, 4 + u, 6 + v] = 1.0
    response = model.forward(impulses)[:, :, 2, 3]  # (100, 16)
    np.testing.assert_allclose(expanded[:, 0].reshape(16, 100).T, response, rtol=1e-9, atol=1e-12)
    # the first conv's expanded weights are its kernels
    np.testing.assert_array_equal(explain.expanded_weights(spec, params, 0), params["0.weight"].astype(np.float64))


def test_trajectory_norms_and_relative_change():
    w0 = np.zeros((2, 1, 3, 3))
    w0[1, 0] = named_kernel("sobel_x", (3, 3))
    w0[0, 0, 1, 1] = 2.0
    w1 = w0.copy()
    w1[1] *= 3.0
    result = explain.trajectory([0, 10], [w0, w1], 1)
    assert result["norm"] == pytest.approx([1.0, 3.0])
    assert result["relative_change"] == pytest.approx([0.0, 2.0])
    assert result["steps"] == [0, 10] and len(result["score"]) == 2
    zeros = explain.trajectory([0, 10], [np.zeros((1, 1, 3, 3)), w1[:1]], 0)
    assert zeros["relative_change"] == [None, None]


def test_explain_filter_and_layer_summary_are_json_shaped(demo):
    import json

    spec, params, images, labels = demo
    history = ([0, 10], [params["3.weight"], params["3.weight"] * 2])
    result = explain.explain_filter(
        spec, params, 3, 5, images, labels, ["a", "b", "c"], history=history, maximize_steps=8
    )
    json.dumps(result)
    assert result["label"] == "conv2" and result["shape"] == [8, 3, 3]
    assert np.asarray(result["expanded"]["weight"]).shape == (1, 10, 10)
    assert np.asarray(result["maximize"]["image"]).shape == (1, 10, 10)
    assert result["trajectory"]["relative_change"] == pytest.approx([0.0, 1.0])
    summary = explain.layer_summary(spec, params, 0, images)
    json.dumps(summary)
    assert summary["filters"] == 8 and 0 <= summary["selective_share"] <= 1


def test_layer_param_names_are_the_parameters_up_to_the_layer(demo):
    spec, params, _, _ = demo
    assert explain.layer_param_names(spec, 0) == ["0.bias", "0.weight"]
    assert explain.layer_param_names(spec, 3) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    assert set(explain.layer_param_names(spec, 3)) < set(params)  # the dense layer's are left out
    with pytest.raises(explain.NotAFilter):
        explain.layer_param_names(spec, 1)


def test_layer_summary_with_a_reused_model_equals_a_fresh_one(demo):
    """Summaries over several snapshots reuse one model (its parameters overwritten): each row is
    what a model built for that snapshot alone gives, and only the layers' own arrays are needed."""
    spec, params, images, _ = demo
    rng = np.random.default_rng(5)
    snapshots = [params]
    for scale in (0.5, -1.0, 3.0):  # other weights: some filters die, orientations change
        changed = {name: value.copy() for name, value in params.items()}
        changed["0.weight"] = (changed["0.weight"] * scale + rng.normal(0, 0.1, changed["0.weight"].shape)).astype(
            np.float32
        )
        changed["0.bias"] = (changed["0.bias"] + scale).astype(np.float32)
        changed["0.bias"][: int(abs(scale)) + 1] = -1e3  # these never fire
        snapshots.append(changed)
    for layer in (0, 3):
        names = explain.layer_param_names(spec, layer)
        model = None
        for snapshot in snapshots:
            needed = {name: snapshot[name] for name in names}
            if model is None:
                model = explain.truncated_model(spec, needed, layer)
            reused = explain.layer_summary(spec, needed, layer, images, model=model)
            fresh = explain.layer_summary(spec, snapshot, layer, images)
            assert reused.keys() == fresh.keys()
            for key, value in fresh.items():
                assert reused[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (layer, key)
    dead_counts = [explain.layer_summary(spec, s, 0, images)["dead_filters"] for s in snapshots]
    assert len(set(dead_counts)) > 1  # the snapshots differ where it matters: the check can fail


def test_selectivity_from_the_autocorrelation_equals_the_fourier_one():
    """Layer summaries and the chance level take the selectivity index from the kernels'
    autocorrelation; `spectrum` takes it from the zero-padded FFT: the same number."""
    rng = np.random.default_rng(11)
    kernels = [rng.standard_normal(shape) for shape in [(1, 5, 5), (8, 3, 3), (3, 7, 7), (2, 4, 6)]]
    kernels += [named_kernel(name, (5, 5))[None] for name in ("x", "sobel_x", "vertical_edge", "laplacian")]
    kernels += [np.ones((1, 3, 3)), np.zeros((2, 3, 3))]
    for kernel in kernels:
        assert explain._selectivity_of(kernel) == pytest.approx(explain.spectrum(kernel)["selectivity"], abs=1e-12)
    batch = rng.standard_normal((6, 4, 3, 3))
    np.testing.assert_allclose(
        explain._selectivity_of(batch), [explain.spectrum(k)["selectivity"] for k in batch], atol=1e-12
    )
