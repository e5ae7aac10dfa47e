"""Cases: adding them (with their job), finding them, deleting them (functions on an open transaction)."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session, aliased

from mucosa.store.auditlog import Actor, record
from mucosa.store.media import MediaFolder
from mucosa.store.records import Case, CaseStatus, Listing, MediaFile, NotFound, Page, Role, StoreError, User
from mucosa.store.tables import CaseCountRow, CaseDetailRow, CaseRow, JobRow, UserRow
from mucosa.store.users import check_name, require

__all__ = ["KINDS", "FIRST_YEAR", "MAX_PAGE", "MAX_OFFSET", "NO_VERDICT", "UNFAMILIAR", "new_case_id", "is_case_id",
           "as_day", "add", "get", "search", "listing", "records", "delete", "live_case"]

KINDS = ("video", "images")
MAX_PAGE = 500
MAX_OFFSET = 10**9  # cases skipped before a page (far beyond any store; a 64-bit integer in every database)
_EXACT = ("patient", "since", "until", "verdict", "reviewed", "status")  # filters that apply unless None
_PARTS = ("name", "text")  # filters that apply unless empty
FILTERS = _EXACT + _PARTS  # what _filtered reads
FIRST_YEAR = 1900  # no exam, and no search, before it
_CASE_ID = re.compile(r"[0-9a-f]{12}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
UNFAMILIAR = "unfamiliar"  # the verdict's words for a case unlike every confirmed case (no class)
NO_VERDICT = "none"  # searched as a verdict: cases without a class that are not unfamiliar
_Creator = aliased(UserRow)
Reader = Session | Connection  # what the reading functions take: an ORM session, or a plain connection


def new_case_id() -> str:
    """A case id: 12 random hex digits (the viewer's link is ``/#/cases/ID``)."""
    return secrets.token_hex(6)


def is_case_id(text: str) -> bool:
    """Whether ``text`` has the form of a case id (:func:`new_case_id`); anything else is no case, unread."""
    return isinstance(text, str) and _CASE_ID.fullmatch(text) is not None


def as_day(value: dt.date | str | None, what: str) -> dt.date | None:
    """A day given as a date, a datetime (its date) or ``YYYY-MM-DD`` exactly (no week dates, no ``20250310``),
    from :data:`FIRST_YEAR` on; StoreError for anything else."""
    if isinstance(value, dt.datetime):
        value = value.date()
    if value is None:
        return value
    if not isinstance(value, dt.date):
        text = str(value).strip()
        try:
            value = dt.date.fromisoformat(text) if _DAY.fullmatch(text) else None
        except ValueError:
            value = None
        if value is None:
            raise StoreError(f"{what}: {text[:40]!r} is not a date (YYYY-MM-DD)")
    if value.year < FIRST_YEAR:
        raise StoreError(f"{what}: {value} is before {FIRST_YEAR}")
    return value


def _optional(value: str | None, what: str) -> str | None:
    return None if value is None or not value.strip() else check_name(value, what)


def add(session: Session, media_folder: MediaFolder, at: dt.datetime, by: Actor, name: str,
        media: Sequence[MediaFile], kind: str, patient: str | None, exam_date: dt.date | str | None,
        region: str | None,
        frames_announced: int | None, model_version: str | None = None) -> str:
    """A new queued case and its job; returns its id. Its media must be in the store already."""
    require(by, Role.VIEWER, "add cases")
    if kind not in KINDS:
        raise StoreError(f"case kind {kind!r} is not one of {', '.join(KINDS)}")
    if not media:
        raise StoreError("a case needs at least one media file")
    missing = [m.name for m in media if not media_folder.has(m.sha256, m.suffix)]
    if missing:
        raise StoreError(f"media not in the store (put_media first): {', '.join(missing[:5])}")
    row = CaseRow(id=new_case_id(), name=check_name(name, "case name", 300), kind=kind,
                  media=[{"sha256": m.sha256, "name": m.name} for m in media],
                  patient=_optional(patient, "patient id"), exam_date=as_day(exam_date, "exam date"),
                  region=_optional(region, "region"), day=as_day(exam_date, "exam date") or at.date(), created_at=at,
                  created_by=by.id if isinstance(by, User) else None, status=CaseStatus.QUEUED.value,
                  frames_announced=frames_announced, decode_warnings=[], reviewed=False)
    session.add(row)
    session.flush()  # the case's row first: the job and the log line refer to it
    session.add(JobRow(case_id=row.id, state=CaseStatus.QUEUED.value, attempts=0, created_at=at, updated_at=at))
    record(session, by, "case.add", at, row.id, model_version,
           {"name": row.name, "kind": kind, "files": len(media)})
    return row.id


# Cases as plain rows (the table's columns and ``creator``): no ORM objects to build, a page of cases is read
# several times faster. Deleted ones included: the caller leaves them out (:func:`_live`); a condition on
# ``deleted_at`` here made SQLite walk the whole search index for a page of ids (``IN``) instead of reading each
# row by its key. Built once: a statement made anew for each request cost more than running it.
_CASES = (select(CaseRow.__table__, _Creator.name.label("creator"))
          .outerjoin(_Creator, CaseRow.created_by == _Creator.id))
if tuple(_CASES.selected_columns.keys()) != (  # the order _record unpacks a row in
        "id", "name", "kind", "media", "patient", "exam_date", "region", "day", "created_at", "created_by", "status",
        "frames_announced", "frames_decoded", "decode_warnings", "verdict", "verdict_text", "score",
        "unfamiliar_share", "model_version", "error", "summary", "reviewed", "finished_at", "deleted_at",
        "deleted_by", "version", "creator"):
    raise RuntimeError("mucosa.store.cases: the cases table's columns changed; update _record")
_BY_ID = _CASES.where(CaseRow.id == bindparam("case_id"))
_BY_IDS = _CASES.where(CaseRow.id.in_(bindparam("ids", expanding=True)))
_VERSIONS = (select(CaseRow.id, CaseRow.version, CaseRow.deleted_at)  # deleted ones left out by _live, as above
             .where(CaseRow.id.in_(bindparam("ids", expanding=True))))
_LIVE_COUNT = select(CaseCountRow.live)  # kept by the database's triggers (revision 0005)
_DETAIL = select(CaseDetailRow.detail).where(CaseDetailRow.case_id == bindparam("case_id"))


def _live(row) -> bool:
    return row is not None and row.deleted_at is None


def _record(row, detail: dict | None) -> Case:
    """A row of ``_CASES`` as a :class:`Case`, its values taken by position (a row's attributes cost half of
    building the Case)."""
    (case_id, name, kind, media, patient, exam_date, region, day, created_at, _created_by, status,
     frames_announced, frames_decoded, decode_warnings, verdict, verdict_text, score, unfamiliar_share,
     model_version, error, summary, reviewed, finished_at, _deleted_at, _deleted_by, version, creator) = row
    return Case(id=case_id, name=name, kind=kind, media=tuple(MediaFile(m["sha256"], m["name"]) for m in media),
                patient=patient, exam_date=exam_date, region=region, day=day, created_at=created_at,
                created_by=creator, status=CaseStatus(status), frames_announced=frames_announced,
                frames_decoded=frames_decoded, decode_warnings=tuple(decode_warnings or ()), verdict=verdict,
                verdict_text=verdict_text, score=score, unfamiliar_share=unfamiliar_share,
                model_version=model_version, error=error, finished_at=finished_at, reviewed=bool(reviewed),
                detail=detail, summary=dict(summary) if summary is not None else None, version=version)


def get(session: Reader, case_id: str, detail: bool = True) -> Case:
    """The case, with its detail unless ``detail`` is False. Raises NotFound (also for a deleted case)."""
    if not is_case_id(case_id):
        raise NotFound(f"no case {case_id[:40]!r}")
    found = session.execute(_BY_ID, {"case_id": case_id}).first()
    if not _live(found):
        raise NotFound(f"no case {case_id[:40]!r}")
    if not detail:
        return _record(found, None)
    kept = session.scalar(_DETAIL, {"case_id": case_id})
    return _record(found, dict(kept) if kept is not None else {})


def live_case(session: Session, case_id: str) -> CaseRow:
    row = session.get(CaseRow, case_id) if is_case_id(case_id) else None
    if row is None or row.deleted_at is not None:
        raise NotFound(f"no case {case_id[:40]!r}")
    return row


def _dialect(reader: Reader) -> str:
    return (reader.get_bind() if isinstance(reader, Session) else reader).dialect.name


def _contains(column, text: str, dialect: str):
    """``column`` holds ``text``, whatever the case of its letters. SQLite's ``LIKE`` already ignores the case of
    ASCII letters, and only of those, as its ``lower()`` does: the ``lower(column) LIKE lower(text)`` that
    ``icontains`` writes there gives the same cases at twice the cost (PostgreSQL: ``ILIKE``)."""
    if dialect == "sqlite":
        return column.contains(text, autoescape=True)
    return column.icontains(text, autoescape=True)


def _filters_nothing(filters: dict[str, Any]) -> bool:
    """Whether :func:`_filtered` adds no condition for ``filters`` (a blank patient id is a condition: no case)."""
    return all(filters.get(key) is None for key in _EXACT) and not any(filters.get(key) for key in _PARTS)


def _filtered(query: Select, filters: dict[str, Any], dialect: str) -> Select:
    if filters.get("patient") is not None:
        query = query.where(CaseRow.patient == filters["patient"])
    if filters.get("since") is not None:
        query = query.where(CaseRow.day >= as_day(filters["since"], "since"))
    if filters.get("until") is not None:
        query = query.where(CaseRow.day <= as_day(filters["until"], "until"))
    if filters.get("verdict") is not None:
        query = query.where(_verdict_is(filters["verdict"]))
    if filters.get("status") is not None:
        query = query.where(CaseRow.status == CaseStatus(filters["status"]).value)
    if filters.get("reviewed") is not None:
        query = query.where(CaseRow.reviewed.is_(bool(filters["reviewed"])))
    if filters.get("name"):
        query = query.where(_contains(CaseRow.name, filters["name"], dialect))
    if filters.get("text"):
        query = query.where(or_(_contains(CaseRow.name, filters["text"], dialect),
                                _contains(CaseRow.patient, filters["text"], dialect)))
    return query


def _verdict_is(verdict: str):
    """A class; :data:`UNFAMILIAR` (no class, the words "unfamiliar"); :data:`NO_VERDICT` (no class otherwise)."""
    if verdict == UNFAMILIAR:
        return and_(CaseRow.verdict.is_(None), CaseRow.verdict_text == UNFAMILIAR)
    if verdict == NO_VERDICT:
        return and_(CaseRow.verdict.is_(None),
                    or_(CaseRow.verdict_text.is_(None), CaseRow.verdict_text != UNFAMILIAR))
    return CaseRow.verdict == verdict


def _count(ordered: Select, filters: dict[str, Any]) -> Select:
    """How many cases ``ordered`` (the page's query, without its page) finds. Kept in its order, the count walks
    the index that holds every filtered column; all live cases (no filter) are not counted: the database keeps
    their count (``case_counts``)."""
    if _filters_nothing(filters):
        return _LIVE_COUNT
    return select(func.count()).select_from(ordered.subquery())


def _page_ids(session: Reader, limit: int, offset: int, filters: dict[str, Any]) -> tuple[list[str], int]:
    """The ids of the page's cases, newest first, and how many cases match.

    They walk an index that holds every column a filter reads (``ix_cases_search``, revision 0003; on PostgreSQL
    ``ix_cases_live``, revision 0004): neither reads a case's row. A page that is not full ends the matches: their
    count is then its offset plus its length, and is not walked again (a search for one patient walks the index
    once, not twice)."""
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown case filter(s): {', '.join(sorted(unknown))}")
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
        raise StoreError(f"a page holds 1 to {MAX_PAGE} cases from offset 0 to {MAX_OFFSET}; got {limit} from "
                         f"{str(offset)[:24]}")
    ordered = (_filtered(select(CaseRow.id).where(CaseRow.deleted_at.is_(None)), filters, _dialect(session))
               .order_by(CaseRow.created_at.desc(), CaseRow.id.desc()))
    ids = list(session.scalars(ordered.limit(limit).offset(offset)))
    if len(ids) < limit and (ids or not offset):  # the page ends the matches
        return ids, offset + len(ids)
    return ids, int(session.scalar(_count(ordered, filters)) or 0)  # a full page, or one past the end


def search(session: Reader, limit: int, offset: int, **filters: Any) -> Page:
    """Cases matching every filter given (see :meth:`mucosa.store.Store.search`), newest first: the page's ids
    (:func:`_page_ids`), then only the page's rows, by id (a deep page does not read every row before it)."""
    ids, total = _page_ids(session, limit, offset, filters)
    found = records(session, ids)
    return Page([found[case_id] for case_id in ids if case_id in found], total, offset, limit)


def listing(session: Reader, limit: int, offset: int, **filters: Any) -> Listing:
    """The page :func:`search` gives, as its cases' ids and versions (read by id, without their rows' values)."""
    ids, total = _page_ids(session, limit, offset, filters)
    versions = {row.id: row.version for row in session.execute(_VERSIONS, {"ids": ids}) if _live(row)} if ids else {}
    return Listing(tuple((case_id, versions[case_id]) for case_id in ids if case_id in versions), total, offset,
                   limit)


def records(session: Reader, case_ids: Sequence[str]) -> dict[str, Case]:
    """The live cases among these ids, without their detail, by id (the ids of no live case are left out)."""
    if not case_ids:
        return {}
    rows = session.execute(_BY_IDS, {"ids": list(case_ids)})
    return {row.id: _record(row, None) for row in rows if _live(row)}


def delete(session: Session, case_id: str, at: dt.datetime, by: Actor, model_version: str | None = None) -> None:
    """Hide a case from every list and search, and cancel its work. Its row, reviews and audit lines stay
    (the audit log must keep making sense); its media stay in the store. The log line names the model that
    judged the case, else ``model_version`` (the one that was to judge it)."""
    require(by, Role.ADMIN, "delete cases")
    row = live_case(session, case_id)
    row.deleted_at, row.deleted_by = at, by.id if isinstance(by, User) else None
    if row.status in (CaseStatus.QUEUED.value, CaseStatus.RUNNING.value):
        row.status = CaseStatus.CANCELLED.value
    job = session.scalars(select(JobRow).where(JobRow.case_id == case_id)).one()
    if job.state in (CaseStatus.QUEUED.value, CaseStatus.RUNNING.value):
        job.state, job.lease_owner, job.lease_expires, job.updated_at = CaseStatus.CANCELLED.value, None, None, at
    record(session, by, "case.delete", at, case_id, row.model_version or model_version, {"name": row.name})
