"""What a training run executes, and how its messages are recorded.

The training loop is the engine's (`Trainer.events`, engine/trainer.py): it
yields events and obeys commands. `drive_run` consumes those events for one
run: it writes snapshots and checkpoints to the run folder (atomically) and
turns the events into small messages for a sink. The server runs it in one
process per run (`process_main`, talking over two pipes); the CLI runs the
very same `drive_run` in-process with a sink that drives its progress bar.

Messages (plain tuples, picklable):
    ("started", step)                    training (re)starts from `step`
    ("status", status, step, message)    running / paused / completed / stopped /
                                         diverged / failed / interrupted
    ("metrics", [point, ...])            point = {"step", "loss", "acc", "val_loss"?, "val_acc"?, "time"}
    ("snapshot", step)                   snapshot files for `step` are on disk
    ("checkpoint", step)                 checkpoint.npz now holds `step`
    ("reply", request_id, error)         answer to a set_kernel command (error None = ok)
Commands (engine.trainer.TrainingControl lists them): ("pause",), ("resume",), ("stop",),
          ("shutdown",), ("set_kernel", request_id, layer, filter, kernel, frozen)

`RunRecorder` is the receiving side: it turns messages into store rows and
numbered stream events.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from app.storage import DamagedFile, LocalStorage, SnapshotContext, dumps_json
from engine.fast.partner import close_partners

if TYPE_CHECKING:  # the store (and its database driver) is the server's; a run's process never imports it
    from app.store import Store

# A checkpoint also keeps the latest metric points (at least the last two checkpoint
# intervals), re-sent when the run restarts from it: points the server had not yet
# recorded when it was killed are not lost.
CHECKPOINT_POINTS_KEPT = 2000
CHECKPOINT_POINTS_KEY = "recent_metrics"
TERMINAL_STATUSES = ("completed", "stopped", "diverged", "failed", "interrupted")
# Each recorded event reserves this many event ids and takes the first: the two spare ids
# number the status and snapshot a viewer gets when it (re)connects (app/runs.py), so ids
# only grow and subscribing never writes.
EVENT_ID_STRIDE = 3
SHUTDOWN_MESSAGE = "server shut down; resume to continue"
SIGTERM_MESSAGE = "the training process was sent SIGTERM; resume to continue"


class ParentGone(Exception):
    """The process that started this worker has exited; stop without writing."""


# ---------------------------------------------------------------- building a trainer


def build_trainer(data_dir: Path, run_id: str, config, confine_datasets: bool = False):
    """A Trainer for the run: restored from its checkpoint if it has one, else fresh.

    `config` is the run's RunConfig, or its stored dict (parsed here, once); a
    checkpoint carries its own config, which then wins. Snapshots newer than
    the checkpoint are removed, so the history on disk stays one consistent
    timeline when a run resumes after a crash. A generated dataset is read from the
    data directory's cache (`dataset_cache`), drawn and kept there on a miss. With `confine_datasets` (the
    server), a dataset path is read only from inside DATA/datasets
    (app/security.py); the config keeps the relative path.
    """
    from engine.datasets import open_dataset
    from engine.trainer import RunConfig, Trainer

    checkpoint = LocalStorage(data_dir).read_checkpoint(run_id)
    if checkpoint is not None:
        run_config = Trainer.checkpoint_config(checkpoint)
    else:
        run_config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    dataset = None
    if confine_datasets:
        from app.security import confined_dataset

        confined = confined_dataset(data_dir, run_config.dataset)
        if confined is not run_config.dataset:  # only a dict spec with a path is replaced
            dataset = open_dataset(cast(dict, confined))
    if dataset is None:  # a generated dataset is drawn once per data folder, then read from its cache
        dataset = open_dataset(cast(dict, run_config.dataset), cache=dataset_cache(data_dir))
    if checkpoint is not None:
        trainer = Trainer.restore(checkpoint, dataset, config=run_config)
    else:
        trainer = Trainer(run_config, dataset)
    LocalStorage(data_dir).remove_snapshots_after(run_id, trainer.step)
    return trainer


def dataset_cache(data_dir: Path) -> Path:
    """The folder of a data directory where generated datasets are kept (engine.datasets.cached_dataset)."""
    return Path(data_dir) / "cache" / "datasets"


# ---------------------------------------------------------------- driving the engine's loop


def drive_run(
    trainer, data_dir: Path, run_id: str, emit, control, checkpoint_every: int = 100, analyst_mode: str = "auto"
) -> str:
    """Run the engine's loop for one stored run until it ends; returns the final status.

    emit(message): receives the messages listed in the module docstring.
    control: poll(timeout) -> command or None (may raise ParentGone), as the
    engine's loop takes it. This function only persists and translates:
    the monitor batch (once), snapshots and checkpoints go to the run folder, events become messages.
    `analyst_mode` (engine/analyst.py): "auto" computes snapshots and evaluations off the
    training path, in an analyst process, when this process may use more than one CPU.
    """
    recent_points = deque(
        _checkpoint_points(data_dir, run_id, trainer.step), maxlen=max(CHECKPOINT_POINTS_KEPT, 2 * checkpoint_every)
    )
    _store_monitor(trainer, data_dir, run_id)
    emit(("started", trainer.step))
    if recent_points:
        emit(("metrics", list(recent_points)))
    try:
        have_start_snapshot = LocalStorage(data_dir).read_snapshot_text(run_id, trainer.step) is not None
    except DamagedFile:
        have_start_snapshot = False  # written again at the start

    storage = LocalStorage(data_dir)
    context = SnapshotContext(trainer.spec, trainer.dataset.probe_x)  # kept once: every snapshot shares it
    status = "failed"
    events = trainer.events(
        control,
        checkpoint_every=checkpoint_every,
        snapshot_at_start=not have_start_snapshot,
        analyst_mode=analyst_mode,
    )
    writer = SnapshotWriter(storage, run_id, context)
    # the analyst process ends with the loop and every snapshot the loop gave is written, however drive_run ends
    with closing(writer), closing(events):
        for event in events:
            kind = event["type"]
            # a snapshot is announced once its file is on disk; all of them before anything but metrics
            for step in writer.written(wait=kind not in ("metrics", "snapshot")):
                emit(("snapshot", step))
            if kind == "metrics":
                recent_points.extend(event["points"])
                emit(("metrics", event["points"]))
            elif kind == "snapshot":
                writer.submit(event["snapshot"], event["params"], event["feature_maps"])
            elif kind == "checkpoint":
                state = trainer.checkpoint()
                state[CHECKPOINT_POINTS_KEY] = np.array(dumps_json(list(recent_points)))
                storage.write_checkpoint(run_id, state)
                emit(("checkpoint", int(event["step"])))
            elif kind == "status":
                emit(("status", event["status"], int(event["step"]), event["message"]))
            elif kind == "reply":
                emit(("reply", event["request_id"], event["error"]))
            elif kind == "done":
                status = event["status"]
    return status


class SnapshotWriter:
    """Writes a run's snapshot files on a thread of its own, one after the other in the order given,
    while the training loop goes on (writing was about a tenth of a default run's step).

    The files are the ones `LocalStorage.write_snapshot` writes on the caller's thread, byte for
    byte: the same call with the same arguments (the loop hands over copies it never touches
    again). `written(wait)` gives the steps whose files are on disk since the last call (with
    `wait`, after every submitted one is), and raises a write's error there, on the caller's
    thread, as a write on that thread would have; the snapshots after a failed write are not
    written. At most MAX_PENDING wait, so the writing never falls far behind. `close()` writes
    what is pending before it returns, so a run that stops, fails or loses its server keeps
    every snapshot its loop produced.
    """

    MAX_PENDING = 4

    def __init__(self, storage, run_id: str, context) -> None:
        self.storage, self.run_id, self.context = storage, run_id, context
        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()  # (step, error or None), in submission order
        self.pending = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name=f"snapshot-writer-{run_id}", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        failed = False
        while (job := self.jobs.get()) is not None:
            snapshot, params, feature_maps = job
            step = int(snapshot["step"])
            if failed:  # nothing after a failed write: the run's snapshots stay a prefix of its history
                self.done.put((step, None, False))
                continue
            try:
                self.storage.write_snapshot(self.run_id, snapshot, params, feature_maps, self.context)
            except BaseException as error:  # raised on the caller's thread by written()
                failed = True
                self.done.put((step, error, False))
            else:
                self.done.put((step, None, True))

    def submit(self, snapshot: dict, params: dict, feature_maps) -> None:
        self.pending += 1
        self.jobs.put((snapshot, params, feature_maps))

    def written(self, wait: bool = False) -> list[int]:
        steps = []
        while self.pending:
            must = wait or self.pending > self.MAX_PENDING
            try:
                step, error, stored = self.done.get() if must else self.done.get_nowait()
            except queue.Empty:
                break
            self.pending -= 1
            if error is not None and self.error is None:
                self.error = error
            if stored:
                steps.append(step)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return steps

    def close(self) -> None:
        """Write every pending snapshot, then end the thread (its errors were or are raised by written)."""
        self.jobs.put(None)
        self.thread.join()


def _store_monitor(trainer, data_dir: Path, run_id: str) -> None:
    """Write the run's monitor batch and model spec (app/store.py `write_monitor`) unless a whole
    one is there: explanations read it instead of loading the dataset again."""
    try:
        if LocalStorage(data_dir).read_monitor(run_id) is not None:
            return
    except DamagedFile:
        pass  # written again
    data = trainer.dataset
    LocalStorage(data_dir).write_monitor(run_id, data.monitor_x, data.monitor_y, data.classes, trainer.spec)


def _checkpoint_points(data_dir: Path, run_id: str, step: int) -> list[dict]:
    """The metric points up to `step` that the run's checkpoint carries (none without one)."""
    try:
        with np.load(LocalStorage(data_dir).checkpoint_path(run_id), allow_pickle=False) as data:
            if CHECKPOINT_POINTS_KEY not in data.files:
                return []
            points = json.loads(str(data[CHECKPOINT_POINTS_KEY]))
    except FileNotFoundError:
        return []
    except Exception:  # a damaged checkpoint was refused before the run started; no points from it
        return []
    return [point for point in points if point["step"] <= step]


# How often a paused run's wait for a command looks at the SIGTERM flag (seconds).
SIGNAL_POLL_SECONDS = 0.2


class PipeControl:
    """The engine loop's control, read from the server's command pipe.

    A SIGTERM received by the worker (a supervisor signalling the whole process
    group) reads as the server's "shutdown" command: checkpoint, `interrupted`.
    """

    def __init__(self, conn):
        self.conn = conn
        self.terminated = False

    def poll(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            if self.terminated:
                self.terminated = False
                return ("shutdown", SIGTERM_MESSAGE)
            try:
                if self.conn.poll(min(SIGNAL_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
                    command = self.conn.recv()
                    return ("shutdown", SHUTDOWN_MESSAGE) if command == ("shutdown",) else command
            except (EOFError, ConnectionResetError, OSError):
                raise ParentGone() from None
            if time.monotonic() >= deadline:
                return None


# ---------------------------------------------------------------- the worker process


def process_main(
    data_dir: str | Path, run_id: str, config, checkpoint_every: int, command_conn, event_conn, nice: int = 0
) -> None:
    """Entry point of a run's process (forked from app.runs.run_process_context's forkserver).

    Ctrl+C in a terminal reaches the whole process group; the worker ignores it
    and waits for the server's "shutdown" command instead. SIGTERM (a supervisor
    signalling the whole group) is taken as that command at once: the run
    checkpoints at its step and ends `interrupted`, resumable. If the server dies,
    the command pipe reports end-of-file and the worker exits without writing.
    `nice` lowers this process's priority (before the engine starts its
    threads, which inherit it), so the API process gets a CPU first.
    `config` is the run's stored config; build_trainer parses it once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = PipeControl(command_conn)

    def on_sigterm(signum, frame) -> None:
        control.terminated = True

    signal.signal(signal.SIGTERM, on_sigterm)
    if nice:
        os.nice(nice)
    data_dir = Path(data_dir)

    def emit(message) -> None:
        try:
            event_conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise ParentGone() from None

    trainer = None
    try:
        trainer = build_trainer(data_dir, run_id, config, confine_datasets=True)
        drive_run(trainer, data_dir, run_id, emit, control, checkpoint_every)
    except ParentGone:
        return
    except Exception as error:  # any engine failure ends the run as failed, never silently
        step = trainer.step if trainer is not None else None  # None: the store keeps the run's step
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
    kind: str  # "status" | "metrics" | "snapshot"
    data: str | None = None
    step: int | None = None
    wire: bytes | None = None  # the encoded SSE frame, built once and shared by every viewer


def status_payload(run: dict) -> str:
    return dumps_json({"id": run["id"], "status": run["status"], "step": run["step"], "message": run["message"]})


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
            if step is None:  # the worker failed before it knew its step: keep the stored one
                self.store.update_run(run_id, status=status, message=text)
            else:
                self.store.update_run(run_id, status=status, step=int(step), message=text)
            seq = self.store.next_seq(run_id, EVENT_ID_STRIDE)
            run = self.store.get_run(run_id)
            return [Event(seq, "status", status_payload(run))]
        if kind == "metrics":
            points = message[1]
            if not points:
                return []
            seq = self.store.next_seq(run_id, EVENT_ID_STRIDE)
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
            seq = self.store.next_seq(run_id, EVENT_ID_STRIDE)
            return [Event(seq, "snapshot", step=int(message[1]))]
        return []  # "checkpoint" and "reply" change nothing in the store


def snapshot_event_data(store: Store, run_id: str, step: int) -> str | None:
    """JSON text of a snapshot event's data, built from the stored file without parsing it. The
    probe images are left out: they are the same in every snapshot of a run (GET .../snapshots/{step}
    has them), and they were two thirds of each event that a live page parses many times a second."""
    text = store.read_snapshot_text(run_id, step, probes=False)
    if text is None:
        return None
    return f'{{"step":{step:d},"snapshot":{text}}}'
