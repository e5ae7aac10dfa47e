"""Jobs: the work on each case, shared by any number of workers in any number of processes.

A worker *claims* the oldest job that is queued, or running under a lease that has expired (its worker died:
``kill -9``, a crash, a lost machine). On PostgreSQL the claim reads with ``SELECT … FOR UPDATE SKIP LOCKED``,
so two workers never take one job and never wait on each other; on SQLite every write is ``BEGIN IMMEDIATE``,
one at a time. A claim takes a lease (:data:`LEASE_SECONDS`) that :func:`heartbeat` extends while the work goes
on.

Every later step is *fenced*: it only applies while the job's row still names this worker and this attempt.
A worker whose lease was lost (it stalled, another worker took the job, an admin deleted the case) gets
:class:`LeaseLost` and nothing it sends is written. :func:`finish` writes the case's results and the job's end
in one transaction, so no case is ever seen half-written.

Lease times come from each server's clock: servers sharing a PostgreSQL store should keep their clocks in step
(NTP); a skew of a few seconds only shortens or lengthens a lease by as much.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from mucosa.store.auditlog import record
from mucosa.store.records import CaseResult, CaseStatus, Job, LeaseLost, StoreError
from mucosa.store.tables import CaseDetailRow, CaseRow, JobRow

__all__ = ["LEASE_SECONDS", "MAX_ATTEMPTS", "claim", "heartbeat", "finish", "fail", "release", "counts"]

LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 3  # a job whose worker died this many times is failed, not tried again (it may be what kills them)
_QUEUED, _RUNNING = CaseStatus.QUEUED.value, CaseStatus.RUNNING.value


def _candidates(at: dt.datetime):
    takeable = or_(JobRow.state == _QUEUED, and_(JobRow.state == _RUNNING, JobRow.lease_expires < at))
    return select(JobRow).where(takeable).order_by(JobRow.id).limit(1).with_for_update(skip_locked=True)


def _give_up(session: Session, job: JobRow, at: dt.datetime) -> None:
    why = f"given up after {job.attempts} attempts: the worker stopped each time (see the servers' logs)"
    record(session, job.lease_owner or "worker", "case.failed", at, job.case_id, detail={"error": why})
    job.state, job.last_error, job.lease_owner, job.lease_expires, job.updated_at = "failed", why, None, None, at
    case = session.get(CaseRow, job.case_id)
    case.status, case.error, case.finished_at = "failed", why, at


def claim(session: Session, worker: str, at: dt.datetime, lease: float = LEASE_SECONDS,
          max_attempts: int = MAX_ATTEMPTS) -> Job | None:
    """The oldest takeable job, now held by ``worker`` for ``lease`` seconds; None when there is none."""
    while True:
        job = session.scalars(_candidates(at)).first()
        if job is None:
            return None
        if job.state == _RUNNING:  # its worker died
            if job.attempts >= max_attempts:
                _give_up(session, job, at)
                continue
            record(session, worker, "case.retry", at, job.case_id,
                   detail={"previous_worker": job.lease_owner, "attempt": job.attempts + 1})
        expires = at + dt.timedelta(seconds=lease)
        job.state, job.lease_owner, job.lease_expires, job.heartbeat_at = _RUNNING, worker, expires, at
        job.attempts, job.updated_at = job.attempts + 1, at
        session.get(CaseRow, job.case_id).status = _RUNNING
        return Job(job.id, job.case_id, worker, job.attempts, expires)


def _fenced(session: Session, job: Job, **values) -> None:
    """Update the job's row if it is still this worker's attempt, else raise LeaseLost."""
    mine = and_(JobRow.id == job.id, JobRow.lease_owner == job.worker, JobRow.attempts == job.attempt,
                JobRow.state == _RUNNING)
    result = session.execute(update(JobRow).where(mine).values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise LeaseLost(f"case {job.case_id}: the job is no longer held by {job.worker} (attempt {job.attempt}): its "
                        "lease expired and another worker took it, or the case was deleted")


def _json(detail: dict, case_id: str) -> dict:
    try:
        return json.loads(json.dumps(detail, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise StoreError(f"case {case_id}: the result's detail cannot be stored as JSON ({error})") from None


def heartbeat(session: Session, job: Job, at: dt.datetime, lease: float = LEASE_SECONDS,
              frames_decoded: int | None = None) -> Job:
    """Extend the lease (and record progress); raises LeaseLost when the job is no longer this worker's."""
    expires = at + dt.timedelta(seconds=lease)
    _fenced(session, job, lease_expires=expires, heartbeat_at=at, updated_at=at)
    if frames_decoded is not None:
        session.get(CaseRow, job.case_id).frames_decoded = frames_decoded
    return Job(job.id, job.case_id, job.worker, job.attempt, expires)


def finish(session: Session, job: Job, result: CaseResult, at: dt.datetime) -> None:
    """Write the case's results and end the job, in the caller's one transaction."""
    _fenced(session, job, state="done", lease_owner=None, lease_expires=None, updated_at=at)
    case = session.get(CaseRow, job.case_id)
    case.status, case.finished_at, case.error = "done", at, None
    case.verdict, case.verdict_text, case.score = result.verdict, result.verdict_text, result.score
    case.unfamiliar_share, case.model_version = result.unfamiliar_share, result.model_version
    if result.frames_announced is not None:
        case.frames_announced = result.frames_announced
    case.frames_decoded = result.frames_decoded
    case.decode_warnings, case.summary = list(result.decode_warnings), _json(result.summary, job.case_id)
    session.merge(CaseDetailRow(case_id=job.case_id, detail=_json(result.detail, job.case_id)))
    record(session, job.worker, "case.done", at, job.case_id, result.model_version,
           {"verdict": result.verdict, "text": result.verdict_text, "attempt": job.attempt})


def fail(session: Session, job: Job, error: str, at: dt.datetime, decode_warnings: tuple[str, ...] = (),
         model_version: str | None = None) -> None:
    """End the job as failed (the media cannot be read, the model gave no usable output), saying why."""
    _fenced(session, job, state="failed", lease_owner=None, lease_expires=None, last_error=error, updated_at=at)
    case = session.get(CaseRow, job.case_id)
    case.status, case.finished_at, case.error = "failed", at, error
    case.decode_warnings, case.model_version = list(decode_warnings), model_version
    record(session, job.worker, "case.failed", at, job.case_id, model_version, {"error": error})


def release(session: Session, job: Job, at: dt.datetime) -> None:
    """Give the job back unfinished (the server is stopping): it is queued again for any worker."""
    _fenced(session, job, state=_QUEUED, lease_owner=None, lease_expires=None, updated_at=at)
    session.get(CaseRow, job.case_id).status = _QUEUED


def counts(session: Session) -> dict[str, int]:
    """Jobs of live cases per state (every state present, zero included)."""
    rows = session.execute(select(JobRow.state, func.count()).join(CaseRow, CaseRow.id == JobRow.case_id)
                           .where(CaseRow.deleted_at.is_(None)).group_by(JobRow.state))
    found = dict(rows.all())
    return {state.value: int(found.get(state.value, 0)) for state in CaseStatus}
