"""The database of runs, metrics, classes and learners: its tables, its engine (SQLite or PostgreSQL), its migrations.

One schema for both backends, written once as SQLAlchemy Core tables. `make_engine` opens
the SQLite file in the data directory (the embedded default: WAL, the same pragmas as
ever) or the PostgreSQL server of a `postgresql://` URL (distributed mode, through
psycopg 3). `migrate` brings either up to the newest Alembic revision of app/migrations/
at start-up; it is cheap when nothing is to do, and one process at a time does the work
(an advisory lock on PostgreSQL, a lock file beside the SQLite file). A SQLite file made
before migrations existed (the same tables, no `alembic_version`) is recognised and
stamped as the first revision, never created twice.

Which tables live here: `runs` and `metrics` (app/store.py reads and writes them), and
`classes` and `learners` (app/classroom.py's ClassroomStore), in the same database, so every
web process of a course on PostgreSQL sees the same classes. Revision 0002 adds the latter
two, adopting the ones an older kernelscope made in the SQLite file by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

SQLITE_FILE = "kernelscope.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The first revision is the schema the store had before migrations existed.
INITIAL_REVISION = "0001"
# Seconds a PostgreSQL connection attempt may take before the store calls the database unavailable.
CONNECT_TIMEOUT_SECONDS = 5
# Milliseconds a SQLite writer waits for another process's write lock (as before migrations).
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Any fixed 64-bit key: the PostgreSQL advisory lock that lets one process at a time migrate.
_MIGRATION_LOCK_KEY = 0x6B73_6D69_6772_6174

# 64-bit on PostgreSQL (event ids and steps of long runs), plain INTEGER on SQLite (64-bit anyway).
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON text
    sa.Column("meta", sa.Text, nullable=False, server_default="{}"),  # JSON text
    sa.Column("step", BigInt, nullable=False, server_default="0"),
    sa.Column("created", sa.Float, nullable=False),  # unix seconds
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("metrics", sa.Text),  # JSON text of the latest point
    sa.Column("event_seq", BigInt, nullable=False, server_default="0"),
    sa.Column("owner_pid", sa.Integer),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("step", BigInt, primary_key=True),
    sa.Column("seq", BigInt, nullable=False),  # the event that announced the point
    sa.Column("loss", sa.Float),
    sa.Column("acc", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("val_acc", sa.Float),
    sa.Index("metrics_by_seq", "run_id", "seq"),
    sqlite_with_rowid=False,
)

classes = sa.Table(
    "classes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("join_code", sa.Text, nullable=False),
    sa.Column("max_training", sa.Integer, nullable=False),
    sa.Column("max_queued", sa.Integer, nullable=False),
    sa.Column("assignment", sa.Text),  # JSON text
    sa.Column("created", sa.Float, nullable=False),  # unix seconds
)

learners = sa.Table(
    "learners",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("class_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False),  # SHA-256 of the token's secret, hex
    sa.Column("created", sa.Float, nullable=False),
    sa.Index("learners_by_class", "class_id", "created"),
)


def database_url(data_dir: Path | str, url: str | None) -> URL:
    """The URL the store opens: the SQLite file in `data_dir` without `url`, else `url`
    (postgresql:// or postgres://, always through psycopg 3)."""
    if not url:
        return URL.create("sqlite+pysqlite", database=str(Path(data_dir) / SQLITE_FILE))
    parsed = make_url(url)
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        return parsed
    raise ValueError(f"KERNELSCOPE_DATABASE_URL: expected a postgresql:// URL, got a {parsed.drivername}:// one")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def describe(engine: Engine) -> str:
    """The database in words for messages: no user name, no password."""
    url = engine.url
    if is_sqlite(engine):
        return f"SQLite {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"PostgreSQL {url.host or 'localhost'}{port}/{url.database or ''}"


def make_engine(url: URL) -> Engine:
    """An engine for `url`; SQLite connections get WAL and the store's pragmas."""
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10.0})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,  # a server restarted meanwhile: stale connections are replaced, not used
        pool_size=5,
        max_overflow=10,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "kernelscope"},
    )


# ---------------------------------------------------------------- migrations


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision in app/migrations/versions (read once per process)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "app/migrations/versions holds no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """SQLite: a file lock beside the database file, taken before the first connection, since
    switching a new file to WAL (the connect pragmas) fails with "database is locked" while
    another process opens it at the same moment."""
    lock_path = Path(str(engine.url.database) + ".migrate-lock")
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _postgresql_migration_lock(connection: Connection) -> Iterator[None]:
    """PostgreSQL: an advisory lock, held by this connection while it migrates."""
    connection.execute(sa.select(sa.func.pg_advisory_lock(_MIGRATION_LOCK_KEY)))
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.execute(sa.select(sa.func.pg_advisory_unlock(_MIGRATION_LOCK_KEY)))
        connection.commit()


def migrate(engine: Engine) -> str:
    """Upgrade the database to the newest revision; returns what was done: "current" (nothing),
    "upgraded", or "stamped+upgraded" (a SQLite file from before migrations). One process
    migrates at a time; the others wait and then find nothing to do."""
    if is_sqlite(engine):
        with _sqlite_migration_lock(engine), engine.connect() as connection:
            return _migrate(connection)
    head = head_revision()
    with engine.connect() as connection:
        if current_revision(connection) == head:
            return "current"
        connection.rollback()
        with _postgresql_migration_lock(connection):
            return _migrate(connection)


def _migrate(connection: Connection) -> str:
    """The migration itself, under the migration lock."""
    head = head_revision()
    if current_revision(connection) == head:
        return "current"
    from alembic import command

    config = alembic_config(connection)
    done = "upgraded"
    if current_revision(connection) is None and sa.inspect(connection).has_table("runs"):
        _check_premigration_schema(connection)
        command.stamp(config, INITIAL_REVISION)
        done = "stamped+upgraded"
    command.upgrade(config, "head")
    connection.commit()
    return done


def _check_premigration_schema(connection: Connection) -> None:
    """A database with tables but no revision must hold the tables of revision 0001 whole."""
    inspector = sa.inspect(connection)
    for table in (runs, metrics):
        if not inspector.has_table(table.name):
            raise RuntimeError(f"database: table {table.name} is missing; the database is not kernelscope's")
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing = sorted(set(table.c.keys()) - have)
        if missing:
            raise RuntimeError(
                f"database: table {table.name} lacks columns {missing}; the database is not kernelscope's"
            )
