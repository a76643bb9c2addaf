"""RunManager: one worker process per training run, a queue, and event fan-out.

The server never trains on its own threads: each run trains in its own
process (see app/worker.py), so the API and the event streams stay responsive
under the GIL. Run processes are forked from a forkserver that has imported
the worker's modules once (`run_process_context`): a run starts in about 10 ms
of CPU instead of the ~0.35 s a fresh interpreter spends importing numpy and
the engine, which a 6-run lesson paid six times on two cores. A reader thread per run receives
the worker's messages, records them in the store and publishes numbered events
to the run's Channel. Beyond `max_runs` active runs, new runs wait `queued`
(at most `max_queued` of them) and start when a slot frees. A comparison's runs train
together: once one of them has a slot, its queued siblings start beside it, beyond
`max_runs` (at most limits.MAX_COMPARED_INITS runs), so its views and a lesson's reveal see
every init at the same step, and its last run does not train alone on a machine with a core
spare (`comparison_of`, `_next_startable`).

Viewers subscribe to a Channel. Subscribing reads and never writes: every
recorded event reserves EVENT_ID_STRIDE ids (app/worker.py), so the status and
snapshot a (re)connecting viewer first gets take the two spare ids of the newest
event and ids still only grow. A reconnecting viewer's missed metrics are read
from the store in pages off the event loop, a few replays at a time
(limits.MAX_REPLAYS, MAX_REPLAYS_PER_CLIENT); viewers replaying the same stretch share
each encoded page (ReplayPages). A damaged snapshot file is skipped
with a `snapshot_damaged` event that names the step. Each Subscription holds bounded state: status
and snapshot events coalesce to the latest, metrics batches queue up to
MAX_PENDING_BATCHES; past that the subscription drops its queue and resyncs
from the store (missed metrics replayed by sequence number, then the current
status and latest snapshot), so a slow viewer never grows the server's memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import signal
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, cast

from fastapi.sse import format_sse_event

from app import limits, security
from app.settings import Settings
from app.store import (
    ACTIVE_STATUSES,
    DamagedFile,
    RunNotFound,
    Store,
    checkpoint_path,
    dumps_json,
    write_may_succeed_later,
    write_npz_atomic,
)
from app.worker import (
    TERMINAL_STATUSES,
    Event,
    RunRecorder,
    process_main,
    snapshot_event_data,
    status_payload,
)

if TYPE_CHECKING:  # classroom imports this module; only the annotation needs its gate
    from app.classroom import QuotaGate

MAX_PENDING_BATCHES = 64
KEEPALIVE_SECONDS = 15.0
# How long a control request waits for the run's answer before a 409 says it did not come. A
# kernel edit is answered after the snapshots already under way (the dense early ones) are
# computed and recorded; on a 2-core machine loaded by other runs that once took over 10 s.
CONTROL_WAIT_SECONDS = 30.0
ALL_STEPS = 2**62  # a replay position past every step of its event


# What the forkserver imports once, so a run's process starts with them loaded.
RUN_PROCESS_PRELOAD = ["app.worker"]


def run_process_context():
    """The multiprocessing context run processes start from: "forkserver" where the platform has
    it (Linux, macOS), preloaded with RUN_PROCESS_PRELOAD, else "spawn".

    The forkserver is one clean single-threaded process, started by RunManager.warm_up (or
    with the first run); each run is a fork of it, so it never inherits the server's threads,
    sockets or database connections. A run's process sees the environment the server had when
    its forkserver started; everything a run needs from the server's settings goes in its
    arguments (RunManager._launch).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(RUN_PROCESS_PRELOAD)
    return context


class RunConflict(Exception):
    """The run is not in a state that allows the request (HTTP 409)."""


class QueueFull(Exception):
    """Every slot is busy and the queue is at its limit (HTTP 429, with Retry-After when known)."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# What each control command needs of a run's status, said once for both run managers (local
# processes here, Dramatiq workers in app/distributed.py): the refusal's 409 message.
CONTROL_REFUSALS = {
    "pause": "only a running run can be paused",
    "resume": "only paused, interrupted, stopped or failed runs can be resumed",
    "stop": "only a queued, running or paused run can be stopped",
    "set_kernel": "kernels can be set on a running or paused run",
}


def refusal(run_id: str, status: str, command: str) -> RunConflict:
    """The RunConflict (409) for `command` on a run whose status does not allow it."""
    return RunConflict(f"run {run_id} is {status}; {CONTROL_REFUSALS[command]}")


def no_answer(run_id: str, timeout: float) -> RunConflict:
    return RunConflict(f"run {run_id} did not answer within {timeout} s")


class ReplayTicket:
    """One client's place among the event replays; released once (by the stream or the route)."""

    def __init__(self, manager: RunManager, client: str):
        self.manager, self.client, self.released = manager, client, False

    def __del__(self) -> None:  # a stream that never started (client gone first) frees its place too
        self.release()

    def release(self) -> None:
        with self.manager._lock:
            if self.released:
                return
            self.released = True
            count = self.manager._replays_by_client.get(self.client, 0) - 1
            if count > 0:
                self.manager._replays_by_client[self.client] = count
            else:
                self.manager._replays_by_client.pop(self.client, None)


