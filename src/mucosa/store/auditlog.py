"""The audit log: who did what and when, to which case, under which model. Lines are only ever added, in the
same transaction as the action they record (the database itself refuses to change or remove one)."""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Sequence

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from mucosa.store.records import AuditEntry, User
from mucosa.store.tables import AuditRow

__all__ = ["CLI_PREFIX", "Actor", "actor_name", "operator", "record", "record_lines", "entries"]

CLI_PREFIX = "cli:"  # an action taken on the store's machine (a command), not through the service's API
Actor = User | str | None  # a user, a worker's name, or None for the operator running a command
_INSERT = insert(AuditRow.__table__)


def operator() -> str:
    """How the log names the operator running a command: ``cli:`` and their login name (never a user of the
    service, such as its built-in admin ``local``)."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        login = "unknown"
    return CLI_PREFIX + login[:80]


def actor_name(actor: Actor) -> str:
    if actor is None:
        return operator()
    return actor.name if isinstance(actor, User) else str(actor)


def _line(actor: Actor, action: str, at: dt.datetime, case_id: str | None = None, model_version: str | None = None,
          detail: dict | None = None) -> dict:
    return {"at": at, "user_id": actor.id if isinstance(actor, User) else None, "actor": actor_name(actor),
            "action": action, "case_id": case_id, "model_version": model_version, "detail": dict(detail or {})}


def record(session: Session, actor: Actor, action: str, at: dt.datetime, case_id: str | None = None,
           model_version: str | None = None, detail: dict | None = None) -> None:
    """Add a line to the log (within the caller's transaction)."""
    session.add(AuditRow(**_line(actor, action, at, case_id, model_version, detail)))


def record_lines(connection: Connection, lines: Sequence[tuple]) -> None:
    """Add several lines, each the arguments of :func:`record` after the session, within the transaction of a
    plain connection: one statement run for each line, without the ORM's objects and returned ids (less than
    half its time, which the lines written together wait for)."""
    connection.execute(_INSERT, [_line(*line) for line in lines])


def entries(session: Session, case_id: str | None = None, actor: str | None = None, since: dt.datetime | None = None,
            limit: int = 100, offset: int = 0) -> list[AuditEntry]:
    """Lines of the log, newest first, optionally of one case, one actor, or since a time."""
    query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit).offset(offset)
    if case_id is not None:
        query = query.where(AuditRow.case_id == case_id)
    if actor is not None:
        query = query.where(AuditRow.actor == actor)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    return [AuditEntry(row.id, row.at, row.actor, row.action, row.case_id, row.model_version, dict(row.detail))
            for row in session.scalars(query)]
