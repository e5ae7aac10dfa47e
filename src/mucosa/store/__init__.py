"""The case store: cases that survive restarts, their jobs, the reviewers' histology, users and the audit log.

One interface (:class:`Store`) on two databases: SQLite in a store folder (``DIR/store.sqlite3``, WAL, with
the media in ``DIR/media``) for one machine, and PostgreSQL (``postgresql+psycopg://USER@HOST/DB``, with the
media on a folder shared by the servers) for a unit with several servers. Tables are made and changed only by
the migrations shipped here, run by :func:`upgrade` (``mucosa store upgrade``); opening a store never changes
its format.

Typical use by a server and its workers::

    from mucosa.store import CaseResult, MediaFile, Store

    store = Store.open("mucosa-store", create=True)           # or a URL, with media="/shared/mucosa-media"
    user = store.authenticate(token)                         # None: answer 401
    sha = store.put_media(upload_path)                       # content-addressed, atomic
    case = store.add_case("exam 12", [MediaFile(sha, "exam12.mp4")], by=user, patient="P-0042")

    job = store.claim("host-a:4711")                         # in each worker, in any process
    store.heartbeat(job)                                     # well within store.lease_seconds
    store.finish(job, CaseResult("active", "active disease", "v3", score=0.91))

    store.add_review(case.id, reviewer, histology="active", agrees=True)
    report = store.audit(since=datetime.date(2025, 1, 1))

Errors are :class:`StoreError` subclasses, each one line naming the store (the CLI exits with status 2).
"""

from mucosa.store.backup import restore
from mucosa.store.records import (
    AuditEntry,
    Case,
    CaseResult,
    CaseStatus,
    InvalidReview,
    Job,
    LeaseLost,
    Listing,
    MediaFile,
    MigrationNeeded,
    NotAllowed,
    NotFound,
    Page,
    Review,
    Role,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
    UnknownRevision,
    User,
)
from mucosa.store.schema import head_revision, known_revisions, upgrade
from mucosa.store.store import TRUST_SECONDS, Store

__all__ = ["Store", "upgrade", "restore", "head_revision", "known_revisions", "Role", "CaseStatus", "User",
           "MediaFile", "Case", "CaseResult", "Job", "Review", "AuditEntry", "Page", "Listing", "StoreError",
           "StoreNotFound",
           "StoreUnavailable", "MigrationNeeded", "UnknownRevision", "NotAllowed", "NotFound", "LeaseLost",
           "InvalidReview",
           "TRUST_SECONDS"]