class ReplayPages:
    """Encoded replay pages, shared by every viewer that replays the same stretch of a run.

    A page is keyed by (run, position, newest event id), which fixes its content. A page
    another thread is reading is waited for, not read again, so viewers that reconnect
    together (every viewer of a long run after a network blip) cost one read and one
    encoding per page. At most `capacity` bytes are kept, least recently used first out.
    Called from replay threads, never from the event loop (a wait blocks).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self.lock = threading.Lock()
        self.pages: OrderedDict[tuple, tuple[list[Event], tuple[int, int]]] = OrderedDict()
        self.reading: dict[tuple, concurrent.futures.Future] = {}

    def get(self, key: tuple, read) -> tuple[list[Event], tuple[int, int]]:
        """The page for `key`: kept, being read by another thread, or `read()` now."""
        with self.lock:
            page = self.pages.get(key)
            if page is not None:
                self.pages.move_to_end(key)
                return page
            waiting = self.reading.get(key)
            if waiting is None:
                future: concurrent.futures.Future = concurrent.futures.Future()
                self.reading[key] = future
        if waiting is not None:
            return waiting.result()
        try:
            page = read()
        except BaseException as error:
            with self.lock:
                self.reading.pop(key, None)
            future.set_exception(error)
            raise
        size = sum(len(event.wire or b"") for event in page[0])
        with self.lock:
            self.reading.pop(key, None)
            if size <= self.capacity and key not in self.pages:
                self.pages[key] = page
                self.size += size
                while self.size > self.capacity:
                    _, (events, _) = self.pages.popitem(last=False)
                    self.size -= sum(len(event.wire or b"") for event in events)
        future.set_result(page)
        return page

    def forget(self, run_id: str) -> None:
        """Drop a deleted run's pages."""
        with self.lock:
            for key in [key for key in self.pages if key[0] == run_id]:
                events, _ = self.pages.pop(key)
                self.size -= sum(len(event.wire or b"") for event in events)


# ---------------------------------------------------------------- event fan-out


class Subscription:
    """One viewer's bounded queue of events to send.

    Its own small lock guards the queue, so the event loop never waits for a
    reader thread that holds the channel lock while it writes to the store.
    """

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop):
        self.channel = channel
        self.loop = loop
        self.lock = threading.Lock()
        self.wakeup = asyncio.Event()
        self.pending: list[Event] = []
        self.resync = False
        self.notified = False

    def push(self, events: list[Event]) -> None:
        """Called with channel.lock held, from any thread."""
        with self.lock:
            for event in events:
                if event.kind in ("status", "snapshot"):
                    self.pending = [e for e in self.pending if e.kind != event.kind]
                self.pending.append(event)
            if len(self.pending) > MAX_PENDING_BATCHES:
                self.pending = []
                self.resync = True
            self._notify()

    def reset(self) -> None:
        with self.lock:
            self.pending = []
            self.resync = False

    def _notify(self) -> None:
        if not self.notified:
            self.notified = True
            try:
                self.loop.call_soon_threadsafe(self.wakeup.set)
            except RuntimeError:  # the loop is closed: the server is going away
                pass

    def take(self) -> tuple[list[Event], bool]:
        with self.lock:
            events, self.pending = self.pending, []
            resync, self.resync = self.resync, False
            self.notified = False
            self.wakeup.clear()
        return events, resync


