"""A class: its learners, their tokens, who may do what to which run, and their quotas.

A teacher (the server token, or anyone when the server has no token) creates a
class and gets a join code. A learner joins with the code and a display name
and gets a learner token `<learner id>.<secret>` (secrets.token_urlsafe,
limits.LEARNER_TOKEN_BYTES random bytes); only a SHA-256 of the secret is
stored, compared with hmac.compare_digest. Neither codes nor tokens are logged.

Who is asking (`Caller`, app/caller.py) is decided once per request by
security.RequestGuard and kept in the context variable `CALLER`, so the run lookup
(`check_run_access`, from app/deps.py) and the run manager's `QuotaGate` read
it without any route passing it along:

- the teacher may do everything;
- a learner reads the runs of their class and runs outside any class, controls
  (pause, resume, stop, delete, fork, kernel edits) only their own runs (403),
  and never sees another class's runs (404, as if they did not exist);
- an anonymous reader (only when the server has a token) reads runs outside classes.

A learner's run carries `meta.owner = {"class", "learner", "name"}`. Quotas per
class: at most `max_training` of a learner's runs training (running or paused;
the scheduler skips their queued runs meanwhile) and `max_queued` waiting (429
with Retry-After beyond). Without a class none of this changes anything.

The tables, `classes` and `learners`, live in the runs' database (app/database.py: the
SQLite file by default, PostgreSQL with KERNELSCOPE_DATABASE_URL), so a class made through
one web process is joined, shown and exported through any other.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import secrets
import time
import unicodedata
import uuid
from pathlib import Path

import sqlalchemy as sa

from app import limits
from app.caller import ANONYMOUS, CALLER, SESSION_COOKIE, TEACHER, Caller, current, identify  # noqa: F401 (re-exported)
from app.database import classes as CLASSES
from app.database import learners as LEARNERS
from app.runs import QueueFull
from app.store import DatabaseClient

JOIN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 symbols, no 0/O or 1/I look-alikes
TRAINING_STATUSES = ("running", "paused")


# ---------------------------------------------------------------- errors (answered by app/errors.py)


class Forbidden(Exception):
    """403: the caller may read this but not change it (a learner and another's run)."""


class BadJoinCode(Exception):
    """401: no class has this join code (answered after limits.JOIN_FAIL_DELAY_SECONDS)."""


class QuotaExceeded(QueueFull):
    """429 with Retry-After: a learner is at their class's quota (a QueueFull, so a comparison
    that hits it midway undoes the runs it started)."""

    def __init__(self, message: str, retry_after: int = limits.QUOTA_RETRY_AFTER_SECONDS):
        super().__init__(message)
        self.retry_after = retry_after


class ClassNotFound(KeyError):
    """404: no such class (or not one the caller may see)."""


# ---------------------------------------------------------------- access to runs


def run_class(run: dict) -> str | None:
    owner = (run.get("meta") or {}).get("owner")
    return owner.get("class") if isinstance(owner, dict) else None


def run_learner(run: dict) -> str | None:
    owner = (run.get("meta") or {}).get("owner")
    return owner.get("learner") if isinstance(owner, dict) else None


def can_read(caller: Caller, run: dict) -> bool:
    klass = run_class(run)
    if caller.is_teacher or klass is None:
        return True
    return caller.is_learner and caller.learner["class"] == klass


def check_run_access(caller: Caller, run: dict, changes: bool, not_found) -> None:
    """Raise `not_found` (the store's RunNotFound) for a run the caller may not see, Forbidden
    for one they may see but not change."""
    if not can_read(caller, run):
        raise not_found
    if changes and caller.is_learner and run_learner(run) != caller.learner["id"]:
        raise Forbidden(
            f"run_id: run {run['id']} is not yours; a learner controls only their own runs "
            "(pause, resume, stop, delete, fork, kernel edits) and reads the others'"
        )


def visible_runs(caller: Caller, runs: list[dict]) -> list[dict]:
    return [run for run in runs if can_read(caller, run)]


# ---------------------------------------------------------------- input


def clean_name(field_name: str, value, limit: int) -> str:
    """A display or class name: trimmed, 1..limit characters, no control characters (ValueError naming the field)."""
    if not isinstance(value, str):
        raise ValueError(f"{field_name}: must be text")
    text = value.strip()
    if not text:
        raise ValueError(f"{field_name}: must not be empty")
    if len(text) > limit:
        raise ValueError(f"{field_name}: at most {limit} characters, got {len(text)}")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text):
        raise ValueError(f"{field_name}: must not contain control characters")
    return text


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_quota_values(max_training: int, max_queued: int) -> None:
    if not (isinstance(max_training, int) and 1 <= max_training <= limits.MAX_CLASS_MAX_TRAINING):
        raise ValueError(
            f"max_training: must be an integer from 1 to {limits.MAX_CLASS_MAX_TRAINING}, got {max_training!r}"
        )
    if not (isinstance(max_queued, int) and 1 <= max_queued <= limits.MAX_CLASS_MAX_QUEUED):
        raise ValueError(f"max_queued: must be an integer from 1 to {limits.MAX_CLASS_MAX_QUEUED}, got {max_queued!r}")


