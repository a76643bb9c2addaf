"""Filter analysis: detector matching against chance, the symmetry meter, layer statistics."""

import numpy as np
import pytest

import engine
from engine import analysis
from engine.core.initializers import named_kernel


@pytest.mark.parametrize("size", [3, 5, 7])
def test_every_template_is_recognised_as_itself(size):
    bank = analysis.template_bank(size)
    names = list(bank)
    labels, scores = analysis.best_matches(np.stack([bank[n] for n in names]))
    assert labels == names
    assert np.allclose(scores, 1.0)


def test_hand_made_kernels_get_their_canonical_labels():
    cases = {"sobel_x": "vertical_edge", "sobel_y": "horizontal_edge", "x": "x", "plus": "plus",
             "vertical_line": "vertical_line"}
    for kernel_name, label in cases.items():
        kernel = named_kernel(kernel_name, (5, 5))
        labels, scores = analysis.best_matches(kernel[None])
        assert labels == [label], kernel_name
        assert scores[0] > analysis.chance_level(5), kernel_name
    assert analysis.best_matches(named_kernel("laplacian", (3, 3))[None])[0] == ["blob"]


def test_score_ignores_mean_scale_and_sign():
    kernel = named_kernel("sobel_x", (3, 3))
    _, base = analysis.best_matches(kernel[None])
    _, shifted = analysis.best_matches((-3.0 * kernel + 7.0)[None])
    assert np.allclose(base, shifted)


def test_chance_levels_match_measured_random_kernel_scores():
    # 99th percentile of the best |cos| of random Gaussian kernels (issue 3: 0.90, 0.62, 0.46)
    assert analysis.chance_level(3) == pytest.approx(0.90, abs=0.02)
    assert analysis.chance_level(5) == pytest.approx(0.62, abs=0.02)
    assert analysis.chance_level(7) == pytest.approx(0.46, abs=0.02)
    assert np.median(analysis.chance_scores(3, 3)) == pytest.approx(0.65, abs=0.02)


def test_about_one_percent_of_fresh_random_kernels_beat_chance():
    weight = np.random.default_rng(99).standard_normal((5000, 1, 5, 5))
    beats = [d["beats_chance"] for d in analysis.detectors(weight)]
    assert 0.003 < np.mean(beats) < 0.02


def test_detector_entries_carry_chance_and_percentile():
    weight = np.stack([named_kernel("sobel_x", (3, 3)), np.random.default_rng(0).standard_normal((3, 3))])[:, None]
    first, second = analysis.detectors(weight)
    assert first["label"] == "vertical_edge" and first["beats_chance"] is True
    assert first["chance"] == pytest.approx(analysis.chance_level(3), abs=1e-4)
    assert first["percentile"] > 99.0
    assert 0.0 <= second["percentile"] <= 100.0 and second["filter"] == 1


def test_flat_kernels_are_labelled_flat_and_never_beat_chance():
    weight = np.stack([np.zeros((1, 5, 5)), np.full((1, 5, 5), 0.1)])
    for entry in analysis.detectors(weight):
        assert entry["label"] == "flat" and entry["score"] == 0.0 and entry["beats_chance"] is False


def test_multichannel_filters_are_read_through_their_channel_sum():
    edge = named_kernel("sobel_y", (3, 3))
    weight = np.stack([edge * 0.2, edge * 0.5, edge * 0.3])[None]  # (1, 3, 3, 3)
    assert analysis.detectors(weight)[0]["label"] == "horizontal_edge"


def test_symmetry_meter():
    same = np.tile(np.random.default_rng(1).standard_normal((1, 2, 3, 3)), (6, 1, 1, 1))
    assert analysis.symmetry(same) == pytest.approx(1.0, abs=1e-12)
    assert analysis.symmetry(np.zeros((4, 1, 3, 3))) == 1.0
    random = np.random.default_rng(2).standard_normal((64, 1, 5, 5))
    assert abs(analysis.symmetry(random)) < 0.05
    assert analysis.symmetry(np.ones((1, 1, 3, 3))) is None


def _tiny_model():
    spec = {"input": [1, 8, 8], "layers": [
        {"type": "conv", "filters": 4, "kernel": 3}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 3}]}
    return engine.build_model(spec, init="he_normal", seed=0)


def test_layer_stats_report_each_layer_and_see_dead_relus():
    model = _tiny_model()
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 3
    stats = analysis.layer_stats(model, x, y)
    assert [s["type"] for s in stats] == ["conv", "relu", "flatten", "dense"]
    assert stats[1]["act_std"] > 0 and stats[1]["grad_std"] > 0 and stats[0]["weight_grad_std"] > 0
    assert stats[1]["weight_grad_std"] is None and stats[1]["dead_fraction"] < 0.5
    model.params["0.bias"][:] = -100.0  # every ReLU unit silenced
    dead = analysis.layer_stats(model, x, y)
    assert dead[1]["dead_fraction"] == 1.0 and dead[1]["act_std"] == 0.0
    assert dead[0]["weight_grad_std"] == 0.0


def test_feature_maps_are_the_conv_outputs_for_the_probes():
    model = _tiny_model()
    probes = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    maps = analysis.feature_maps(model, probes)
    assert list(maps) == [0] and maps[0].shape == (2, 4, 6, 6)
    weight = model.params["0.weight"].astype(np.float64)
    by_hand = sum(weight[1, 0, i, j] * probes[0, 0, 2 + i, 1 + j] for i in range(3) for j in range(3))
    assert maps[0][0, 1, 2, 1] == pytest.approx(by_hand, rel=1e-4)


def test_rounding_keeps_five_significant_digits_and_drops_non_finite():
    assert analysis.rounded(np.array([3.14159265, -0.5])) == [3.1416, -0.5]
    assert analysis.rounded(np.array([[0.000123456789]])) == [[0.00012346]]
    assert analysis.rounded(np.array([np.nan, 2.0])) == [None, 2.0]
    assert analysis.rounded(np.zeros(2)) == [0.0, 0.0]
