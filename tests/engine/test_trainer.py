"""Trainer: config validation, determinism, checkpoints, symmetry, the one loop (divergence, control,
checkpoints), the snapshot schedule, layer labels, the demo bar."""

import json
import threading

import numpy as np
import pytest

from engine.analysis import chance_level
from engine.datasets import load_dataset
from engine.trainer import (
    Diverged,
    RunConfig,
    Trainer,
    TrainingControl,
    snapshot_rule,
    snapshot_steps,
)

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


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"steps": "many"}, "steps"),
        ({"seed": -1}, "seed"),
        ({"model": "huge"}, "model"),
        ({"model": {"layers": [{"type": "conv", "filters": 0, "kernel": 3}]}}, "model"),
        ({"init": "random"}, "init"),
        ({"optimizer": {"name": "sgd", "lr": -1}}, "optimizer.lr"),
        ({"dataset": "imagenet"}, "dataset.name"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"snapshot_schedule": {"dense_steps": -1}}, "snapshot_schedule.dense_steps"),
        ({"snapshot_schedule": {"dense_steps": 2.5}}, "snapshot_schedule.dense_steps"),
        ({"snapshot_schedule": {"growth": 1.0}}, "snapshot_schedule.growth"),
        ({"snapshot_schedule": {"growth": "fast"}}, "snapshot_schedule.growth"),
        ({"snapshot_schedule": {"ratio": 2}}, "snapshot_schedule.ratio"),
        ({"snapshot_schedule": [1, 2]}, "snapshot_schedule"),
    ],
)
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
    assert [layer["label"] for layer in snapshot["layers"]] == ["conv1", "conv2"]
    assert [layer["index"] for layer in snapshot["layers"]] == trainer.model.conv_indices == [0, 3]
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
    trainer = small_trainer(
        small_data, init={"name": "constant", "value": 0.1}, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9}
    )
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


def collect_until(events, predicate):
    """Pull events from the loop until one satisfies predicate; returns them all (that one last)."""
    seen = []
    for event in events:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"the loop ended without such an event; last: {seen[-1:]}")


def points_of(events):
    return [p for e in events if e["type"] == "metrics" for p in e["points"]]


NO_DENSE_START = {"dense_steps": 0, "growth": 10.0}  # only snapshot_every, step 0 and the last step


def test_nan_loss_ends_the_run_as_diverged_with_the_last_good_weights(small_data):
    trainer = small_trainer(small_data, steps=200, optimizer={"name": "sgd", "lr": 1e4})
    events = list(trainer.events(checkpoint_every=5))
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "diverged" and done["step"] < 200
    assert done["message"].startswith(f"diverged at step {done['step'] + 1}")
    assert events[-2] == {"type": "status", "status": "diverged", "step": done["step"], "message": done["message"]}
    assert all(np.isfinite(v).all() for v in trainer.model.params.values())
    snapshots = [e for e in events if e["type"] == "snapshot"]
    assert snapshots and all(e["step"] <= done["step"] for e in snapshots)
    assert events[-3]["type"] != "checkpoint"  # the diverged step is never checkpointed
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


def test_the_loop_sets_kernels_between_steps_and_answers_each_request(small_data):
    trainer = small_trainer(small_data, steps=1000, snapshot_schedule=NO_DENSE_START)
    control = TrainingControl()
    events = trainer.events(control)
    collect_until(events, lambda e: e["type"] == "snapshot" and e["step"] == 10)
    x_kernel = (np.eye(5) + np.fliplr(np.eye(5))).tolist()
    control.set_kernel(7, 0, 2, x_kernel, True)
    control.set_kernel(8, 5, 0, x_kernel, False)
    answered = collect_until(events, lambda e: e["type"] == "reply" and e["request_id"] == 8)
    replies = [e for e in answered if e["type"] == "reply"]
    assert replies[0] == {"type": "reply", "request_id": 7, "error": None}
    assert replies[1]["error"].startswith("layer: 5 is not a conv layer")
    snapshot = next(e for e in answered if e["type"] == "snapshot")  # the edited weights, at once
    assert snapshot["step"] == 10 and snapshot["snapshot"]["layers"][0]["frozen"] == [2]
    assert np.array_equal(snapshot["params"]["0.weight"][2, 0], np.asarray(x_kernel, np.float32))
    control.stop()
    assert list(events)[-1]["status"] == "stopped"


