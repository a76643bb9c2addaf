"""Classes and learners join runs and metrics in the shared database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Before this revision app/classroom.py made these two tables itself (`CREATE TABLE IF NOT
EXISTS`) in the SQLite file only, so a course on PostgreSQL had its classes in each web
process's own file. A SQLite file that already holds them keeps them, rows and all: the
revision adopts a table whose columns are all there (and adds the index if it lacks it)
instead of creating it. The old DDL made the same columns with the same SQLite types.
Written out here, not imported from app/database.py, so that it stays what it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CLASSES_COLUMNS = ("id", "name", "join_code", "max_training", "max_queued", "assignment", "created")
LEARNERS_COLUMNS = ("id", "class_id", "name", "token_hash", "created")


def _adopted(table: str, columns: tuple[str, ...]) -> bool:
    """True when `table` is already there with all of `columns` (made by the old classroom code);
    a table of that name without them is not kernelscope's, and the migration stops."""
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(table):
        return False
    have = {column["name"] for column in inspector.get_columns(table)}
    missing = sorted(set(columns) - have)
    if missing:
        raise RuntimeError(f"database: table {table} lacks columns {missing}; the database is not kernelscope's")
    return True


def upgrade() -> None:
    if not _adopted("classes", CLASSES_COLUMNS):
        op.create_table(
            "classes",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("join_code", sa.Text, nullable=False),
            sa.Column("max_training", sa.Integer, nullable=False),
            sa.Column("max_queued", sa.Integer, nullable=False),
            sa.Column("assignment", sa.Text),
            sa.Column("created", sa.Float, nullable=False),
        )
    if not _adopted("learners", LEARNERS_COLUMNS):
        op.create_table(
            "learners",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("class_id", sa.Text, nullable=False),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("token_hash", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
        )
    indexes = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("learners")}
    if "learners_by_class" not in indexes:
        op.create_index("learners_by_class", "learners", ["class_id", "created"])


def downgrade() -> None:
    op.drop_index("learners_by_class", table_name="learners")
    op.drop_table("learners")
    op.drop_table("classes")
