"""The side work off the training path (engine/analyst.py): an analyst process stores what the
inline loop stores, hands everything over before a checkpoint, and a failed process costs only time.

Equality: the analyst process builds the model from the same spec, loads the captured weights and
computes every pass in the same fixed parts of the batch with the same code (engine.fast.model
promises bit-identical results however the parts are placed), so snapshots, feature maps and
validation figures are compared exactly; the weights are the training's own copies.
"""

import numpy as np
import pytest

from engine import analyst
from engine.trainer import Trainer, TrainingControl, snapshot_steps

CONFIG = {
    "steps": 24,
    "batch_size": 16,
    "eval_every": 8,
    "snapshot_every": 6,
    "snapshot_schedule": {"dense_steps": 2},
}


@pytest.fixture(autouse=True)
def started_analyst(monkeypatch):
    """The loop's analyst process, waited for before the loop runs, so every job goes to it
    (a process not yet started leaves its jobs to the training process)."""
    made = analyst.make_analyst

    def make(trainer, mode="inline"):
        side = made(trainer, mode)
        if isinstance(side, analyst.ProcessAnalyst):
            assert side.started(120)
        return side

    monkeypatch.setattr(analyst, "make_analyst", make)


def run(mode, config=CONFIG, control=None, **options):
    trainer = Trainer(config)
    return trainer, list(trainer.events(control, analyst_mode=mode, **options))


def points(events):
    return [point for event in events if event["type"] == "metrics" for point in event["points"]]


def snapshots(events):
    return [event for event in events if event["type"] == "snapshot"]


def test_process_analyst_stores_what_the_inline_loop_stores():
    inline_trainer, inline = run("inline", checkpoint_every=12)
    process_trainer, offloaded = run("process", checkpoint_every=12)
    a, b = snapshots(inline), snapshots(offloaded)
    assert [e["step"] for e in a] == [e["step"] for e in b] == snapshot_steps(CONFIG)
    for x, y in zip(a, b):
        assert x["snapshot"] == y["snapshot"]  # stats, detector labels, metrics (with validation), probes
        assert x["params"].keys() == y["params"].keys()
        for name in x["params"]:
            np.testing.assert_array_equal(x["params"][name], y["params"][name])
        assert x["feature_maps"].keys() == y["feature_maps"].keys()
        for index in x["feature_maps"]:
            np.testing.assert_array_equal(x["feature_maps"][index], y["feature_maps"][index])
    without_time = [[{k: v for k, v in p.items() if k != "time"} for p in points(e)] for e in (inline, offloaded)]
    assert without_time[0] == without_time[1]
    assert [p["step"] for p in points(offloaded)] == list(range(1, 25))
    evaluated = [p for p in points(offloaded) if "val_acc" in p]
    assert [p["step"] for p in evaluated] == [8, 16, 24]
    assert list(evaluated[0]) == ["step", "loss", "acc", "val_loss", "val_acc", "time"]
    assert (
        process_trainer.last_eval == inline_trainer.last_eval == {k: evaluated[-1][k] for k in ("val_loss", "val_acc")}
    )
    assert [e["type"] for e in offloaded[-3:]] == ["checkpoint", "status", "done"]


def test_every_snapshot_and_evaluation_comes_before_a_later_checkpoint():
    _, events = run("process", checkpoint_every=6)
    seen_snapshots, seen_points = set(), set()
    checkpoints = 0
    for event in events:
        if event["type"] == "snapshot":
            seen_snapshots.add(event["step"])
        elif event["type"] == "metrics":
            seen_points.update(p["step"] for p in event["points"])
        elif event["type"] == "checkpoint":
            checkpoints += 1
            step = event["step"]
            assert {s for s in snapshot_steps(CONFIG) if s <= step} <= seen_snapshots
            assert set(range(1, step + 1)) <= seen_points
    assert checkpoints == 4  # steps 6, 12, 18 and the end


