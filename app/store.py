"""Persistence of runs: a database for runs and metrics, a folder per run for files.

The database is the SQLite file in the data directory (the default) or PostgreSQL when
KERNELSCOPE_DATABASE_URL names one (distributed mode); app/database.py holds its tables,
engines and migrations, and a PostgreSQL that cannot be reached is DatabaseUnavailable.
Layout of the data directory (KERNELSCOPE_DATA, a shared volume in distributed mode):

    kernelscope.db                              runs + metrics (SQLite, WAL mode), without a database URL
    runs/<id>/snapshots/<step>.snapshot.npz     one snapshot, compact (app/storage.py says what it holds)
    runs/<id>/snapshot_context.npz              the run's probe images and model spec, once
    runs/<id>/checkpoint.npz                    latest Trainer.checkpoint()
    runs/<id>/monitor.npz                       the run's monitor batch (images, labels, class names) and
                                                model spec, written when training starts; explanations
                                                read it instead of loading the dataset

The files are app/storage.py's (LocalStorage: atomic writes, checked on read, DamagedFile
naming the run, the step and the file when one does not read back whole; snapshots of the
earlier three-file format are still read); the file functions below are its old names,
kept importable from here. The server sweeps temp files that a killed writer left behind
when it starts. Each metrics row carries the event sequence number (`seq`) of the stream
event that announced it, which is how `Last-Event-ID` replays missed metrics. On SQLite one
connection is shared by the server's threads behind a lock for writes and quick lookups (the
event loop's run lookup waits for that lock); bulk reads of metrics (replay pages, GET
.../metrics) use a read-only connection of their own thread, so a long read never holds the
lock (WAL: readers and the writer do not block each other). Other processes (the CLI) open
their own.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from app import database
from app.storage import (  # noqa: F401  (re-exported: the names callers import from app.store)
    TEMP_FILE_MAX_AGE,
    DamagedFile,
    LocalStorage,
    SnapshotContext,
    dumps_json,
    json_safe,
    write_bytes_atomic,
    write_json_atomic,
    write_npz_atomic,
)

STATUSES = (
    "queued",
    "running",
    "paused",
    "completed",
    "stopped",
    "diverged",
    "failed",
    "interrupted",
)
ACTIVE_STATUSES = ("queued", "running", "paused")
METRIC_FIELDS = ("loss", "acc", "val_loss", "val_acc")

# ---------------------------------------------------------------- a full disk


class StorageFull(Exception):
    """The disk cannot take what a request would write (HTTP 507)."""


def is_disk_full(error: BaseException) -> bool:
    """True for 'no space left' (or quota) from a file write or from SQLite."""
    if isinstance(error, StorageFull):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error).lower()


def write_may_succeed_later(error: BaseException) -> bool:
    """True when the store refused a write for a reason that passes (a full disk, a database
    that is away): the run manager keeps what it could not write and tries again."""
    return is_disk_full(error) or isinstance(error, DatabaseUnavailable)


# ---------------------------------------------------------------- files (app/storage.py)
# The file layer lives in app/storage.py (LocalStorage); these names stay importable from
# here, with the data directory as first argument, so callers need not change.


def run_dir(data_dir: Path, run_id: str) -> Path:
    return LocalStorage(data_dir).run_dir(run_id)


def snapshot_dir(data_dir: Path, run_id: str) -> Path:
    return LocalStorage(data_dir).snapshot_dir(run_id)


def checkpoint_path(data_dir: Path, run_id: str) -> Path:
    return LocalStorage(data_dir).checkpoint_path(run_id)


def write_snapshot(
    data_dir: Path,
    run_id: str,
    snapshot: dict,
    params: dict,
    feature_maps: dict | None = None,
    context: SnapshotContext | None = None,
) -> int:
    return LocalStorage(data_dir).write_snapshot(run_id, snapshot, params, feature_maps, context)


def monitor_path(data_dir: Path, run_id: str) -> Path:
    return LocalStorage(data_dir).monitor_path(run_id)


def write_monitor(data_dir: Path, run_id: str, x, y, classes, spec: dict) -> None:
    LocalStorage(data_dir).write_monitor(run_id, x, y, classes, spec)


def read_monitor(data_dir: Path, run_id: str) -> dict | None:
    return LocalStorage(data_dir).read_monitor(run_id)


def snapshot_steps(data_dir: Path, run_id: str) -> list[int]:
    return LocalStorage(data_dir).snapshot_steps(run_id)


def latest_snapshot_step(data_dir: Path, run_id: str) -> int | None:
    return LocalStorage(data_dir).latest_snapshot_step(run_id)


def read_snapshot_text(data_dir: Path, run_id: str, step: int, probes: bool = True) -> str | None:
    return LocalStorage(data_dir).read_snapshot_text(run_id, step, probes)


def read_snapshot(
    data_dir: Path, run_id: str, step: int, feature_maps: bool = True, probes: bool = True
) -> dict | None:
    return LocalStorage(data_dir).read_snapshot(run_id, step, feature_maps, probes)


def read_snapshot_params(data_dir: Path, run_id: str, step: int) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_snapshot_params(run_id, step)


def read_snapshot_arrays(data_dir: Path, run_id: str, step: int, names) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_snapshot_arrays(run_id, step, names)


def read_snapshot_without_arrays(data_dir: Path, run_id: str, step: int) -> dict | None:
    return LocalStorage(data_dir).read_snapshot_without_arrays(run_id, step)


def read_checkpoint(data_dir: Path, run_id: str) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_checkpoint(run_id)


# ---------------------------------------------------------------- the database


class DatabaseUnavailable(Exception):
    """The database (PostgreSQL) cannot be reached or dropped the connection (HTTP 503).

    Nothing of the failed call was written: every write is one transaction."""

    def __init__(self, database: str, reason: str):
        self.database, self.reason = database, reason
        super().__init__(
            f"database: {database} is unreachable ({reason}); nothing was changed, try again once it is back"
        )


@contextlib.contextmanager
def database_errors(described: str) -> Iterator[None]:
    """PostgreSQL's errors as the store's own (the classroom's too): a lost server is
    DatabaseUnavailable, a full disk StorageFull. (The Store's SQLite fast lane raises sqlite3
    errors, as it always did.) `described` is the database in words (database.describe)."""
    try:
        yield
    except sa_exc.DBAPIError as error:
        original = error.orig
        if getattr(original, "sqlstate", None) in _DISK_FULL_SQLSTATES:
            raise StorageFull(f"storage: the database's disk is full ({described})") from error
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)) or error.connection_invalidated:
            raise DatabaseUnavailable(described, _first_line(original or error)) from error
        raise
    except sa_exc.TimeoutError as error:  # no pooled connection came free in time
        raise DatabaseUnavailable(described, _first_line(error)) from error


def _row_to_run(row: Mapping) -> dict:
    return {
        "id": row["id"],
        "status": row["status"],
        "config": json.loads(row["config"]),
        "meta": json.loads(row["meta"] or "{}"),
        "step": row["step"],
        "created": row["created"],
        "updated": row["updated"],
        "message": row["message"],
        "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
        "event_seq": row["event_seq"],
        "owner_pid": row["owner_pid"],
    }


def _row_to_point(row: Mapping) -> dict:
    point = {"step": row["step"]}
    for name in METRIC_FIELDS:
        if row[name] is not None:
            point[name] = row[name]
    return point


class SQLSession:
    """Statements through SQLAlchemy (PostgreSQL): rows as mappings, the count of changed rows."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def rows(self, statement, params: dict) -> list[Mapping]:
        return [row._mapping for row in self.connection.execute(statement, params)]

    def write(self, statement, params: dict) -> int:
        return self.connection.execute(statement, params).rowcount

    def many(self, statement, rows: list[dict]) -> None:
        self.connection.execute(statement, rows)


class SQLiteSession:
    """The same statements on the sqlite3 connection itself: each compiled once by SQLAlchemy
    for SQLite, then run by the driver without SQLAlchemy's per-call work (measured in
    benchmarks/store_events.py: that work cost the event path more than SQLite itself)."""

    def __init__(self, raw: sqlite3.Connection):
        self.raw = raw

    def rows(self, statement, params: dict) -> list[Mapping]:
        sql, values = _sqlite_bound(statement, params)
        return self.raw.execute(sql, values).fetchall()

    def write(self, statement, params: dict) -> int:
        sql, values = _sqlite_bound(statement, params)
        return self.raw.execute(sql, values).rowcount

    def many(self, statement, rows: list[dict]) -> None:
        sql, names, _ = _sqlite_compiled(statement)
        self.raw.executemany(sql, [[row[name] for name in names] for row in rows])


_SQLITE_DIALECT = sqlite_dialect.dialect()
_SQLITE_COMPILED: dict[int, tuple[Any, str, tuple[str, ...], dict]] = {}


def _sqlite_compiled(statement) -> tuple[str, tuple[str, ...], dict]:
    """The SQLite text of a statement, the names of its parameters in order and the values
    SQLAlchemy fills in itself (such as OFFSET 0), compiled once per statement."""
    cached = _SQLITE_COMPILED.get(id(statement))
    if cached is None or cached[0] is not statement:
        compiled = statement.compile(dialect=_SQLITE_DIALECT)
        cached = (
            statement,
            compiled.string,
            tuple(compiled.positiontup or ()),
            {name: bind.value for name, bind in compiled.binds.items()},
        )
        _SQLITE_COMPILED[id(statement)] = cached
    return cached[1], cached[2], cached[3]


def _sqlite_bound(statement, params: dict) -> tuple[str, list]:
    sql, names, defaults = _sqlite_compiled(statement)
    return sql, [params[name] if name in params else defaults[name] for name in names]


class RunNotFound(KeyError):
    """No run with that id in the store."""


_RUN_FIELDS = frozenset({"status", "step", "message", "metrics", "meta", "owner_pid", "config"})


class DatabaseClient:
    """One process's way into the database (app/database.py: SQLite in `data_dir`, or PostgreSQL
    at `database_url`), migrated on opening, shared by the Store and the classroom.

    On SQLite one connection is shared by the process's threads behind a lock, in autocommit,
    with explicit `BEGIN IMMEDIATE` around writes of more than one statement (the event path
    stays as fast as before migrations). On PostgreSQL each call takes a pooled connection: one
    statement runs in autocommit, several in one transaction, so a call writes all or nothing
    either way; a lost server is DatabaseUnavailable."""

    def __init__(self, data_dir: Path | str, database_url: str | None = None):
        self._lock = threading.RLock()
        self._engine = database.make_engine(database.database_url(Path(data_dir), database_url))
        self.sqlite = database.is_sqlite(self._engine)
        self.database = database.describe(self._engine)
        with self._guard():
            database.migrate(self._engine)
        self._conn: Connection | None = None  # SQLite: the one connection, kept checked out
        self._raw: sqlite3.Connection | None = None  # its sqlite3 connection (the fast lane)
        if self.sqlite:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            raw = self._conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.row_factory = sqlite3.Row
            self._raw = raw
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")  # the same pool

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = self._raw = None
            self._engine.dispose()

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return database_errors(self.database)

    @contextlib.contextmanager
    def _session(self, transaction: bool = False) -> Iterator[SQLSession | SQLiteSession]:
        """Where to run statements: on SQLite the shared connection under the lock, in
        autocommit unless `transaction` (then BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error: the
        write lock is held from the start, writers of other processes wait); on PostgreSQL a
        pooled connection, likewise in autocommit for one statement (atomic by itself) and in
        one transaction for several (a writer that must see a stable count locks the row it
        depends on)."""
        if self._raw is not None:
            with self._lock:
                if not transaction:
                    yield SQLiteSession(self._raw)
                    return
                self._raw.execute("BEGIN IMMEDIATE")
                try:
                    yield SQLiteSession(self._raw)
                except BaseException:
                    self._raw.execute("ROLLBACK")
                    raise
                self._raw.execute("COMMIT")
            return
        if not transaction:  # one statement is atomic by itself: no BEGIN and COMMIT round trips
            with self._guard(), self._autocommit.connect() as connection:
                yield SQLSession(connection)
            return
        with self._guard(), self._engine.begin() as connection:
            yield SQLSession(connection)


class Store(DatabaseClient):
    """Runs and metrics in the database (DatabaseClient) plus the run folders under `data_dir`."""

    def __init__(self, data_dir: Path | str, database_url: str | None = None):
        self.data_dir = Path(data_dir)
        (self.data_dir / "runs").mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / database.SQLITE_FILE
        super().__init__(self.data_dir, database_url)
        self._upsert_metrics = _UPSERT_METRICS_SQLITE if self.sqlite else _UPSERT_METRICS_POSTGRESQL

        self._readers: dict[int, sqlite3.Connection] = {}  # SQLite: thread id -> its read-only connection
        self._readers_lock = threading.Lock()  # not self._lock: a read never waits for the writer

    def close(self) -> None:
        super().close()
        with self._readers_lock:
            readers, self._readers = list(self._readers.values()), {}
        for connection in readers:
            connection.close()

    def _reader(self) -> sqlite3.Connection:
        """SQLite: this thread's read-only connection (made on first use; those of ended threads
        are closed), for bulk reads that must not hold the writers' lock."""
        ident = threading.get_ident()
        connection = self._readers.get(ident)
        if connection is not None:
            return connection
        connection = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=10.0)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout=10000")
        connection.execute("PRAGMA query_only=1")
        with self._readers_lock:
            alive = {thread.ident for thread in threading.enumerate()}
            for gone in [key for key in self._readers if key not in alive]:
                self._readers.pop(gone).close()
            self._readers[ident] = connection
        return connection

    @contextlib.contextmanager
    def _read_session(self) -> Iterator[SQLSession | SQLiteSession]:
        """Where bulk reads run: on SQLite this thread's read-only connection, without the lock
        (WAL: readers and the writer do not block each other); on PostgreSQL a pooled connection."""
        if self._raw is None:
            with self._session() as session:
                yield session
            return
        yield SQLiteSession(self._reader())

    def sweep_temp_files(self, older_than: float = TEMP_FILE_MAX_AGE) -> int:
        """Delete the temp files of atomic writes that never finished (a writer killed between
        creating and renaming one), if older than `older_than` seconds: a younger one may
        belong to a writer at work in another process (the CLI). Returns how many went."""
        removed = 0
        cutoff = time.time() - older_than
        for path in (self.data_dir / "runs").glob("*/**/.*.tmp"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # renamed or removed meanwhile by its writer
                pass
        return removed

    # -- runs

    def create_run(
        self, config: dict, status: str = "queued", meta: dict | None = None, owner_pid: int | None = None
    ) -> dict:
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        row = {
            "id": run_id,
            "status": status,
            "config": dumps_json(config),
            "meta": dumps_json(meta or {}),
            "created": now,
            "updated": now,
            "owner_pid": owner_pid,
        }
        with self._session() as session:
            session.write(_INSERT_RUN, row)
        run_dir(self.data_dir, run_id).mkdir(parents=True, exist_ok=True)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict:
        with self._session() as session:
            rows = session.rows(_SELECT_RUN, {"p_id": run_id})
        if not rows:
            raise RunNotFound(run_id)
        return _row_to_run(rows[0])

    def list_runs(self) -> list[dict]:
        with self._session() as session:
            rows = session.rows(_LIST_RUNS, {})
        return [_row_to_run(row) for row in rows]

    def update_run(self, run_id: str, **fields) -> None:
        """Set columns of a run: status, step, message, metrics (dict), meta (dict), owner_pid."""
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status: must be one of {STATUSES}, got {fields['status']!r}")
        values = {}
        for name, value in fields.items():
            values[name] = dumps_json(value) if name in ("metrics", "meta", "config") and value is not None else value
        values["updated"] = time.time()
        values["p_id"] = run_id
        with self._session() as session:
            changed = session.write(_update_run_statement(tuple(values)[:-1]), values)
        if changed == 0:
            raise RunNotFound(run_id)

    def delete_run(self, run_id: str) -> None:
        """Remove the run's rows and its folder (snapshots, checkpoint)."""
        with self._session(transaction=True) as session:
            session.write(_DELETE_METRICS, {"p_run_id": run_id})
            deleted = session.write(_DELETE_RUN, {"p_id": run_id})
        shutil.rmtree(run_dir(self.data_dir, run_id), ignore_errors=True)
        if deleted == 0:
            raise RunNotFound(run_id)

    def next_seq(self, run_id: str, count: int = 1) -> int:
        """Reserve `count` event sequence numbers; returns the first one."""
        with self._session() as session:
            rows = session.rows(_NEXT_SEQ, {"p_id": run_id, "p_count": count})
        if not rows:
            raise RunNotFound(run_id)
        return rows[0]["event_seq"] - count + 1

    # -- metrics

    def add_metrics(self, run_id: str, points: list[dict], seq: int) -> None:
        """Record a batch of metric points (a later point for the same step replaces it)."""
        if not points:
            return
        rows = [
            {
                "run_id": run_id,
                "step": int(p["step"]),
                "seq": seq,
                **{name: json_safe(_as_float(p.get(name))) for name in METRIC_FIELDS},
            }
            for p in points
        ]
        with self._session(transaction=True) as session:
            session.many(self._upsert_metrics, rows)

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        """Forget points after `after_step` (a resumed run trains those steps again)."""
        with self._session() as session:
            session.write(_TRUNCATE_METRICS, {"p_run_id": run_id, "p_after": after_step})

    def metrics(self, run_id: str, since_step: int = -1, limit: int | None = None) -> list[dict]:
        """Metric points with step > since_step, in step order."""
        query = _METRICS_SINCE if limit is None else _METRICS_SINCE_LIMITED
        with self._read_session() as session:
            rows = session.rows(query, {"p_run_id": run_id, "p_since": since_step, "p_limit": limit})
        return [_row_to_point(row) for row in rows]

    def metrics_between_seq(self, run_id: str, after_seq: int, upto_seq: int) -> list[tuple[int, dict]]:
        """(seq, point) for points announced by events after_seq < seq <= upto_seq, in seq order."""
        with self._read_session() as session:
            rows = session.rows(_METRICS_BETWEEN, {"p_run_id": run_id, "p_after": after_seq, "p_upto": upto_seq})
        return [(row["seq"], _row_to_point(row)) for row in rows]

    def metrics_page(self, run_id: str, after: tuple[int, int], upto_seq: int, limit: int) -> list[tuple[int, dict]]:
        """At most `limit` (seq, point) rows after the position `after` = (seq, step), up to
        upto_seq, in (seq, step) order: one page of an event replay (keyset paging, so a
        page costs the same early or late in a long run)."""
        seq, step = after
        with self._read_session() as session:
            rows = session.rows(
                _METRICS_PAGE, {"p_run_id": run_id, "p_seq": seq, "p_step": step, "p_upto": upto_seq, "p_limit": limit}
            )
        return [(row["seq"], _row_to_point(row)) for row in rows]

    # -- run folders (bound to this store's data directory)

    def run_dir(self, run_id: str) -> Path:
        return run_dir(self.data_dir, run_id)

    def snapshot_steps(self, run_id: str) -> list[int]:
        return snapshot_steps(self.data_dir, run_id)

    def latest_snapshot_step(self, run_id: str) -> int | None:
        return latest_snapshot_step(self.data_dir, run_id)

    def remove_snapshots_after(self, run_id: str, step: int) -> None:
        LocalStorage(self.data_dir).remove_snapshots_after(run_id, step)

    def read_snapshot(self, run_id: str, step: int, feature_maps: bool = True, probes: bool = True) -> dict | None:
        return read_snapshot(self.data_dir, run_id, step, feature_maps, probes)

    def read_snapshot_text(self, run_id: str, step: int, probes: bool = True) -> str | None:
        return read_snapshot_text(self.data_dir, run_id, step, probes)

    def read_snapshot_params(self, run_id: str, step: int) -> dict | None:
        return read_snapshot_params(self.data_dir, run_id, step)

    def read_snapshot_arrays(self, run_id: str, step: int, names) -> dict | None:
        return read_snapshot_arrays(self.data_dir, run_id, step, names)

    def read_snapshot_without_arrays(self, run_id: str, step: int) -> dict | None:
        return read_snapshot_without_arrays(self.data_dir, run_id, step)

    def read_checkpoint(self, run_id: str) -> dict | None:
        return read_checkpoint(self.data_dir, run_id)

    def read_monitor(self, run_id: str) -> dict | None:
        return read_monitor(self.data_dir, run_id)

    def write_monitor(self, run_id: str, x, y, classes, spec: dict) -> None:
        write_monitor(self.data_dir, run_id, x, y, classes, spec)


# The store's statements, built once (SQLAlchemy caches each one's compiled form).
_runs, _metrics = database.runs, database.metrics
_INSERT_RUN = _runs.insert().values(
    {name: sa.bindparam(name) for name in ("id", "status", "config", "meta", "created", "updated", "owner_pid")}
)
_SELECT_RUN = sa.select(_runs).where(_runs.c.id == sa.bindparam("p_id"))
_LIST_RUNS = sa.select(_runs).order_by(_runs.c.created, _runs.c.id)
_DELETE_METRICS = _metrics.delete().where(_metrics.c.run_id == sa.bindparam("p_run_id"))
_DELETE_RUN = _runs.delete().where(_runs.c.id == sa.bindparam("p_id"))
_NEXT_SEQ = (
    _runs.update()
    .where(_runs.c.id == sa.bindparam("p_id"))
    .values(event_seq=_runs.c.event_seq + sa.bindparam("p_count"))
    .returning(_runs.c.event_seq)
)
_TRUNCATE_METRICS = _metrics.delete().where(
    _metrics.c.run_id == sa.bindparam("p_run_id"), _metrics.c.step > sa.bindparam("p_after")
)
_METRICS_SINCE = (
    sa.select(_metrics)
    .where(_metrics.c.run_id == sa.bindparam("p_run_id"), _metrics.c.step > sa.bindparam("p_since"))
    .order_by(_metrics.c.step)
)
_METRICS_SINCE_LIMITED = _METRICS_SINCE.limit(sa.bindparam("p_limit"))
_METRICS_BETWEEN = (
    sa.select(_metrics)
    .where(
        _metrics.c.run_id == sa.bindparam("p_run_id"),
        _metrics.c.seq > sa.bindparam("p_after"),
        _metrics.c.seq <= sa.bindparam("p_upto"),
    )
    .order_by(_metrics.c.seq, _metrics.c.step)
)
_METRICS_PAGE = (
    sa.select(_metrics)
    .where(
        _metrics.c.run_id == sa.bindparam("p_run_id"),
        sa.or_(
            _metrics.c.seq > sa.bindparam("p_seq"),
            sa.and_(_metrics.c.seq == sa.bindparam("p_seq"), _metrics.c.step > sa.bindparam("p_step")),
        ),
        _metrics.c.seq <= sa.bindparam("p_upto"),
    )
    .order_by(_metrics.c.seq, _metrics.c.step)
    .limit(sa.bindparam("p_limit"))
)

_UPSERT_METRICS_SQLITE = sqlite_insert(_metrics).values({c.name: sa.bindparam(c.name) for c in _metrics.c})
_UPSERT_METRICS_SQLITE = _UPSERT_METRICS_SQLITE.on_conflict_do_update(
    index_elements=[_metrics.c.run_id, _metrics.c.step],
    set_={name: _UPSERT_METRICS_SQLITE.excluded[name] for name in ("seq", *METRIC_FIELDS)},
)
_UPSERT_METRICS_POSTGRESQL = postgresql_insert(_metrics).values({c.name: sa.bindparam(c.name) for c in _metrics.c})
_UPSERT_METRICS_POSTGRESQL = _UPSERT_METRICS_POSTGRESQL.on_conflict_do_update(
    index_elements=[_metrics.c.run_id, _metrics.c.step],
    set_={name: _UPSERT_METRICS_POSTGRESQL.excluded[name] for name in ("seq", *METRIC_FIELDS)},
)


@functools.cache
def _update_run_statement(names: tuple[str, ...]):
    """UPDATE runs SET <names> WHERE id: one statement per set of fields, built once."""
    return _runs.update().where(_runs.c.id == sa.bindparam("p_id")).values({name: sa.bindparam(name) for name in names})


# PostgreSQL's "disk full" and "out of memory/resources for the write" (class 53)
_DISK_FULL_SQLSTATES = frozenset({"53100"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _as_float(value):
    if value is None:
        return None
    return float(value)