class Channel:
    """A run's event hub: records messages under one lock, then publishes them."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.lock = threading.Lock()
        self.recorder = RunRecorder(store, run_id)
        self.subscribers: set[Subscription] = set()
        self.status_changed = threading.Condition(self.lock)
        self.closed = False
        self._snapshot_cache: tuple[int, tuple[str, str]] | None = None
        self._latest_snapshot: int | None = None
        self._latest_known = False

    def record(self, message: tuple) -> None:
        with self.lock:
            events = self.recorder.record(message)
            for event in events:
                if event.kind != "snapshot":
                    encode(event)  # once here, not once per viewer
            for subscription in self.subscribers:
                subscription.push(events)
            if message[0] == "status":
                self.status_changed.notify_all()
            elif message[0] == "started":
                self._latest_known = False  # a resume may have removed newer snapshots
            elif message[0] == "snapshot" and self._latest_known:
                self._latest_snapshot = max(int(message[1]), self._latest_snapshot or 0)

    def forget_latest_snapshot(self) -> None:
        """Read the newest snapshot's step from the folder again (a resume removed newer ones)."""
        with self.lock:
            self._latest_known = False

    def latest_snapshot_step(self) -> int | None:
        """The newest snapshot's step, from the folder once and then from the events."""
        with self.lock:
            if not self._latest_known:
                self._latest_snapshot = self.store.latest_snapshot_step(self.run_id)
                self._latest_known = True
            return self._latest_snapshot

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for subscription in self.subscribers:
                subscription._notify()
            self.status_changed.notify_all()

    def snapshot_data(self, step: int) -> tuple[str, str] | None:
        """(event kind, data) for a snapshot event of `step`: ("snapshot", its JSON), or
        ("snapshot_damaged", {"step", "message"}) when the stored file is damaged; None if absent.
        Reads a file: call it off the event loop."""
        cached = self._snapshot_cache
        if cached is not None and cached[0] == step:
            return cached[1]
        try:
            data = snapshot_event_data(self.store, self.run_id, step)
            answer = None if data is None else ("snapshot", data)
        except DamagedFile as error:
            answer = ("snapshot_damaged", dumps_json({"step": step, "message": str(error)}))
        if answer is not None:
            self._snapshot_cache = (step, answer)
        return answer


# ---------------------------------------------------------------- workers


@dataclass
class WorkerHandle:
    run_id: str
    process: BaseProcess  # from run_process_context()
    command_conn: Connection
    event_conn: Connection
    comparison: str | None = None  # the comparison the run belongs to (its meta), if any
    thread: threading.Thread | None = None
    final_status: str | None = None
    deleting: bool = False
    storage_failure: str | None = None  # why the store refused this run's progress (disk full)
    replies: dict = field(default_factory=dict)
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, command: tuple) -> None:
        with self.send_lock:
            try:
                self.command_conn.send(command)
            except (BrokenPipeError, OSError):
                pass  # the worker is exiting; its reader thread records how it ended


