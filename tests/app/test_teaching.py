"""Teaching routes over the API: comparisons, init probe, deep preset, kernel overwrite, fork, exports."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from engine.core.kernels import named_kernel
from engine.presets import DEMOS
from engine.trainer import snapshot_steps
from tests.app.conftest import LONG, TINY, make_settings, wait_for, wait_for_step


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """(client, comparison) for a finished constant-vs-He comparison of two tiny runs."""
    data_dir = tmp_path_factory.mktemp("teaching") / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        response = client.post("/api/comparisons", json={"base": TINY, "inits": ["constant", "he_normal"]})
        assert response.status_code == 201, response.text
        comparison = response.json()
        for run_id in comparison["run_ids"]:
            wait_for(client, run_id, "completed")
        yield client, comparison


def conv_weight(client, run_id, step, layer=0) -> np.ndarray:
    snapshot = client.get(f"/api/runs/{run_id}/snapshots/{step}?feature_maps=0").json()
    entry = next(e for e in snapshot["layers"] if e["index"] == layer)
    return np.asarray(entry["weight"])


def message_of(response) -> str:
    return response.json()["message"]


# ---------------------------------------------------------------- comparisons


def test_comparison_runs_differ_only_in_init(compared):
    client, comparison = compared
    assert comparison["labels"] == ["constant", "he_normal"]
    runs = [client.get(f"/api/runs/{run_id}").json() for run_id in comparison["run_ids"]]
    configs = [dict(run["config"]) for run in runs]
    assert [c.pop("init") for c in configs] == ["constant", "he_normal"]
    assert configs[0] == configs[1]
    assert all(run["meta"]["comparison"] == comparison["id"] for run in runs)
    again = client.get(f"/api/comparisons/{comparison['id']}").json()
    assert again["run_ids"] == comparison["run_ids"] and again["labels"] == comparison["labels"]


def test_comparison_runs_store_the_comparison_schedule_unless_the_base_names_one(compared, tmp_path):
    from engine.presets import COMPARISON_DEFAULTS

    client, comparison = compared
    served = client.get("/api/defaults").json()["comparison"]
    assert served == COMPARISON_DEFAULTS and served["snapshot_schedule"]["dense_steps"] == 0
    for run_id in comparison["run_ids"]:
        config = client.get(f"/api/runs/{run_id}").json()["config"]
        assert config["snapshot_schedule"] == COMPARISON_DEFAULTS["snapshot_schedule"]
        stored = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
        assert stored == snapshot_steps(config) == list(range(0, TINY["steps"] + 1, TINY["snapshot_every"]))
    # a single run of the same base keeps the dense early snapshots
    assert snapshot_steps(TINY)[:4] == [0, 1, 2, 3]
    with TestClient(create_app(make_settings(tmp_path / "data"))) as other:
        # a base that leaves snapshot_every unset stores one every 20 steps, after step 10
        base = {key: value for key, value in TINY.items() if key != "snapshot_every"}
        response = other.post("/api/comparisons", json={"base": {**base, "steps": 60}, "inits": ["zeros"]})
        assert response.status_code == 201, response.text
        run_id = response.json()["run_ids"][0]
        wait_for(other, run_id, "completed")
        assert other.get(f"/api/runs/{run_id}/snapshots").json()["steps"] == [0, 10, 20, 40, 60]
        own = {"dense_steps": 3, "growth": 2.0}
        response = other.post("/api/comparisons", json={"base": {**TINY, "snapshot_schedule": own}, "inits": ["zeros"]})
        assert response.status_code == 201, response.text
        run = other.get(f"/api/runs/{response.json()['run_ids'][0]}").json()
        assert run["config"]["snapshot_schedule"] == own
        wait_for(other, run["id"], "completed")


def test_constant_filters_stay_identical_while_he_filters_diverge(compared):
    client, comparison = compared
    constant_id, he_id = comparison["run_ids"]
    final = TINY["steps"]
    constant = conv_weight(client, constant_id, final)
    assert not np.allclose(constant, conv_weight(client, constant_id, 0)), "the constant run's filters never moved"
    assert np.allclose(constant, constant[0:1], rtol=0, atol=1e-6), "constant filters became different"
    he = conv_weight(client, he_id, final)
    spread = np.abs(he - he.mean(axis=0, keepdims=True)).max()
    assert spread > 0.05
    layers = {
        e["index"]: e for e in client.get(f"/api/runs/{constant_id}/snapshots/{final}?feature_maps=0").json()["layers"]
    }
    assert layers[0]["symmetry"] == pytest.approx(1.0, abs=1e-5)
    he_layers = {
        e["index"]: e for e in client.get(f"/api/runs/{he_id}/snapshots/{final}?feature_maps=0").json()["layers"]
    }
    assert he_layers[0]["symmetry"] < 0.5


def test_default_comparison_covers_the_six_inits_and_a_bad_init_starts_nothing(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data", max_queued=8))) as client:
        bad = client.post("/api/comparisons", json={"base": TINY, "inits": ["he_normal", "nonsense"]})
        assert bad.status_code == 422 and message_of(bad).startswith("inits.1:")
        assert client.get("/api/runs").json()["runs"] == []
        response = client.post("/api/comparisons", json={"base": {**TINY, "steps": 1}})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["labels"][:5] == ["zeros", "constant", "normal(std=0.01)", "glorot_uniform", "he_normal"]
        assert body["labels"][5].startswith("kernel(x, plus, sobel_x")
        assert len(body["run_ids"]) == 6
        for run_id in body["run_ids"]:
            wait_for(client, run_id, "completed")


def test_comparison_bad_input_names_the_field(compared):
    client, _ = compared
    for body, field in [
        ({"base": {"steps": -1}}, "base.steps"),
        ({"inits": []}, "inits"),
        ({"base": {"model": "nonsense"}}, "base.model"),
        ({"inits": ["he_normal"], "colour": 1}, "colour"),
        ({"inits": [{"name": "normal", "std": "big"}]}, "inits.0"),
    ]:
        bad = client.post("/api/comparisons", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert message_of(bad).startswith(field), (body, message_of(bad))
    missing = client.get("/api/comparisons/nope")
    assert missing.status_code == 404 and message_of(missing).startswith("comparison_id")


def test_a_comparison_that_does_not_fit_the_queue_is_refused_whole(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data", max_runs=1, max_queued=1))) as client:
        busy = client.post("/api/runs", json=LONG).json()  # holds the one slot: the comparison has to queue
        response = client.post("/api/comparisons", json={"base": TINY, "inits": ["zeros", "constant", "he_normal"]})
        assert response.status_code == 429 and "inits" in message_of(response)
        assert [run["id"] for run in client.get("/api/runs").json()["runs"]] == [busy["id"]]
        client.post(f"/api/runs/{busy['id']}/stop")


def test_a_comparisons_runs_train_together_beyond_max_runs(tmp_path):
    """A comparison's runs start together, so its views see every init at the same step; a run
    that is not part of it still waits for a slot."""
    with TestClient(create_app(make_settings(tmp_path / "data", max_runs=1, max_queued=8))) as client:
        inits = ["zeros", "constant", "he_normal"]
        started_free = client.post("/api/comparisons", json={"base": LONG, "inits": inits}).json()
        assert [run["status"] for run in started_free["runs"]] == ["running"] * 3
        for run_id in started_free["run_ids"]:
            client.post(f"/api/runs/{run_id}/stop")
            wait_for(client, run_id, "stopped")

        busy = client.post("/api/runs", json=LONG).json()  # starts once a stopped run's process has exited
        wait_for(client, busy["id"], "running")
        waiting = client.post("/api/comparisons", json={"base": LONG, "inits": inits}).json()
        assert [run["status"] for run in waiting["runs"]] == ["queued"] * 3
        single = client.post("/api/runs", json=LONG).json()
        assert single["status"] == "queued"
        client.post(f"/api/runs/{busy['id']}/stop")
        for run_id in waiting["run_ids"]:  # the first takes the freed slot, its siblings join it
            wait_for(client, run_id, "running")
        assert client.get(f"/api/runs/{single['id']}").json()["status"] == "queued"
        for run_id in [*waiting["run_ids"], single["id"]]:
            client.post(f"/api/runs/{run_id}/stop")


# ---------------------------------------------------------------- init probe


def test_init_probe_matches_the_theory_over_30_layers(compared):
    client, _ = compared
    response = client.post(
        "/api/init-probe",
        json={
            "depth": 30,
            "width": 128,
            "kernel": 1,
            "size": 4,
            "repeats": 4,
            "inits": ["he_normal", "glorot_uniform"],
        },
    )
    assert response.status_code == 200, response.text
    he, glorot = response.json()["results"]
    he_std = np.array([row["act_std"] for row in he["layers"]])
    assert len(he_std) == 30
    # He: flat within a factor 2 (the theory: sqrt(2) at every layer).
    assert np.allclose(he["theory_act_std"], math.sqrt(2))
    assert he_std.max() / he_std.min() < 2 and np.all(np.abs(np.log2(he_std / math.sqrt(2))) < 1)
    # Glorot with fan_in = fan_out: the variance halves per ReLU layer, std ~ 2^-(L/2).
    glorot_std = np.array([row["act_std"] for row in glorot["layers"]])
    slope = np.polyfit(np.arange(30), np.log2(glorot_std), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.08)
    assert np.allclose(np.array(glorot["theory_act_std"]) / glorot["theory_act_std"][0], 2.0 ** (-np.arange(30) / 2))
    assert "shrinks" in glorot["summary"] and "stays within" in he["summary"]
    # N(0, 0.01²): gone within a few layers.
    small = client.post(
        "/api/init-probe", json={"depth": 8, "width": 8, "repeats": 1, "inits": [{"name": "normal", "std": 0.01}]}
    ).json()["results"][0]
    assert small["layers"][5]["act_std"] < 1e-6 and small["label"] == "normal(std=0.01)"


def test_init_probe_reports_an_overflowing_init_as_null(compared):
    client, _ = compared
    response = client.post(
        "/api/init-probe", json={"depth": 40, "width": 8, "repeats": 1, "inits": [{"name": "constant", "value": 1000}]}
    )
    assert response.status_code == 200, response.text
    stds = [row["act_std"] for row in response.json()["results"][0]["layers"]]
    assert stds[0] > 100 and stds[-1] is None


def test_init_probe_takes_a_preset_and_rejects_bad_input_by_field(compared):
    client, _ = compared
    response = client.post("/api/init-probe", json={"spec": "small", "inits": ["he_normal"], "repeats": 1})
    assert response.status_code == 200
    assert [row["index"] for row in response.json()["results"][0]["layers"]] == [0, 3, 7]
    for body, field in [
        ({"depth": 3}, "width"),
        ({"width": 3}, "depth"),
        ({"depth": 0, "width": 4}, "depth"),
        ({"depth": 3, "width": 4, "kernel": 2}, "kernel"),
        ({"spec": {"layers": []}}, "spec"),
        ({"depth": 3, "width": 4, "inits": ["bogus"]}, "inits.0"),
        ({"depth": 3, "width": 4, "inits": []}, "inits"),
        ({"depth": 3, "width": 4, "colour": 1}, "colour"),
    ]:
        bad = client.post("/api/init-probe", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert message_of(bad).startswith(field), (body, message_of(bad))


# ---------------------------------------------------------------- the deep preset


def test_deep_preset_trains_with_he_and_stalls_with_small_gaussian():
    """Short version of benchmarks/deep_init.py: the first 80 of its 300 Adam steps on the 20-layer ReLU stack."""
    from engine.trainer import Trainer

    def mean_loss_of_last_steps(init):
        trainer = Trainer({**DEMOS["depth_stall"]["base"], "init": init, "steps": 80})
        losses = [trainer.train_step()["loss"] for _ in range(80)]
        return float(np.mean(losses[:10])), float(np.mean(losses[-10:]))

    he_start, he_end = mean_loss_of_last_steps("he_normal")
    small_start, small_end = mean_loss_of_last_steps({"name": "normal", "std": 0.01})
    assert he_end < he_start - 0.3, (he_start, he_end)
    assert abs(small_end - small_start) < 0.05, (small_start, small_end)


# ---------------------------------------------------------------- kernels


def test_a_frozen_x_kernel_is_bit_identical_after_training_while_others_change(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        run_id = client.post("/api/runs", json={**LONG, "steps": 20_000, "snapshot_every": 10}).json()["id"]
        wait_for_step(client, run_id, 2)
        paused = client.post(f"/api/runs/{run_id}/pause").json()
        assert paused["status"] == "paused", paused
        response = client.put(f"/api/runs/{run_id}/kernels/0/0", json={"kernel": "x", "frozen": True})
        assert response.status_code == 200, response.text
        put = response.json()
        assert put["frozen"] is True
        expected = np.float32(named_kernel("x", (3, 3)))
        assert np.array_equal(np.asarray(put["kernel"], dtype=np.float32)[0], expected)
        before = conv_weight(client, run_id, put["step"]).astype(np.float32)
        paused_step = client.get(f"/api/runs/{run_id}").json()["step"]
        client.post(f"/api/runs/{run_id}/resume")
        wait_for_step(client, run_id, paused_step + 60)
        client.post(f"/api/runs/{run_id}/stop")
        latest = client.get(f"/api/runs/{run_id}/snapshots/latest?feature_maps=0").json()
        assert latest["step"] >= paused_step + 50
        params = np.load(io.BytesIO(export_zip(client, run_id).read("weights.npz")))
        after = params["0.weight"]
        assert np.array_equal(after[0, 0], expected), "the frozen kernel moved"
        assert not np.allclose(after[1:], before[1:]), "the other filters did not train"
        layer0 = next(e for e in latest["layers"] if e["index"] == 0)
        assert layer0["frozen"] == [0]


def test_kernel_put_rejects_bad_input_by_field(compared):
    client, comparison = compared
    run_id = comparison["run_ids"][0]
    finished = client.put(f"/api/runs/{run_id}/kernels/0/0", json={"kernel": "x"})
    assert finished.status_code == 409 and "completed" in message_of(finished)
    for body, field in [
        ({"kernel": "nonsense"}, "kernel"),
        ({"kernel": [[1, 2], [3]]}, "kernel"),
        ({}, "kernel"),
        ({"kernel": "x", "scale": -1}, "scale"),
        ({"kernel": "x", "frozen": "maybe"}, "frozen"),
    ]:
        bad = client.put(f"/api/runs/{run_id}/kernels/0/0", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert message_of(bad).startswith(field), (body, message_of(bad))
    assert client.put("/api/runs/nope/kernels/0/0", json={"kernel": "x"}).status_code == 404


def test_kernel_put_on_a_live_run_names_layer_filter_and_shape(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        run_id = client.post("/api/runs", json=LONG).json()["id"]
        wait_for_step(client, run_id, 1)
        client.post(f"/api/runs/{run_id}/pause")
        for path, body, field in [
            ("1/0", {"kernel": "x"}, "layer"),
            ("0/8", {"kernel": "x"}, "filter"),
            ("0/0", {"kernel": [[1, 2], [3, 4]]}, "kernel"),
            ("x/0", {"kernel": "x"}, "layer"),
        ]:
            bad = client.put(f"/api/runs/{run_id}/kernels/{path}", json=body)
            assert bad.status_code == 422, (path, bad.text)
            assert message_of(bad).startswith(field), (path, message_of(bad))
        client.post(f"/api/runs/{run_id}/stop")


# ---------------------------------------------------------------- fork


def test_a_fork_starts_from_exactly_the_forked_snapshots_weights(compared):
    client, comparison = compared
    parent_id = comparison["run_ids"][1]
    response = client.post(f"/api/runs/{parent_id}/fork", json={"step": 10, "optimizer": {"lr": 0.01}, "steps": 20})
    assert response.status_code == 201, response.text
    fork = response.json()
    assert fork["meta"]["parent"] == parent_id and fork["meta"]["parent_step"] == 10
    assert fork["config"]["optimizer"]["lr"] == 0.01
    assert fork["config"]["optimizer"]["momentum"] == 0.9
    wait_for(client, fork["id"], "completed")
    assert client.get(f"/api/runs/{fork['id']}/snapshots").json()["steps"] == [
        step for step in snapshot_steps(fork["config"]) if step >= 10
    ]
    parent_zip, fork_zip = export_zip(client, parent_id), export_zip(client, fork["id"])
    parent_10 = np.load(io.BytesIO(parent_zip.read("snapshots/10.npz")))
    fork_10 = np.load(io.BytesIO(fork_zip.read("snapshots/10.npz")))
    assert sorted(parent_10.files) == sorted(fork_10.files)
    for name in parent_10.files:
        assert np.array_equal(parent_10[name], fork_10[name]), name
    fork_20 = np.load(io.BytesIO(fork_zip.read("snapshots/20.npz")))
    parent_20 = np.load(io.BytesIO(parent_zip.read("snapshots/20.npz")))
    assert not np.array_equal(fork_20["0.weight"], fork_10["0.weight"])
    assert not np.array_equal(fork_20["0.weight"], parent_20["0.weight"])
    metrics = client.get(f"/api/runs/{fork['id']}/metrics").json()["points"]
    assert [p["step"] for p in metrics] == list(range(11, 21))


def test_fork_rejects_bad_input_by_field(compared):
    client, comparison = compared
    parent = comparison["run_ids"][1]
    stored = client.get(f"/api/runs/{parent}/snapshots").json()["steps"]
    unstored = next(step for step in range(stored[-1]) if step not in stored)
    for body, code, field in [
        ({"step": unstored}, 404, "step"),
        ({"step": 10, "steps": 10}, 422, "steps"),
        ({"optimizer": {"lr": -1}}, 422, "optimizer"),
        ({"model": "deep"}, 422, "model"),
        ({"step": "first"}, 422, "step"),
    ]:
        bad = client.post(f"/api/runs/{parent}/fork", json=body)
        assert bad.status_code == code, (body, bad.text)
        assert message_of(bad).startswith(field), (body, message_of(bad))
    assert client.post("/api/runs/nope/fork", json={}).status_code == 404


# ---------------------------------------------------------------- exports


def export_zip(client, run_id) -> zipfile.ZipFile:
    response = client.get(f"/api/runs/{run_id}/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def test_export_zip_holds_config_metrics_every_snapshot_and_weights(compared):
    client, comparison = compared
    run_id = comparison["run_ids"][1]
    archive = export_zip(client, run_id)
    names = set(archive.namelist())
    assert {"README.txt", "config.json", "spec.json", "metrics.csv", "weights.npz"} <= names
    for step in (0, 10, 20, 30):
        assert {f"snapshots/{step}.json", f"snapshots/{step}.maps.npz", f"snapshots/{step}.npz"} <= names
    config = json.loads(archive.read("config.json"))
    assert config["config"]["init"] == "he_normal" and config["weights_step"] == 30
    rows = archive.read("metrics.csv").decode().splitlines()
    assert rows[0] == "step,loss,acc,val_loss,val_acc" and len(rows) == 1 + TINY["steps"]
    weights = np.load(io.BytesIO(archive.read("weights.npz")))
    assert sorted(weights.files) == ["0.bias", "0.weight", "3.bias", "3.weight", "7.bias", "7.weight"]


def test_exported_weights_give_the_same_logits_in_torch(compared):
    torch = pytest.importorskip("torch")
    from torch import nn

    import engine

    client, comparison = compared
    archive = export_zip(client, comparison["run_ids"][1])
    spec = json.loads(archive.read("spec.json"))
    weights = np.load(io.BytesIO(archive.read("weights.npz")))
    model = engine.build_model(spec, init="he_normal", seed=0)
    model.load_state_dict({name: weights[name] for name in weights.files})
    layers, channels = [], spec["input"][0]
    for index, layer in enumerate(spec["layers"]):
        kind = layer["type"]
        if kind == "conv":
            layers.append(nn.Conv2d(channels, layer["filters"], layer["kernel"], layer["stride"], layer["padding"]))
            channels = layer["filters"]
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(layer["size"], layer["stride"]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "dense":
            layers.append(nn.Linear(weights[f"{index}.weight"].shape[1], layer["units"]))
    torch_model = nn.Sequential(*layers).double()
    torch_model.load_state_dict({name: torch.from_numpy(weights[name].astype(np.float64)) for name in weights.files})
    x = np.random.default_rng(0).standard_normal((4, *spec["input"]))
    ours = model.forward(x.astype(np.float64))
    theirs = torch_model(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(ours, theirs, rtol=1e-6, atol=1e-8)


def test_evolution_gif_has_one_frame_per_snapshot_up_to_the_cap(compared):
    client, comparison = compared
    run_id = comparison["run_ids"][1]
    response = client.get(f"/api/runs/{run_id}/evolution.gif?layer=0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    image = Image.open(io.BytesIO(response.content))
    assert image.n_frames == len(client.get(f"/api/runs/{run_id}/snapshots").json()["steps"])
    capped = Image.open(io.BytesIO(client.get(f"/api/runs/{run_id}/evolution.gif?layer=3&frames=3").content))
    assert capped.n_frames == 3
    capped.seek(2)
    capped.convert("RGB")
    for query, field in [("layer=1", "layer"), ("frames=1", "frames"), ("duration=0", "duration")]:
        bad = client.get(f"/api/runs/{run_id}/evolution.gif?{query}")
        assert bad.status_code == 422 and message_of(bad).startswith(field), (query, bad.text)
    assert client.get("/api/runs/nope/evolution.gif").status_code == 404
    assert client.get("/api/runs/nope/export").status_code == 404
