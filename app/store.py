"""Persistence of runs: SQLite for runs and metrics, a folder per run for files.

Layout of the data directory (KERNELSCOPE_DATA):

    kernelscope.db                              runs + metrics (SQLite, WAL mode)
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
when it starts. Each metrics row carries
the event sequence number (`seq`) of the stream event that announced it, which
is how `Last-Event-ID` replays missed metrics. One connection is shared by the
server's threads behind a lock for writes and quick lookups (the event loop's run
lookup waits for that lock); bulk reads of metrics (replay pages, GET .../metrics)
use a read-only connection of their own thread, so a long read never holds the lock
(WAL: readers and the writer do not block each other). Other processes (the CLI)
open their own.
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import numpy as np

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id        TEXT PRIMARY KEY,
    status    TEXT NOT NULL,
    config    TEXT NOT NULL,
    meta      TEXT NOT NULL DEFAULT '{}',
    step      INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    message   TEXT,
    metrics   TEXT,
    event_seq INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id   TEXT NOT NULL,
    step     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    loss     REAL,
    acc      REAL,
    val_loss REAL,
    val_acc  REAL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_by_seq ON metrics (run_id, seq);
"""


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


def read_snapshot_text(data_dir: Path, run_id: str, step: int) -> str | None:
    return LocalStorage(data_dir).read_snapshot_text(run_id, step)


def read_snapshot(data_dir: Path, run_id: str, step: int, feature_maps: bool = True) -> dict | None:
    return LocalStorage(data_dir).read_snapshot(run_id, step, feature_maps)


def read_snapshot_params(data_dir: Path, run_id: str, step: int) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_snapshot_params(run_id, step)


def read_snapshot_arrays(data_dir: Path, run_id: str, step: int, names) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_snapshot_arrays(run_id, step, names)


def read_checkpoint(data_dir: Path, run_id: str) -> dict[str, np.ndarray] | None:
    return LocalStorage(data_dir).read_checkpoint(run_id)


# ---------------------------------------------------------------- the database


def _row_to_run(row: sqlite3.Row) -> dict:
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


def _row_to_point(row: sqlite3.Row) -> dict:
    point = {"step": row["step"]}
    for name in METRIC_FIELDS:
        if row[name] is not None:
            point[name] = row[name]
    return point


class RunNotFound(KeyError):
    """No run with that id in the store."""