def _process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunManager:
    """Starts, controls and watches the training runs of one data directory."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self._lock = threading.RLock()
        self._workers: dict[str, WorkerHandle] = {}
        self._queue: deque[str] = deque()
        # queued run -> the comparison it belongs to (None: none), read from the store once per
        # run: a run's comparison never changes, and _next_startable asks at every schedule
        self._queued_comparisons: dict[str, str | None] = {}
        self._channels: dict[str, Channel] = {}
        self._closing = False
        self._context = run_process_context()
        self._request_ids = itertools.count(1)
        self._replays_by_client: dict[str, int] = {}
        # Statuses the store could not take (disk full): shown by `view` and written by
        # _retry_storage once space returns; a run waiting there keeps no slot.
        self._unrecorded: dict[str, tuple[str, str]] = {}
        self._recovered = False
        self._retry_timer: threading.Timer | None = None
        self._replay_slots: asyncio.Semaphore | None = None
        self._replay_pages = ReplayPages(limits.REPLAY_CACHE_BYTES)
        # classroom: app.classroom.QuotaGate once create_app has a class store; it stamps a
        # learner's runs with their owner and keeps each learner within the class's quotas
        self.gate: QuotaGate | None = None

    # -- lifecycle

    def warm_up(self) -> None:
        """Start the run processes' forkserver now: it imports the preload in its own process, off
        this one, and the first run does not wait for those imports. Nothing to do for "spawn"."""
        if self._context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def recover(self) -> list[str]:
        """Mark runs left queued/running/paused by a previous server as interrupted.

        On a full disk the server still starts (reads work); the marks are written,
        and queued runs started, by _retry_storage once space returns.
        """
        try:
            recovered = self._recover()
        except Exception as error:
            if not write_may_succeed_later(error):
                raise
            self._arm_storage_retry()
            return []
        self._recovered = True
        return recovered

    def _recover(self) -> list[str]:
        recovered = []
        for run in self.store.list_runs():
            if run["status"] not in ACTIVE_STATUSES:
                continue
            owner = run["owner_pid"]
            if owner and owner != os.getpid() and _process_alive(owner) and run["meta"].get("cli"):
                continue  # a `kernelscope train` process is still training it
            self.channel(run["id"]).record(
                (
                    "status",
                    "interrupted",
                    run["step"],
                    f"the server stopped while this run was {run['status']}; resume to continue",
                )
            )
            recovered.append(run["id"])
        return recovered

    def shutdown(self) -> None:
        """Checkpoint and stop every worker within settings.shutdown_timeout seconds."""
        with self._lock:
            self._closing = True
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            queued, self._queue = list(self._queue), deque()
            handles = list(self._workers.values())
        for run_id in queued:
            self._end_unrecorded(run_id, "interrupted", "the server shut down before this run started")
        for handle in handles:
            handle.send(("shutdown",))
        deadline = _deadline(self.settings.shutdown_timeout)
        for handle in handles:
            handle.process.join(max(0.0, deadline - _now()))
        for handle in handles:
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(2.0)
        for handle in handles:
            if handle.thread is not None:
                handle.thread.join(2.0)
        self.close_streams()

    def close_streams(self) -> None:
        """End every open event stream (the server is about to stop)."""
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()

    # -- a full disk

    def view(self, run: dict) -> dict:
        """The run as the API shows it: a status the full disk kept from the store wins."""
        pending = self._unrecorded.get(run["id"])
        if pending is None:
            return run
        return {**run, "status": pending[0], "message": pending[1]}

    def _end_unrecorded(self, run_id: str, status: str, message: str) -> None:
        """Set a final status, or keep it in memory until the store can take it."""
        try:
            self._set_status(run_id, status, message)
        except RunNotFound:
            pass
        except Exception as error:
            if not write_may_succeed_later(error):
                raise
            self._unrecorded[run_id] = (status, message)
            self._arm_storage_retry()

    def _arm_storage_retry(self) -> None:
        with self._lock:
            if self._closing or (self._retry_timer is not None and self._retry_timer.is_alive()):
                return
            self._retry_timer = threading.Timer(limits.DISK_RETRY_SECONDS, self._retry_storage)
            self._retry_timer.daemon = True
            self._retry_timer.start()

    def _retry_storage(self) -> None:
        """Once the disk takes writes again: recover, record kept statuses, start queued runs."""
        try:
            if not self._recovered:
                self._recover()
                self._recovered = True
            for run_id, (status, message) in list(self._unrecorded.items()):
                try:
                    self._set_status(run_id, status, message)
                except RunNotFound:
                    pass
                self._unrecorded.pop(run_id, None)
        except Exception as error:
            if not write_may_succeed_later(error):
                raise
            with self._lock:
                self._retry_timer = None
            self._arm_storage_retry()
            return
        with self._lock:
            self._retry_timer = None
        self._schedule()

    # -- channels and status

    def channel(self, run_id: str) -> Channel:
        with self._lock:
            channel = self._channels.get(run_id)
            if channel is None:
                channel = self._channels[run_id] = Channel(self.store, run_id)
            return channel

    def _set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        run = self.store.get_run(run_id)
        self.channel(run_id).record(("status", status, run["step"], message))

    def _wait_for_status(self, run_id: str, accept, timeout: float = CONTROL_WAIT_SECONDS) -> dict:
        channel = self.channel(run_id)
        with channel.status_changed:
            channel.status_changed.wait_for(
                lambda: channel.closed or accept(self.store.get_run(run_id)["status"]), timeout
            )
        return self.store.get_run(run_id)

    # -- creating and scheduling

    def create_run(self, config: dict, meta: dict | None = None, checkpoint: dict | None = None) -> dict:
        """Validate the config with the engine, store the run and queue it.

        `checkpoint` (a Trainer.checkpoint()-shaped dict, used by forks) is
        written to the new run's folder before it is queued, so its worker
        starts from those weights and that step.
        Raises ValueError("field: problem") for a bad config or one beyond the
        server's limits (app/limits.py, dataset path outside DATA/datasets),
        QueueFull when no slot and no queue place is free.
        """
        from engine.trainer import RunConfig

        full_config = RunConfig.from_dict(config).to_dict()
        limits.check_run_config(full_config)
        security.check_dataset_path(self.store.data_dir, full_config["dataset"])
        confined = security.confined_dataset(self.store.data_dir, full_config["dataset"])
        if isinstance(confined, dict) and confined.get("path") is not None:
            limits.check_dataset_files(full_config, confined["path"])
        active = [run["config"] for run in self.store.list_runs() if run["status"] in ACTIVE_STATUSES]
        limits.check_storage(
            full_config, self.store.data_dir, active, self.settings.max_run_storage, self.settings.min_free_disk
        )
        with self._lock:
            self._check_capacity()
            if self.gate is not None:  # classroom: owner + per-learner quota (429), under this lock
                meta = self.gate.admit(self.store, meta)
            run = self.store.create_run(full_config, status="queued", meta=meta, owner_pid=os.getpid())
            try:
                if checkpoint is not None:
                    write_npz_atomic(checkpoint_path(self.store.data_dir, run["id"]), checkpoint)
            except OSError:
                self.store.delete_run(run["id"])
                raise
            self._enqueue(run["id"])
        return self.store.get_run(run["id"])

    def _enqueue(self, run_id: str) -> None:
        """Queue a new run (with self._lock held): it starts when a slot is free."""
        self._queue.append(run_id)
        self._set_status(run_id, "queued")
        self._schedule()

    def _check_capacity(self) -> None:
        if self._closing:
            raise QueueFull("the server is shutting down")
        busy = len(self._workers) >= self.settings.max_runs
        if busy and len(self._queue) >= self.settings.max_queued:
            raise QueueFull(
                f"{self.settings.max_runs} runs are training and {len(self._queue)} are queued; "
                f"the queue holds at most {self.settings.max_queued} (KERNELSCOPE_MAX_QUEUED)"
            )

    def _schedule(self) -> None:
        with self._lock:
            while not self._closing and self._queue:
                run_id = self._next_startable(slot_free=len(self._workers) < self.settings.max_runs)
                if run_id is None:  # no slot, or every queued run's learner is at their training quota
                    return
                try:
                    self._launch(run_id)
                except RunNotFound:
                    continue
                except Exception as error:
                    if not write_may_succeed_later(error):
                        raise
                    self._queue.appendleft(run_id)  # started again once space returns
                    self._arm_storage_retry()
                    return

    def _next_startable(self, slot_free: bool) -> str | None:
        """Take the first queued run that may start now: with a slot free, any (a class gate
        may hold a learner's back); without one, only a run whose comparison is training."""
        training = {handle.comparison for handle in self._workers.values()} - {None}
        for run_id in self._queue:
            if not slot_free and (not training or self._comparison_of_queued(run_id) not in training):
                continue
            if self.gate is None or self.gate.may_start(self.store, run_id):
                self._unqueue(run_id)
                return run_id
        return None

    def _unqueue(self, run_id: str) -> None:
        self._queue.remove(run_id)
        self._queued_comparisons.pop(run_id, None)

    def _comparison_of_queued(self, run_id: str) -> str | None:
        if run_id not in self._queued_comparisons:
            try:
                self._queued_comparisons[run_id] = comparison_of(self.store.get_run(run_id))
            except RunNotFound:
                return None
        return self._queued_comparisons[run_id]

    def _launch(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        command_reader, command_writer = self._context.Pipe(duplex=False)
        event_reader, event_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=process_main,
            args=(
                str(self.store.data_dir),
                run_id,
                run["config"],
                self.settings.checkpoint_every,
                command_reader,
                event_writer,
                self.settings.worker_nice,
            ),
            name=f"kernelscope-run-{run_id}",
            daemon=True,
        )
        self.store.update_run(run_id, owner_pid=os.getpid())
        self._set_status(run_id, "running", "starting")
        process.start()
        command_reader.close()
        event_writer.close()
        handle = WorkerHandle(run_id, process, command_writer, event_reader, comparison=comparison_of(run))
        handle.thread = threading.Thread(target=self._read_events, args=(handle,), name=f"reader-{run_id}", daemon=True)
        self._workers[run_id] = handle
        handle.thread.start()

    def _read_events(self, handle: WorkerHandle) -> None:
        """Reader thread: record the worker's messages until its pipe closes."""
        channel = self.channel(handle.run_id)
        while True:
            try:
                message = handle.event_conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "reply":
                future = handle.replies.pop(message[1], None)
                if future is not None:
                    future.set_result(message[2])
                continue
            if handle.deleting:
                continue
            try:
                channel.record(message)
            except RunNotFound:
                handle.deleting = True
                continue
            except Exception as error:  # the store refused the write: end this run, free its slot
                if message[0] == "status" and message[1] == "failed":
                    handle.storage_failure = message[3]
                else:
                    handle.storage_failure = f"storage: {type(error).__name__}: {error}"
                handle.process.kill()
                break
            if message[0] == "status" and message[1] in TERMINAL_STATUSES:
                handle.final_status = message[1]
        handle.process.join(5.0)
        for future in handle.replies.values():
            future.set_result("the run's process exited before answering")
        handle.replies.clear()
        if handle.final_status is None and not handle.deleting:
            code = handle.process.exitcode
            if handle.storage_failure is not None:
                status, text = "failed", handle.storage_failure
            elif self._closing:
                status, text = "interrupted", "the server shut down; resume to continue"
            else:
                status, text = "failed", f"the training process exited unexpectedly (exit code {code})"
            try:
                self._end_unrecorded(handle.run_id, status, text)
            except Exception:  # never let this thread die before the slot is freed below
                pass
        try:
            handle.event_conn.close()
            handle.command_conn.close()
        except OSError:
            pass
        with self._lock:
            if self._workers.get(handle.run_id) is handle:
                del self._workers[handle.run_id]
            self._schedule()

    # -- queries

    def get_run(self, run_id: str) -> dict:
        return self.store.get_run(run_id)

    def queue_position(self, run_id: str) -> int | None:
        with self._lock:
            try:
                return self._queue.index(run_id) + 1
            except ValueError:
                return None

    # -- control

    def pause(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        handle = self._workers.get(run_id)
        if run["status"] != "running" or handle is None:
            raise refusal(run_id, run["status"], "pause")
        handle.send(("pause",))
        return self._wait_for_status(run_id, lambda status: status != "running")

    def resume(self, run_id: str) -> dict:
        """Continue a paused run, or restart an interrupted/stopped/failed one from its checkpoint."""
        run = self.view(self.store.get_run(run_id))
        status = run["status"]
        handle = self._workers.get(run_id)
        if status == "paused" and handle is not None:
            handle.send(("resume",))
            return self._wait_for_status(run_id, lambda s: s != "paused")
        if status in ("interrupted", "stopped", "failed", "paused"):
            self._wait_until_exited(run_id)
            start = self._checkpoint_step(run_id)  # RunConflict for a damaged checkpoint, before any change
            owner = run["owner_pid"]
            if run["meta"].get("cli") and owner != os.getpid() and _process_alive(owner):
                raise RunConflict(f"run {run_id} is being trained by `kernelscope train` (pid {owner})")
            with self._lock:
                if run_id in self._workers or run_id in self._queue:
                    raise RunConflict(f"run {run_id} is already {status}")
                self._check_capacity()
                if self.gate is not None:  # classroom: a learner's resumed run waits within their queue quota
                    self.gate.admit(self.store, run["meta"])
                # the snapshots past the checkpoint go now (the run's process removes them too when
                # it starts): a viewer that subscribes before then must not be handed one of them
                # as the run's newest, and then find it gone
                self.store.remove_snapshots_after(run_id, start)
                self.channel(run_id).forget_latest_snapshot()
                self._queue.append(run_id)
                self._set_status(run_id, "queued", f"resuming from step {start}")
                self._unrecorded.pop(run_id, None)
                self._schedule()
            return self.store.get_run(run_id)
        raise refusal(run_id, status, "resume")

    def _wait_until_exited(self, run_id: str, timeout: float = CONTROL_WAIT_SECONDS) -> None:
        """After a terminal status the process still exits and its reader frees the slot; wait for that."""
        handle = self._workers.get(run_id)
        if handle is not None and handle.final_status is not None and handle.thread is not None:
            handle.thread.join(timeout)

    def _checkpoint_step(self, run_id: str) -> int:
        """The step a resume starts from; RunConflict (409) when the checkpoint is damaged."""
        try:
            checkpoint = self.store.read_checkpoint(run_id)
            if checkpoint is not None:
                from engine.trainer import Trainer

                try:
                    Trainer.checkpoint_config(checkpoint)
                except ValueError as error:  # "checkpoint: missing or unreadable config (...)"
                    raise DamagedFile(
                        run_id,
                        "checkpoint",
                        None,
                        checkpoint_path(self.store.data_dir, run_id),
                        str(error).removeprefix("checkpoint: "),
                    ) from None
        except DamagedFile as error:
            raise RunConflict(
                f"{error}; the run cannot resume from it. Fork it from one of its "
                "snapshots instead (POST /api/runs/{id}/fork)"
            ) from None
        if checkpoint is None or "step" not in checkpoint:
            return 0
        return int(checkpoint["step"])

    def stop(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        with self._lock:
            if run_id in self._queue:
                self._unqueue(run_id)
                self._set_status(run_id, "stopped", "stopped before it started")
                return self.store.get_run(run_id)
            handle = self._workers.get(run_id)
        if handle is None or run["status"] not in ("running", "paused"):
            raise refusal(run_id, run["status"], "stop")
        handle.send(("stop",))
        return self._wait_for_status(run_id, lambda status: status in TERMINAL_STATUSES)

    def set_kernel(
        self,
        run_id: str,
        layer: int,
        filter_index: int,
        kernel,
        frozen: bool = False,
        timeout: float = CONTROL_WAIT_SECONDS,
    ) -> None:
        """Overwrite one kernel of a running or paused run; ValueError names a bad argument."""
        run = self.store.get_run(run_id)
        handle = self._workers.get(run_id)
        if handle is None or run["status"] not in ("running", "paused"):
            raise refusal(run_id, run["status"], "set_kernel")
        request_id = next(self._request_ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        handle.replies[request_id] = future
        handle.send(("set_kernel", request_id, int(layer), int(filter_index), kernel, bool(frozen)))
        try:
            error = future.result(timeout)
        except concurrent.futures.TimeoutError:
            handle.replies.pop(request_id, None)
            raise no_answer(run_id, timeout) from None
        if error is not None:
            raise ValueError(error)

    def delete(self, run_id: str) -> None:
        """Stop the run's process if any, then remove its rows and files."""
        self.store.get_run(run_id)
        with self._lock:
            if run_id in self._queue:
                self._unqueue(run_id)
            self._unrecorded.pop(run_id, None)
            handle = self._workers.get(run_id)
            if handle is not None:
                handle.deleting = True
        if handle is not None:
            handle.process.kill()
            handle.process.join(5.0)
            if handle.thread is not None:
                handle.thread.join(5.0)
        self.store.delete_run(run_id)
        self._replay_pages.forget(run_id)
        with self._lock:
            channel = self._channels.pop(run_id, None)
        if channel is not None:
            channel.close()

    # -- streaming

    def latest_snapshot_step(self, run_id: str) -> int | None:
        return self.channel(run_id).latest_snapshot_step()

    def replay_ticket(self, client: str) -> ReplayTicket:
        """A place for one more replay of `client`; QueueFull (429, Retry-After) beyond its share."""
        with self._lock:
            count = self._replays_by_client.get(client, 0)
            if count >= limits.MAX_REPLAYS_PER_CLIENT:
                raise QueueFull(
                    f"Last-Event-ID: this client already replays {count} event streams "
                    f"(at most {limits.MAX_REPLAYS_PER_CLIENT} at once); retry later",
                    retry_after=limits.REPLAY_RETRY_SECONDS,
                )
            self._replays_by_client[client] = count + 1
        return ReplayTicket(self, client)

    async def stream(
        self,
        run_id: str,
        last_event_id: int | None,
        keepalive: float = KEEPALIVE_SECONDS,
        ticket: ReplayTicket | None = None,
    ):
        """Async iterator of Events for one viewer (None = a keep-alive), until the run has ended.

        First the metrics missed since `last_event_id` (from the store, in pages),
        then the current status and latest snapshot, then live events as they
        happen. Each Event's `wire` holds its encoded SSE frame (see `encode`).
        The stream ends after a status that is not queued, running or paused has
        been sent (what is left of an ended run, or a live run's last status),
        and when the run is deleted or the server shuts down. `ticket`: this
        viewer's place among the replays (replay_ticket), released when its
        replay is done.
        """
        channel = self.channel(run_id)
        subscription = Subscription(channel, asyncio.get_running_loop())
        last_sent = last_event_id
        ended = False
        try:
            resync = True
            while True:
                if resync:
                    async for event in self._resync(channel, subscription, last_sent, ticket, keepalive):
                        if event is None:
                            yield None
                            continue
                        last_sent = event.seq
                        ended = ended or _ends_stream(event)
                        yield event
                    if ticket is not None:
                        ticket.release()
                    if ended:
                        return
                    resync = False
                try:
                    await asyncio.wait_for(subscription.wakeup.wait(), keepalive)
                except TimeoutError:
                    yield None
                    continue
                if channel.closed:
                    return
                events, resync = subscription.take()
                if resync:
                    continue
                for event in events:
                    if event.kind == "snapshot" and event.data is None and event.step is not None:
                        # shared by every viewer: the file is read (in a thread) once for all
                        answer = await asyncio.to_thread(channel.snapshot_data, event.step)
                        if answer is None:
                            continue
                        event.kind, event.data = answer
                    last_sent = event.seq
                    encode(event)
                    if event.kind == "status":
                        ended = ended or _ends_stream(event)
                    yield event
                if ended:
                    return
        finally:
            if ticket is not None:
                ticket.release()
            with channel.lock:
                channel.subscribers.discard(subscription)

    def _register(self, channel: Channel, subscription: Subscription) -> dict:
        """Subscribe and read the run, atomically with respect to publishing; writes nothing.
        Every event up to run["event_seq"] is in the store, every later one reaches the subscription."""
        with channel.lock:
            run = self.store.get_run(channel.run_id)
            subscription.reset()
            channel.subscribers.add(subscription)
        return run

    async def _resync(
        self,
        channel: Channel,
        subscription: Subscription,
        last_sent: int | None,
        ticket: ReplayTicket | None = None,
        keepalive: float = KEEPALIVE_SECONDS,
    ):
        """Missed metrics (paged, one of limits.MAX_REPLAYS at a time; None = keep-alive while it
        waits its turn), then the current status and the latest snapshot."""
        run = await asyncio.to_thread(self._register, channel, subscription)
        newest = run["event_seq"]
        if last_sent is not None and last_sent < newest:
            if self._replay_slots is None:
                self._replay_slots = asyncio.Semaphore(limits.MAX_REPLAYS)
            while True:  # wait for a replay slot, with keep-alives so the viewer knows it is alive
                try:
                    await asyncio.wait_for(self._replay_slots.acquire(), keepalive)
                    break
                except TimeoutError:
                    yield None
            try:
                position = (last_sent, ALL_STEPS)  # every point of event `last_sent` was delivered
                while True:
                    events, position = await asyncio.to_thread(
                        self._shared_replay_page, channel.run_id, position, newest
                    )
                    for event in events:
                        yield event
                    if not events:
                        break
            finally:
                self._replay_slots.release()
        if ticket is not None:
            ticket.release()
        # the newest event's spare ids (app/worker.py EVENT_ID_STRIDE)
        status_id, snapshot_id = max(newest - 1, 0), newest
        yield encode(Event(status_id, "status", status_payload(run)))
        step = await asyncio.to_thread(channel.latest_snapshot_step)
        if step is not None:
            answer = await asyncio.to_thread(channel.snapshot_data, step)
            if answer is not None:
                yield encode(Event(snapshot_id, answer[0], answer[1], step=step))

    def _shared_replay_page(self, run_id: str, position: tuple[int, int], upto: int):
        """_replay_page, read once for every viewer replaying the same stretch (ReplayPages). In a thread."""
        return self._replay_pages.get((run_id, position, upto), lambda: self._replay_page(run_id, position, upto))

    def _replay_page(self, run_id: str, position: tuple[int, int], upto: int) -> tuple[list[Event], tuple[int, int]]:
        """The next page of missed metrics as one encoded event (whole events only, so a viewer
        cut off midway resumes at the right place), and the position after it. In a thread."""
        page = limits.REPLAY_PAGE_POINTS
        rows = self.store.metrics_page(run_id, position, upto, page)
        if len(rows) == page and rows[0][0] != rows[-1][0]:
            last = rows[-1][0]
            rows = [row for row in rows if row[0] != last]  # whole events only: the rest comes next page
        elif len(rows) == page:  # one event larger than a page: read the rest of it
            seq = rows[0][0]
            rows += self.store.metrics_page(run_id, (seq, rows[-1][1]["step"]), seq, limits.MAX_METRICS_LIMIT)
        if not rows:
            return [], position
        # one event for the page, under the id of its last event: every point up to that id is then delivered
        event = encode(Event(rows[-1][0], "metrics", _points_json([point for _, point in rows])))
        return [event], (rows[-1][0], rows[-1][1]["step"])


def comparison_of(run: dict) -> str | None:
    """The id of the comparison a run was started in (POST /api/comparisons), or None."""
    return (run.get("meta") or {}).get("comparison")


def _ends_stream(event: Event) -> bool:
    """True for a status event whose status is final for now (completed, stopped, failed, ...)."""
    return event.kind == "status" and json.loads(cast(str, event.data))["status"] not in ACTIVE_STATUSES


def encode(event: Event) -> Event:
    """Fill event.wire with its SSE frame (id, event, data), once."""
    if event.wire is None:
        event.wire = format_sse_event(data_str=event.data, event=event.kind, id=str(event.seq))
    return event


def _points_json(points: list[dict]) -> str:
    return dumps_json({"points": points})


def _now() -> float:
    import time

    return time.monotonic()


def _deadline(seconds: float) -> float:
    return _now() + seconds


def install_shutdown_signal_hook(on_signal) -> None:
    """Call `on_signal()` before the current SIGINT/SIGTERM handlers (uvicorn's).

    Open event streams otherwise keep uvicorn waiting before it runs the
    lifespan shutdown; this lets them end first. Only possible in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(received, frame, previous=previous):
            on_signal()
            previous(received, frame)

        signal.signal(signum, handler)