def test_run_emits_snapshots_metrics_and_done_in_order(small_data):
    trainer = small_trainer(small_data, steps=25, snapshot_every=10, eval_every=20, snapshot_schedule=NO_DENSE_START)
    events = []
    assert trainer.run(events.append) == "completed"
    assert [e["status"] for e in events if e["type"] == "status"] == ["running", "completed"]
    assert [e["step"] for e in events if e["type"] == "snapshot"] == [0, 10, 20, 25] == snapshot_steps(trainer.config)
    points = points_of(events)
    assert [p["step"] for p in points] == list(range(1, 26))
    assert [p["step"] for p in points if "val_acc" in p] == [20, 25]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [25]  # on completion
    assert events[-1] == {"type": "done", "status": "completed", "step": 25, "message": None}
    snapshot = events[[e["type"] for e in events].index("snapshot")]
    assert set(snapshot["feature_maps"]) == {0, 3} and snapshot["feature_maps"][0].shape == (4, 8, 24, 24)
    assert "feature_maps" not in snapshot["snapshot"]["layers"][0]  # arrays ride beside the JSON, not in it


def test_the_loop_stores_a_snapshot_at_every_scheduled_step(small_data):
    trainer = small_trainer(
        small_data, steps=60, snapshot_every=10, snapshot_schedule={"dense_steps": 5, "growth": 1.5}
    )
    events = list(trainer.events(checkpoint_every=25))
    assert [e["step"] for e in events if e["type"] == "snapshot"] == snapshot_steps(trainer.config)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [25, 50, 60]


def test_pause_holds_the_step_resume_continues_and_stop_checkpoints(small_data):
    """Commands queued before the loop polls: the same sequence every time, no threads or timing."""
    trainer = small_trainer(small_data, steps=100000, snapshot_every=5, snapshot_schedule=NO_DENSE_START)
    control = TrainingControl()
    events = trainer.events(control)
    collect_until(events, lambda e: e["type"] == "snapshot" and e["step"] == 10)
    control.pause()
    control.resume()
    pause_and_resume = collect_until(events, lambda e: e["type"] == "status" and e["status"] == "running")
    assert [e["type"] for e in pause_and_resume] == ["checkpoint", "status", "status"]
    assert [e["status"] for e in pause_and_resume[1:]] == ["paused", "running"]
    assert {e["step"] for e in pause_and_resume} == {10} and trainer.step == 10
    after = collect_until(events, lambda e: e["type"] == "snapshot" and e["step"] == 20)
    assert [p["step"] for p in points_of(after)] == list(range(11, 21))
    control.stop()
    rest = list(events)
    assert [e["type"] for e in rest] == ["checkpoint", "status", "done"]
    assert rest[1] == {"type": "status", "status": "stopped", "step": 20, "message": "stopped by request"}
    assert trainer.step == 20


def test_a_shutdown_ends_the_run_interrupted_with_the_given_message(small_data):
    trainer = small_trainer(small_data, steps=1000)
    control = TrainingControl()
    control._commands.put(("shutdown", "server shut down; resume to continue"))
    events = list(trainer.events(control))
    assert events[-1] == {
        "type": "done",
        "status": "interrupted",
        "step": 0,
        "message": "server shut down; resume to continue",
    }
    assert [e["type"] for e in events[-3:]] == ["checkpoint", "status", "done"]


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
    control.stop()
    worker.join(60)
    assert not worker.is_alive()
    assert statuses[-2:] == ["stopped", "stopped"] and "paused" in statuses
    assert trainer.step == held  # nothing trained between the pause and the stop


