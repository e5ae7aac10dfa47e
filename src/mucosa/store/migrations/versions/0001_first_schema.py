"""The first schema: users, cases, jobs, reviews and the audit log; reviews and the audit log are append-only.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("reviews", "audit_log")
STATES = "'queued', 'running', 'done', 'failed', 'cancelled'"


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=True),
        sa.Column("token_hash", sa.String(200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.UniqueConstraint("token_id", name="uq_users_token_id"),
        sa.CheckConstraint("role IN ('viewer', 'reviewer', 'admin')", name="ck_users_role"),
    )


def _cases() -> None:
    op.create_table(
        "cases",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("media", sa.JSON(), nullable=False),
        sa.Column("patient", sa.String(100), nullable=True),
        sa.Column("exam_date", sa.Date(), nullable=True),
        sa.Column("region", sa.String(100), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", name="fk_cases_created_by"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("frames_announced", sa.Integer(), nullable=True),
        sa.Column("frames_decoded", sa.Integer(), nullable=True),
        sa.Column("decode_warnings", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(100), nullable=True),
        sa.Column("verdict_text", sa.String(300), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("unfamiliar_share", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.Column("deleted_at", _when(), nullable=True),
        sa.Column("deleted_by", sa.Integer(), sa.ForeignKey("users.id", name="fk_cases_deleted_by"), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.CheckConstraint(f"status IN ({STATES})", name="ck_cases_status"),
    )
    for column in ("patient", "day", "created_at", "status", "verdict"):
        op.create_index(f"ix_cases_{column}", "cases", [column])


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id", name="fk_jobs_case_id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires", _when(), nullable=True),
        sa.Column("heartbeat_at", _when(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("case_id", name="uq_jobs_case_id"),
        sa.CheckConstraint(f"state IN ({STATES})", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])


def _reviews() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id", name="fk_reviews_case_id"), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("users.id", name="fk_reviews_reviewer_id"),
                  nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("histology", sa.String(100), nullable=False),
        sa.Column("agrees", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("verdict", sa.String(100), nullable=True),
        sa.Column("verdict_text", sa.String(300), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
    )
    op.create_index("ix_reviews_case_id", "reviews", ["case_id"])


def _audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", _when(), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", name="fk_audit_log_user_id"), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id", name="fk_audit_log_case_id"), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_case_id", "audit_log", ["case_id"])


def _append_only() -> None:
    """Triggers that refuse to change or remove a row of the append-only tables."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION mucosa_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE "
                   "EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only: rows are never changed or removed'; "
                   "END $$")
        for table in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION mucosa_append_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION mucosa_append_only()")
        return
    for table in APPEND_ONLY:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_append_only_{event.lower()} BEFORE {event} ON {table} BEGIN "
                       f"SELECT RAISE(ABORT, '{table} is append-only: rows are never changed or removed'); END")


def upgrade() -> None:
    _users()
    _cases()
    _jobs()
    _reviews()
    _audit_log()
    _append_only()


def downgrade() -> None:
    for table in ("audit_log", "reviews", "jobs", "cases", "users"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION mucosa_append_only()")
