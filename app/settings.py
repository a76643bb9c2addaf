"""Server settings read from the environment (KERNELSCOPE_*).

One frozen dataclass, built once by `Settings.from_env()`. A value that cannot
be parsed raises ValueError naming the variable and what it accepts, so a typo
in the environment stops the server at start-up instead of later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app import limits

DEFAULT_DATA_DIR = "./kernelscope-data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Two cores by default: two runs may train at once, the rest wait in the queue.
DEFAULT_MAX_RUNS = limits.DEFAULT_MAX_RUNS
DEFAULT_MAX_QUEUED = limits.DEFAULT_MAX_QUEUED
DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# Training processes run at a lower scheduling priority than the API process, so a
# request never waits behind training for a CPU (measured in benchmarks/serve.py).
DEFAULT_WORKER_NICE = 10


def _int_from_env(env: dict, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    return value


def _float_from_env(env: dict, name: str, default: float, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    return value


def _origins_from_env(env: dict, name: str) -> tuple[str, ...]:
    """Comma-separated origins such as `http://localhost:5173`; `*` allows every origin."""
    origins = tuple(part.strip().rstrip("/") for part in (env.get(name) or "").split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"{name}: each origin must start with http:// or https:// (or be *), got {origin!r}")
    return origins


def _database_url_from_env(env: dict, name: str) -> str | None:
    """A postgresql:// (or postgres://, postgresql+psycopg://) URL; unset or empty = SQLite in the data directory."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        scheme = raw.split("://", 1)[0] if "://" in raw else raw[:20]
        raise ValueError(f"{name}: expected a postgresql:// URL, got {scheme!r}")
    return raw


def _broker_url_from_env(env: dict, name: str) -> str | None:
    """A Redis URL (redis://, rediss:// or unix://); unset or empty = embedded mode."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        scheme = raw.split("://", 1)[0] if "://" in raw else raw[:20]
        raise ValueError(f"{name}: expected a Redis URL (redis://host:port/db), got {scheme!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_runs: int = DEFAULT_MAX_RUNS  # runs training at the same time
    max_queued: int = DEFAULT_MAX_QUEUED  # runs waiting for a slot
    token: str | None = None  # when set, mutating routes need it
    cors_origins: tuple[str, ...] = ()  # browser origins allowed cross-site; none by default
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # steps between checkpoints
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT  # seconds to wait for workers
    worker_nice: int = DEFAULT_WORKER_NICE  # niceness added to each training process
    # the storage budget (app/limits.py has the defaults and what they mean)
    max_run_storage: int = limits.MAX_RUN_STORAGE_BYTES  # bytes of one run's snapshots + checkpoint
    min_free_disk: int = limits.MIN_FREE_DISK_BYTES  # bytes the data directory's disk keeps free
    # distributed mode (issue 21): runs and metrics in PostgreSQL; None = the SQLite file in data_dir
    database_url: str | None = None
    # distributed mode: a Redis URL; None = embedded (local processes, as `make run`)
    broker_url: str | None = None
    worker_heartbeat: float = limits.WORKER_HEARTBEAT_SECONDS  # seconds before a silent worker's run is requeued
    stream_maxlen: int = limits.DEFAULT_STREAM_MAXLEN  # events each run's Redis Stream keeps

    @classmethod
    def from_env(cls, env: dict | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        token = env.get("KERNELSCOPE_TOKEN") or None
        return cls(
            data_dir=Path(env.get("KERNELSCOPE_DATA") or DEFAULT_DATA_DIR),
            host=env.get("KERNELSCOPE_HOST") or DEFAULT_HOST,
            port=_int_from_env(env, "KERNELSCOPE_PORT", DEFAULT_PORT, 0, 65535),
            max_runs=_int_from_env(env, "KERNELSCOPE_MAX_RUNS", DEFAULT_MAX_RUNS, 1, limits.MAX_CONCURRENT_RUNS),
            max_queued=_int_from_env(env, "KERNELSCOPE_MAX_QUEUED", DEFAULT_MAX_QUEUED, 0, limits.MAX_QUEUED_RUNS),
            token=token,
            cors_origins=_origins_from_env(env, "KERNELSCOPE_CORS_ORIGINS"),
            checkpoint_every=_int_from_env(env, "KERNELSCOPE_CHECKPOINT_EVERY", DEFAULT_CHECKPOINT_EVERY, 1, 1_000_000),
            shutdown_timeout=_float_from_env(env, "KERNELSCOPE_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT, 0.1, 600.0),
            worker_nice=_int_from_env(env, "KERNELSCOPE_WORKER_NICE", DEFAULT_WORKER_NICE, 0, 19),
            max_run_storage=_int_from_env(
                env, "KERNELSCOPE_MAX_RUN_STORAGE", limits.MAX_RUN_STORAGE_BYTES, 1 << 20, 1 << 50
            ),
            min_free_disk=_int_from_env(env, "KERNELSCOPE_MIN_FREE_DISK", limits.MIN_FREE_DISK_BYTES, 0, 1 << 50),
            database_url=_database_url_from_env(env, "KERNELSCOPE_DATABASE_URL"),
            broker_url=_broker_url_from_env(env, "KERNELSCOPE_BROKER_URL"),
            worker_heartbeat=_float_from_env(
                env, "KERNELSCOPE_WORKER_HEARTBEAT", limits.WORKER_HEARTBEAT_SECONDS, 1.0, 600.0
            ),
            stream_maxlen=_int_from_env(
                env,
                "KERNELSCOPE_STREAM_MAXLEN",
                limits.DEFAULT_STREAM_MAXLEN,
                limits.MIN_STREAM_MAXLEN,
                limits.MAX_STREAM_MAXLEN,
            ),
        )
