"""The store's tables as SQLAlchemy 2 typed ORM classes (internal: the store hands out :mod:`records`).

The migrations under ``migrations/versions`` create exactly these tables (a test compares them), so a change
here needs a new migration. Times are UTC, stored without a zone on SQLite and with one on PostgreSQL, and
always read back as aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mucosa.choices import ROLES

__all__ = ["Base", "UTCDateTime", "UserRow", "CaseRow", "CaseDetailRow", "JobRow", "ReviewRow", "AuditRow", "ROLES",
           "SEARCHED", "STATES"]

STATES = ("queued", "running", "done", "failed", "cancelled")

NAMING = {"ix": "ix_%(table_name)s_%(column_0_name)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s",
          "pk": "pk_%(table_name)s"}


class UTCDateTime(TypeDecorator):
    """A point in time, always UTC: naive datetimes are refused on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a time without a zone cannot be stored: {value}")
        value = value.astimezone(dt.timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime, dt.date: Date, dict: JSON, list: JSON}


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


class UserRow(Base):
    """A person who uses the service. Only a hash of the token is kept (see :mod:`mucosa.store.tokens`)."""

    __tablename__ = "users"
    __table_args__ = (_one_of("role", ROLES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[str | None] = mapped_column(String(32), unique=True)  # None: a token chosen by hand
    token_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime]


# Live cases newest first, with every column a search filters on: a page of ids and its count walk this index
# alone, never the cases' rows (revision 0003; it replaced ix_cases_listing, its first three columns)
SEARCHED = ("deleted_at", "created_at", "id", "verdict", "day", "reviewed", "status", "patient", "name")
# The same without deleted_at, for live cases only (a partial index), which PostgreSQL can walk in the listing
# order (revision 0004; SQLite, without statistics, prefers ix_cases_search)
LIVE = text("deleted_at IS NULL")


class CaseRow(Base):
    """A video, or the images of one examination, and the model's result."""

    __tablename__ = "cases"
    __table_args__ = (_one_of("status", STATES), Index("ix_cases_search", *SEARCHED),
                      Index("ix_cases_live", *SEARCHED[1:], sqlite_where=LIVE, postgresql_where=LIVE))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(16))
    media: Mapped[list] = mapped_column(JSON)  # [{"sha256": ..., "name": ...}]
    patient: Mapped[str | None] = mapped_column(String(100), index=True)
    exam_date: Mapped[dt.date | None]
    region: Mapped[str | None] = mapped_column(String(100))
    day: Mapped[dt.date] = mapped_column(Date, index=True)  # exam date, else the upload day (UTC)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    frames_announced: Mapped[int | None]
    frames_decoded: Mapped[int | None]
    decode_warnings: Mapped[list] = mapped_column(JSON, default=list)
    verdict: Mapped[str | None] = mapped_column(String(100), index=True)
    verdict_text: Mapped[str | None] = mapped_column(String(300))
    score: Mapped[float | None] = mapped_column(Float)
    unfamiliar_share: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict | None] = mapped_column(JSON)  # what lists show, small (revision 0002)
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # has a review
    finished_at: Mapped[dt.datetime | None]
    deleted_at: Mapped[dt.datetime | None]
    deleted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # one higher with every change of the row: kept by the database's trigger (revision 0005)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CaseCountRow(Base):
    """How many cases are not deleted, in one row that the database's triggers keep (revision 0005): a list of
    every case gives its count without counting them."""

    __tablename__ = "case_counts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    live: Mapped[int] = mapped_column(Integer)


class CaseDetailRow(Base):
    """The per-frame detail of a finished case, apart from its row: a list of cases never reads it."""

    __tablename__ = "case_details"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    detail: Mapped[dict] = mapped_column(JSON)


class JobRow(Base):
    """The work on one case: who holds it (``lease_owner``) until when (``lease_expires``)."""

    __tablename__ = "jobs"
    __table_args__ = (_one_of("state", STATES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ReviewRow(Base):
    """A reviewer's judgement against histology (append-only: the database refuses updates and deletes)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime]
    histology: Mapped[str] = mapped_column(String(100))
    agrees: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str | None] = mapped_column(String(200))
    verdict: Mapped[str | None] = mapped_column(String(100))
    verdict_text: Mapped[str | None] = mapped_column(String(300))
    score: Mapped[float | None] = mapped_column(Float)


class AuditRow(Base):
    """Who did what and when (append-only: the database refuses updates and deletes)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
    model_version: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
