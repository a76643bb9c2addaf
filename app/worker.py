"""What a training run executes, and how its messages are recorded.

`train_loop` drives an engine Trainer step by step: it writes snapshots and
checkpoints to the run folder itself (atomically), batches metrics, obeys
commands (pause, resume, stop, shutdown, set_kernel) and reports everything as
small messages through a sink. The server runs it in one process per run
(`process_main`, talking over two pipes); the CLI runs the very same loop
in-process with a sink that drives its progress bar.

Messages (plain tuples, picklable):
    ("started", step)                    training (re)starts from `step`
    ("status", status, step, message)    running / paused / completed / stopped /
                                         diverged / failed / interrupted
    ("metrics", [point, ...])            point = {"step", "loss", "acc", "val_loss"?, "val_acc"?, "time"}
    ("snapshot", step)                   snapshot files for `step` are on disk
    ("checkpoint", step)                 checkpoint.npz now holds `step`
    ("reply", request_id, error)         answer to a set_kernel command (error None = ok)
Commands: ("pause",), ("resume",), ("stop",), ("shutdown",),
          ("set_kernel", request_id, layer, filter, kernel, frozen)

`RunRecorder` is the receiving side: it turns messages into store rows and
numbered stream events.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app import store as files
from app.store import Store, dumps_json
from engine.fast.partner import close_partners

METRICS_FLUSH_SECONDS = 0.05
# A checkpoint also keeps the latest metric points (at least the last two checkpoint
# intervals), re-sent when the run restarts from it: points the server had not yet
# recorded when it was killed are not lost.
CHECKPOINT_POINTS_KEPT = 2000
PAUSED_POLL_SECONDS = 0.5
TERMINAL_STATUSES = ("completed", "stopped", "diverged", "failed", "interrupted")


class ParentGone(Exception):
    """The process that started this worker has exited; stop without writing."""


# ---------------------------------------------------------------- building a trainer

def build_trainer(data_dir: Path, run_id: str, config: dict, confine_datasets: bool = False):
    """A Trainer for the run: restored from its checkpoint if it has one, else fresh.

    Snapshots newer than the checkpoint are removed, so the history on disk
    stays one consistent timeline when a run resumes after a crash. With
    `confine_datasets` (the server), a dataset path is read only from inside
    DATA/datasets (app/security.py); the config keeps the relative path.
    """
    from engine.datasets import load_dataset
    from engine.trainer import RunConfig, Trainer

    dataset = None
    if confine_datasets:
        from app.security import confined_dataset

        spec = config.get("dataset")
        confined = confined_dataset(data_dir, spec)
        if confined is not spec:
            dataset = load_dataset(confined)
    checkpoint = files.read_checkpoint(data_dir, run_id)
    if checkpoint is not None:
        trainer = Trainer.restore(checkpoint, dataset)
    else:
        trainer = Trainer(RunConfig.from_dict(config), dataset)
    folder = files.snapshot_dir(data_dir, run_id)
    for step in files.snapshot_steps(data_dir, run_id):
        if step > trainer.step:
            for suffix in (".json", ".maps.npz", ".npz"):
                try:
                    os.unlink(folder / f"{step}{suffix}")
                except FileNotFoundError:
                    pass
    return trainer


# ---------------------------------------------------------------- the loop

class _MetricsBuffer:
    """Collects metric points and hands them to the sink at most every `interval` seconds."""

    def __init__(self, emit, interval: float):
        self.emit = emit
        self.interval = interval
        self.points: list[dict] = []
        self.first_at = 0.0

    def add(self, point: dict) -> None:
        if not self.points:
            self.first_at = time.monotonic()
        self.points.append(point)
        if time.monotonic() - self.first_at >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.points:
            points, self.points = self.points, []
            self.emit(("metrics", points))


def _clean_point(metrics: dict) -> dict:
    """A metrics point; `time` (unix seconds when the step finished) rides along on live events only."""
    point = {"step": int(metrics["step"])}
    for name in ("loss", "acc", "val_loss", "val_acc"):
        if metrics.get(name) is not None:
            point[name] = float(metrics[name])
    point["time"] = round(time.time(), 4)
    return point


def train_loop(trainer, config: dict, data_dir: Path, run_id: str, emit, poll_command,
               checkpoint_every: int = 100, flush_seconds: float = METRICS_FLUSH_SECONDS) -> str:
    """Train until done or told to stop; returns the final status.

    emit(message): receives the messages listed in the module docstring.
    poll_command(timeout): returns a command tuple or None (may raise ParentGone).
    """
    from engine import analysis
    from engine.trainer import Diverged

    total_steps = int(config["steps"])
    snapshot_every = int(config["snapshot_every"])
    eval_every = int(config.get("eval_every") or 0)
    metrics = _MetricsBuffer(emit, flush_seconds)
    recent_points = deque(_checkpoint_points(data_dir, run_id, trainer.step),
                          maxlen=max(CHECKPOINT_POINTS_KEPT, 2 * checkpoint_every))

    def write_snapshot() -> None:
        metrics.flush()  # before the analysis, so these points are not held back by it
        snapshot, params = trainer.snapshot(feature_maps=False)
        maps = analysis.feature_maps(trainer.model, trainer.dataset.probe_x)  # arrays, no lists
        files.write_snapshot(data_dir, run_id, snapshot, params, feature_maps=maps)
        emit(("snapshot", int(snapshot["step"])))

    def write_checkpoint() -> None:
        metrics.flush()
        state = trainer.checkpoint()
        state[CHECKPOINT_POINTS_KEY] = np.array(dumps_json(list(recent_points)))
        files.write_npz_atomic(files.checkpoint_path(data_dir, run_id), state)
        emit(("checkpoint", trainer.step))

    def finish(status: str, message: str | None = None) -> str:
        metrics.flush()
        emit(("status", status, trainer.step, message))
        return status

    emit(("started", trainer.step))
    if recent_points:
        emit(("metrics", list(recent_points)))
    emit(("status", "running", trainer.step, None))
    if files.read_snapshot_text(data_dir, run_id, trainer.step) is None and (
        trainer.step == 0 or trainer.step % snapshot_every == 0
    ):
        write_snapshot()

    paused = False
    while True:
        command = poll_command(PAUSED_POLL_SECONDS if paused else 0.0)
        if command is not None:
            kind = command[0]
            if kind == "pause" and not paused:
                paused = True
                metrics.flush()
                write_checkpoint()
                emit(("status", "paused", trainer.step, None))
            elif kind == "resume" and paused:
                paused = False
                emit(("status", "running", trainer.step, None))
            elif kind == "stop":
                metrics.flush()
                write_checkpoint()
                return finish("stopped", "stopped by request")
            elif kind == "shutdown":
                metrics.flush()
                write_checkpoint()
                return finish("interrupted", "server shut down; resume to continue")
            elif kind == "set_kernel":
                _, request_id, layer, filter_index, kernel, frozen = command
                try:
                    trainer.set_kernel(layer, filter_index, np.asarray(kernel, dtype=np.float32), frozen=frozen)
                except (ValueError, IndexError, KeyError, TypeError) as error:
                    emit(("reply", request_id, str(error)))
                else:
                    write_snapshot()
                    emit(("reply", request_id, None))
            continue
        if paused:
            continue
        if trainer.step >= total_steps:
            write_checkpoint()
            return finish("completed")
        try:
            point = _clean_point(trainer.train_step())
            step = trainer.step
            if eval_every and (step % eval_every == 0 or step == total_steps):
                point.update({k: float(v) for k, v in trainer.evaluate().items()})
        except Diverged as error:
            return finish("diverged", str(error))
        metrics.add(point)
        recent_points.append(point)
        if step % snapshot_every == 0 or step == total_steps:
            write_snapshot()
        if step % checkpoint_every == 0 and step < total_steps:
            write_checkpoint()


CHECKPOINT_POINTS_KEY = "recent_metrics"


def _checkpoint_points(data_dir: Path, run_id: str, step: int) -> list[dict]:
    """The metric points up to `step` that the run's checkpoint carries (none without one)."""
    try:
        with np.load(files.checkpoint_path(data_dir, run_id), allow_pickle=False) as data:
            if CHECKPOINT_POINTS_KEY not in data.files:
                return []
            points = json.loads(str(data[CHECKPOINT_POINTS_KEY]))
    except FileNotFoundError:
        return []
    return [point for point in points if point["step"] <= step]


