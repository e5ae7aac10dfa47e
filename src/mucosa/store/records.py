"""What the store hands out and takes in: plain, frozen records (never live database objects), and its errors.

A record is a snapshot: it stays valid after the transaction that read it has ended, in any thread.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePath

from mucosa.errors import MucosaError

__all__ = ["Role", "CaseStatus", "User", "MediaFile", "Case", "CaseResult", "Job", "Review", "AuditEntry", "Page",
           "Listing", "StoreError", "StoreUnavailable", "StoreNotFound", "MigrationNeeded", "UnknownRevision",
           "NotAllowed", "NotFound", "LeaseLost", "InvalidReview"]


class StoreError(MucosaError):
    """The store cannot do what was asked; the message (one line) says why. The CLI exits with status 2."""


class StoreUnavailable(StoreError):
    """The database failed (unreachable, locked too long, full...). The message names the store, for its
    operator; ``reason`` does not (what the service may tell a client). ``full``: the database or its disk is
    full."""

    def __init__(self, message: str, reason: str, full: bool = False) -> None:
        super().__init__(message)
        self.reason, self.full = reason, full


class StoreNotFound(StoreError):
    """No store at the place given (no ``store.sqlite3`` in the folder, or an empty database)."""


class MigrationNeeded(StoreError):
    """The store is at an older revision of the format: ``mucosa store upgrade`` brings it up to date."""

    def __init__(self, message: str, found: str | None, needed: str) -> None:
        super().__init__(message)
        self.found, self.needed = found, needed


class UnknownRevision(StoreError):
    """The store is at a revision this mucosa does not know (written by a newer mucosa): it is left alone."""

    def __init__(self, message: str, found: str, known: list[str]) -> None:
        super().__init__(message)
        self.found, self.known = found, known


class NotAllowed(StoreError):
    """The user's role does not allow the action (the service answers 403)."""


class NotFound(StoreError):
    """No such case or user (the service answers 404)."""


class InvalidReview(StoreError):
    """A review that contradicts itself or breaks a rule of reviews (the service answers 422)."""


class LeaseLost(StoreError):
    """The job is no longer this worker's: its lease expired and another worker took it, or the case was
    deleted. The worker stops working on it; nothing it would have written is kept."""


class Role(str, Enum):
    """What a user may do: a viewer reads and uploads, a reviewer also confirms cases against histology, an
    admin also deletes cases and manages users."""

    VIEWER = "viewer"
    REVIEWER = "reviewer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may do (an admin may do everything)."""
        return self.rank >= Role(needed).rank


class CaseStatus(str, Enum):
    """Where a case (and its job) stands."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # deleted before its work ended


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    active: bool
    created_at: dt.datetime

    def allows(self, needed: Role) -> bool:
        return self.active and self.role.allows(needed)


@dataclass(frozen=True)
class MediaFile:
    """One uploaded file of a case: its content (SHA-256 in the store's media folder) and the name it came
    with (shown to people; its suffix tells a video from an image)."""

    sha256: str
    name: str

    @property
    def suffix(self) -> str:
        return PurePath(self.name).suffix.lower()


@dataclass(frozen=True)
class Case:
    """A video, or the images of one examination, with what the model and the reviewers said about it.

    ``day`` is the exam date, or the upload day (UTC) when the exam date is not given: searches by date use
    it. ``detail`` (the service's full result: timeline, frames) is only filled by :meth:`Store.case`, not in
    search results; ``summary`` (what a list shows of the result) is always there once the case is done.
    ``reviewed`` says whether anyone has reviewed the case. ``version`` grows with every change of the case's
    record (its status, its result, a review, its deletion), in any server sharing the store.
    """

    id: str
    name: str
    kind: str
    media: tuple[MediaFile, ...]
    patient: str | None
    exam_date: dt.date | None
    region: str | None
    day: dt.date
    created_at: dt.datetime
    created_by: str | None
    status: CaseStatus
    frames_announced: int | None
    frames_decoded: int | None
    decode_warnings: tuple[str, ...]
    verdict: str | None
    verdict_text: str | None
    score: float | None
    unfamiliar_share: float | None
    model_version: str | None
    error: str | None
    finished_at: dt.datetime | None
    reviewed: bool
    detail: dict | None = None
    summary: dict | None = None
    version: int = 0


@dataclass(frozen=True)
class Listing:
    """A page of cases as their ids and versions, newest first (:meth:`Store.listing`): enough to tell which of
    them a server has shown before, unchanged since (:attr:`Case.version`). ``total``: how many match."""

    versions: tuple[tuple[str, int], ...]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class CaseResult:
    """What the worker found, written with :meth:`Store.finish` in one transaction.

    Args:
        verdict: the class called; None when the case has no class (no informative frames, unfamiliar
            images): ``verdict_text`` then says why.
        verdict_text: the verdict in words, as the viewer shows it.
        score: the probability of the positive class (two-class models), else None.
        unfamiliar_share: share of the frames unlike the training data, when the model measures it.
        model_version: the model that gave the verdict (the audit groups by it).
        detail: anything else the viewer needs (timeline, frame references), as JSON.
        summary: what a list of cases shows of the result (kept small: it is read for every case listed).
    """

    verdict: str | None
    verdict_text: str
    model_version: str
    score: float | None = None
    unfamiliar_share: float | None = None
    frames_announced: int | None = None
    frames_decoded: int | None = None
    decode_warnings: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A worker's hold on a case: valid while ``worker`` and ``attempt`` still match the job's row."""

    id: int
    case_id: str
    worker: str
    attempt: int
    lease_expires: dt.datetime


@dataclass(frozen=True)
class Review:
    """A reviewer's judgement of a case's verdict against histology. Reviews are only ever added: the latest
    review of a case is its histology truth, the earlier ones stay."""

    id: int
    case_id: str
    reviewer: str
    created_at: dt.datetime
    histology: str
    agrees: bool
    note: str
    model_version: str | None
    verdict: str | None
    verdict_text: str | None
    score: float | None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log: who did what, when, to which case, under which model."""

    id: int
    at: dt.datetime
    actor: str
    action: str
    case_id: str | None
    model_version: str | None
    detail: dict


@dataclass(frozen=True)
class Page:
    """One page of search results (newest first) and how many cases match in all."""

    cases: list[Case]
    total: int
    offset: int
    limit: int
