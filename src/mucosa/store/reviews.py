"""Reviews: a reviewer's judgement of a finished case against histology (functions on an open transaction).

Reviews are only added (the database refuses to change or remove one). Each keeps the verdict it judged
(class, words, probability, model version) as it was then, so a case processed again later by another model
does not change what an earlier reviewer confirmed. The latest review of a case is its histology truth.

One rule keeps a review from contradicting itself (:func:`check_agreement`, for every caller: the API, the
commands, a script): when the verdict is a class, ``agrees`` says whether histology found that class, so it
must be ``histology == verdict``. When the case has no class for a verdict (unfamiliar images, no informative
frames), ``agrees`` is the reviewer's judgement of that no-verdict (true: right not to call one).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mucosa.store.auditlog import record
from mucosa.store.cases import live_case
from mucosa.store.records import CaseStatus, InvalidReview, Review, Role, StoreError, User
from mucosa.store.tables import CaseRow, ReviewRow, UserRow
from mucosa.store.users import check_name, require

__all__ = ["MAX_NOTE", "review_record", "check_agreement", "add", "of_case", "latest", "latest_of"]

MAX_NOTE = 4000


def review_record(row: ReviewRow, reviewer: str) -> Review:
    return Review(row.id, row.case_id, reviewer, row.created_at, row.histology, row.agrees, row.note,
                  row.model_version, row.verdict, row.verdict_text, row.score)


def check_agreement(verdict: str | None, histology: str, agrees: bool) -> None:
    """Refuse a review that contradicts itself: when the verdict is a class, agreeing with it is histology finding
    that class (see the module docstring).

    Raises:
        InvalidReview: ``agrees`` is not a bool, or not ``histology == verdict`` for a verdict that is a class.
    """
    if not isinstance(agrees, bool):
        raise InvalidReview(f"agrees must be true or false; got {agrees!r}")
    if verdict is not None and agrees != (histology == verdict):
        relation = "is" if histology == verdict else "is not"
        raise InvalidReview(f"agrees: {str(agrees).lower()} contradicts the histology: {histology!r} {relation} the "
                            f"verdict's class {verdict!r}, so agrees must be {str(not agrees).lower()}")


def add(session: Session, case_id: str, by: User, histology: str, agrees: bool, note: str,
        at: dt.datetime) -> Review:
    """Record ``by``'s review of the case (a finished one) and log it.

    Raises:
        NotAllowed: ``by`` is not a reviewer. NotFound: no such live case. StoreError: the case is not done.
        InvalidReview: a histology, agreement (:func:`check_agreement`) or note that cannot be kept.
    """
    if not isinstance(by, User):
        raise StoreError("a review needs the reviewer (a user)")
    require(by, Role.REVIEWER, "review cases")
    case = live_case(session, case_id)
    if case.status != CaseStatus.DONE.value:
        raise StoreError(f"case {case_id} is {case.status}: only a finished case can be reviewed")
    histology = check_name(histology, "histology")
    check_agreement(case.verdict, histology, agrees)
    note = note or ""
    if len(note) > MAX_NOTE:
        raise InvalidReview(f"the note is {len(note)} characters long (at most {MAX_NOTE})")
    row = ReviewRow(case_id=case_id, reviewer_id=by.id, created_at=at, histology=histology,
                    agrees=agrees, note=note, model_version=case.model_version, verdict=case.verdict,
                    verdict_text=case.verdict_text, score=case.score)
    session.add(row)
    case.reviewed = True
    case.version = CaseRow.version + 1  # a later review may change no column: lists must still read it again
    session.flush()
    record(session, by, "case.review", at, case_id, case.model_version,
           {"histology": row.histology, "agrees": agrees, "verdict": case.verdict})
    return review_record(row, by.name)


def of_case(session: Session, case_id: str) -> list[Review]:
    """Every review of the case, oldest first."""
    live_case(session, case_id)
    rows = session.execute(select(ReviewRow, UserRow.name).join(UserRow, UserRow.id == ReviewRow.reviewer_id)
                           .where(ReviewRow.case_id == case_id).order_by(ReviewRow.id))
    return [review_record(row, name) for row, name in rows]


def latest(session: Session, since: dt.date | None = None, model: str | None = None) -> list[tuple[Review, dt.date]]:
    """The latest review of every reviewed live case, with the case's day (exam date, else upload day),
    oldest day first."""
    newest = (select(func.max(ReviewRow.id).label("id")).group_by(ReviewRow.case_id)).subquery()
    query = (select(ReviewRow, UserRow.name, CaseRow.day).join(newest, newest.c.id == ReviewRow.id)
             .join(UserRow, UserRow.id == ReviewRow.reviewer_id).join(CaseRow, CaseRow.id == ReviewRow.case_id)
             .where(CaseRow.deleted_at.is_(None)).order_by(CaseRow.day, ReviewRow.id))
    if since is not None:
        query = query.where(CaseRow.day >= since)
    if model is not None:
        query = query.where(ReviewRow.model_version == model)
    return [(review_record(row, name), day) for row, name, day in session.execute(query)]


def latest_of(session: Session, case_ids: list[str]) -> dict[str, Review]:
    """The latest review of each of these cases that has one (one query, for a page of cases)."""
    if not case_ids:
        return {}
    newest = (select(func.max(ReviewRow.id).label("id")).where(ReviewRow.case_id.in_(case_ids))
              .group_by(ReviewRow.case_id)).subquery()
    rows = session.execute(select(ReviewRow, UserRow.name).join(newest, newest.c.id == ReviewRow.id)
                           .join(UserRow, UserRow.id == ReviewRow.reviewer_id))
    return {row.case_id: review_record(row, name) for row, name in rows}
