"""Alembic's entry point for kernelscope's migrations: runs them on the connection app/database.py hands over.

kernelscope runs migrations itself at start-up (app/database.migrate), so there is no
alembic.ini. The `alembic` command works too, with an ini file whose `script_location`
is this folder and the database given as `-x url=postgresql+psycopg://user@host/db`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from app.database import metadata

config = context.config


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database as -x url=... (app/database.migrate needs none)")
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        run_migrations(connection)
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against the database")
main()
