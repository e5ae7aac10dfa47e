"""The store's one interface, the same on SQLite and PostgreSQL: :class:`Store`."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mucosa.atomic import OutputError
from mucosa.data.pseudonyms import Pseudonym
from mucosa.store import auditlog, cases, jobs, reviews, users
from mucosa.store import backup as backups
from mucosa.store import export as exports
from mucosa.store.auditlog import Actor
from mucosa.store.journal import GroupCommit
from mucosa.store.location import Location, locate, make_engines
from mucosa.store.media import MediaFolder
from mucosa.store.records import (
    AuditEntry,
    Case,
    CaseResult,
    Job,
    Listing,
    MediaFile,
    Page,
    Review,
    Role,
    StoreError,
    User,
)
from mucosa.store.schema import database_error, head_revision, prepare
from mucosa.store.tokens import MIN_CHOSEN, chosen_token_name, split_token

__all__ = ["Store", "utc_now", "TRUST_SECONDS"]

# A token checked by scrypt is trusted by this process for this long without reading the store again; the
# users' list that a server without users reads on each request, likewise. A change made through this Store
# ends both at once; one made by another process (``mucosa users disable`` or another server) within this time.
TRUST_SECONDS = 30.0
CHECKS_AT_ONCE = 4  # scrypt checks of tokens this process runs at once (each ~16 MiB): a flood of bad tokens
# waits its turn instead of taking every core and the memory


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Store:
    """Cases, their jobs, reviews, users and the audit log, in SQLite or PostgreSQL, with media on disk.

    Open one with :meth:`open`; it is safe to share between threads. Every method is one transaction, so
    what it does is either all written or not at all. Methods that take ``by`` check that user's role
    (``by=None`` is the local operator, e.g. the CLI, who may do anything) and log the action.
    """

    def __init__(self, location, reader, writer, clock: Callable[[], dt.datetime], lease_seconds: float) -> None:
        self._location, self._reader, self._writer = location, reader, writer
        self._clock, self.lease_seconds = clock, lease_seconds
        self.media = MediaFolder(location.media)
        self._trusted: dict[str, tuple[User, float]] = {}  # SHA-256 of a token (never the token): user, until
        self._everyone: tuple[list[User], float] | None = None  # users() as last read, and when
        self._users_read = 0  # changes to the users made through this Store (a check read before one is not kept)
        self._checking: dict[bytes, threading.Lock] = {}  # a lock per token being checked (its SHA-256)
        self._chosen: dict[bytes, str] = {}  # SHA-256 of this process's --token: its user's name
        self._slots = threading.BoundedSemaphore(CHECKS_AT_ONCE)
        self._trust_lock = threading.Lock()
        self._lines = GroupCommit(self._write_lines)

    @classmethod
    def open(cls, location: str | Path, media: str | Path | None = None, *, create: bool = False,
             clock: Callable[[], dt.datetime] = utc_now, lease_seconds: float = jobs.LEASE_SECONDS) -> Store:
        """Open the store at ``location``: a folder (SQLite, ``DIR/store.sqlite3`` and ``DIR/media``) or a
        ``postgresql+psycopg://USER@HOST/DB`` URL, whose media go to the shared folder ``media``.

        Opening changes nothing; ``create=True`` makes a new, empty store where there is none.

        Args:
            location: a store folder, or a PostgreSQL URL.
            media: the media folder: required with a URL (a folder all servers share); a store folder keeps its
                media in ``DIR/media`` unless another folder is given.
            clock: the current time, as an aware datetime (tests move it forward).
            lease_seconds: how long a claimed job stays a worker's without a heartbeat.

        Raises:
            StoreNotFound: no store there (and ``create`` is off).
            MigrationNeeded: the store needs ``mucosa store upgrade``.
            UnknownRevision: a newer mucosa wrote the store.
            StoreError: the database cannot be reached or read (one line naming it).
        """
        place = locate(location, media)
        reader, writer = make_engines(place)
        try:
            prepare(place, reader, writer, create)
        except BaseException:
            reader.dispose()
            writer.dispose()
            raise
        return cls(place, reader, writer, clock, lease_seconds)

    def close(self) -> None:
        """Write the audit lines waiting, then close the database connections."""
        self._lines.close()
        self._reader.dispose()
        self._writer.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._location.backend

    @property
    def location(self) -> str:
        """The store as messages name it (a folder, or the URL without its password)."""
        return self._location.describe()

    @property
    def revision(self) -> str:
        return head_revision()

    def now(self) -> dt.datetime:
        return self._clock()

    @contextmanager
    def _session(self, write: bool) -> Iterator[Session]:
        try:
            with Session(self._writer if write else self._reader, expire_on_commit=False) as session, \
                    session.begin():
                yield session
        except SQLAlchemyError as error:
            raise database_error(self._location, error) from None

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Connection]:
        """A transaction on a plain connection, without the ORM session's bookkeeping: what the requests a viewer
        makes on every page use (reading a case, a search; the lines of the audit log they add)."""
        try:
            with (self._writer if write else self._reader).connect() as connection, connection.begin():
                yield connection
        except SQLAlchemyError as error:
            raise database_error(self._location, error) from None

    # ------------------------------------------------------------------------------------------ media

    def put_media(self, source: str | Path | bytes | BinaryIO, suffix: str | None = None) -> str:
        """Keep a file (a path, bytes or an open binary file) in the media folder; returns its SHA-256.
        ``suffix`` defaults to the path's. See :class:`mucosa.store.media.MediaFolder`."""
        return self.media.put(source, suffix)

    def media_path(self, media: MediaFile) -> Path:
        """Where a case's media file lies."""
        return self.media.path(media.sha256, media.suffix)

    # ------------------------------------------------------------------------------------------ users

    def add_user(self, name: str, role: Role | str, by: Actor = None) -> str:
        """Add a user and return their token: show it once, only its hash is kept."""
        with self._users_changing(), self._session(write=True) as session:
            return users.add(session, name, role, self.now(), by)[1]

    def use_token(self, token: str) -> User:
        """The laptop mode, ``mucosa serve --token T``: one admin user, ``token-`` and a hash of ``T``
        (:func:`~mucosa.store.tokens.chosen_token_name`), made the first time. This Store then accepts ``T`` as
        that user, and only this Store: the token is never read back from the database, so a server started
        without it, or with another, does not accept it. A user disabled by an admin stays disabled.

        Raises:
            StoreError: ``T`` is shorter than :data:`~mucosa.store.tokens.MIN_CHOSEN` characters, or its user
                was disabled.
        """
        if len(token) < MIN_CHOSEN or len(token) > 200:
            raise StoreError(f"--token must be {MIN_CHOSEN} to 200 characters long (e.g. `openssl rand -hex 16`)")
        name = chosen_token_name(token)
        with self._users_changing(), self._session(write=True) as session:
            user = users.use_token(session, token, name, self.now())
        with self._trust_lock:
            self._chosen[self._digest(token)] = name
        return user

    def renew_token(self, name: str, by: Actor = None) -> str:
        """A new token for ``name`` (the old one stops working); returns it."""
        with self._users_changing(), self._session(write=True) as session:
            return users.renew_token(session, name, self.now(), by)

    def set_role(self, name: str, role: Role | str, by: Actor = None) -> User:
        with self._users_changing(), self._session(write=True) as session:
            return users.set_role(session, name, role, self.now(), by)

    def disable_user(self, name: str, by: Actor = None) -> User:
        """Stop a user's token from working; what they did stays attributed to them."""
        with self._users_changing(), self._session(write=True) as session:
            return users.set_active(session, name, False, self.now(), by)

    def enable_user(self, name: str, by: Actor = None) -> User:
        with self._users_changing(), self._session(write=True) as session:
            return users.set_active(session, name, True, self.now(), by)

    def users(self, max_age: float = 0.0) -> list[User]:
        """Every user, by name. ``max_age``: a list read by this process at most this many seconds ago will do
        (changes made through this Store are seen at once)."""
        with self._trust_lock:
            kept, generation = self._everyone, self._users_read
        if max_age > 0 and kept is not None and kept[1] + max_age > time.monotonic():
            return list(kept[0])
        with self._session(write=False) as session:
            found = users.everyone(session)
        with self._trust_lock:
            if generation == self._users_read:
                self._everyone = (found, time.monotonic())
        return list(found)

    def user(self, name: str) -> User:
        """The user ``name``; raises NotFound."""
        with self._session(write=False) as session:
            return users.user_record(users.find(session, name))

    def authenticate(self, token: str) -> User | None:
        """The active user whose token this is, or None. A token not of the form ``mucosa_<12 hex>_<secret>``
        (other than this Store's --token, :meth:`use_token`) is refused at once, without a hash or a read; a
        well-formed one is looked up by its id, and only a user's own is checked with scrypt (tens of
        milliseconds; at most :data:`CHECKS_AT_ONCE` at a time). A token checked once is trusted by this process
        for :data:`TRUST_SECONDS` without reading the store: a user disabled, a role changed or a token renewed
        through this Store counts at once, through another process within that time. Only a SHA-256 of the
        token is kept, never the token."""
        key = self._digest(token)
        with self._trust_lock:
            chosen = self._chosen.get(key)
        if chosen is None and split_token(token)[0] is None:
            return None
        with self._trust_lock:
            if len(self._checking) > 10_000:  # unknown tokens by the thousand: start again
                self._checking.clear()
            checking = self._checking.setdefault(key, threading.Lock())
        with checking:  # one check of a token at a time: the requests a new client sends at once wait for it
            with self._trust_lock:
                generation = self._users_read
            return self._trusted_user(key) or self._check(key, token, chosen, generation)

    def trusted(self, token: str) -> User | None:
        """The user whose token :meth:`authenticate` checked in the last :data:`TRUST_SECONDS`, without reading
        the store or hashing with scrypt (a SHA-256 only: quick enough for an event loop); None when this
        process trusts no user for it now (then :meth:`authenticate` tells)."""
        return self._trusted_user(self._digest(token))

    def _trusted_user(self, key: bytes) -> User | None:
        with self._trust_lock:
            trusted = self._trusted.get(key)
        return trusted[0] if trusted is not None and trusted[1] > time.monotonic() else None

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def _check(self, key: bytes, token: str, chosen: str | None, generation: int) -> User | None:
        with self._slots, self._session(write=False) as session:
            found = users.chosen_user(session, chosen) if chosen else users.authenticate(session, token)
        with self._trust_lock:
            if found is None:
                self._trusted.pop(key, None)
            elif generation == self._users_read:  # no change to the users since the check began
                if len(self._trusted) > 10_000:
                    self._trusted.clear()
                self._trusted[key] = (found, time.monotonic() + TRUST_SECONDS)
        return found

    @contextmanager
    def _users_changing(self) -> Iterator[None]:
        """Forget the trusted tokens and the users' list, after a change to the users (made or failed)."""
        try:
            yield
        finally:
            with self._trust_lock:
                self._trusted.clear()
                self._everyone = None
                self._users_read += 1

    # ------------------------------------------------------------------------------------------ cases

    def add_case(self, name: str, media: Sequence[MediaFile], *, kind: str = "video", by: Actor = None,
                 patient: str | None = None, exam_date: dt.date | str | None = None, region: str | None = None,
                 frames_announced: int | None = None, model_version: str | None = None) -> Case:
        """Add a case (queued, with its job) whose media are in the store already (:meth:`put_media`).

        Args:
            name: shown in lists; two cases may share a name (their ids differ).
            kind: ``"video"`` or ``"images"``.
            patient, exam_date, region: the optional exam fields (a pseudonymous patient id, never a name;
                the date as a date or ``YYYY-MM-DD``).
            frames_announced: the frames the file says it holds.
            model_version: the model that will judge it, as the audit log records the upload.
        """
        with self._session(write=True) as session:
            case_id = cases.add(session, self.media, self.now(), by, name, media, kind, patient, exam_date, region,
                                frames_announced, model_version)
        return self.case(case_id)

    def case(self, case_id: str, detail: bool = True) -> Case:
        """The case with its detail (``detail=False``: without, as fast as a search); raises NotFound (also for a
        deleted case)."""
        with self._connection(write=False) as connection:
            return cases.get(connection, case_id, detail)

    def search(self, *, patient: str | None = None, since: dt.date | str | None = None,
               until: dt.date | str | None = None,
               verdict: str | None = None, reviewed: bool | None = None, name: str | None = None,
               text: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0) -> Page:
        """Cases matching every filter given, newest first, one page at a time.

        Args:
            patient: the pseudonymous patient id (exact).
            since, until: the case's day (exam date, else upload day), inclusive; dates or ``YYYY-MM-DD``.
            verdict: the class called; ``"unfamiliar"`` for cases unlike every confirmed case, ``"none"`` for the
                other cases without a class (no informative frames, not done yet, failed).
            reviewed: True for reviewed cases only, False for unreviewed ones.
            name: a part of the case's name (any case).
            text: a part of the case's name or of its patient id (any case).
            status: queued, running, done, failed or cancelled.
            limit, offset: the page (at most 500 cases).
        """
        with self._connection(write=False) as connection:
            return cases.search(connection, limit, offset, patient=patient, since=since, until=until, verdict=verdict,
                                reviewed=reviewed, name=name, text=text, status=status)

    def listing(self, **filters: Any) -> Listing:
        """The page :meth:`search` gives for the same filters, as its cases' ids and versions: a server that has
        shown a case at its version before need not read it again (:meth:`cases`)."""
        limit, offset = filters.pop("limit", 50), filters.pop("offset", 0)
        with self._connection(write=False) as connection:
            return cases.listing(connection, limit, offset, **filters)

    def cases(self, case_ids: Sequence[str]) -> dict[str, Case]:
        """The live cases among these ids, without their detail, by id."""
        with self._connection(write=False) as connection:
            return cases.records(connection, case_ids)

    def delete_case(self, case_id: str, by: Actor = None, model_version: str | None = None) -> None:
        """Delete a case (admins): it leaves every list and its work stops; reviews and the log keep it (with
        the model that judged it, else ``model_version``: the one that was to)."""
        with self._session(write=True) as session:
            cases.delete(session, case_id, self.now(), by, model_version)

    # ------------------------------------------------------------------------------------------ jobs

    def claim(self, worker: str) -> Job | None:
        """Take the oldest job waiting (or one whose worker died) for ``worker``; None when there is none.
        Call :meth:`heartbeat` well within :attr:`lease_seconds`, then :meth:`finish` or :meth:`fail`."""
        with self._session(write=True) as session:
            return jobs.claim(session, worker, self.now(), self.lease_seconds)

    def heartbeat(self, job: Job, frames_decoded: int | None = None) -> Job:
        """Extend the job's lease (and record progress). Raises LeaseLost: stop working on the case."""
        with self._session(write=True) as session:
            return jobs.heartbeat(session, job, self.now(), self.lease_seconds, frames_decoded)

    def finish(self, job: Job, result: CaseResult) -> Case:
        """Write the case's results and end its job in one transaction. Raises LeaseLost (nothing written)."""
        with self._session(write=True) as session:
            jobs.finish(session, job, result, self.now())
        return self.case(job.case_id)

    def fail(self, job: Job, error: str, decode_warnings: Sequence[str] = (), model_version: str | None = None) -> None:
        """End the job as failed, saying why. Raises LeaseLost (nothing written)."""
        with self._session(write=True) as session:
            jobs.fail(session, job, error, self.now(), tuple(decode_warnings), model_version)

    def release(self, job: Job) -> None:
        """Give an unfinished job back (the server is stopping): it is queued again."""
        with self._session(write=True) as session:
            jobs.release(session, job, self.now())

    def job_counts(self) -> dict[str, int]:
        """Jobs of live cases per state, e.g. ``{"queued": 3, "running": 1, "done": 40, ...}``."""
        with self._session(write=False) as session:
            return jobs.counts(session)

    # ------------------------------------------------------------------------------------------ reviews

    def add_review(self, case_id: str, by: User, histology: str, agrees: bool, note: str = "") -> Review:
        """Record a reviewer's judgement of a finished case (reviewers and admins). Earlier reviews stay."""
        with self._session(write=True) as session:
            return reviews.add(session, case_id, by, histology, agrees, note, self.now())

    def latest_reviews(self, case_ids: Sequence[str]) -> dict[str, Review]:
        """The latest review of each of these cases that has one, by case id."""
        if not case_ids:
            return {}
        with self._session(write=False) as session:
            return reviews.latest_of(session, list(case_ids))

    def reviews(self, case_id: str) -> list[Review]:
        """The case's reviews, oldest first (the last is its histology truth)."""
        with self._session(write=False) as session:
            return reviews.of_case(session, case_id)

    # ------------------------------------------------------------------------------------------ audit log

    def record(self, actor: Actor, action: str, case_id: str | None = None, model_version: str | None = None,
               detail: dict | None = None) -> None:
        """Add a line to the audit log, e.g. ``record(user, "case.open", case_id)`` when a user opens a case;
        returns once it is written. Lines recorded at the same moment by several threads are written in one
        transaction (:mod:`mucosa.store.journal`)."""
        self._lines.write((actor, action, self.now(), case_id, model_version, detail))

    def _write_lines(self, lines: list[tuple]) -> None:
        with self._connection(write=True) as connection:
            auditlog.record_lines(connection, lines)

    def audit_log(self, *, case_id: str | None = None, actor: str | None = None, since: dt.datetime | None = None,
                  limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        """Lines of the audit log, newest first."""
        with self._session(write=False) as session:
            return auditlog.entries(session, case_id, actor, since, limit, offset)

    # ------------------------------------------------------------------------------------------ the audit

    def audit(self, since: dt.date | str | None = None, model: str | None = None,
              classes: Sequence[str] | None = None,
              positive: str | None = None, bins: int = 10) -> dict:
        """The running audit of reviewed cases (:func:`mucosa.evaluation.audit.running_audit`): the latest
        review of each case is its histology; unreviewed cases are not counted.

        Args:
            since: only cases from this day on (exam date, else upload day; a date or ``YYYY-MM-DD``).
            model: only verdicts of this model version.
            classes, positive: the model's classes and positive class (by default, those seen).
        """
        from mucosa.evaluation.audit import ReviewedCase, running_audit

        with self._session(write=False) as session:
            rows = reviews.latest(session, cases.as_day(since, "since"), model)
        reviewed = [ReviewedCase(r.verdict, r.histology, r.score, r.model_version, day,
                                 None if r.verdict is not None else r.verdict_text) for r, day in rows]
        return running_audit(reviewed, classes, positive, bins)

    def reviewed_cases(self) -> list[tuple[Case, Review]]:
        """Every reviewed live case with its latest review, oldest day first (for exports)."""
        with self._session(write=False) as session:
            return [(cases.get(session, review.case_id), review) for review, _ in reviews.latest(session)]

    def export_reviewed(self, path: str | Path, pseudonym: Pseudonym | None = None) -> int:
        """Write a manifest CSV of the reviewed cases, their histology labels and pseudonymous patient ids, that
        ``mucosa train`` reads (see :mod:`mucosa.store.export`; ``pseudonym``: patients as keyed pseudonyms);
        returns its rows.

        Raises:
            OutputError: ``path`` is, or lies inside, the store (its folder, database or media).
        """
        if self._location.holds(path):
            raise OutputError(f"-o {path} would overwrite the store's own files ({self.location}); write the "
                              "manifest outside the store")
        return exports.export_reviewed(self.reviewed_cases(), self.media, path, self.location, pseudonym)

    def backup(self, out: str | Path) -> Path:
        """Back the store up into the folder ``out`` while it serves (see :mod:`mucosa.store.backup`)."""
        return backups.backup(self._location, out, self.now())

    @property
    def place(self) -> Location:
        """Where the store lives (its database URL holds the password: never show it; use :attr:`location`)."""
        return self._location