def test_a_kernel_set_during_an_offloaded_run_is_snapshotted_before_the_reply():
    control = TrainingControl()
    control.set_kernel("r1", 0, 0, [[0.0, 1.0, 0.0, 1.0, 0.0]] * 5, frozen=True)
    trainer, events = run("process", control=control)
    kinds = [(e["type"], e.get("step")) for e in events]
    reply = kinds.index(("reply", None))
    assert ("snapshot", 0) in kinds[:reply]
    kernel_snapshots = [e for e in snapshots(events)[:2] if e["step"] == 0]
    assert len(kernel_snapshots) == 2  # the start snapshot, then the one with the new kernel
    assert kernel_snapshots[1]["snapshot"]["layers"][0]["frozen"] == [0]
    np.testing.assert_array_equal(kernel_snapshots[1]["params"]["0.weight"][0, 0, 0], [0.0, 1.0, 0.0, 1.0, 0.0])


def jobs(trainer, steps):
    """Train `steps`, capturing a snapshot-and-evaluation job at each step."""
    captured = []
    for _ in range(steps):
        trainer.train_step()
        captured.append(
            analyst.Job(trainer.step, True, True, trainer.model.state_dict(), last_metrics=dict(trainer.last_metrics))
        )
    return captured


def test_a_dead_analyst_process_costs_only_time():
    reference_trainer = Trainer(CONFIG)
    expected = []
    inline = analyst.InlineAnalyst(reference_trainer)
    for _ in range(3):
        reference_trainer.train_step()
        inline.submit(
            analyst.Job(reference_trainer.step, True, True, None, last_metrics=reference_trainer.last_metrics)
        )
        expected.extend(inline.results())

    trainer = Trainer(CONFIG)
    side = analyst.ProcessAnalyst(trainer)
    try:
        assert side.started(120)
        captured = jobs(trainer, 3)
        side.submit(captured[0])
        first = side.results(wait=True)
        assert side.process is not None
        side.process.kill()  # the process dies between jobs: the rest are computed here
        side.process.wait()
        side.submit(captured[1])
        side.submit(captured[2])
        got = first + side.results(wait=True)
        assert side.broken
    finally:
        side.close()
    assert [r.step for r in got] == [1, 2, 3]
    for x, y in zip(expected, got):
        assert x.eval == y.eval
        assert x.snapshot == y.snapshot


def test_a_job_the_process_cannot_compute_is_raised_here():
    trainer = Trainer(CONFIG)
    side = analyst.ProcessAnalyst(trainer)
    try:
        assert side.started(120)
        bad = analyst.Job(1, True, False, {"0.weight": np.zeros(3, dtype=np.float32)})
        side.submit(bad)
        with pytest.raises(ValueError, match="missing parameter|shape"):
            side.results(wait=True)
    finally:
        side.close()


def test_analyst_mode_is_checked_and_auto_follows_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="analyst"):
        analyst.analyst_mode("threads")
    monkeypatch.setenv("KERNELSCOPE_ANALYST", "inline")
    assert analyst.analyst_mode("auto") == "inline"
    monkeypatch.setenv("KERNELSCOPE_ANALYST", "process")
    assert analyst.analyst_mode("auto") == "process"
    assert analyst.analyst_mode("inline") == "inline"


def test_jobs_before_the_process_has_started_are_computed_here():
    trainer = Trainer(CONFIG)
    side = analyst.ProcessAnalyst(trainer)
    try:
        trainer.train_step()
        job = analyst.Job(1, True, True, trainer.model.state_dict(), last_metrics=dict(trainer.last_metrics))
        side.submit(job)  # most likely before the process is up; either way the result is the same
        got = side.results(wait=True)
        assert side.started(120)
        trainer.train_step()
        side.submit(analyst.Job(2, False, True, trainer.model.state_dict(), last_metrics=dict(trainer.last_metrics)))
        got += side.results(wait=True)
    finally:
        side.close()
    assert [r.step for r in got] == [1, 2]
    assert got[0].eval is not None and got[1].eval is None
    # the process learnt the evaluation computed before it was ready: the step-2 snapshot shows it
    assert {k: got[1].snapshot["metrics"][k] for k in ("val_loss", "val_acc")} == got[0].eval