def test_a_run_resumed_from_the_loops_checkpoint_ends_bit_identical(small_data, tmp_path):
    config = {"steps": 30, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "eval_every": 10}
    straight = small_trainer(small_data, **config)
    straight_events = list(straight.events())

    first = small_trainer(small_data, **config)
    control = TrainingControl()
    events = first.events(control)
    collect_until(events, lambda e: e["type"] == "snapshot" and e["step"] == 17)  # mid-epoch (17 * 32 of 512)
    control.stop()
    for event in events:
        if event["type"] == "checkpoint":
            np.savez(tmp_path / "ckpt.npz", **first.checkpoint())
    with np.load(tmp_path / "ckpt.npz") as saved:
        resumed = Trainer.restore(dict(saved), dataset=small_data)
    assert resumed.step == 17
    resumed_events = list(resumed.events())
    assert resumed_events[-1]["status"] == "completed"
    for name in straight.model.params:
        assert np.array_equal(resumed.model.params[name], straight.model.params[name])

    def figures(events):
        return [{k: v for k, v in p.items() if k != "time"} for p in points_of(events)]

    assert figures(resumed_events) == figures(straight_events)[17:]


# ---------------------------------------------------------------- the snapshot schedule


def test_the_default_schedule_is_dense_at_first_and_served_in_the_config():
    config = RunConfig.from_dict({})
    schedule = config.to_dict()["snapshot_schedule"]
    assert set(schedule) == {"dense_steps", "growth"} and schedule["growth"] > 1
    steps = snapshot_steps(config)
    dense = schedule["dense_steps"]
    assert steps[: dense + 1] == list(range(dense + 1))
    assert steps[-1] == config.steps and 0 in steps
    assert set(range(0, config.steps + 1, config.snapshot_every)) <= set(steps)
    assert len(steps) < 1.25 * (config.steps // config.snapshot_every + 1)  # storage stays modest
    assert RunConfig.from_dict({"snapshot_schedule": {"growth": 1.5}}).snapshot_schedule == {
        "dense_steps": dense,
        "growth": 1.5,
    }


def test_schedule_gaps_grow_geometrically_until_they_reach_snapshot_every():
    config = RunConfig.from_dict(
        {"steps": 1000, "snapshot_every": 50, "snapshot_schedule": {"dense_steps": 10, "growth": 1.5}}
    )
    steps = snapshot_steps(config)
    early = [s for s in steps if s % 50 != 0 or s == 0]
    gaps = np.diff(early).tolist()
    assert early[:11] == list(range(11)) and gaps[:10] == [1] * 10
    geometric = gaps[10:]
    assert geometric == sorted(geometric) and geometric[-1] > 10 * geometric[0] / 2 and max(geometric) < 50
    # the schedule's own steps stop once a gap would reach snapshot_every; from there only multiples
    assert all(s % 50 == 0 or s == 1000 for s in steps if s > early[-1])
    assert steps[-1] == 1000


def test_the_last_step_is_stored_and_the_rule_agrees_with_the_list():
    config = RunConfig.from_dict({"steps": 437, "snapshot_every": 25})
    steps = snapshot_steps(config)
    assert steps[-1] == 437 and 425 in steps
    rule = snapshot_rule(config)
    assert [s for s in range(438) if rule(s)] == steps
    short = RunConfig.from_dict({"steps": 7})
    assert snapshot_steps(short) == list(range(8))  # shorter than the dense start: every step


def test_default_run_stores_40_snapshots_before_conv1_moves_half_its_distance():
    """Issue 18: measured on the default run {} (seed 0) over all its steps."""
    config = RunConfig.from_dict({})
    trainer = Trainer(config)
    start = trainer.model.params["0.weight"].copy()
    distance = [0.0]
    for _ in range(config.steps):
        trainer.train_step()
        distance.append(float(np.linalg.norm(trainer.model.params["0.weight"] - start)))
    half_way = int(np.argmax(np.asarray(distance) >= distance[-1] / 2))
    before = [s for s in snapshot_steps(config) if s < half_way]
    assert len(before) >= 40, (half_way, len(before))


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


def test_a_run_config_built_by_hand_is_checked_before_training():
    """RunConfig(...) skips from_dict; the Trainer then parses it, so the dataset name is resolved
    and bad values are refused with the field named."""
    trainer = Trainer(RunConfig(steps=2, dataset={"name": "shapes", "n_train": 64, "n_val": 32}))
    assert trainer.train_step()["step"] == 1
    with pytest.raises(ValueError, match="^steps:"):
        Trainer(RunConfig(steps=0))