# ---------------------------------------------------------------- the tables (app/database.py)


def _class_row(row) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "join_code": row["join_code"],
        "max_training": row["max_training"],
        "max_queued": row["max_queued"],
        "assignment": json.loads(row["assignment"]) if row["assignment"] else None,
        "created": row["created"],
    }


def _learner_row(row) -> dict:
    return {"id": row["id"], "class": row["class_id"], "name": row["name"], "created": row["created"]}


_SELECT_CLASS = sa.select(CLASSES).where(CLASSES.c.id == sa.bindparam("p_id"))
_LOCK_CLASS = sa.select(CLASSES.c.id).where(CLASSES.c.id == sa.bindparam("p_id")).with_for_update()  # SQLite: no-op
_LIST_CLASSES = sa.select(CLASSES).order_by(CLASSES.c.created, CLASSES.c.id)
_ANY_CLASS = sa.select(CLASSES.c.id).limit(1)
_INSERT_CLASS = CLASSES.insert().values({column.name: sa.bindparam(column.name) for column in CLASSES.c})
_SET_ASSIGNMENT = (
    CLASSES.update().where(CLASSES.c.id == sa.bindparam("p_id")).values(assignment=sa.bindparam("p_assignment"))
)
_SELECT_LEARNER = sa.select(LEARNERS).where(LEARNERS.c.id == sa.bindparam("p_id"))
_LEARNERS_OF_CLASS = (
    sa.select(LEARNERS)
    .where(LEARNERS.c.class_id == sa.bindparam("p_class"))
    .order_by(LEARNERS.c.created, LEARNERS.c.id)
)
_INSERT_LEARNER = LEARNERS.insert().values({column.name: sa.bindparam(column.name) for column in LEARNERS.c})


