"""The web tier of distributed mode: runs execute on `kernelscope worker`s, events come from Redis.

DistributedRunManager keeps RunManager's API (the routes do not know the mode); what
differs is the executor: a new or resumed run is stored `queued` and a Dramatiq message
`train_run(run_id)` is sent (app/jobs.py trains it); pause, resume, stop, kernel edits and
delete go to the worker holding the run through the run's Redis control list; and a
viewer's events are read from the run's Redis Stream (app/broker.py). The process keeps no
state of its own about runs, so any number of web processes serve the same runs and a
viewer may reconnect to any of them with Last-Event-ID.

A stream keeps the newest events (KERNELSCOPE_STREAM_MAXLEN); what a viewer missed before the
stream's oldest entry is replayed from the store by the embedded mode's replay code. The
event ids are the store's (RunRecorder reserves EVENT_ID_STRIDE ids per event), so the
status and snapshot a (re)connecting viewer first gets take the newest event's spare ids,
exactly as in embedded mode.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis

from app import broker as rb
from app import limits
from app.runs import (
    ALL_STEPS,
    CONTROL_WAIT_SECONDS,
    KEEPALIVE_SECONDS,
    Channel,
    QueueFull,
    ReplayTicket,
    RunManager,
    _ends_stream,
    encode,
    no_answer,
    refusal,
)
from app.settings import Settings
from app.store import ACTIVE_STATUSES, Store
from app.worker import EVENT_ID_STRIDE, TERMINAL_STATUSES, Event, RunRecorder, status_payload

log = logging.getLogger("kernelscope.distributed")

STATUS_POLL_SECONDS = 0.05  # how often a control request looks at the run's status while it waits
READ_BATCH = 500  # stream entries read at once
DELETE_WAIT_SECONDS = 5.0  # how long a delete waits for the run's worker to let go


class DistributedRunManager(RunManager):
    """RunManager whose runs are trained by Dramatiq workers and streamed from Redis."""

    def __init__(self, settings: Settings, store: Store):
        super().__init__(settings, store)
        assert settings.broker_url is not None
        self.redis = rb.connect(settings.broker_url)
        self.aredis = rb.connect_async(settings.broker_url)
        self.broker, self.actor = rb.make_broker(settings)

    # -- lifecycle: the workers and Dramatiq own active runs; nothing to recover or stop here

    def warm_up(self) -> None:
        """Nothing to start: runs train in the Dramatiq workers' processes, not in forks of this one."""

    def recover(self) -> list[str]:
        self._recovered = True
        return []

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
        self.close_streams()
        try:
            self.broker.close()
        except Exception:  # closing connections to an unreachable Redis
            pass

    # -- recording what the web process decides (queued, stopped before it started)

    def _set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        run = self.store.get_run(run_id)
        events = RunRecorder(self.store, run_id).record(("status", status, run["step"], message))
        rb.call(lambda: rb.publish(self.redis, run_id, events, self.settings.stream_maxlen))

    def _wait_for_status(self, run_id: str, accept, timeout: float = CONTROL_WAIT_SECONDS) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.store.get_run(run_id)
            if accept(run["status"]) or time.monotonic() >= deadline or self._closing:
                return run
            time.sleep(STATUS_POLL_SECONDS)

    def _check_capacity(self) -> None:
        if self._closing:
            raise QueueFull("the server is shutting down")

    def _enqueue(self, run_id: str) -> None:
        """Store `queued` and send the message; a new run that cannot be queued is removed (503)."""
        try:
            rb.call(lambda: self.redis.delete(rb.control_key(run_id)))  # no stale command from an earlier life
            self._set_status(run_id, "queued")
            rb.call(lambda: self.actor.send(run_id))
        except rb.BrokerUnavailable:
            self.store.delete_run(run_id)
            raise

    def _requeue(self, run_id: str, message: str) -> None:
        try:
            rb.call(lambda: self.redis.delete(rb.control_key(run_id)))
            self._set_status(run_id, "queued", message)
            rb.call(lambda: self.actor.send(run_id))
        except rb.BrokerUnavailable:
            self.store.update_run(run_id, status="interrupted", message="the broker was unreachable; resume again")
            raise

    def queue_position(self, run_id: str) -> int | None:
        return None  # the shared queue is Dramatiq's; its order is not a run's to report

    def latest_snapshot_step(self, run_id: str) -> int | None:
        return self.store.latest_snapshot_step(run_id)

    # -- control

    def _send(self, run_id: str, command: tuple) -> None:
        rb.send_command(self.redis, run_id, command)

    def pause(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        if run["status"] != "running":
            raise refusal(run_id, run["status"], "pause")
        self._send(run_id, ("pause",))
        return self._wait_for_status(run_id, lambda status: status != "running")

    def resume(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        status = run["status"]
        if status == "paused":
            self._send(run_id, ("resume",))
            return self._wait_for_status(run_id, lambda s: s != "paused")
        if status in ("interrupted", "stopped", "failed"):
            start = self._checkpoint_step(run_id)  # RunConflict for a damaged checkpoint, before any change
            with self._lock:
                self._check_capacity()
                if self.gate is not None:  # classroom: a learner's resumed run counts within their queue quota
                    self.gate.admit(self.store, run["meta"])
                self._requeue(run_id, f"resuming from step {start}")
            return self.store.get_run(run_id)
        raise refusal(run_id, status, "resume")

    def stop(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        if run["status"] == "queued":
            self._set_status(run_id, "stopped", "stopped before it started")
            self._send(run_id, ("stop",))  # in case a worker took it this very moment
            return self.store.get_run(run_id)
        if run["status"] not in ("running", "paused"):
            raise refusal(run_id, run["status"], "stop")
        self._send(run_id, ("stop",))
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
        run = self.store.get_run(run_id)
        if run["status"] not in ("running", "paused"):
            raise refusal(run_id, run["status"], "set_kernel")
        request_id = rb.new_request_id()
        kernel = kernel.tolist() if hasattr(kernel, "tolist") else kernel
        self._send(run_id, ("set_kernel", request_id, int(layer), int(filter_index), kernel, bool(frozen)))
        answered, error = rb.wait_reply(self.redis, request_id, timeout)
        if not answered:
            raise no_answer(run_id, timeout)
        if error is not None:
            raise ValueError(error)

    def delete(self, run_id: str) -> None:
        """Tell the run's worker to let go (it stops without writing), then remove rows, files and keys."""
        self.store.get_run(run_id)
        if rb.held(self.redis, run_id):
            self._send(run_id, ("delete",))
            deadline = time.monotonic() + DELETE_WAIT_SECONDS
            while rb.held(self.redis, run_id) and time.monotonic() < deadline:
                time.sleep(STATUS_POLL_SECONDS)
        self.store.delete_run(run_id)
        rb.call(lambda: self.redis.delete(rb.events_key(run_id), rb.control_key(run_id)))
        with self._lock:
            channel = self._channels.pop(run_id, None)
        if channel is not None:
            channel.close()

    # -- streaming from Redis

    async def stream(
        self,
        run_id: str,
        last_event_id: int | None,
        keepalive: float = KEEPALIVE_SECONDS,
        ticket: ReplayTicket | None = None,
    ):
        """RunManager.stream's events, read from the run's Redis Stream (see the module docstring)."""
        channel = self.channel(run_id)  # for its snapshot file cache and `closed` at shutdown
        last_sent = last_event_id
        try:
            while True:
                position = None
                ended = False
                async for event in self._connect(channel, last_sent, ticket, keepalive):
                    if isinstance(event, int):  # the stream position to follow from
                        position = event
                        continue
                    if event is None:
                        yield None
                        continue
                    if event.kind == "ended":
                        ended = True
                        continue
                    last_sent = event.seq
                    ended = ended or _ends_stream(event)
                    yield event
                if ended:  # the run had ended: its status and latest snapshot were the last events
                    return
                if ticket is not None:
                    ticket.release()
                assert position is not None
                gap = False
                async for event in self._follow(channel, position, keepalive):
                    if event is None:
                        yield None
                        continue
                    if event.kind == "gap":  # the viewer fell behind the stream's trimmed range
                        gap = True
                        break
                    last_sent = event.seq
                    yield event
                    if _ends_stream(event):
                        return
                if not gap:
                    return  # the server shuts down
        finally:
            if ticket is not None:
                ticket.release()

    async def _connect(self, channel: Channel, last_sent: int | None, ticket, keepalive: float):
        """Missed events, then the current status and latest snapshot; finally (an int) the stream
        position to follow from."""
        run_id = channel.run_id
        key = rb.events_key(run_id)
        while True:  # Redis restarting: keep the viewer's connection with keep-alives
            try:
                newest_entry = await self.aredis.xrevrange(key, count=1)
                oldest_entry = await self.aredis.xrange(key, count=1)
                break
            except (redis.ConnectionError, redis.TimeoutError):
                yield None
                await asyncio.sleep(1.0)
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if newest_entry:
            # the entries up to the stream's newest are all in the stream or the store; its spare ids follow
            top = rb.seq_of(newest_entry[0][0])
            newest = top + EVENT_ID_STRIDE - 1
            position = top
        else:
            newest = position = run["event_seq"]
        oldest = rb.seq_of(oldest_entry[0][0]) if oldest_entry else None
        if last_sent is not None:
            position = max(position, last_sent)  # never an id the viewer has (a stream Redis lost)
        if last_sent is not None and last_sent < newest:
            store_upto = newest if oldest is None else min(newest, oldest - 1)
            if last_sent < store_upto:
                async for event in self._replay_from_store(run_id, last_sent, store_upto, keepalive):
                    yield event
            if oldest is not None:
                async for event in self._read_range(channel, max(last_sent, oldest - 1), position, metrics_only=True):
                    yield event
        if ticket is not None:
            ticket.release()
        # ids only grow for a viewer: what it already has (its last id at or past these) is not re-sent
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if last_sent is None or max(newest - 1, 0) > last_sent:
            yield encode(Event(max(newest - 1, 0), "status", status_payload(run)))
        elif run["status"] not in ACTIVE_STATUSES:
            yield Event(last_sent, "ended")  # the viewer has the run's final status already
        step = await asyncio.to_thread(self.store.latest_snapshot_step, run_id)
        if step is not None and (last_sent is None or newest > last_sent):
            answer = await asyncio.to_thread(channel.snapshot_data, step)
            if answer is not None:
                yield encode(Event(newest, answer[0], answer[1], step=step))
        yield position

    async def _replay_from_store(self, run_id: str, last_sent: int, upto: int, keepalive: float):
        if self._replay_slots is None:
            self._replay_slots = asyncio.Semaphore(limits.MAX_REPLAYS)
        while True:
            try:
                await asyncio.wait_for(self._replay_slots.acquire(), keepalive)
                break
            except TimeoutError:
                yield None
        try:
            position = (last_sent, ALL_STEPS)
            while True:
                events, position = await asyncio.to_thread(self._replay_page, run_id, position, upto)
                for event in events:
                    yield event
                if not events:
                    break
        finally:
            self._replay_slots.release()

    async def _read_range(self, channel: Channel, after: int, upto: int, metrics_only: bool):
        """Stream entries with after < id <= upto (metrics only: the status and snapshot follow)."""
        key = rb.events_key(channel.run_id)
        start = f"({rb.stream_id(after)}"
        while True:
            entries = await self.aredis.xrange(key, min=start, max=rb.stream_id(upto), count=READ_BATCH)
            if not entries:
                return
            for entry_id, fields in entries:
                event = rb.entry_event(entry_id, fields)
                if metrics_only and event.kind != "metrics":
                    continue
                yield encode(event)
            start = f"({entries[-1][0].decode()}"

    async def _follow(self, channel: Channel, position: int, keepalive: float):
        """Live events after `position` (XREAD BLOCK); None = a keep-alive after `keepalive` s of
        silence; an Event of kind "gap" when entries the viewer needs were trimmed (it then
        reconnects through the store). Ends when the server shuts down."""
        key = rb.events_key(channel.run_id)
        delay = 0.1
        block_ms = max(1, int(min(1.0, keepalive) * 1000))
        silent_since = time.monotonic()
        while not channel.closed and not self._closing:
            if time.monotonic() - silent_since >= keepalive:
                silent_since = time.monotonic()
                yield None
            try:
                answer = await self.aredis.xread({key: rb.stream_id(position)}, count=READ_BATCH, block=block_ms)
                delay = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as error:
                log.warning("events of %s: Redis unreachable (%s); retrying", channel.run_id, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, rb.RECONNECT_MAX_SECONDS)
                continue
            if not answer:
                continue
            entries = answer[0][1]
            first = rb.seq_of(entries[0][0])
            if first > position + EVENT_ID_STRIDE:
                oldest = await self.aredis.xrange(key, count=1)
                if oldest and rb.seq_of(oldest[0][0]) == first:  # trimmed past the viewer
                    yield Event(position, "gap")
                    return
            events = [rb.entry_event(entry_id, fields) for entry_id, fields in entries]
            newest_snapshot = max((i for i, e in enumerate(events) if e.kind == "snapshot"), default=None)
            for index, event in enumerate(events):
                position = event.seq
                if event.kind == "snapshot":
                    if index != newest_snapshot or event.step is None:
                        continue  # a newer snapshot in the same batch supersedes it
                    answer_data = await asyncio.to_thread(channel.snapshot_data, event.step)
                    if answer_data is None:
                        continue
                    event.kind, event.data = answer_data
                silent_since = time.monotonic()
                yield encode(event)
