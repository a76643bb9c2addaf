"""Runs and their metric points: the schema app/store.py created before migrations existed.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

Written out here (not imported from app/database.py) so that this revision stays what it
was when app/database.py moves on. A SQLite file made before migrations already holds
these tables; app/database.migrate stamps it as 0001 instead of running this.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
        sa.Column("step", BigInt, nullable=False, server_default="0"),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("metrics", sa.Text),
        sa.Column("event_seq", BigInt, nullable=False, server_default="0"),
        sa.Column("owner_pid", sa.Integer),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("step", BigInt, primary_key=True),
        sa.Column("seq", BigInt, nullable=False),
        sa.Column("loss", sa.Float),
        sa.Column("acc", sa.Float),
        sa.Column("val_loss", sa.Float),
        sa.Column("val_acc", sa.Float),
        sqlite_with_rowid=False,
    )
    op.create_index("metrics_by_seq", "metrics", ["run_id", "seq"])


def downgrade() -> None:
    op.drop_index("metrics_by_seq", table_name="metrics")
    op.drop_table("metrics")
    op.drop_table("runs")