# ---------------------------------------------------------------- the worker process

def process_main(data_dir: str, run_id: str, config: dict, checkpoint_every: int,
                 command_conn, event_conn, nice: int = 0) -> None:
    """Entry point of a run's process (multiprocessing 'spawn').

    Ctrl+C in a terminal reaches the whole process group; the worker ignores it
    and waits for the server's "shutdown" command instead. If the server dies,
    the command pipe reports end-of-file and the worker exits without writing.
    `nice` lowers this process's priority (before the engine starts its
    threads, which inherit it), so the API process gets a CPU first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    data_dir = Path(data_dir)

    def emit(message) -> None:
        try:
            event_conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise ParentGone() from None

    def poll_command(timeout: float):
        try:
            if command_conn.poll(timeout):
                return command_conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            raise ParentGone() from None
        return None

    trainer = None
    try:
        trainer = build_trainer(data_dir, run_id, config, confine_datasets=True)
        train_loop(trainer, config, data_dir, run_id, emit, poll_command, checkpoint_every)
    except ParentGone:
        return
    except Exception as error:  # any engine failure ends the run as failed, never silently
        step = trainer.step if trainer is not None else 0
        try:
            emit(("status", "failed", step, f"{type(error).__name__}: {error}"))
        except ParentGone:
            return
    finally:
        for conn in (command_conn, event_conn):
            try:
                conn.close()
            except OSError:
                pass
        # the engine's partner process ends and is reaped here: multiprocessing leaves a
        # spawned process with os._exit, which skips atexit
        close_partners()


# ---------------------------------------------------------------- recording messages

@dataclass
class Event:
    """One numbered stream event. `data` is the JSON text of the SSE data field
    (for snapshot events it is filled from the snapshot file when sent)."""

    seq: int
    kind: str            # "status" | "metrics" | "snapshot"
    data: str | None = None
    step: int | None = None
    wire: bytes | None = None  # the encoded SSE frame, built once and shared by every viewer


def status_payload(run: dict) -> str:
    return dumps_json({"id": run["id"], "status": run["status"], "step": run["step"],
                       "message": run["message"]})


class RunRecorder:
    """Applies a run's messages to the store and returns the events to publish."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.status: str | None = None
        self.last_point: dict | None = None

    def record(self, message: tuple) -> list[Event]:
        kind = message[0]
        run_id = self.run_id
        if kind == "started":
            step = int(message[1])
            self.store.truncate_metrics(run_id, after_step=step)
            self.store.update_run(run_id, step=step)
            return []
        if kind == "status":
            _, status, step, text = message
            self.status = status
            self.store.update_run(run_id, status=status, step=int(step), message=text)
            seq = self.store.next_seq(run_id)
            run = self.store.get_run(run_id)
            return [Event(seq, "status", status_payload(run))]
        if kind == "metrics":
            points = message[1]
            if not points:
                return []
            seq = self.store.next_seq(run_id)
            self.store.add_metrics(run_id, points, seq)
            latest = dict(points[-1])
            if self.last_point is not None:
                # keep the last validation figures beside newer training figures
                for name in ("val_loss", "val_acc"):
                    if name not in latest and name in self.last_point:
                        latest[name] = self.last_point[name]
            self.last_point = latest
            self.store.update_run(run_id, step=int(latest["step"]), metrics=latest)
            return [Event(seq, "metrics", dumps_json({"points": points}))]
        if kind == "snapshot":
            seq = self.store.next_seq(run_id)
            return [Event(seq, "snapshot", step=int(message[1]))]
        return []  # "checkpoint" and "reply" change nothing in the store


def snapshot_event_data(store: Store, run_id: str, step: int) -> str | None:
    """JSON text of a snapshot event's data, built from the stored file without parsing it."""
    text = store.read_snapshot_text(run_id, step)
    if text is None:
        return None
    return '{"step":%d,"snapshot":%s}' % (step, text)