def test_auto_computes_a_job_here_while_no_core_is_spare_and_keeps_the_order():
    # asked only when nothing is pending: job 1 (spare core) goes to the process, job 2 follows it
    # there (job 1 pending), job 3 (busy, nothing pending) is computed here, job 4 (spare) goes there
    busy = iter([False, True, False])
    trainer = Trainer(CONFIG)
    side = analyst.ProcessAnalyst(trainer, busy=lambda: next(busy))
    reference = Trainer(CONFIG)
    inline = analyst.InlineAnalyst(reference)
    got, expected = [], []
    try:
        assert side.started(120)
        for number in range(4):
            for t, a in ((trainer, side), (reference, inline)):
                t.train_step()
                params = t.model.state_dict() if a is side else None
                a.submit(analyst.Job(t.step, number % 2 == 0, True, params, last_metrics=dict(t.last_metrics)))
            if number == 1:
                got += side.results(wait=True)  # nothing pending: the next busy job is computed here
            assert len(side.pending) == {0: 1, 1: 0, 2: 0, 3: 1}[number]
        got += side.results(wait=True)
        expected = inline.results()
    finally:
        side.close()
    assert [r.step for r in got] == [1, 2, 3, 4]
    for x, y in zip(expected, got):
        assert x.eval == y.eval and x.snapshot == y.snapshot


def test_machine_busy_reads_runnable_threads_against_cpus():
    assert analyst.machine_busy(runnable=2, cpus=2)
    assert not analyst.machine_busy(runnable=1, cpus=2)
    assert analyst.machine_busy(runnable=1, cpus=1)


def test_auto_on_a_machine_with_no_spare_core_never_starts_the_process():
    trainer = Trainer(CONFIG)
    side = analyst.ProcessAnalyst(trainer, busy=lambda: True)
    reference = Trainer(CONFIG)
    inline = analyst.InlineAnalyst(reference)
    try:
        for t, a in ((trainer, side), (reference, inline)):
            for _ in range(3):
                t.train_step()
                params = t.model.state_dict() if a is side else None
                a.submit(analyst.Job(t.step, True, True, params, last_metrics=dict(t.last_metrics)))
        got = side.results(wait=True)
        assert not side.launched and side.process is None
    finally:
        side.close()
    expected = inline.results()
    assert [r.step for r in got] == [1, 2, 3]
    for x, y in zip(expected, got):
        assert x.eval == y.eval and x.snapshot == y.snapshot


def test_the_process_ends_quietly_when_its_input_is_cut_mid_message():
    """A run that is stopped while it writes a job leaves the analyst a truncated message; the
    analyst ends as at end of input, without a traceback in the server's log."""
    import pickle
    import subprocess
    import sys

    message = pickle.dumps(("last_eval", {"loss": 1.0}), protocol=pickle.HIGHEST_PROTOCOL)
    done = subprocess.run(
        [sys.executable, "-c", "from engine.analyst import serve; serve()"],
        input=message[: len(message) // 2],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("init", ["he_normal", "zeros"])
def test_every_snapshot_carries_the_layer_summary_of_its_monitor_batch(init):
    """Each conv layer of a snapshot holds the summary row (dead filters on the monitor batch,
    orientation-selective share, detector scores) that engine.explain.layer_summary computes
    from the snapshot's weights: the GET .../layers/{layer}/summary route serves it as stored.
    With all-zero kernels every filter is dead (its responses are 0 on every image)."""
    from engine import explain

    trainer, events = run("inline", {**CONFIG, "init": init, "steps": 8})
    found = snapshots(events)
    assert found
    for event in found:
        params = event["params"]
        for layer in event["snapshot"]["layers"]:
            expected = explain.layer_summary(trainer.spec, params, layer["index"], trainer.dataset.monitor_x)
            assert layer["summary"].keys() == expected.keys()
            for key, value in expected.items():
                assert layer["summary"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (event["step"], key)
            if init == "zeros" and layer["index"] == 0:
                assert layer["summary"]["dead_filters"] == layer["summary"]["filters"]
