"""The worker side of a run: one parse of the run config, and drive_run persisting the engine loop's events."""

import collections

import numpy as np
import pytest

import engine.datasets
import engine.trainer
from app import store as files
from app.worker import build_trainer, drive_run
from engine.trainer import RunConfig, TrainingControl, snapshot_steps

SMALL = {
    "dataset": {"name": "shapes", "n_train": 128, "n_val": 64},
    "batch_size": 8,
    "steps": 30,
    "snapshot_every": 10,
    "eval_every": 10,
    "snapshot_schedule": {"dense_steps": 3, "growth": 2.0},
}
SPEC = {
    "layers": [
        {"type": "conv", "filters": 4, "kernel": 3, "init": {"name": "normal", "std": 0.1}},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]
}


@pytest.fixture
def parse_counts(monkeypatch):
    """Count every parse of a run config's parts on the way from the stored dict to a Trainer.

    The run config's parsers as the trainer and the dataset loader call them
    (engine.model.build_model's own argument check is the model's, not the config's).
    """
    counts = collections.Counter()

    def counted(module, name, key=None):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key or name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(engine.trainer, "parse_init")
    counted(engine.trainer, "normalize_spec")
    counted(engine.trainer, "normalize_dataset_spec")
    counted(engine.datasets, "normalize_dataset_spec")
    original_from_dict = RunConfig.from_dict.__func__

    def from_dict(cls, d):
        counts["RunConfig.from_dict"] += 1
        return original_from_dict(cls, d)

    monkeypatch.setattr(RunConfig, "from_dict", classmethod(from_dict))
    return counts


@pytest.mark.parametrize("model", ["small", SPEC], ids=["preset", "spec"])
def test_a_runs_start_parses_its_config_once(tmp_path, parse_counts, model):
    stored = RunConfig.from_dict({**SMALL, "model": model}).to_dict()  # as the server stores it
    parse_counts.clear()
    trainer = build_trainer(tmp_path, "r1", stored, confine_datasets=True)  # what process_main does
    assert trainer.config.to_dict() == stored
    assert dict(parse_counts) == {
        "RunConfig.from_dict": 1,
        "parse_init": 1,
        "normalize_dataset_spec": 1,
        "normalize_spec": 1,
    }


def test_a_resumed_run_parses_the_checkpoints_config_once(tmp_path, parse_counts):
    trainer = build_trainer(tmp_path, "r1", RunConfig.from_dict(SMALL))
    control = TrainingControl()
    control.stop()
    assert drive_run(trainer, tmp_path, "r1", lambda message: None, control) == "stopped"
    stored = RunConfig.from_dict(SMALL).to_dict()
    parse_counts.clear()
    resumed = build_trainer(tmp_path, "r1", stored, confine_datasets=True)
    assert resumed.step == 0
    assert parse_counts["RunConfig.from_dict"] == 1 and parse_counts["normalize_dataset_spec"] == 1


def test_a_runs_generated_dataset_is_drawn_once_per_data_folder(tmp_path, monkeypatch):
    from app.worker import dataset_cache

    config = RunConfig.from_dict(SMALL)
    first = build_trainer(tmp_path, "r1", config)
    assert [entry.name for entry in dataset_cache(tmp_path).iterdir() if entry.is_dir()] == [
        engine.datasets.cache_key(config.dataset)
    ]

    def never(**params):
        raise AssertionError("the second run reads the kept dataset")

    monkeypatch.setitem(engine.datasets.DATASETS["shapes"], "loader", never)
    second = build_trainer(tmp_path, "r2", config, confine_datasets=True)
    for name in ("x_train", "y_train", "x_val", "y_val", "monitor_x", "probe_x"):
        assert np.array_equal(getattr(second.dataset, name), getattr(first.dataset, name)), name
    assert [second.train_step()["loss"] for _ in range(3)] == [first.train_step()["loss"] for _ in range(3)]


