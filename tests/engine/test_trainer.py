"""Trainer: config validation, determinism, checkpoints, symmetry, divergence, control, the demo bar."""

import json
import threading

import numpy as np
import pytest

from engine.analysis import chance_level
from engine.datasets import load_dataset
from engine.trainer import Diverged, RunConfig, Trainer, TrainingControl

SMALL_DATA = {"name": "shapes", "n_train": 512, "n_val": 256}


@pytest.fixture(scope="module")
def small_data():
    return load_dataset(SMALL_DATA)


def small_trainer(small_data, **overrides):
    config = {"dataset": SMALL_DATA, "steps": 40, "batch_size": 32, "snapshot_every": 10, "eval_every": 20, **overrides}
    return Trainer(config, dataset=small_data)


# ---------------------------------------------------------------- config


def test_empty_config_is_the_complete_default_demo():
    config = RunConfig.from_dict({}).to_dict()
    assert config["model"] == "demo" and config["init"] == "he_normal" and config["steps"] == 3000
    assert config["dataset"]["name"] == "shapes" and config["optimizer"]["name"] == "sgd"
    assert config["optimizer"]["weight_decay"] > 0
    assert RunConfig.from_dict(json.loads(json.dumps(config))).to_dict() == config


def test_deep_preset_brings_its_own_optimizer_unless_one_is_given():
    assert RunConfig.from_dict({"model": "deep"}).optimizer["name"] == "adam"
    given = RunConfig.from_dict({"model": "deep", "optimizer": {"name": "sgd", "lr": 0.003}}).optimizer
    assert given["name"] == "sgd" and given["lr"] == 0.003 and given["momentum"] == 0.9


