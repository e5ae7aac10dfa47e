"""Users, their roles and tokens (functions on an open transaction; :class:`mucosa.store.Store` calls them)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from mucosa.data.manifest import has_control
from mucosa.store.auditlog import Actor, record
from mucosa.store.records import NotAllowed, NotFound, Role, StoreError, User
from mucosa.store.tables import UserRow
from mucosa.store.tokens import CHOSEN_PREFIX, hash_token, new_token, split_token, verify_token

__all__ = ["user_record", "require", "parse_role", "check_name", "find", "add", "use_token", "renew_token",
           "set_role", "set_active", "everyone", "authenticate", "chosen_user"]

MAX_NAME = 100


def user_record(row: UserRow) -> User:
    return User(row.id, row.name, Role(row.role), row.active, row.created_at)


def require(actor: Actor, needed: Role, what: str) -> None:
    """Refuse ``what`` to a user whose role is below ``needed`` (None, the local operator, may do anything)."""
    if isinstance(actor, User) and not actor.allows(needed):
        state = "" if actor.active else "disabled "
        raise NotAllowed(f"{state}user {actor.name} ({actor.role.value}) may not {what}: it needs the role "
                         f"{needed.value}")


def parse_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise StoreError(f"role {str(role)[:40]!r} is not one of {', '.join(r.value for r in Role)}") from None


def check_name(name: str, what: str = "user name", limit: int = MAX_NAME) -> str:
    """A name stripped of outer spaces; refused when empty, too long, or holding control or format characters
    (Unicode Cc, Cf, Zl, Zp: a NUL, U+0085, a right-to-left override U+202E...)."""
    cleaned = (name or "").strip()
    if not cleaned or len(cleaned) > limit or has_control(cleaned):
        raise StoreError(f"{what} {name[:limit + 20]!r} must be 1 to {limit} printable characters")
    return cleaned


def find(session: Session, name: str) -> UserRow:
    row = session.scalars(select(UserRow).where(UserRow.name == name)).first()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return row


def add(session: Session, name: str, role: Role | str, at: dt.datetime, by: Actor) -> tuple[User, str]:
    """A new user with a fresh token; returns the user and the token (only its hash is kept)."""
    require(by, Role.ADMIN, "add users")
    name, role = check_name(name), parse_role(role)
    if name.startswith(CHOSEN_PREFIX):
        raise StoreError(f"user names beginning {CHOSEN_PREFIX!r} are kept for the tokens of mucosa serve --token")
    if session.scalars(select(UserRow.id).where(UserRow.name == name)).first() is not None:
        raise StoreError(f"user {name!r} exists already (`mucosa users token {name}` gives them a new token)")
    token, token_id = new_token()
    row = UserRow(name=name, role=role.value, token_id=token_id, token_hash=hash_token(token), active=True,
                  created_at=at)
    session.add(row)
    session.flush()
    record(session, by, "user.add", at, detail={"user": name, "role": role.value})
    return user_record(row), token


def use_token(session: Session, token: str, name: str, at: dt.datetime) -> User:
    """The laptop mode: the user ``name`` (:func:`~mucosa.store.tokens.chosen_token_name` of ``token``), an admin
    made the first time. Nothing an admin changed since is undone: a disabled one is refused, a role kept.

    Raises:
        StoreError: the user was disabled, or ``name`` is a user with a token of their own.
    """
    row = session.scalars(select(UserRow).where(UserRow.name == name)).first()
    if row is not None and row.token_id is not None:
        raise StoreError(f"user {name!r} exists with a token of its own; choose another --token")
    if row is None:
        row = UserRow(name=name, role=Role.ADMIN.value, token_id=None, token_hash=hash_token(token), active=True,
                      created_at=at)
        session.add(row)
        session.flush()
        record(session, None, "user.add", at, detail={"user": name, "role": Role.ADMIN.value, "token": "chosen"})
    elif not row.active:
        raise StoreError(f"the user of this --token, {name}, was disabled: `mucosa users enable {name}` lets it in "
                         "again, or choose another token")
    return user_record(row)


def renew_token(session: Session, name: str, at: dt.datetime, by: Actor) -> str:
    """A fresh token for ``name``; the old one stops working at once."""
    require(by, Role.ADMIN, "renew tokens")
    row = find(session, name)
    token, token_id = new_token()
    row.token_id, row.token_hash = token_id, hash_token(token)
    record(session, by, "user.token", at, detail={"user": name})
    return token


def set_role(session: Session, name: str, role: Role | str, at: dt.datetime, by: Actor) -> User:
    require(by, Role.ADMIN, "change roles")
    row, role = find(session, name), parse_role(role)
    record(session, by, "user.role", at, detail={"user": name, "from": row.role, "to": role.value})
    row.role = role.value
    return user_record(row)


def set_active(session: Session, name: str, active: bool, at: dt.datetime, by: Actor) -> User:
    """Disable a user (their token stops working; what they did stays attributed to them) or enable them again."""
    require(by, Role.ADMIN, "disable or enable users")
    row = find(session, name)
    row.active = active
    record(session, by, "user.enable" if active else "user.disable", at, detail={"user": name})
    return user_record(row)


def everyone(session: Session) -> list[User]:
    return [user_record(row) for row in session.scalars(select(UserRow).order_by(UserRow.name))]


def authenticate(session: Session, token: str) -> User | None:
    """The active user whose token (made by :func:`add` or :func:`renew_token`) this is; None for any other
    token. Only a well-formed token whose id a user has is checked with scrypt."""
    token_id, _ = split_token(token)
    if token_id is None:
        return None
    for row in session.scalars(select(UserRow).where(UserRow.token_id == token_id)).all():
        if row.active and verify_token(token, row.token_hash):
            return user_record(row)
    return None


def chosen_user(session: Session, name: str) -> User | None:
    """The user of a token chosen by hand (``serve --token``), while active; None otherwise."""
    row = session.scalars(select(UserRow).where(UserRow.name == name, UserRow.token_id.is_(None))).first()
    return user_record(row) if row is not None and row.active else None