class ClassroomStore(DatabaseClient):
    """Classes and learners in the runs' database (app/database.py's `classes` and `learners`):
    the SQLite file in `data_dir` by default, PostgreSQL at `database_url`, so every web process
    of a course sees the same classes. Its own connections, opened and migrated as the Store's
    (app/store.py DatabaseClient; the migration is a no-op once the Store has run it): on SQLite
    one connection behind a lock, each statement's SQLite text run on the sqlite3 driver (a
    learner token is looked up on every request of a learner); on PostgreSQL a pooled
    connection. An unreachable PostgreSQL is the store's DatabaseUnavailable (503)."""

    def __init__(self, data_dir: Path | str, database_url: str | None = None):
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir, database_url)

    def _rows(self, statement, **params) -> list:
        with self._session() as session:
            return session.rows(statement, params)

    # -- classes

    def create_class(
        self,
        name,
        max_training: int = limits.DEFAULT_CLASS_MAX_TRAINING,
        max_queued: int = limits.DEFAULT_CLASS_MAX_QUEUED,
    ) -> dict:
        name = clean_name("name", name, limits.MAX_CLASS_NAME_LENGTH)
        check_quota_values(max_training, max_queued)
        row = {
            "id": uuid.uuid4().hex[:10],
            "name": name,
            "join_code": "".join(secrets.choice(JOIN_ALPHABET) for _ in range(limits.JOIN_CODE_LENGTH)),
            "max_training": max_training,
            "max_queued": max_queued,
            "assignment": None,
            "created": time.time(),
        }
        with self._session(transaction=True) as session:
            session.write(_INSERT_CLASS, row)
        return _class_row(row)

    def get_class(self, class_id: str) -> dict:
        rows = self._rows(_SELECT_CLASS, p_id=class_id)
        if not rows:
            raise ClassNotFound(class_id)
        return _class_row(rows[0])

    def list_classes(self) -> list[dict]:
        return [_class_row(row) for row in self._rows(_LIST_CLASSES)]

    def has_classes(self) -> bool:
        return bool(self._rows(_ANY_CLASS))

    def set_assignment(self, class_id: str, assignment: dict | None) -> dict:
        text = json.dumps(assignment) if assignment else None
        with self._session(transaction=True) as session:
            changed = session.write(_SET_ASSIGNMENT, {"p_id": class_id, "p_assignment": text})
        if not changed:
            raise ClassNotFound(class_id)
        return self.get_class(class_id)

    # -- learners

    def class_for_code(self, code) -> dict | None:
        """The class whose join code this is; every code is compared in constant time."""
        if not isinstance(code, str):
            return None
        given = code.strip().upper().encode()
        found = None
        for klass in self.list_classes():
            if hmac.compare_digest(given, klass["join_code"].encode()):
                found = klass
        return found

    def join(self, code, name) -> tuple[dict, str]:
        """(learner, token) for a valid code; BadJoinCode otherwise; ValueError for a bad name.

        The count of the class's learners and the insert are one transaction that holds the
        class's write lock (BEGIN IMMEDIATE on SQLite, the class's row FOR UPDATE on
        PostgreSQL), so joins at the same moment, on any web process, never pass
        limits.MAX_LEARNERS_PER_CLASS nor take one display name twice."""
        klass = self.class_for_code(code)
        if klass is None:
            raise BadJoinCode("code: no class has this join code")
        name = clean_name("name", name, limits.MAX_DISPLAY_NAME_LENGTH)
        learner_id = uuid.uuid4().hex[:12]
        secret = secrets.token_urlsafe(limits.LEARNER_TOKEN_BYTES)
        row = {
            "id": learner_id,
            "class_id": klass["id"],
            "name": name,
            "token_hash": _digest(secret),
            "created": time.time(),
        }
        with self._session(transaction=True) as session:
            if not session.rows(_LOCK_CLASS, {"p_id": klass["id"]}):  # gone meanwhile
                raise BadJoinCode("code: no class has this join code")
            taken = [
                learner["name"].casefold() for learner in session.rows(_LEARNERS_OF_CLASS, {"p_class": klass["id"]})
            ]
            if len(taken) >= limits.MAX_LEARNERS_PER_CLASS:
                raise ValueError(f"code: this class is full ({limits.MAX_LEARNERS_PER_CLASS} learners at most)")
            if name.casefold() in taken:
                raise ValueError(f"name: {name!r} is taken in this class; choose another display name")
            session.write(_INSERT_LEARNER, row)
        return _learner_row(row), f"{learner_id}.{secret}"

    def get_learner(self, learner_id: str) -> dict | None:
        rows = self._rows(_SELECT_LEARNER, p_id=learner_id)
        return _learner_row(rows[0]) if rows else None

    def learner_for_token(self, token: str) -> dict | None:
        learner_id, dot, secret = token.partition(".")
        if not dot or not secret or len(learner_id) > 64:
            return None
        rows = self._rows(_SELECT_LEARNER, p_id=learner_id)
        if not rows or not hmac.compare_digest(_digest(secret).encode(), rows[0]["token_hash"].encode()):
            return None
        return _learner_row(rows[0])

    def learners(self, class_id: str) -> list[dict]:
        return [_learner_row(row) for row in self._rows(_LEARNERS_OF_CLASS, p_class=class_id)]


# ---------------------------------------------------------------- quotas


class QuotaGate:
    """What RunManager asks (under its lock) when a run is created and when a queued run could start."""

    def __init__(self, classroom: ClassroomStore):
        self.classroom = classroom

    def _counts(self, store, learner_id: str) -> dict[str, int]:
        counts = {"training": 0, "queued": 0}
        for run in store.list_runs():
            if run_learner(run) == learner_id:
                if run["status"] in TRAINING_STATUSES:
                    counts["training"] += 1
                elif run["status"] == "queued":
                    counts["queued"] += 1
        return counts

    def admit(self, store, meta: dict | None) -> dict | None:
        """The run's meta with its owner, if a learner asks; QuotaExceeded when their queue is full."""
        caller = current()
        if not caller.is_learner:
            return meta
        klass = self.classroom.get_class(caller.learner["class"])
        counts = self._counts(store, caller.learner["id"])
        # A learner with max_queued runs waiting would wait with one more: the scheduler starts
        # their queued runs, oldest first, whenever they are under max_training and a slot is free.
        if counts["queued"] >= klass["max_queued"]:
            raise QuotaExceeded(
                f"quota: you have {counts['training']} run(s) training and {counts['queued']} queued; "
                f"class {klass['name']!r} allows each learner at most {klass['max_training']} training and "
                f"{klass['max_queued']} queued (max_queued); retry when one of your runs ends "
                f"(about {limits.QUOTA_RETRY_AFTER_SECONDS} s), or stop one"
            )
        owner = {"class": klass["id"], "learner": caller.learner["id"], "name": caller.learner["name"]}
        return {**(meta or {}), "owner": owner}

    def may_start(self, store, run_id: str) -> bool:
        """False while the run's learner already has max_training runs training."""
        try:
            run = store.get_run(run_id)
        except KeyError:
            return True  # gone: the scheduler skips it itself
        learner, klass_id = run_learner(run), run_class(run)
        if learner is None or klass_id is None:
            return True
        try:
            klass = self.classroom.get_class(klass_id)
        except ClassNotFound:
            return True
        return self._counts(store, learner)["training"] < klass["max_training"]


