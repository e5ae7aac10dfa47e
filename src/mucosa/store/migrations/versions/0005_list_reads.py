"""What a list of cases reads, kept by the database itself: each case's version and the count of live cases.

- ``cases.version`` grows by one with every change of the case's row, whatever makes it. A server keeps what a
  list shows of a finished case (its summary, checked and written as JSON) by the case's id and version, and
  reads the row again only when the version has changed (:mod:`mucosa.service.summaries`). A trigger keeps it,
  so that no writer, in this server or another sharing the store, can change a case and leave its version
  behind: on SQLite an ``AFTER UPDATE`` trigger sets it one higher (when the update did not set it), on
  PostgreSQL a ``BEFORE UPDATE`` trigger does the same to the new row. A write that sets the version itself (a
  review, which may change no other column of the case) is left as it is.
- ``case_counts.live``: how many cases are not deleted, one row kept by triggers on adding, deleting (setting
  ``deleted_at``) and removing a case. A list of every case read its count by walking the 10,000 entries of an
  index on each page; it reads one row now, whatever
  the store's size.

A later revision that rebuilds ``cases`` (Alembic's batch mode on SQLite copies the table and drops its triggers)
must create these triggers again: ``tests/store/test_schema.py`` checks that the store at head has them.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SQLITE = [
    """CREATE TRIGGER cases_version AFTER UPDATE ON cases FOR EACH ROW WHEN NEW.version = OLD.version
       BEGIN UPDATE cases SET version = OLD.version + 1 WHERE id = OLD.id; END""",
    """CREATE TRIGGER cases_count_add AFTER INSERT ON cases FOR EACH ROW WHEN NEW.deleted_at IS NULL
       BEGIN UPDATE case_counts SET live = live + 1 WHERE id = 1; END""",
    """CREATE TRIGGER cases_count_delete AFTER UPDATE OF deleted_at ON cases FOR EACH ROW
       WHEN (OLD.deleted_at IS NULL) != (NEW.deleted_at IS NULL)
       BEGIN UPDATE case_counts SET live = live + (CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE -1 END) WHERE id = 1;
       END""",
    """CREATE TRIGGER cases_count_remove AFTER DELETE ON cases FOR EACH ROW WHEN OLD.deleted_at IS NULL
       BEGIN UPDATE case_counts SET live = live - 1 WHERE id = 1; END""",
]
_POSTGRESQL = [
    """CREATE FUNCTION cases_version() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           IF NEW.version = OLD.version THEN
               NEW.version := OLD.version + 1;
           END IF;
           RETURN NEW;
       END $$""",
    "CREATE TRIGGER cases_version BEFORE UPDATE ON cases FOR EACH ROW EXECUTE FUNCTION cases_version()",
    """CREATE FUNCTION cases_count() RETURNS trigger LANGUAGE plpgsql AS $$
       DECLARE
           change integer := 0;
       BEGIN
           IF TG_OP = 'INSERT' THEN
               change := CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE 0 END;
           ELSIF TG_OP = 'DELETE' THEN
               change := CASE WHEN OLD.deleted_at IS NULL THEN -1 ELSE 0 END;
           ELSIF (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) THEN
               change := CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE -1 END;
           END IF;
           IF change <> 0 THEN
               UPDATE case_counts SET live = live + change WHERE id = 1;
           END IF;
           RETURN NULL;
       END $$""",
    ("CREATE TRIGGER cases_count AFTER INSERT OR UPDATE OF deleted_at OR DELETE ON cases FOR EACH ROW "
     "EXECUTE FUNCTION cases_count()"),
]


def upgrade() -> None:
    op.add_column("cases", sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    op.create_table("case_counts", sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("live", sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint("id", name="pk_case_counts"))
    op.execute("INSERT INTO case_counts (id, live) SELECT 1, count(*) FROM cases WHERE deleted_at IS NULL")
    for statement in _POSTGRESQL if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER cases_count ON cases")
        op.execute("DROP TRIGGER cases_version ON cases")
        op.execute("DROP FUNCTION cases_count()")
        op.execute("DROP FUNCTION cases_version()")
    else:
        for trigger in ("cases_version", "cases_count_add", "cases_count_delete", "cases_count_remove"):
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("case_counts")
    op.drop_column("cases", "version")
