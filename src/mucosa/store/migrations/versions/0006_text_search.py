"""Text search by index on PostgreSQL: a trigram index of the case's name and patient id.

A search for part of a name or a patient id (``q``: ``ILIKE '%…%'`` on both) walked the index of every live case
and tested each (its cost grows with the store; docs/results.md, "Text search by a trigram index").
``ix_cases_text`` is a GIN index of the two columns' trigrams (the ``pg_trgm`` extension, shipped with
PostgreSQL and trusted since PostgreSQL 13: the database's owner may create it): PostgreSQL then finds the few
cases that hold the text, and still walks the listing order for a text most cases hold.

Where the extension cannot be made (not installed, or a role that may not create it), the upgrade says so in the
log and goes on without the index: searches give the same cases, by walking them. SQLite has no such index (its
FTS5 trigram tables, tried by hand, were not kept); its ``LIKE`` walks them.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("mucosa.store.migrations")

INDEX = "ix_cases_text"  # made only where pg_trgm can be (tests/store/test_schema.py leaves it out of its comparison)


def _trigrams() -> bool:
    """Whether pg_trgm is there, or could be made now (in a savepoint: a refusal leaves the upgrade going)."""
    bind = op.get_bind()
    if bind.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first():
        return True
    try:
        with bind.begin_nested():
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        return True
    except DBAPIError as error:
        log.warning("no trigram index for text search (searches walk every case): PostgreSQL's pg_trgm extension "
                    "cannot be created here (%s); the database's owner can run CREATE EXTENSION pg_trgm before "
                    "`mucosa store upgrade`", str(error.orig).splitlines()[0])
        return False


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql" or not _trigrams():
        return
    op.create_index(INDEX, "cases", ["name", "patient"], postgresql_using="gin",
                    postgresql_ops={"name": "gin_trgm_ops", "patient": "gin_trgm_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {INDEX}")