# ---------------------------------------------------------------- the wall and the export


def _conv1(snapshot: dict | None) -> dict | None:
    if not snapshot:
        return None
    convs = [layer for layer in snapshot.get("layers", []) if layer.get("type") == "conv"]
    return min(convs, key=lambda layer: layer["index"]) if convs else None


def detector_counts(conv: dict | None) -> dict[str, int]:
    """Filters of a conv layer whose best detector beats chance, by label."""
    counts: dict[str, int] = {}
    for entry in (conv or {}).get("detectors", []):
        if entry.get("beats_chance"):
            counts[entry["label"]] = counts.get(entry["label"], 0) + 1
    return dict(sorted(counts.items()))


def init_name(config: dict) -> str:
    init = config.get("init")
    if isinstance(init, dict):
        return str(init.get("name", "?"))
    return str(init)


def latest_runs(store, class_id: str) -> dict[str, dict]:
    """{learner id: that learner's latest run in the class}."""
    latest: dict[str, dict] = {}
    for run in store.list_runs():  # oldest first: later ones replace
        learner = run_learner(run)
        if learner is not None and run_class(run) == class_id:
            latest[learner] = run
    return latest


def snapshot_at(store, run_id: str, step: int | None) -> int | None:
    """The run's snapshot step at or before `step` (its latest when None)."""
    steps = store.snapshot_steps(run_id)
    if step is not None:
        steps = [s for s in steps if s <= step]
    return steps[-1] if steps else None


def wall_tile(store, learner: dict, run: dict | None, step: int | None = None) -> dict:
    """One learner's tile: their latest run's conv1 at `step` (latest when None), init, step, loss, symmetry."""
    tile = {"learner": learner["id"], "name": learner["name"], "run": None}
    if run is None:
        return tile
    shown = snapshot_at(store, run["id"], step)
    snapshot = store.read_snapshot(run["id"], shown, feature_maps=False) if shown is not None else None
    conv = _conv1(snapshot)
    metrics = run.get("metrics") or {}
    tile["run"] = {
        "id": run["id"],
        "status": run["status"],
        "init": init_name(run["config"]),
        "step": run["step"],
        "steps": run["config"].get("steps"),
        "loss": metrics.get("loss"),
        "acc": metrics.get("acc"),
        "snapshot_step": shown,
        "weight": conv["weight"] if conv else None,
        "symmetry": conv.get("symmetry") if conv else None,
        "detectors": detector_counts(conv),
    }
    return tile


def wall(store, classroom: ClassroomStore, class_id: str, step: int | None = None) -> dict:
    latest = latest_runs(store, class_id)
    tiles = [wall_tile(store, learner, latest.get(learner["id"]), step) for learner in classroom.learners(class_id)]
    return {"class": class_id, "step": step, "tiles": tiles}


def _csv_cell(value) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


CSV_COLUMNS = [
    "learner",
    "learner_id",
    "run_id",
    "status",
    "init",
    "step",
    "steps",
    "final_acc",
    "final_val_acc",
    "conv1_detectors",
    "conv1_detector_labels",
]


def export_csv(store, classroom: ClassroomStore, class_id: str) -> str:
    """One row per run of each learner (a learner without runs gets one row with empty run fields)."""
    by_learner: dict[str, list[dict | None]] = {}
    for run in store.list_runs():
        learner_id = run_learner(run)
        if learner_id is not None and run_class(run) == class_id:
            by_learner.setdefault(learner_id, []).append(run)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for learner in classroom.learners(class_id):
        runs = by_learner.get(learner["id"]) or [None]
        for run in runs:
            if run is None:
                writer.writerow([_csv_cell(learner["name"]), learner["id"]] + [""] * (len(CSV_COLUMNS) - 2))
                continue
            latest = store.latest_snapshot_step(run["id"])
            conv = _conv1(store.read_snapshot(run["id"], latest, feature_maps=False)) if latest is not None else None
            counts = detector_counts(conv)
            metrics = run.get("metrics") or {}
            writer.writerow(
                [
                    _csv_cell(v)
                    for v in (
                        learner["name"],
                        learner["id"],
                        run["id"],
                        run["status"],
                        init_name(run["config"]),
                        run["step"],
                        run["config"].get("steps"),
                        metrics.get("acc"),
                        metrics.get("val_acc"),
                        sum(counts.values()),
                        " ".join(f"{label}:{n}" for label, n in counts.items()),
                    )
                ]
            )
    return out.getvalue()