def test_drive_run_persists_what_the_loop_asks_for_and_reports_it(tmp_path):
    config = RunConfig.from_dict(SMALL)
    trainer = build_trainer(tmp_path, "r1", config)
    messages = []

    class AtSteps(TrainingControl):
        """Pause and resume at step 10, stop at step 20 (the loop polls once per step)."""

        def poll(self, timeout=0.0):
            if trainer.step in (10, 20) and not self.sent.get(trainer.step):
                self.sent[trainer.step] = True
                if trainer.step == 10:
                    self.pause()
                    self.resume()
                else:
                    self.stop()
            return super().poll(timeout)

    control = AtSteps()
    control.sent = {}
    assert (
        drive_run(trainer, tmp_path, "r1", messages.append, control, checkpoint_every=15, analyst_mode="inline")
        == "stopped"
    )
    assert messages[:2] == [("started", 0), ("status", "running", 0, None)]
    statuses = [m[1] for m in messages if m[0] == "status"]
    assert statuses == ["running", "paused", "running", "stopped"]
    assert [m[1] for m in messages if m[0] == "checkpoint"] == [10, 15, 20]
    stored = [s for s in snapshot_steps(config) if s <= 20]
    assert [m[1] for m in messages if m[0] == "snapshot"] == stored == files.snapshot_steps(tmp_path, "r1")
    snapshot = files.read_snapshot(tmp_path, "r1", 20, feature_maps=True)
    assert [layer["label"] for layer in snapshot["layers"]] == ["conv1", "conv2"]
    assert np.asarray(snapshot["layers"][0]["feature_maps"]).shape[0] == 4
    checkpoint = files.read_checkpoint(tmp_path, "r1")
    assert int(checkpoint["step"]) == 20
    points = [p for m in messages if m[0] == "metrics" for p in m[1]]
    assert [p["step"] for p in points] == list(range(1, 21)) and all("time" in p for p in points)

    messages.clear()
    resumed = build_trainer(tmp_path, "r1", config)
    assert drive_run(resumed, tmp_path, "r1", messages.append, TrainingControl()) == "completed"
    assert [m[1] for m in messages if m[0] == "snapshot"] == [s for s in snapshot_steps(config) if s > 20]
    assert files.snapshot_steps(tmp_path, "r1") == snapshot_steps(config)


def test_a_run_with_its_side_work_in_an_analyst_process_stores_what_inline_stores(tmp_path):
    config = RunConfig.from_dict({**SMALL, "steps": 25})
    stored = {}
    for mode in ("inline", "process"):
        data_dir = tmp_path / mode
        messages = []
        trainer = build_trainer(data_dir, "r1", config)
        assert (
            drive_run(trainer, data_dir, "r1", messages.append, TrainingControl(), 10, analyst_mode=mode) == "completed"
        )
        assert files.snapshot_steps(data_dir, "r1") == snapshot_steps(config)
        assert [m[1] for m in messages if m[0] == "checkpoint"] == [10, 20, 25]
        stored[mode] = [files.read_snapshot(data_dir, "r1", step, feature_maps=True) for step in snapshot_steps(config)]
        assert int(files.read_checkpoint(data_dir, "r1")["step"]) == 25
    assert stored["process"] == stored["inline"]  # the analyst computes the same values (engine/analyst.py)


def test_a_kernel_set_through_the_worker_is_answered_and_stored(tmp_path):
    trainer = build_trainer(tmp_path, "r1", RunConfig.from_dict(SMALL))
    control = TrainingControl()
    messages = []

    def emit(message):
        messages.append(message)
        if message == ("snapshot", 2):
            control.set_kernel(1, 0, 1, np.ones((5, 5)).tolist(), True)
            control.set_kernel(2, 0, 99, np.ones((5, 5)).tolist(), False)
        if message[0] == "reply" and message[1] == 2:
            control.stop()

    drive_run(trainer, tmp_path, "r1", emit, control)
    replies = [m for m in messages if m[0] == "reply"]
    assert replies[0] == ("reply", 1, None) and replies[1][2].startswith("filter:")
    # the kernel's snapshot is written before its reply (at step 2 inline, a few steps later when
    # the snapshots are computed by the analyst process, which lags behind the training)
    kernel_step = [m[1] for m in messages[: messages.index(replies[0])] if m[0] == "snapshot"][-1]
    assert kernel_step >= 2
    assert files.read_snapshot(tmp_path, "r1", kernel_step)["layers"][0]["frozen"] == [1]


# ---------------------------------------------------------------- snapshot files written off the loop


def stored_members(data_dir, run_id: str) -> dict:
    """Every snapshot file of the run, as {file name: {member: bytes}} (a zip member's bytes, not its
    timestamp, are what a write stores)."""
    import zipfile

    folder = files.LocalStorage(data_dir).snapshot_dir(run_id)
    out = {}
    for path in sorted(folder.iterdir()):
        with zipfile.ZipFile(path) as archive:
            out[path.name] = {name: archive.read(name) for name in archive.namelist()}
    return out