@pytest.mark.parametrize("bad, field", [
    ({"batch_size": 0}, "batch_size"),
    ({"steps": "many"}, "steps"),
    ({"seed": -1}, "seed"),
    ({"model": "huge"}, "model"),
    ({"model": {"layers": [{"type": "conv", "filters": 0, "kernel": 3}]}}, "model"),
    ({"init": "random"}, "init"),
    ({"optimizer": {"name": "sgd", "lr": -1}}, "optimizer.lr"),
    ({"dataset": "imagenet"}, "dataset.name"),
    ({"learning_rate": 0.1}, "learning_rate"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        RunConfig.from_dict(bad)


def test_presets_adapt_to_the_dataset_and_specs_must_fit_it(tmp_path):
    data = load_dataset({"name": "shapes", "n_train": 64, "n_val": 32, "size": 20})
    trainer = Trainer({"model": "demo"}, dataset=data)
    assert trainer.spec["input"] == [1, 20, 20] and trainer.spec["layers"][-1]["units"] == data.n_classes
    spec = {"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "dense", "units": data.n_classes}]}
    with pytest.raises(ValueError, match=r"model.input: the spec expects \[1, 28, 28\]"):
        Trainer({"model": spec}, dataset=data)
    wrong_classes = {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]}
    with pytest.raises(ValueError, match="model: the last layer gives output"):
        Trainer({"model": wrong_classes}, dataset=data)


def test_a_run_on_the_marks_dataset_gets_a_two_class_head():
    trainer = Trainer({"model": "demo", "dataset": {"name": "marks", "n_train": 64, "n_val": 32}, "batch_size": 16})
    assert trainer.spec["layers"][-1]["units"] == 2 and trainer.dataset.classes == ["x_marks", "plus_marks"]
    assert np.isfinite(trainer.train_step()["loss"])


# ---------------------------------------------------------------- steps


def test_training_is_deterministic_and_learns(small_data):
    first = small_trainer(small_data, steps=150)
    second = small_trainer(small_data, steps=150)
    before = first.evaluate()
    for _ in range(150):
        a, b = first.train_step(), second.train_step()
        assert a == b
    for name in first.model.params:
        assert np.array_equal(first.model.params[name], second.model.params[name])
    after = first.evaluate()
    assert after["val_loss"] < before["val_loss"] - 0.5
    assert after["val_acc"] > 0.6  # 10 classes: chance is 0.1


def test_checkpoint_restores_bit_identically_through_an_npz_file(small_data, tmp_path):
    straight = small_trainer(small_data, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    for _ in range(30):
        straight.train_step()

    interrupted = small_trainer(small_data, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    for _ in range(17):  # 17 * 32 examples: stops in the middle of an epoch of 512
        interrupted.train_step()
    interrupted.set_kernel(0, 2, straight.model.params["0.weight"][2, 0] * 0 + 0.1, frozen=True)
    np.savez(tmp_path / "ckpt.npz", **interrupted.checkpoint())
    with np.load(tmp_path / "ckpt.npz") as saved:
        resumed = Trainer.restore(dict(saved), dataset=small_data)
    assert resumed.step == 17 and resumed.frozen_filters(0) == [2]
    for _ in range(13):
        expected = interrupted.train_step()
        assert resumed.train_step() == expected
    for name in interrupted.model.params:
        assert np.array_equal(resumed.model.params[name], interrupted.model.params[name])
    assert np.all(resumed.model.params["0.weight"][2] == np.float32(0.1))


def test_snapshot_follows_the_documented_json_shape(small_data):
    trainer = small_trainer(small_data)
    for _ in range(10):
        trainer.train_step()
    snapshot, params = trainer.snapshot()
    text = json.dumps(snapshot, allow_nan=False)
    assert json.loads(text)["step"] == 10
    first = snapshot["layers"][0]
    assert first["index"] == 0 and first["type"] == "conv" and first["shape"] == [8, 1, 5, 5]
    assert np.allclose(first["weight"], params["0.weight"], atol=1e-4)
    assert len(first["detectors"]) == 8 and first["detectors"][0]["chance"] == pytest.approx(chance_level(5), abs=1e-4)
    assert np.array(first["feature_maps"]).shape == (4, 8, 24, 24)
    assert [s["index"] for s in snapshot["stats"]] == list(range(len(trainer.spec["layers"])))
    assert np.array(snapshot["probes"]).shape == (4, 1, 28, 28)
    assert snapshot["probe_labels"] == ["x", "plus", "vertical_line", "circle"]
    assert set(snapshot["metrics"]) >= {"loss", "acc"}
    assert "feature_maps" not in trainer.snapshot(feature_maps=False)[0]["layers"][0]


# ---------------------------------------------------------------- what inits do


def test_constant_init_never_breaks_symmetry(small_data):
    trainer = small_trainer(small_data, init={"name": "constant", "value": 0.1},
                            optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    for _ in range(300):
        trainer.train_step()
    snapshot, params = trainer.snapshot(feature_maps=False)
    for layer in snapshot["layers"]:
        assert round(layer["symmetry"], 6) == 1.0
    weight = params["0.weight"]
    assert np.allclose(weight, weight[:1], atol=1e-6) and not np.allclose(weight, 0.1)


def test_zeros_init_keeps_conv_filters_exactly_zero(small_data):
    trainer = small_trainer(small_data, init="zeros")
    for _ in range(100):
        trainer.train_step()
    for index in trainer.model.conv_indices:
        assert not np.any(trainer.model.params[f"{index}.weight"])
    assert np.any(trainer.model.params["7.bias"])  # the output bias still learns the class prior


# ---------------------------------------------------------------- divergence, kernels, control


def test_nan_loss_ends_the_run_as_diverged_with_the_last_good_weights(small_data):
    trainer = small_trainer(small_data, steps=200, optimizer={"name": "sgd", "lr": 1e4})
    events = []
    status = trainer.run(events.append)
    assert status == "diverged"
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "diverged" and done["step"] < 200
    assert all(np.isfinite(v).all() for v in trainer.model.params.values())
    snapshots = [e for e in events if e["type"] == "snapshot"]
    assert snapshots and all(e["step"] <= done["step"] for e in snapshots)
    with pytest.raises(Diverged) as error:
        trainer.train_step()
    assert error.value.step == done["step"] + 1


def test_set_kernel_frozen_stays_put_and_bad_requests_name_the_field(small_data):
    trainer = small_trainer(small_data)
    x_kernel = np.eye(5) + np.fliplr(np.eye(5))
    trainer.set_kernel(0, 3, x_kernel, frozen=True)
    trainer.set_kernel(0, 4, x_kernel)
    for _ in range(20):
        trainer.train_step()
    weight = trainer.model.params["0.weight"]
    assert np.array_equal(weight[3, 0], x_kernel.astype(np.float32))
    assert not np.array_equal(weight[4, 0], x_kernel.astype(np.float32))
    snapshot, _ = trainer.snapshot(feature_maps=False)
    assert snapshot["layers"][0]["frozen"] == [3] and snapshot["layers"][0]["detectors"][3]["label"] == "x"
    with pytest.raises(ValueError, match="^layer"):
        trainer.set_kernel(1, 0, x_kernel)
    with pytest.raises(ValueError, match="^filter"):
        trainer.set_kernel(0, 8, x_kernel)
    with pytest.raises(ValueError, match="^kernel"):
        trainer.set_kernel(0, 0, np.ones((3, 3)))


def test_run_emits_snapshots_metrics_and_done_in_order(small_data):
    trainer = small_trainer(small_data, steps=25, snapshot_every=10, eval_every=20)
    events = []
    assert trainer.run(events.append) == "completed"
    assert [e["status"] for e in events if e["type"] == "status"] == ["running", "completed"]
    assert [e["step"] for e in events if e["type"] == "snapshot"] == [0, 10, 20, 25]
    points = [p for e in events if e["type"] == "metrics" for p in e["points"]]
    assert [p["step"] for p in points] == list(range(1, 26))
    assert [p["step"] for p in points if "val_acc" in p] == [20, 25]
    assert events[-1] == {"type": "done", "status": "completed", "step": 25, "message": None}


def test_run_pauses_resumes_and_stops_from_another_thread(small_data):
    trainer = small_trainer(small_data, steps=100000, snapshot_every=5)
    control = TrainingControl()
    paused, reached = threading.Event(), threading.Event()
    statuses = []

    def emit(event):
        if event["type"] == "status":
            statuses.append(event["status"])
            if event["status"] == "paused":
                paused.set()
        if event["type"] == "snapshot" and event["step"] >= 10:
            reached.set()

    worker = threading.Thread(target=lambda: statuses.append(trainer.run(emit, control)))
    worker.start()
    assert reached.wait(60)
    control.pause()
    assert paused.wait(60)
    held = trainer.step
    assert not control.wait_while_paused(timeout=0.2)
    assert trainer.step == held
    control.resume()
    control.stop()
    worker.join(60)
    assert not worker.is_alive()
    assert statuses[-1] == "stopped" and "paused" in statuses
    assert trainer.step < 100000


# ---------------------------------------------------------------- the demo


def test_short_demo_learns_shapes_and_its_first_filters_move_past_chance():
    """The first 800 steps of the default demo (benchmarks/demo.py checks the full 3000-step bar)."""
    trainer = Trainer({"steps": 800})
    start, _ = trainer.snapshot(feature_maps=False)
    for _ in range(800):
        trainer.train_step()
    assert trainer.evaluate()["val_acc"] >= 0.9
    end, _ = trainer.snapshot(feature_maps=False)
    before = sum(d["beats_chance"] for d in start["layers"][0]["detectors"])
    after = sum(d["beats_chance"] for d in end["layers"][0]["detectors"])
    assert after >= 2 and after > before