class Store:
    """Runs and metrics in SQLite plus the run folders under `data_dir`."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)
        (self.data_dir / "runs").mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "kernelscope.db"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self._db.executescript(_SCHEMA)
        self._readers: dict[int, sqlite3.Connection] = {}  # thread id -> its read connection
        self._readers_lock = threading.Lock()  # not self._lock: a read never waits for the writer

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._readers_lock:
            readers, self._readers = list(self._readers.values()), {}
        for connection in readers:
            connection.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (made on first use; those of ended threads are closed)."""
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
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, status, config, meta, created, updated, owner_pid) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, status, dumps_json(config), dumps_json(meta or {}), now, now, owner_pid),
            )
        run_dir(self.data_dir, run_id).mkdir(parents=True, exist_ok=True)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        return _row_to_run(row)

    def list_runs(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs ORDER BY created, id").fetchall()
        return [_row_to_run(row) for row in rows]

    def update_run(self, run_id: str, **fields) -> None:
        """Set columns of a run: status, step, message, metrics (dict), meta (dict), owner_pid."""
        allowed = {"status", "step", "message", "metrics", "meta", "owner_pid", "config"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status: must be one of {STATUSES}, got {fields['status']!r}")
        values = {}
        for name, value in fields.items():
            values[name] = dumps_json(value) if name in ("metrics", "meta", "config") and value is not None else value
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            cursor = self._db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
        if cursor.rowcount == 0:
            raise RunNotFound(run_id)

    def delete_run(self, run_id: str) -> None:
        """Remove the run's rows and its folder (snapshots, checkpoint)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
                cursor = self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        shutil.rmtree(run_dir(self.data_dir, run_id), ignore_errors=True)
        if cursor.rowcount == 0:
            raise RunNotFound(run_id)

    def next_seq(self, run_id: str, count: int = 1) -> int:
        """Reserve `count` event sequence numbers; returns the first one."""
        with self._lock:
            row = self._db.execute(
                "UPDATE runs SET event_seq = event_seq + ? WHERE id = ? RETURNING event_seq",
                (count, run_id),
            ).fetchall()
        if not row:
            raise RunNotFound(run_id)
        return row[0][0] - count + 1

    # -- metrics

    def add_metrics(self, run_id: str, points: list[dict], seq: int) -> None:
        """Record a batch of metric points (a later point for the same step replaces it)."""
        rows = [
            (run_id, int(p["step"]), seq, *(json_safe(_as_float(p.get(name))) for name in METRIC_FIELDS))
            for p in points
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, step, seq, loss, acc, val_loss, val_acc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        """Forget points after `after_step` (a resumed run trains those steps again)."""
        with self._lock:
            self._db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, after_step))

    def metrics(self, run_id: str, since_step: int = -1, limit: int | None = None) -> list[dict]:
        """Metric points with step > since_step, in step order."""
        query = "SELECT * FROM metrics WHERE run_id = ? AND step > ? ORDER BY step"
        args: tuple = (run_id, since_step)
        if limit is not None:
            query += " LIMIT ?"
            args += (limit,)
        rows = self._reader().execute(query, args).fetchall()
        return [_row_to_point(row) for row in rows]

    def metrics_between_seq(self, run_id: str, after_seq: int, upto_seq: int) -> list[tuple[int, dict]]:
        """(seq, point) for points announced by events after_seq < seq <= upto_seq, in seq order."""
        rows = (
            self._reader()
            .execute(
                "SELECT * FROM metrics WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq, step",
                (run_id, after_seq, upto_seq),
            )
            .fetchall()
        )
        return [(row["seq"], _row_to_point(row)) for row in rows]

    def metrics_page(self, run_id: str, after: tuple[int, int], upto_seq: int, limit: int) -> list[tuple[int, dict]]:
        """At most `limit` (seq, point) rows after the position `after` = (seq, step), up to
        upto_seq, in (seq, step) order: one page of an event replay (keyset paging, so a
        page costs the same early or late in a long run)."""
        seq, step = after
        rows = (
            self._reader()
            .execute(
                "SELECT * FROM metrics WHERE run_id = ? AND (seq > ? OR (seq = ? AND step > ?)) AND seq <= ?"
                " ORDER BY seq, step LIMIT ?",
                (run_id, seq, seq, step, upto_seq, limit),
            )
            .fetchall()
        )
        return [(row["seq"], _row_to_point(row)) for row in rows]

    # -- run folders (bound to this store's data directory)

    def run_dir(self, run_id: str) -> Path:
        return run_dir(self.data_dir, run_id)

    def snapshot_steps(self, run_id: str) -> list[int]:
        return snapshot_steps(self.data_dir, run_id)

    def latest_snapshot_step(self, run_id: str) -> int | None:
        return latest_snapshot_step(self.data_dir, run_id)

    def read_snapshot(self, run_id: str, step: int, feature_maps: bool = True) -> dict | None:
        return read_snapshot(self.data_dir, run_id, step, feature_maps)

    def read_snapshot_text(self, run_id: str, step: int) -> str | None:
        return read_snapshot_text(self.data_dir, run_id, step)

    def read_snapshot_params(self, run_id: str, step: int) -> dict | None:
        return read_snapshot_params(self.data_dir, run_id, step)

    def read_snapshot_arrays(self, run_id: str, step: int, names) -> dict | None:
        return read_snapshot_arrays(self.data_dir, run_id, step, names)

    def read_checkpoint(self, run_id: str) -> dict | None:
        return read_checkpoint(self.data_dir, run_id)

    def read_monitor(self, run_id: str) -> dict | None:
        return read_monitor(self.data_dir, run_id)

    def write_monitor(self, run_id: str, x, y, classes, spec: dict) -> None:
        write_monitor(self.data_dir, run_id, x, y, classes, spec)


def _as_float(value):
    if value is None:
        return None
    return float(value)