def test_snapshots_written_on_the_writer_thread_are_the_bytes_written_in_the_loop(tmp_path, monkeypatch):
    import app.worker

    config = RunConfig.from_dict(SMALL)
    drive_run(build_trainer(tmp_path / "a", "r", config), tmp_path / "a", "r", lambda m: None, None, 10, "inline")

    class InTheLoop(app.worker.SnapshotWriter):
        def submit(self, snapshot, params, feature_maps):
            self.storage.write_snapshot(self.run_id, snapshot, params, feature_maps, self.context)
            self.pending += 1
            self.done.put((int(snapshot["step"]), None, True))

    monkeypatch.setattr(app.worker, "SnapshotWriter", InTheLoop)
    drive_run(build_trainer(tmp_path / "b", "r", config), tmp_path / "b", "r", lambda m: None, None, 10, "inline")
    threaded, in_loop = stored_members(tmp_path / "a", "r"), stored_members(tmp_path / "b", "r")
    assert sorted(threaded) == sorted(f"{step}.snapshot.npz" for step in snapshot_steps(config))
    assert threaded == in_loop


def test_the_loop_trains_on_while_a_snapshot_is_written(tmp_path, monkeypatch):
    import threading

    config = RunConfig.from_dict(SMALL)
    trainer = build_trainer(tmp_path, "r", config)
    later_steps_trained = threading.Event()
    write = files.LocalStorage.write_snapshot

    def slow_write(self, run_id, snapshot, *args):
        if snapshot["step"] == 10:  # held until the loop has trained past step 15
            assert later_steps_trained.wait(60), "the loop waited for the write"
        return write(self, run_id, snapshot, *args)

    monkeypatch.setattr(files.LocalStorage, "write_snapshot", slow_write)
    messages = []

    def emit(message):
        messages.append(message)
        if message[0] == "metrics" and message[1][-1]["step"] >= 15:
            later_steps_trained.set()

    assert drive_run(trainer, tmp_path, "r", emit, None, 100, "inline") == "completed"
    announced = [m[1] for m in messages if m[0] == "snapshot"]
    assert announced == snapshot_steps(config) == files.snapshot_steps(tmp_path, "r")
    first_metrics_past_15 = next(i for i, m in enumerate(messages) if m[0] == "metrics" and m[1][-1]["step"] >= 15)
    assert messages.index(("snapshot", 10)) > first_metrics_past_15
    assert messages.index(("snapshot", 30)) < messages.index(("checkpoint", 30))  # every file before a checkpoint


def test_a_run_that_fails_or_cannot_write_keeps_every_snapshot_before_the_failure(tmp_path, monkeypatch):
    config = RunConfig.from_dict(SMALL)
    trainer = build_trainer(tmp_path, "fails", config)
    train_step = trainer.train_step

    def failing_step():
        if trainer.step == 23:
            raise RuntimeError("the engine broke")
        return train_step()

    trainer.train_step = failing_step
    with pytest.raises(RuntimeError, match="the engine broke"):
        drive_run(trainer, tmp_path, "fails", lambda m: None, None, 100, "inline")
    before = [step for step in snapshot_steps(config) if step <= 23]
    assert files.snapshot_steps(tmp_path, "fails") == before
    for step in before:  # whole files
        assert files.read_snapshot(tmp_path, "fails", step)["step"] == step

    write = files.LocalStorage.write_snapshot

    def full_disk(self, run_id, snapshot, *args):
        if snapshot["step"] == 10:
            raise OSError(28, "No space left on device")
        return write(self, run_id, snapshot, *args)

    monkeypatch.setattr(files.LocalStorage, "write_snapshot", full_disk)
    messages = []
    with pytest.raises(OSError, match="No space left"):
        drive_run(build_trainer(tmp_path, "full", config), tmp_path, "full", messages.append, None, 100, "inline")
    kept = files.snapshot_steps(tmp_path, "full")
    assert kept == [step for step in snapshot_steps(config) if step < 10]  # nothing after the failed write
    assert [m[1] for m in messages if m[0] == "snapshot"] == kept[: len([m for m in messages if m[0] == "snapshot"])]


def test_a_runs_process_never_imports_the_store_or_its_database_driver():
    """What a spawned run's process imports (the server's main module app.cli, then app.worker, and
    app.security for the data folder's confinement) leaves the database to the server: importing
    SQLAlchemy cost every run about 0.15 s of CPU on a quiet machine, over a second on a busy one."""
    import subprocess
    import sys

    code = (
        "import sys, app.cli, app.worker, app.security; "
        "print(sorted(m for m in ('app.store', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
