"""Cases as lists read them: a page of cases, its count and its filters without the per-frame detail.

- ``cases.summary``: what a list of cases shows (the verdict as the viewer words it, frames dropped, frame
  rate, start time), small.
- ``case_details``: the per-frame detail (timeline) of each finished case, moved out of ``cases`` so that a
  scan or a page of cases never reads it (SQLite keeps a large value inline with the rest of its row).
- ``cases.reviewed``: whether the case has a review (set with its first review; reviews are never removed),
  and the index ``ix_cases_listing`` (live cases, newest first) that pages and counts walk.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _drop_detail() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35, 0):
        with op.batch_alter_table("cases") as batch:  # no DROP COLUMN before SQLite 3.35: the table is copied
            batch.drop_column("detail")
    else:
        op.drop_column("cases", "detail")


def upgrade() -> None:
    op.create_table(
        "case_details",
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id", name="fk_case_details_case_id"), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("case_id", name="pk_case_details"),
    )
    op.execute("INSERT INTO case_details (case_id, detail) SELECT id, detail FROM cases WHERE detail IS NOT NULL")
    op.add_column("cases", sa.Column("summary", sa.JSON(), nullable=True))
    op.add_column("cases", sa.Column("reviewed", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE cases SET reviewed = EXISTS (SELECT 1 FROM reviews WHERE reviews.case_id = cases.id)")
    op.create_index("ix_cases_listing", "cases", ["deleted_at", "created_at", "id"])
    _drop_detail()


def downgrade() -> None:
    op.add_column("cases", sa.Column("detail", sa.JSON(), nullable=True))
    op.execute("UPDATE cases SET detail = (SELECT detail FROM case_details WHERE case_details.case_id = cases.id)")
    op.drop_index("ix_cases_listing", "cases")
    op.drop_column("cases", "reviewed")
    op.drop_column("cases", "summary")
    op.drop_table("case_details")
