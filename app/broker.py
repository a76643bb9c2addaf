"""Distributed mode's Redis: the job queue (Dramatiq), each run's event stream, control list and lease.

Every key that web processes and workers share is named here, once:

    dramatiq:*                       Dramatiq's queue "kernelscope" (messages `train_run(run_id)`)
    kernelscope:run:<id>:events      Redis Stream of the run's numbered events; entry id "<event id>-0",
                                     fields kind, data (JSON; empty for snapshots), step
    kernelscope:run:<id>:control     list of JSON commands for the worker holding the run
                                     (["pause"], ["resume"], ["stop"], ["set_kernel", ...], ["delete"])
    kernelscope:run:<id>:lease       which worker holds the run (a token, expiring unless renewed)
    kernelscope:reply:<request id>   a worker's answer to one set_kernel command

The event id is the stream entry id, so a viewer's Last-Event-ID is directly a stream
position. The lease makes sure one worker at a time trains a run: a message Dramatiq
redelivers while the run's holder is alive (it only looked dead) finds the lease held and is
dropped; a holder that finds its lease taken stops at once without writing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app import limits
from app.settings import Settings
from app.worker import TERMINAL_STATUSES, Event

log = logging.getLogger("kernelscope.broker")

QUEUE_NAME = "kernelscope"
ACTOR_NAME = "train_run"
# A training run may take hours: Dramatiq's time limit (10 min by default) must not kill it.
ACTOR_TIME_LIMIT_MS = 7 * 24 * 3600 * 1000
# How often idle Dramatiq consumers look for dead workers' messages (out of a million commands;
# idle consumers fetch about once a second each, so dead workers are found within seconds).
MAINTENANCE_CHANCE = 200_000
# Redis retries inside one call before the error reaches the caller (web: 503; worker: its own loop).
CLIENT_RETRIES = 4
RECONNECT_MAX_SECONDS = 2.0  # the longest wait between two attempts to reach Redis again

T = TypeVar("T")


class BrokerUnavailable(Exception):
    """Redis (the broker of distributed mode) cannot be reached (HTTP 503)."""


def events_key(run_id: str) -> str:
    return f"kernelscope:run:{run_id}:events"


def control_key(run_id: str) -> str:
    return f"kernelscope:run:{run_id}:control"


def lease_key(run_id: str) -> str:
    return f"kernelscope:run:{run_id}:lease"


def learner_start_key(learner_id: str) -> str:
    """classroom: the lock a worker holds while it decides whether a learner's run may start."""
    return f"kernelscope:learner:{learner_id}:start"


def reply_key(request_id: str) -> str:
    return f"kernelscope:reply:{request_id}"


