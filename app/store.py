"""Persistence of runs: SQLite for runs and metrics, a folder per run for files.

Layout of the data directory (KERNELSCOPE_DATA):

    kernelscope.db                       runs + metrics (SQLite, WAL mode)
    runs/<id>/snapshots/<step>.json      snapshot JSON without feature maps
    runs/<id>/snapshots/<step>.maps.npz  feature maps of that snapshot, one array per conv layer index
    runs/<id>/snapshots/<step>.npz       model parameters at that step (state-dict names)
    runs/<id>/checkpoint.npz             latest Trainer.checkpoint()

Every file is written atomically (temp file in the same folder + os.replace), so
a reader or a restarted server never sees half a file; the server sweeps temp files
that a killed writer left behind when it starts. Every file is also checked when it
is read (JSON must parse, an npz must unzip with its CRCs intact): a file damaged
behind the server's back (a bad disk, a hand edit, a copy cut short) raises
DamagedFile naming the run, the step and the file, never bad data. Each metrics row carries
the event sequence number (`seq`) of the stream event that announced it, which
is how `Last-Event-ID` replays missed metrics. One connection is shared by the
server's threads behind a lock; other processes (the CLI) open their own.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

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


# ---------------------------------------------------------------- damaged files


class DamagedFile(Exception):
    """A stored file of a run exists but cannot be read as what it should be."""

    def __init__(self, run_id: str, what: str, step: int | None, path: Path, reason: str):
        self.run_id, self.what, self.step, self.path, self.reason = run_id, what, step, Path(path), reason
        at = f" step {step}" if step is not None else ""
        super().__init__(f"{what}: run {run_id}{at}: the stored file {self.path.name} is damaged ({reason})")


def _load_npz(path: Path, run_id: str, what: str, step: int | None) -> dict[str, np.ndarray] | None:
    """Every array of an npz file (None when absent); DamagedFile when it does not load whole.

    Reading each member checks its zip CRC, so a garbled byte is found, not only a cut.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        return None
    except Exception as error:  # BadZipFile, EOFError, ValueError, zlib.error, OSError: all mean damage
        raise DamagedFile(run_id, what, step, path, f"{type(error).__name__}: {error}") from None


class StorageFull(Exception):
    """The disk cannot take what a request would write (HTTP 507)."""


def is_disk_full(error: BaseException) -> bool:
    """True for 'no space left' (or quota) from a file write or from SQLite."""
    if isinstance(error, StorageFull):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error).lower()


# ---------------------------------------------------------------- atomic files

# A temp file of an atomic write older than this (seconds) was left by a killed writer.
TEMP_FILE_MAX_AGE = 3600.0


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, dumps_json(obj).encode("utf-8"))


def write_npz_atomic(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    # mypy takes any **mapping as possibly filling savez's `allow_pickle: bool`; the keys are array names
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})  # type: ignore[arg-type]
    write_bytes_atomic(path, buffer.getvalue())


