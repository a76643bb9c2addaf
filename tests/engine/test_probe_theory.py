"""engine/probe.py's theory (theory_std, describe_layers) and engine/names.py's "did you mean"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.core.model import normalize_spec
from engine.core.names import closest, unknown
from engine.probe import (
    describe_layers,
    init_probe,
    plain_stack_spec,
    resolve_spec,
    theory_std,
)


def test_theory_keeps_he_flat_and_halves_glorot_per_relu_layer():
    _, layers = normalize_spec(plain_stack_spec(10, 8))
    assert np.allclose(theory_std(layers, "he_normal"), math.sqrt(2))  # input E[x²] = 1, then ×2/2 per layer
    glorot = np.array(theory_std(layers, "glorot_uniform"))
    assert np.allclose(glorot / glorot[0], 2.0 ** (-np.arange(10) / 2))
    small = theory_std(layers, {"name": "normal", "std": 0.01})
    assert math.isclose(small[0], math.sqrt(72) * 0.01) and small[-1] < 1e-10


def test_theory_has_no_answer_where_it_does_not_apply():
    _, layers = normalize_spec(plain_stack_spec(3, 4))
    for init in ("zeros", "constant", "kernel", "no_such_init"):
        assert theory_std(layers, init) is None
    _, tanh_layers = normalize_spec(plain_stack_spec(3, 4, activation="tanh"))
    assert theory_std(tanh_layers, "he_normal") is None


def test_theory_matches_the_measured_spread_over_many_draws():
    spec = plain_stack_spec(6, 16)
    _, layers = normalize_spec(spec)
    draws = [init_probe(spec, inits=["he_normal"], batch=8, seed=seed)["results"][0]["layers"] for seed in range(8)]
    measured = np.sqrt(np.mean([[row["act_std"] ** 2 for row in draw] for draw in draws], axis=0))
    assert np.allclose(measured, theory_std(layers, "he_normal"), rtol=0.25)


def test_describe_layers_gives_the_law_with_each_layers_numbers():
    rows = describe_layers("demo", "he_uniform", "shapes")
    assert [row["label"] for row in rows] == ["conv1", "conv2", "dense1"]
    conv2 = rows[1]
    assert conv2["shape"] == [16, 8, 3, 3] and conv2["fan_in"] == 72 and conv2["fan_out"] == 144
    assert math.isclose(conv2["bound"], math.sqrt(6 / 72), rel_tol=1e-5)
    assert math.isclose(conv2["std"], math.sqrt(6 / 72) / math.sqrt(3), rel_tol=1e-5)


def test_resolve_spec_adapts_a_preset_to_the_dataset():
    assert resolve_spec({"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]}, "sklearn_digits")[
        "input"
    ] == [1, 28, 28]  # the digits are served upscaled to 28x28 (engine/datasets.py)
    assert resolve_spec("small", {"name": "shapes", "size": 32})["input"] == [1, 32, 32]
    with pytest.raises(ValueError, match=r"^model\.input: "):
        resolve_spec(
            {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]},
            {"name": "image_folder", "path": "somewhere"},
        )
    with pytest.raises(ValueError, match=r"^model: .*did you mean 'deep'"):
        resolve_spec("Deep")


@pytest.mark.parametrize(
    "name,choices,meant",
    [
        ("He_Normal", ["he_normal", "glorot_uniform"], "he_normal"),
        ("he-normal", ["he_normal", "glorot_uniform"], "he_normal"),
        ("sobelx", ["sobel_x", "sobel_y", "x"], "sobel_x"),
        ("adma", ["sgd", "adam"], "adam"),
        ("resnet152", ["small", "demo", "medium", "deep"], None),
        (3, ["small"], None),
    ],
)
def test_closest_names_the_valid_name_meant(name, choices, meant):
    assert closest(name, choices) == meant


def test_unknown_lists_the_valid_names_with_the_guess_first():
    assert unknown("init", "He_Normal", ["zeros", "he_normal"]) == (
        "unknown init 'He_Normal'; did you mean 'he_normal'? valid names: zeros, he_normal"
    )
    assert unknown("preset", "resnet", ["small"], "valid presets") == "unknown preset 'resnet'; valid presets: small"