def connect(url: str) -> redis.Redis:
    """A client that retries a failed command a few times with backoff (Redis restarting)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=RECONNECT_MAX_SECONDS, base=0.05), CLIENT_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=10,
        socket_connect_timeout=2.0,
    )


def connect_async(url: str):
    """The asyncio client the web tier reads event streams with."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry

    return aioredis.Redis.from_url(
        url,
        retry=AsyncRetry(ExponentialBackoff(cap=RECONNECT_MAX_SECONDS, base=0.05), CLIENT_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=2.0,
    )


def unavailable(error: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"broker: Redis cannot be reached ({type(error).__name__}: {error}); retry shortly")


def call(action: Callable[[], T]) -> T:
    """`action()`, with a Redis outage turned into BrokerUnavailable (the web tier answers 503)."""
    try:
        return action()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise unavailable(error) from None


def until_reachable(action: Callable[[], T], what: str, give_up: Callable[[], bool] = lambda: False) -> T:
    """`action()`, retried with backoff while Redis is unreachable (a worker waits it out)."""
    delay = 0.1
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if give_up():
                raise
            log.warning("%s: Redis unreachable (%s); retrying in %.1f s", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


# ---------------------------------------------------------------- events


def stream_id(seq: int) -> str:
    return f"{seq}-0"


def seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def publish(client: redis.Redis, run_id: str, events: list[Event], maxlen: int) -> None:
    """XADD each event under its own id; a status that ends the run lets the stream expire.

    An id not above the stream's newest (two writers raced, e.g. a web process recording
    `stopped` while a worker started) is skipped: the event is in the store, and viewers
    that need it read it from there.
    """
    if not events:
        return
    key = events_key(run_id)
    for event in events:
        fields = {"kind": event.kind, "data": event.data or "", "step": "" if event.step is None else str(event.step)}
        try:
            client.xadd(key, fields, id=stream_id(event.seq), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        except redis.ResponseError as error:
            if "equal or smaller" not in str(error):
                raise
            log.info("run %s: event %d is older than its stream's newest; skipped", run_id, event.seq)
            continue
        if event.kind == "status":
            status = json.loads(event.data or "{}").get("status")
            if status in TERMINAL_STATUSES:
                client.expire(key, limits.STREAM_TTL_SECONDS)
            else:
                client.persist(key)


def entry_event(entry_id: bytes | str, fields: dict) -> Event:
    """The Event of one stream entry (snapshot data is read from its file when sent)."""
    kind = fields[b"kind"].decode()
    data = fields.get(b"data", b"").decode() or None
    step_text = fields.get(b"step", b"").decode()
    return Event(seq_of(entry_id), kind, data, step=int(step_text) if step_text else None)


# ---------------------------------------------------------------- control


def encode_command(command: tuple) -> str:
    return json.dumps(list(command), separators=(",", ":"))


def decode_command(raw: bytes | str) -> tuple:
    return tuple(json.loads(raw))


def send_command(client: redis.Redis, run_id: str, command: tuple) -> None:
    call(lambda: client.rpush(control_key(run_id), encode_command(command)))


def new_request_id() -> str:
    return uuid.uuid4().hex


def send_reply(client: redis.Redis, request_id: str, error: str | None) -> None:
    key = reply_key(request_id)
    pipe = client.pipeline()
    pipe.rpush(key, json.dumps({"error": error}))
    pipe.expire(key, 60)
    pipe.execute()


def wait_reply(client: redis.Redis, request_id: str, timeout: float) -> tuple[bool, str | None]:
    """(answered, error) of a set_kernel command; (False, None) after `timeout` seconds."""
    answer = call(lambda: client.blpop([reply_key(request_id)], timeout=timeout))
    if answer is None:
        return False, None
    return True, json.loads(answer[1])["error"]


# ---------------------------------------------------------------- the lease


_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
elseif not holder then
    redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    """One worker's hold on one run, kept alive by renew() at least once per `ttl` (or on
    another `key`: a learner's start lock)."""

    def __init__(self, client: redis.Redis, run_id: str, ttl: float, key: str | None = None):
        self.client = client
        self.key = key or lease_key(run_id)
        self.token = uuid.uuid4().hex
        self.ttl_ms = max(1000, int(ttl * 1000))

    def acquire(self, wait: float) -> bool:
        """Take the lease, waiting up to `wait` seconds for an expiring holder; False if still held."""
        deadline = time.monotonic() + wait
        while True:
            taken = until_reachable(lambda: self.client.set(self.key, self.token, nx=True, px=self.ttl_ms), "lease")
            if taken:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)

    def renew(self) -> bool:
        """True while this worker still holds the run (it takes it back if Redis lost the key)."""
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # it expires on its own


def held(client: redis.Redis, run_id: str) -> bool:
    return bool(call(lambda: client.exists(lease_key(run_id))))


# ---------------------------------------------------------------- the job queue


def make_broker(settings: Settings, train: Callable[[str], None] | None = None):
    """Dramatiq's Redis broker with the `train_run` actor declared on it.

    `train` is the actor's body (a worker's); the web tier only sends messages.
    Returns (broker, actor).
    """
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    assert settings.broker_url is not None
    broker = RedisBroker(
        url=settings.broker_url,
        heartbeat_timeout=int(settings.worker_heartbeat * 1000),
        maintenance_chance=MAINTENANCE_CHANCE,
    )

    def train_run(run_id: str) -> None:
        if train is None:
            raise RuntimeError("this process only sends train_run messages")
        train(run_id)

    actor = dramatiq.actor(
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE_NAME,
        max_retries=0,  # a failed training ends `failed`; a dead worker's run is redelivered, not retried
        time_limit=ACTOR_TIME_LIMIT_MS,
    )(train_run)
    return broker, actor