def json_safe(obj):
    """The value with NaN/inf as None (JSON has no infinity; browsers' JSON.parse rejects it)
    and numpy arrays and scalars as lists and numbers: the one NaN-to-None cleaner."""
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj) -> str:
    """Compact JSON; falls back to cleaning NaN/inf/numpy values only when needed."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------- run folders


def run_dir(data_dir: Path, run_id: str) -> Path:
    return Path(data_dir) / "runs" / run_id


def snapshot_dir(data_dir: Path, run_id: str) -> Path:
    return run_dir(data_dir, run_id) / "snapshots"


def checkpoint_path(data_dir: Path, run_id: str) -> Path:
    return run_dir(data_dir, run_id) / "checkpoint.npz"


def write_snapshot(data_dir: Path, run_id: str, snapshot: dict, params: dict, feature_maps: dict | None = None) -> int:
    """Store one snapshot: JSON without feature maps, the maps as arrays, params as npz.

    feature_maps: {conv layer index: array (probes, out, H, W)}; when None they
    are taken from the snapshot's layers (nested lists, as Trainer.snapshot gives).
    Arrays are stored rather than JSON because encoding the maps as text cost
    the training process more than the rest of the snapshot together.
    The params and maps are written first and the main JSON last, so a step
    is listed only once all its files exist.
    """
    folder = snapshot_dir(data_dir, run_id)
    step = int(snapshot["step"])
    light = dict(snapshot)
    light_layers = []
    maps = {} if feature_maps is None else {str(k): np.asarray(v, np.float32) for k, v in feature_maps.items()}
    for layer in snapshot.get("layers", []):
        layer = dict(layer)
        if "feature_maps" in layer:
            values = layer.pop("feature_maps")
            maps.setdefault(str(layer.get("index")), np.asarray(values, dtype=np.float32))
        light_layers.append(layer)
    light["layers"] = light_layers
    write_npz_atomic(folder / f"{step}.npz", params)
    write_npz_atomic(folder / f"{step}.maps.npz", maps)
    write_json_atomic(folder / f"{step}.json", light)
    return step


def snapshot_steps(data_dir: Path, run_id: str) -> list[int]:
    folder = snapshot_dir(data_dir, run_id)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    steps = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if ext == "json" and stem.isascii() and stem.isdigit():
            steps.append(int(stem))
    steps.sort()
    return steps


def latest_snapshot_step(data_dir: Path, run_id: str) -> int | None:
    steps = snapshot_steps(data_dir, run_id)
    return steps[-1] if steps else None


def read_snapshot_text(data_dir: Path, run_id: str, step: int) -> str | None:
    """The stored snapshot JSON (without feature maps) as text, or None if absent.

    The text is parsed once to check it (DamagedFile if it is not one whole JSON object).
    """
    return _snapshot_json(data_dir, run_id, step)[0]


def _snapshot_json(data_dir: Path, run_id: str, step: int) -> tuple[str | None, dict | None]:
    path = snapshot_dir(data_dir, run_id) / f"{step}.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        text = raw.decode("utf-8")
        value = json.loads(text)
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DamagedFile(run_id, "snapshot", step, path, f"not valid JSON: {error}") from None
    if not isinstance(value, dict) or value.get("step") != step or not isinstance(value.get("layers"), list):
        raise DamagedFile(run_id, "snapshot", step, path, "not a snapshot of this step")
    return text, value


def read_snapshot(data_dir: Path, run_id: str, step: int, feature_maps: bool = True) -> dict | None:
    """One snapshot as a dict (the engine's snapshot JSON), or None if absent.

    Feature maps come back as nested lists rounded like Trainer.snapshot rounds them.
    """
    text, snapshot = _snapshot_json(data_dir, run_id, step)
    if snapshot is None:
        return None
    if feature_maps:
        from engine.analysis import rounded
        from engine.analyst import FEATURE_MAP_DIGITS

        maps = _load_npz(snapshot_dir(data_dir, run_id) / f"{step}.maps.npz", run_id, "snapshot", step) or {}
        for layer in snapshot.get("layers", []):
            key = str(layer.get("index"))
            if key in maps:
                layer["feature_maps"] = rounded(maps[key], FEATURE_MAP_DIGITS)
    return snapshot


def read_snapshot_params(data_dir: Path, run_id: str, step: int) -> dict[str, np.ndarray] | None:
    return _load_npz(snapshot_dir(data_dir, run_id) / f"{step}.npz", run_id, "snapshot", step)


def read_checkpoint(data_dir: Path, run_id: str) -> dict[str, np.ndarray] | None:
    """The run's checkpoint arrays, None without one; DamagedFile when it does not load whole
    or has no step."""
    path = checkpoint_path(data_dir, run_id)
    checkpoint = _load_npz(path, run_id, "checkpoint", None)
    if checkpoint is not None:
        if "step" not in checkpoint:
            raise DamagedFile(run_id, "checkpoint", None, path, "it has no step")
    return checkpoint


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

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_row_to_point(row) for row in rows]

    def metrics_between_seq(self, run_id: str, after_seq: int, upto_seq: int) -> list[tuple[int, dict]]:
        """(seq, point) for points announced by events after_seq < seq <= upto_seq, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM metrics WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq, step",
                (run_id, after_seq, upto_seq),
            ).fetchall()
        return [(row["seq"], _row_to_point(row)) for row in rows]

    def metrics_page(self, run_id: str, after: tuple[int, int], upto_seq: int, limit: int) -> list[tuple[int, dict]]:
        """At most `limit` (seq, point) rows after the position `after` = (seq, step), up to
        upto_seq, in (seq, step) order: one page of an event replay (keyset paging, so a
        page costs the same early or late in a long run)."""
        seq, step = after
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM metrics WHERE run_id = ? AND (seq > ? OR (seq = ? AND step > ?)) AND seq <= ?"
                " ORDER BY seq, step LIMIT ?",
                (run_id, seq, seq, step, upto_seq, limit),
            ).fetchall()
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

    def read_checkpoint(self, run_id: str) -> dict | None:
        return read_checkpoint(self.data_dir, run_id)


def _as_float(value):
    if value is None:
        return None
    return float(value)
