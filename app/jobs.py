"""`kernelscope worker`: a Dramatiq worker that trains distributed mode's runs, one at a time.

A message `train_run(run_id)` names a stored run. The worker takes the run's lease
(app/broker.py), builds its trainer (from its checkpoint when it has one) and drives the
SAME loop as the embedded server (app/worker.drive_run). Each message is recorded exactly as
the embedded server records it (RunRecorder: store rows and numbered events), and each
numbered event is also appended to the run's Redis Stream, which the web tier serves.
Commands come from the run's Redis control list, polled inside drive_run's control.poll.

Classroom quotas: a learner's queued run starts only while the learner has fewer than their
class's `max_training` runs training (QuotaGate.may_start, app/classroom.py, on the shared
tables), as the embedded scheduler does. A worker that finds them at the quota puts the
message back with limits.QUOTA_RECHECK_SECONDS of delay and takes the next one; the final
look happens under the learner's start lock in Redis, held until the run is recorded as
running, so two workers never both take a learner's last slot.

Faults: a worker killed with SIGKILL leaves its message unacknowledged; Dramatiq's Redis
broker gives it to another worker once the dead one's heartbeat is older than
KERNELSCOPE_WORKER_HEARTBEAT. That worker waits for the lease to expire, then resumes from the
last checkpoint (the store's metrics after it are dropped, so no step counts twice; the
status message says it was requeued). SIGTERM/SIGINT: the run checkpoints and goes back to
the queue for another worker. Redis unreachable: the worker waits and retries.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from app import broker as rb
from app import limits
from app.classroom import ClassroomStore, QuotaGate, run_learner
from app.settings import Settings
from app.store import ACTIVE_STATUSES, RunNotFound, Store
from app.worker import ParentGone, RunRecorder, build_trainer, drive_run
from engine.fast.partner import close_partners

log = logging.getLogger("kernelscope.worker")

# How often the training loop's control looks at Redis while training (seconds): a command
# reaches the run within about this long, and the lease is renewed as often.
CONTROL_POLL_SECONDS = 0.1
LEASE_RENEW_SECONDS = 1.0
SHUTDOWN_REQUEUE_MESSAGE = "requeued: its worker shut down; another worker continues from step {step}"
LOST_WORKER_MESSAGE = "requeued: the worker that held this run was lost; resuming from step {step}"
# Seconds a learner's start lock lives (and the longest a worker waits for it): the decision and
# the write of the run's "running" status take milliseconds.
START_LOCK_SECONDS = 10.0


def open_store(settings: Settings) -> Store:
    """The one place a worker opens the shared store (the database URL joins here)."""
    return Store(settings.data_dir, settings.database_url)


class LeaseLost(ParentGone):
    """Another worker holds this run now: stop without writing."""


class RedisControl:
    """The training loop's control read from the run's Redis control list (and the lease kept alive)."""

    def __init__(self, client: redis.Redis, run_id: str, lease: rb.Lease, stopping: threading.Event):
        self.client = client
        self.key = rb.control_key(run_id)
        self.lease = lease
        self.stopping = stopping
        self.shutdown_sent = False
        self._last_check = 0.0
        self._last_renew = time.monotonic()

    def poll(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            if self.stopping.is_set() and not self.shutdown_sent:
                self.shutdown_sent = True
                return ("shutdown", "the worker shut down")
            now = time.monotonic()
            if now - self._last_check >= CONTROL_POLL_SECONDS:
                self._last_check = now
                command = self._check(now)
                if command is not None:
                    return command
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(CONTROL_POLL_SECONDS, remaining))

    def _check(self, now: float):
        try:
            if now - self._last_renew >= LEASE_RENEW_SECONDS:
                if not self.lease.renew():
                    raise LeaseLost()
                self._last_renew = now
            raw = self.client.lpop(self.key)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("control: Redis unreachable (%s); training continues", error)
            return None
        if raw is None:
            return None
        command = rb.decode_command(raw)  # type: ignore[arg-type]  # LPOP without a count: one item
        if command[0] == "delete":
            raise ParentGone()  # the run is being deleted: stop without writing
        return command


class WorkerContext:
    """What a worker process shares between its messages: settings, store, Redis."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = open_store(settings)
        self.client = rb.connect(settings.broker_url or "")
        self.stopping = threading.Event()
        self.actor = None  # set by run_worker: requeues a run whose worker shuts down
        # classroom: a learner's per-class training quota, read from the shared tables
        self.gate = QuotaGate(ClassroomStore(settings.data_dir, settings.database_url))

    def may_start(self, run: dict) -> bool:
        """classroom: a look without the lock, before a trainer is built for nothing."""
        return run_learner(run) is None or self.gate.may_start(self.store, run["id"])

    @contextlib.contextmanager
    def training_slot(self, run: dict) -> Iterator[bool]:
        """classroom: whether the run may start training now, decided under its learner's start
        lock; the caller records the run as running inside, so the next worker's look counts it."""
        learner = run_learner(run)
        if learner is None:
            yield True
            return
        lock = rb.Lease(self.client, run["id"], START_LOCK_SECONDS, key=rb.learner_start_key(learner))
        if not lock.acquire(wait=START_LOCK_SECONDS):
            yield False
            return
        try:
            yield self.gate.may_start(self.store, run["id"])
        finally:
            lock.release()

    def later(self, run_id: str) -> None:
        """Put a learner's run at their quota back in the queue, to be looked at again shortly."""
        log.info("run %s waits: its learner is at their class's training quota", run_id)
        if self.actor is not None:
            delay = int(limits.QUOTA_RECHECK_SECONDS * 1000)
            actor = self.actor
            rb.until_reachable(lambda: actor.send_with_options(args=(run_id,), delay=delay), "requeue")

    def execute(self, run_id: str) -> None:
        """Train one run (the body of the `train_run` actor)."""
        settings, store, client = self.settings, self.store, self.client
        try:
            run = store.get_run(run_id)
        except RunNotFound:
            return  # deleted before it started
        if run["status"] not in ACTIVE_STATUSES:
            return  # stopped before it started, or a stale duplicate of a finished run
        redelivered = run["status"] in ("running", "paused")  # already counted in its learner's quota
        if not redelivered and not self.may_start(run):
            self.later(run_id)
            return
        lease = rb.Lease(client, run_id, settings.worker_heartbeat)
        if not lease.acquire(wait=settings.worker_heartbeat + 2.0):
            log.info("run %s is held by a live worker; this delivery is dropped", run_id)
            return
        control = RedisControl(client, run_id, lease, self.stopping)
        recorder = RunRecorder(store, run_id)
        requeue = False

        def emit(message: tuple) -> None:
            nonlocal requeue
            if message[0] == "reply":
                rb.until_reachable(lambda: rb.send_reply(client, message[1], message[2]), "reply")
                return
            if message[0] == "status" and message[1] == "interrupted" and control.shutdown_sent:
                requeue = True
                message = ("status", "queued", message[2], SHUTDOWN_REQUEUE_MESSAGE.format(step=message[2]))
            try:
                events = recorder.record(message)
            except RunNotFound:
                raise ParentGone() from None
            rb.until_reachable(lambda: rb.publish(client, run_id, events, settings.stream_maxlen), "publish")

        trainer = None
        deferred = False
        try:
            trainer = build_trainer(Path(settings.data_dir), run_id, run["config"], confine_datasets=True)
            text = (LOST_WORKER_MESSAGE if redelivered else "starting").format(step=trainer.step)
            with self.training_slot(run) as allowed:
                deferred = not (redelivered or allowed)
                if not deferred:
                    log.info("run %s: training from step %d (%s)", run_id, trainer.step, text)
                    emit(("status", "running", trainer.step, text))
            if deferred:
                return
            drive_run(trainer, Path(settings.data_dir), run_id, emit, control, settings.checkpoint_every)
        except ParentGone:
            log.info("run %s: stopped without writing (deleted, or held by another worker)", run_id)
            return
        except Exception as error:  # any engine failure ends the run as failed, never silently
            log.exception("run %s failed", run_id)
            step = trainer.step if trainer is not None else None
            try:
                emit(("status", "failed", step, f"{type(error).__name__}: {error}"))
            except ParentGone:
                pass
        finally:
            lease.release()
            close_partners()
            if deferred:  # another worker took the learner's last slot meanwhile
                self.later(run_id)
        if requeue and self.actor is not None:
            rb.until_reachable(lambda: self.actor.send(run_id), "requeue")


def run_worker(settings: Settings, on_ready=None) -> None:
    """Consume `train_run` messages until SIGTERM/SIGINT; one training at a time."""
    from dramatiq import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    context = WorkerContext(settings)
    broker, actor = rb.make_broker(settings, context.execute)
    context.actor = actor
    # one message at a time: a busy worker leaves the next run in the queue for an idle one
    worker = Worker(broker, worker_threads=1)
    worker.queue_prefetch = 1
    done = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("signal %d: the current run checkpoints and returns to the queue", signum)
        context.stopping.set()
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    log.info("worker %s ready (queue %s, heartbeat %.1f s)", broker.broker_id, rb.QUEUE_NAME, settings.worker_heartbeat)
    if on_ready is not None:
        on_ready()
    done.wait()
    worker.stop(timeout=int(settings.shutdown_timeout * 1000) + 30_000)
    broker.close()
