"""Init probe: the scale of activations and gradients through a deep plain ReLU stack at init."""

import numpy as np
import pytest

from engine.probe import init_probe, plain_stack_spec

SMALL_NORMAL = {"name": "normal", "std": 0.01}


@pytest.fixture(scope="module")
def deep_relu_probe():
    """30 conv layers, 3x3, 32 filters, padding 1, ReLU: He, Glorot and N(0, 0.01^2)."""
    return init_probe(depth=30, width=32, inits=["he_normal", "glorot_uniform", SMALL_NORMAL], seed=0)


def _act_stds(probe, which):
    return np.array([row["act_std"] for row in probe["results"][which]["layers"]])


def test_probe_reports_every_conv_layer_for_every_init(deep_relu_probe):
    assert [r["init"] for r in deep_relu_probe["results"]] == ["he_normal", "glorot_uniform", SMALL_NORMAL]
    for result in deep_relu_probe["results"]:
        assert len(result["layers"]) == 30
        assert all(row["type"] == "conv" for row in result["layers"])
        assert all(np.isfinite(row["grad_std"]) for row in result["layers"])


def test_he_keeps_the_scale_through_thirty_relu_layers(deep_relu_probe):
    he = _act_stds(deep_relu_probe, 0)
    assert 0.25 < he[-1] / he[0] < 4.0
    assert he.min() > 0.2 * he[0]


def test_glorot_ends_about_two_to_the_minus_fourteen_and_a_half_below_he(deep_relu_probe):
    he = _act_stds(deep_relu_probe, 0)
    glorot = _act_stds(deep_relu_probe, 1)
    assert np.log2(glorot[-1] / he[-1]) == pytest.approx(-14.5, abs=1.0)
    # the variance halves at each ReLU layer: std ratio to He shrinks by about 2^-0.5 per layer
    slope = np.polyfit(np.arange(30), np.log2(glorot / he), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.1)


def test_small_fixed_normal_collapses_within_ten_layers(deep_relu_probe):
    small = _act_stds(deep_relu_probe, 2)
    assert small[9] < 1e-6 * small[0]
    he_grads = [row["grad_std"] for row in deep_relu_probe["results"][0]["layers"]]
    small_grads = [row["grad_std"] for row in deep_relu_probe["results"][2]["layers"]]
    assert small_grads[0] < 1e-6 * he_grads[0]  # the gradient vanishes on the way back too


def test_probe_takes_a_spec_and_names_bad_arguments():
    spec = {
        "input": [1, 12, 12],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3},
            {"type": "tanh"},
            {"type": "flatten"},
            {"type": "dense", "units": 5},
        ],
    }
    probe = init_probe(spec, inits="lecun_normal")
    assert [row["type"] for row in probe["results"][0]["layers"]] == ["conv", "dense"]
    with pytest.raises(ValueError, match="depth"):
        plain_stack_spec(0, 8)
    with pytest.raises(ValueError, match="activation"):
        plain_stack_spec(3, 8, activation="swish")
    with pytest.raises(ValueError, match="spec: give a model spec, or depth and width"):
        init_probe(depth=3)
    with pytest.raises(ValueError, match="inits"):
        init_probe(depth=2, width=2, inits=["no_such_init"])
