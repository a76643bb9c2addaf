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
    cases = {
        "sobel_x": "vertical_edge",
        "sobel_y": "horizontal_edge",
        "x": "x",
        "plus": "plus",
        "vertical_line": "vertical_line",
    }
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


def test_a_layer_of_zero_kernels_is_flat_not_dead_and_never_beats_chance():
    # all-zero layer (zeros init): no median norm to be small against, no pattern, no mean
    for entry in analysis.detectors(np.zeros((4, 1, 5, 5))):
        assert entry["label"] == "flat" and entry["score"] == 0.0 and entry["beats_chance"] is False
        assert entry["dead"] is False and entry["mean_share"] == 0.0


def test_a_uniform_kernel_is_a_brightness_filter_with_all_its_energy_in_the_mean():
    weight = np.full((3, 1, 5, 5), 0.1)
    for entry in analysis.detectors(weight):
        assert entry["label"] == "brightness" and entry["mean_share"] == pytest.approx(1.0)
        assert entry["score"] == 0.0 and entry["beats_chance"] is False and entry["dead"] is False


def test_a_nearly_uniform_kernel_is_brightness_not_blob():
    # the residual after removing the mean is a blob (a centred bump), but 97% of the energy is the mean
    bump = analysis.template_bank(5)["blob"]
    kernel = 1.0 + 0.9 * bump  # mean 1 per weight: 25 units of mean energy, 0.81 of pattern energy
    assert analysis.best_matches(kernel[None])[0] == ["blob"]
    entry = analysis.detectors(kernel[None, None])[0]
    assert entry["label"] == "brightness" and entry["beats_chance"] is False
    assert entry["mean_share"] == pytest.approx(25.0 / 25.81, abs=1e-4)
    # the same pattern on a small mean stays a blob detector
    small_mean = analysis.detectors((0.05 + 0.9 * bump)[None, None])[0]
    assert small_mean["label"] == "blob" and small_mean["beats_chance"] is True
    assert small_mean["mean_share"] == pytest.approx(25 * 0.05**2 / (25 * 0.05**2 + 0.81), abs=1e-4)


def test_mean_share_of_zero_mean_and_random_kernels():
    assert analysis.mean_share(named_kernel("sobel_x", (3, 3))[None])[0] == pytest.approx(0.0, abs=1e-12)
    random = np.random.default_rng(4).standard_normal((4000, 5, 5))
    assert np.mean(analysis.mean_share(random)) == pytest.approx(1 / 25, rel=0.1)


def test_a_zero_kernel_among_live_ones_is_dead_with_no_detector_label():
    weight = np.random.default_rng(5).standard_normal((4, 1, 5, 5))
    weight[0] = named_kernel("x", (5, 5))
    weight[2] = 0.0
    entries = analysis.detectors(weight)
    assert entries[2]["dead"] is True and entries[2]["label"] == "dead"
    assert entries[2]["score"] == 0.0 and entries[2]["beats_chance"] is False
    assert entries[0]["label"] == "x" and entries[0]["dead"] is False


def test_dead_by_norm_uses_the_stated_fraction_of_the_median():
    weight = np.ones((5, 1, 3, 3))  # every norm 3, median 3
    weight[0] *= 0.9 * analysis.DEAD_NORM_FRACTION
    weight[1] *= 1.1 * analysis.DEAD_NORM_FRACTION
    assert analysis.dead_filters(weight).tolist() == [True, False, False, False, False]


def test_a_filter_never_active_on_the_probes_is_dead():
    weight = np.random.default_rng(6).standard_normal((3, 1, 5, 5))
    weight[1] = named_kernel("sobel_x", (5, 5))
    maps = np.random.default_rng(7).standard_normal((4, 3, 6, 6))
    maps[:, 1] = -np.abs(maps[:, 1])  # filter 1 never positive on any probe image
    dead = analysis.dead_filters(weight, maps)
    assert dead.tolist() == [False, True, False]
    entries = analysis.detectors(weight, maps)
    assert entries[1]["label"] == "dead" and entries[1]["beats_chance"] is False
    assert analysis.detectors(weight)[1]["label"] == "vertical_edge"  # without probes only the norm counts
    with pytest.raises(ValueError, match="probe_maps"):
        analysis.dead_filters(weight, maps[:, :2])


def test_conv_layer_summary_passes_probe_maps_to_the_dead_check():
    weight = np.random.default_rng(8).standard_normal((2, 1, 3, 3))
    maps = np.ones((1, 2, 4, 4))
    maps[:, 0] = 0.0
    summary = analysis.conv_layer_summary(weight, np.zeros(2), maps)
    assert [d["dead"] for d in summary["detectors"]] == [True, False]


def test_birth_step_is_the_first_of_three_snapshots_in_a_row_above_chance():
    steps = [0, 1, 2, 3, 5, 8, 13, 21]
    scores = [0.3, 0.7, 0.8, 0.5, 0.7, 0.9, 0.95, 0.9]
    assert analysis.birth_step(steps, scores, 0.62) == 5  # 1, 2 above then 3 falls back: not yet born
    assert analysis.birth_step(steps, scores, 0.62, persist=2) == 1
    assert analysis.birth_step(steps, scores, 0.62, persist=1) == 1
    assert analysis.birth_step(steps, scores, 0.96) is None
    assert analysis.birth_step(steps[:6], scores[:6], 0.62) is None  # 5, 8 above, then the series ends
    assert analysis.birth_step([], [], 0.62) is None


def test_birth_step_takes_a_chance_per_snapshot_and_skips_missing_scores():
    steps = [0, 10, 20, 30, 40, 50]
    assert analysis.birth_step(steps, [0.7, 0.7, 0.7, 0.7, 0.7, 0.7], [0.8, 0.8, 0.6, 0.6, 0.6, 0.6]) == 20
    assert analysis.birth_step(steps, [0.9, None, 0.9, 0.9, float("nan"), 0.9], 0.62) is None
    assert analysis.birth_step(steps, [0.9, None, 0.9, 0.9, 0.9, 0.9], 0.62) == 20
    assert analysis.birth_step(steps, [0.62] * 6, 0.62) is None  # equal to chance is not above it
    with pytest.raises(ValueError, match="scores"):
        analysis.birth_step(steps, [0.9], 0.62)
    with pytest.raises(ValueError, match="persist"):
        analysis.birth_step(steps, [0.9] * 6, 0.62, persist=0)


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
    spec = {
        "input": [1, 8, 8],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
    }
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
