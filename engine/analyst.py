"""A run's side work: what a snapshot stores and what an evaluation measures, from a copy of the weights.

`snapshot_content` and `evaluation` are the one home of a snapshot's content (statistics on the
monitor batch, detector labels, feature maps of the probes, metrics) and of a validation pass;
Trainer.snapshot and Trainer.evaluate run them on the live model. Trainer.events (the one training
loop) hands them to an analyst as `Job`s: at a snapshot or evaluation step it captures what the
job needs (a copy of the weights, the frozen filters, the step's metrics) and trains on.

  InlineAnalyst    computes each job on the live model as it is submitted: the loop's order of
                   events and its timing as they always were (the default of Trainer.events).
  ProcessAnalyst   computes the jobs in another process (`serve`, run with this python) from the
                   copies, while the loop trains: the side work leaves the training path and takes
                   the CPU the training leaves free. Results come back in job order. Its model is
                   built from the same spec, loads the captured weights and computes every pass in
                   the same fixed parts of the batch (engine.fast.model) in its own process, so the
                   values are the ones InlineAnalyst stores (tests/engine/test_analyst.py). Until
                   the process has started (about a second of imports), jobs are computed here
                   as inline, so a run's first snapshots never wait for it. If the process
                   cannot start, dies or fails a job, that job and every later one are computed
                   in this process from their copies (a failure the job itself causes is then
                   raised here, as inline).

`make_analyst(trainer, mode)` chooses: "inline", "process", or "auto" (a process when this
process may use more than one CPU, started and given a job only while a core is spare:
`machine_busy`; KERNELSCOPE_ANALYST=inline|process|auto overrides "auto").
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from engine import analysis, explain
from engine.core.losses import accuracy, softmax_cross_entropy

EVAL_CHUNK = 500
FEATURE_MAP_DIGITS = 4
# At most this many jobs wait for the analyst process; the loop then waits for the oldest, so
# snapshots never fall far behind the training and the weight copies held stay few.
MAX_PENDING_JOBS = 4
# How long close() waits for the analyst process to end after its input is closed (it may be
# finishing a job nobody needs any more) before it is killed.
CLOSE_SECONDS = 2
ANALYST_MODES = ("inline", "process", "auto")


@dataclass
class SnapshotInputs:
    """The fixed images side work runs on (a Dataset's monitor batch, probes and validation split)."""

    monitor_x: np.ndarray
    monitor_y: np.ndarray
    probe_x: np.ndarray
    probe_labels: list[str]
    x_val: np.ndarray
    y_val: np.ndarray

    @classmethod
    def of(cls, dataset) -> SnapshotInputs:
        return cls(
            dataset.monitor_x,
            dataset.monitor_y,
            dataset.probe_x,
            list(dataset.probe_labels),
            dataset.x_val,
            dataset.y_val,
        )


@dataclass
class Job:
    """Side work of one step: evaluate and/or snapshot the weights `params` (None: the live model's)."""

    step: int
    evaluate: bool
    snapshot: bool
    params: dict[str, np.ndarray] | None
    frozen: dict[int, list[int]] = field(default_factory=dict)
    last_metrics: dict = field(default_factory=dict)


@dataclass
class Result:
    step: int
    eval: dict | None = None
    snapshot: dict | None = None
    feature_maps: dict[int, np.ndarray] | None = None


# ------------------------------------------------------------------ the side work itself


def evaluation(model, x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Loss and accuracy of `model` on the whole validation split, EVAL_CHUNK images at a time."""
    total_loss = 0.0
    correct = 0.0
    for start in range(0, len(x_val), EVAL_CHUNK):
        logits = model.forward(x_val[start : start + EVAL_CHUNK])
        labels = y_val[start : start + EVAL_CHUNK]
        loss, _ = softmax_cross_entropy(logits, labels)
        total_loss += loss * len(labels)
        correct += accuracy(logits, labels) * len(labels)
    val_loss = total_loss / len(x_val)
    return {
        "val_loss": round(val_loss, 6) if math.isfinite(val_loss) else None,
        "val_acc": round(correct / len(x_val), 6),
    }


def snapshot_content(
    model,
    inputs: SnapshotInputs,
    step: int,
    frozen: dict[int, list[int]],
    last_metrics: dict,
    last_eval: dict,
    feature_maps: bool = True,
) -> tuple[dict, dict[int, np.ndarray]]:
    """(snapshot JSON as in docs/ARCHITECTURE.md, {conv index: probe feature maps (P, out, H, W)}).

    The feature maps are computed once: they tell which filters never fire (the detector
    labels) and are what a snapshot event carries; with `feature_maps` the JSON has them too.
    """
    stats = analysis.layer_stats(model, inputs.monitor_x, inputs.monitor_y)
    # layer_stats' forward pass left each layer's output on the monitor batch in model.outputs
    never_fired = {index: explain.never_fire(model.outputs[index]) for index in model.conv_indices}
    maps = analysis.feature_maps(model, inputs.probe_x)
    layers = []
    for order, index in enumerate(model.conv_indices, start=1):
        weight = model.params[f"{index}.weight"]
        # "label" names a conv by its order among convs (conv1, conv2, ...); "index" is its spec index
        entry = {"index": index, "label": f"conv{order}", "name": str(index), "type": "conv"}
        entry.update(analysis.conv_layer_summary(weight, model.params.get(f"{index}.bias"), maps[index]))
        entry["frozen"] = list(frozen.get(index, []))
        entry["summary"] = explain.summary_row(weight, never_fired[index])
        if feature_maps:
            entry["feature_maps"] = analysis.rounded(maps[index], FEATURE_MAP_DIGITS)
        layers.append(entry)
    if last_metrics:
        metrics = {"loss": last_metrics["loss"], "acc": last_metrics["acc"]}
    else:
        monitor_logits = model.forward(inputs.monitor_x)
        loss, _ = softmax_cross_entropy(monitor_logits, inputs.monitor_y)
        metrics = {
            "loss": round(loss, 6) if math.isfinite(loss) else None,
            "acc": round(accuracy(monitor_logits, inputs.monitor_y), 6),
        }
    metrics.update(last_eval)
    snapshot = {
        "step": step,
        "layers": layers,
        "stats": stats,
        "probes": analysis.rounded(inputs.probe_x, FEATURE_MAP_DIGITS),
        "probe_labels": list(inputs.probe_labels),
        "metrics": metrics,
    }
    return snapshot, maps


class JobRunner:
    """Runs jobs in order on one model, keeping the latest evaluation (a snapshot's metrics show it)."""

    def __init__(self, model, inputs: SnapshotInputs, last_eval: dict):
        self.model = model
        self.inputs = inputs
        self.last_eval = dict(last_eval)

    def run(self, job: Job) -> Result:
        if job.params is not None:
            self.model.load_state_dict(job.params)
        result = Result(job.step)
        if job.evaluate:
            result.eval = evaluation(self.model, self.inputs.x_val, self.inputs.y_val)
            self.last_eval = dict(result.eval)
        if job.snapshot:
            result.snapshot, result.feature_maps = snapshot_content(
                self.model, self.inputs, job.step, job.frozen, job.last_metrics, self.last_eval, feature_maps=False
            )
        return result


# ------------------------------------------------------------------ analysts


class InlineAnalyst:
    """Computes each job on the trainer's live model when it is submitted."""

    copies_weights = False

    def __init__(self, trainer) -> None:
        self.runner = JobRunner(trainer.model, SnapshotInputs.of(trainer.dataset), trainer.last_eval)
        self.done: list[Result] = []

    def submit(self, job: Job) -> None:
        self.done.append(self.runner.run(job))

    def results(self, wait: bool = False) -> list[Result]:
        """The finished results in job order (here every submitted job is finished)."""
        out, self.done = self.done, []
        return out

    def close(self) -> None:
        pass


class ProcessAnalyst:
    """Computes jobs in an analyst process from copies of the weights; see the module docstring.

    Until the process has started and built its model, jobs are computed here on the live
    model (as inline): a run's first, dense snapshots never wait for the process to start.
    """

    copies_weights = True

    def __init__(self, trainer, max_pending: int = MAX_PENDING_JOBS, busy=None):
        self.busy = busy  # () -> bool, or None: whether a job would find no spare core (see submit)
        self.spec = trainer.spec
        self.inputs = SnapshotInputs.of(trainer.dataset)
        self.local = JobRunner(trainer.model, self.inputs, trainer.last_eval)  # until the process is ready
        self.last_eval = dict(trainer.last_eval)  # as of the last job whose result is known, in job order
        self.max_pending = max_pending
        self.ready = False
        self.stale_eval = False  # an evaluation computed here since the process was last told one
        self.done: list[Result] = []  # computed here before the process was ready, not yet handed out
        self.pending: list[Job] = []  # sent to the process (or, once broken, to be computed here)
        self.replies: queue.Queue = queue.Queue()
        self.fallback: JobRunner | None = None
        self.process: subprocess.Popen | None = None
        self.launched = False
        self.outbox: queue.Queue = queue.Queue()
        if busy is None:
            self._launch()
        # with `busy`, the process starts at the first job that finds a core spare: on a machine
        # whose cores are all taken its imports would only take CPU from the training

    def _launch(self) -> None:
        self.launched = True
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from engine.analyst import serve; serve()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_analyst_environment(),
                close_fds=True,
            )
        except OSError:
            self._break()
            return
        # messages go out through a writer thread: the training loop never waits on the pipe
        # (the first one, with the validation images, waits until the process has imported numpy)
        self._send(("init", self.spec, self.inputs))
        self.writer = threading.Thread(target=self._write, args=(self.process,), name="analyst-writer", daemon=True)
        self.reader = threading.Thread(target=self._read, args=(self.process,), name="analyst-reader", daemon=True)
        self.writer.start()
        self.reader.start()

    def _send(self, message) -> None:
        self.outbox.put(message)

    def _write(self, process) -> None:
        stream = process.stdin
        try:
            while (message := self.outbox.get()) is not None:
                pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
                stream.flush()
        except (OSError, ValueError):  # the process has gone; the reader reports it
            pass
        finally:
            try:
                stream.close()  # end of input: the process ends
            except OSError:
                pass

    def _read(self, process) -> None:
        stream = process.stdout
        while True:
            try:
                reply = pickle.load(stream)
            except Exception:  # end of file (the process ended) or a torn message
                self.replies.put(("gone", None))
                return
            self.replies.put(reply)

    def _break(self) -> None:
        """Stop using the process: from now on jobs are computed here, from their copies."""
        if self.fallback is None:
            from engine import build_model

            model = build_model(self.spec)  # weights are loaded from each job's copy
            self.fallback = JobRunner(model, self.inputs, self.last_eval)
            self.close()

    @property
    def broken(self) -> bool:
        return self.fallback is not None

    def _check_ready(self) -> None:
        """Whether the process has answered its init (then it gets the evaluation known so far)."""
        while not self.ready and not self.broken:
            try:
                reply = self.replies.get_nowait()
            except queue.Empty:
                return
            if reply[0] != "ready":
                self._break()
                return
            self.ready = True
            self._send(("last_eval", self.last_eval))

    def started(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process to be ready; whether it is (False once broken)."""
        if not self.launched:
            self._launch()
        deadline = time.monotonic() + timeout
        while not self.ready and not self.broken and time.monotonic() < deadline:
            self._check_ready()
            time.sleep(0.01)
        return self.ready and not self.broken

    def submit(self, job: Job) -> None:
        if job.params is None:
            raise ValueError("job: the analyst process needs a copy of the weights")
        if not self.launched and not self.broken and (self.busy is None or not self.busy()):
            self._launch()
        self._check_ready()
        here = not self.ready or (not self.pending and self.busy is not None and self.busy())
        if here and not self.broken:  # the live model holds exactly these weights now
            result = self.local.run(Job(job.step, job.evaluate, job.snapshot, None, job.frozen, job.last_metrics))
            if result.eval is not None:
                self.last_eval = dict(result.eval)
                self.stale_eval = self.ready  # the process has not seen this evaluation
            self.done.append(result)
            return
        self.pending.append(job)
        if not self.broken:
            if self.stale_eval:  # nothing was pending, so this is the evaluation as of this job
                self._send(("last_eval", self.last_eval))
                self.stale_eval = False
            self._send(("job", job))  # if the process has gone, the reader says so and the job is computed here

    def must_wait(self) -> bool:
        return len(self.pending) > self.max_pending

    def results(self, wait: bool = False) -> list[Result]:
        """Finished results in job order; with `wait`, every pending job's."""
        out, self.done = self.done, []
        while self.pending:
            if self.broken:
                assert self.fallback is not None
                out.append(self.fallback.run(self.pending.pop(0)))
                continue
            try:
                reply = self.replies.get(timeout=None) if wait or self.must_wait() else self.replies.get_nowait()
            except queue.Empty:
                break
            if reply[0] != "ok":  # the process failed or ended: this job and the rest are computed here
                self._break()
                continue
            result = reply[1]
            self.pending.pop(0)
            if result.eval is not None:
                self.last_eval = dict(result.eval)
            out.append(result)
        return out

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        while True:  # what was not sent yet is not needed any more
            try:
                self.outbox.get_nowait()
            except queue.Empty:
                break
        self.outbox.put(None)  # the writer closes the process's input: the process ends
        try:
            process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _analyst_environment() -> dict[str, str]:
    import engine

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[variable] = "1"
    # every part of a batch computed in the analyst process itself: no partners of its own
    environment["KERNELSCOPE_SPLIT"] = "never"
    return environment


def analyst_mode(mode: str = "auto") -> str:
    """ "inline" or "process" for a requested mode; see the module docstring."""
    if mode not in ANALYST_MODES:
        raise ValueError(f"analyst: must be one of {', '.join(ANALYST_MODES)}, got {mode!r}")
    if mode == "auto":
        mode = os.environ.get("KERNELSCOPE_ANALYST", "auto").strip().lower()
        if mode not in ANALYST_MODES:
            mode = "auto"
    if mode == "auto":
        from engine.fast.adaptive import usable_cpus

        mode = "process" if usable_cpus() > 1 else "inline"
    return mode


def machine_busy(runnable=None, cpus=None) -> bool:
    """Whether no core is spare for an analyst process (engine.fast.adaptive.no_core_spare: the
    runnable threads, this one included, fill the usable CPUs). False where the kernel does not say."""
    from engine.fast.adaptive import no_core_spare

    return no_core_spare(runnable, cpus)


def make_analyst(trainer, mode: str = "inline"):
    """The analyst for Trainer.events. With "auto" (KERNELSCOPE_ANALYST unset or auto), the
    process gets a job only while a core is spare (machine_busy): on a machine whose cores are
    all taken, another process only adds waiting for it, so the job is computed here when
    nothing is pending there (the order of results is kept)."""
    if analyst_mode(mode) == "inline":
        return InlineAnalyst(trainer)
    adaptive = mode == "auto" and os.environ.get("KERNELSCOPE_ANALYST", "auto").strip().lower() == "auto"
    return ProcessAnalyst(trainer, busy=machine_busy if adaptive else None)


# ------------------------------------------------------------------ the analyst process


def serve() -> None:
    """The analyst process: read ("init", spec, inputs) (answered ("ready", None) once the model
    is built), ("last_eval", dict) and ("job", Job) messages from stdin; answer each job with
    ("ok", Result) or ("error", message) on stdout; end at end of input."""
    from engine import build_model

    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print never corrupts the channel
    runner = None
    while True:
        try:
            message = pickle.load(source)
        except (EOFError, OSError, pickle.UnpicklingError):
            # the end of input, or the training process was stopped while it wrote a message
            return
        reply: tuple[str, Result | str | None]
        try:
            if message[0] == "init":
                _, spec, inputs = message
                runner = JobRunner(build_model(spec), inputs, {})
                reply = ("ready", None)
            elif message[0] == "last_eval":
                assert runner is not None, "an evaluation before init"
                runner.last_eval = dict(message[1])
                continue
            else:
                assert runner is not None, "a job before init"
                reply = ("ok", runner.run(message[1]))
        except Exception as error:  # answered, so the parent computes the job itself (and raises)
            reply = ("error", f"{type(error).__name__}: {error}")
        try:
            pickle.dump(reply, sink, protocol=pickle.HIGHEST_PROTOCOL)
            sink.flush()
        except (BrokenPipeError, OSError):  # the training process has gone
            return
