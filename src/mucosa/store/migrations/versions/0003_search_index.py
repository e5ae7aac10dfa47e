"""Searches that read no case row: the index ``ix_cases_search`` holds, after the listing order (live cases,
newest first), every column a search filters on (verdict, day, reviewed, status, patient, name). A page of
ids and its count walk it alone; only the page's rows are then read. It replaces ``ix_cases_listing``, which
was its first three columns.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SEARCHED = ["deleted_at", "created_at", "id", "verdict", "day", "reviewed", "status", "patient", "name"]


def upgrade() -> None:
    op.create_index("ix_cases_search", "cases", SEARCHED)
    op.drop_index("ix_cases_listing", "cases")


def downgrade() -> None:
    op.create_index("ix_cases_listing", "cases", ["deleted_at", "created_at", "id"])
    op.drop_index("ix_cases_search", "cases")
