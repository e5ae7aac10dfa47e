"""``/v1/cases``: a video or several images of one case, processed in the background.

``POST /cases`` (multipart upload, or JSON naming files under --data-root) answers with the case's id at once;
``GET /cases``, ``GET /cases/{id}``, its ``/events`` (server-sent events), ``/frames/{n}.png|jpg`` and
``/timeline.csv`` follow it (its reports: :mod:`~mucosa.service.routes.reports`); ``DELETE /cases/{id}``
stops it and removes its files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from mucosa.service import schemas
from mucosa.service.cases import CaseService, QueueFull
from mucosa.service.dependencies import (
    CardDep,
    CasesDep,
    EngineDep,
    ReadersDep,
    SettingsDep,
    SummariesDep,
    UserDep,
    case_or_404,
    case_with_files,
)
from mucosa.service.engine import Engine, media_kind
from mucosa.service.framestore import FrameStore
from mucosa.service.paths import case_sources
from mucosa.service.privacy import hidden_paths, private_case, shown_name
from mucosa.service.problems import problem, readable
from mucosa.service.reading import UnreadableMedia, UnsupportedMedia
from mucosa.service.report import timeline_csv
from mucosa.service.routes.common import (
    API_VERSION,
    MEDIA_ERRORS,
    checked_text,
    exam_fields,
    finalize,
    media_error,
    read_upload,
    upload_body,
)
from mucosa.service.settings import ServeSettings
from mucosa.service.summaries import Summaries
from mucosa.service.uploads import discard, safe_stem
from mucosa.store import User
from mucosa.store.cases import MAX_OFFSET, MAX_PAGE, NO_VERDICT, UNFAMILIAR

__all__ = ["router"]

router = APIRouter(prefix="/cases", tags=["cases"])

NOT_FOUND = {404: {"model": schemas.Problem}}
MAX_JSON = 64 * 1024  # bytes of a JSON body
SINCE = Query(None, description="from this day on (the exam date, else the upload day), YYYY-MM-DD")
UNTIL = Query(None, description="up to this day, inclusive")


@router.post("", status_code=202, response_model=schemas.CaseCreated | schemas.CasesCreated,
             responses={**MEDIA_ERRORS, 403: {"model": schemas.Problem, "description": "path outside --data-root"},
                        503: {"model": schemas.Problem, "description": "work queue full (Retry-After)"}},
             openapi_extra=upload_body("a video, several images of one case, or several videos (a case each) "
                                       "(multipart field `file`, with the optional fields `patient`, `exam_date`, "
                                       "`region`); or JSON naming files already under --data-root", many=True))
async def create_case(request: Request, engine: EngineDep, cases: CasesDep, settings: SettingsDep, user: UserDep,
                      name: str | None = Query(None, description="the case's name")):
    """Open a case: returns its id at once; frames are processed in the background (follow
    ``GET /v1/cases/{id}`` or its ``/events``). Several videos in one upload open a case each, all or none:
    the answer lists them (``cases``)."""
    try:
        place = cases.reserve()  # before reading the body: no upload waits for a place
    except QueueFull as error:
        await discard(request)  # so that the client, still sending, reads the answer
        raise _busy(error.retry_after) from None
    places = [place]
    try:
        sources, files, given = await _case_files(request, place[1], settings)
        exam = exam_fields(given.get("patient"), given.get("exam_date"), given.get("region"))
        name = checked_text(name if name is not None else given.get("name"), "name", 120, blank=False)
        groups = [[path] for path in sources] if len(sources) > 1 and all(
            media_kind(path) == "video" for path in sources) else [sources]
        for _ in groups[1:]:
            places.append(cases.reserve())
        infos = []
        for group in groups:
            try:
                infos.append(await run_in_threadpool(engine.inspect, group))
            except (UnsupportedMedia, UnreadableMedia) as error:
                raise media_error(error, {path.name: shown_name(file, settings.pseudonym)
                                          for path, file in zip(sources, files)}) from None
        names = {path: file for path, file in zip(sources, files)}
        created = []
        for group, info in zip(groups, infos):
            shown = [names[path] for path in group]
            title = (f"{name} · {shown[0]}" if name and len(groups) > 1 else name or shown[0])[:120]
            case = await run_in_threadpool(cases.submit, title, shown, group, info, user, exam)
            created.append(_created(case))
    except QueueFull as error:
        raise _busy(error.retry_after) from None
    finally:
        for token, folder in places:
            cases.release(token, folder)
    return {"cases": created} if len(groups) > 1 else created[0]


@router.get("", response_model=list[schemas.CaseSummary], responses={
    200: {"headers": {"X-Total-Count": {"description": "cases matching the filters", "schema": {"type": "integer"}}}},
    422: {"model": schemas.Problem, "description": "a filter is not valid (the parameter is named)"}})
async def list_cases(summaries: SummariesDep, card: CardDep, readers: ReadersDep,
                     patient: str | None = Query(None, max_length=64, description="pseudonymous patient id (exact)"),
                     since: dt.date | None = SINCE, until: dt.date | None = UNTIL,
                     verdict: str | None = Query(None, max_length=64, description="a class, `unfamiliar`, or `none`"),
                     reviewed: bool | None = Query(None, description="reviewed (true) or not (false)"),
                     q: str | None = Query(None, max_length=200, description="part of the case's name or patient id"),
                     limit: int = Query(100, ge=1, le=MAX_PAGE),
                     offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> Response:
    """The cases matching every filter given, newest first, without timelines (the total in
    ``X-Total-Count``)."""
    known = [*card["classes"], UNFAMILIAR, NO_VERDICT]
    if verdict is not None and verdict not in known:
        raise problem(422, f"verdict: {verdict[:64]!r} is not one of {', '.join(known)}")
    patient, q = checked_text(patient, "patient", 64), checked_text(q, "q", 200)
    filters = {"patient": patient, "since": since, "until": until, "verdict": verdict, "reviewed": reviewed,
               "text": q, "limit": limit, "offset": offset}
    return await anyio.to_thread.run_sync(_page, summaries, filters, limiter=readers)


@router.get("/{case_id}", response_model=schemas.CaseDetail, responses=NOT_FOUND)
async def get_case(case_id: str, cases: CasesDep, user: UserDep, readers: ReadersDep,
                   since: int = Query(0, ge=0, description="timeline rows from this one on")) -> Response:
    """Status, progress, the per-frame timeline, the running or final verdict and every review."""
    return await anyio.to_thread.run_sync(_opened, cases, case_id, user, since, limiter=readers)


@router.get("/{case_id}/events", responses={
    200: {"content": {"text/event-stream": {}}, "description": "`update` events (the case summary with the new "
          "timeline rows in `timeline`, from row `since`), then one `end` event"}, **NOT_FOUND})
async def case_events(request: Request, case_id: str, cases: CasesDep) -> StreamingResponse:
    """The case as server-sent events while it runs: each ``update`` carries the summary and the new
    timeline rows; ``end`` follows the last one. Reconnecting with ``Last-Event-ID`` resumes."""
    await run_in_threadpool(case_or_404, cases, case_id, False)
    start = request.headers.get("last-event-id", "0")
    return StreamingResponse(_events(request, cases, case_id, int(start) if start.isdigit() else 0),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{case_id}/frames/{number}.{ext}", response_class=Response, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}}}, **NOT_FOUND,
    409: {"model": schemas.Problem, "description": "Grad-CAM of a frame the quality gate dropped; a done case "
          "whose files are missing from the store"}})
async def frame(case_id: str, number: int, ext: str, engine: EngineDep, cases: CasesDep,
                gradcam: bool = Query(False, description="overlay the Grad-CAM heat map (PNG only)")):
    """Frame ``number`` of the case as the viewer shows it (``.jpg``: as stored; ``.png``: lossless, and
    with ``?gradcam=1`` the heat map of the predicted class over the part the model saw)."""
    case = await run_in_threadpool(case_with_files, cases, case_id, bool(gradcam))
    if ext not in ("png", "jpg") or case.store is None or number not in case.store:
        raise _no_frame(case_id, number, ext)
    if gradcam:
        _check_gradcam(case, number, ext)
    data = await run_in_threadpool(_frame_bytes, cases, engine, case, number, ext, gradcam)
    return Response(data, media_type="image/jpeg" if ext == "jpg" else "image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{case_id}/timeline.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}, **NOT_FOUND})
def case_timeline(case_id: str, cases: CasesDep, card: CardDep, settings: SettingsDep, user: UserDep) -> Response:
    """The per-frame timeline: frame, time, probability, smoothed, quality, dropped (and each image's file,
    under ``--pseudonymise`` as its pseudonym). Logged as exported by the user."""
    view = case_or_404(cases, case_id)
    cases.store.record(user, "case.export", case_id, view.record.model_version, {"as": "timeline.csv"})
    case = view.to_dict()
    if settings.pseudonym is not None:
        case = private_case(case, settings.pseudonym)
    return Response(timeline_csv(case, card["classes"]), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{safe_stem(case["name"])}-timeline.csv"'})


@router.delete("/{case_id}", status_code=204, responses=NOT_FOUND)
def delete_case(case_id: str, cases: CasesDep, user: UserDep) -> Response:
    """Stop the case's work and remove its files (admins). Its reviews and the audit log keep it."""
    cases.delete(case_id, user)
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------------
# What the routes above share
# --------------------------------------------------------------------------------------------------


def _page(summaries: Summaries, filters: dict) -> Response:
    """A page of case summaries as JSON (checked against ``CaseSummary`` once, when first shown at their version;
    the route's ``response_model`` documents them), the count of the cases matching in ``X-Total-Count``."""
    body, total = summaries.page(**filters)
    return Response(body, media_type="application/json", headers={"X-Total-Count": str(total)})


def _opened(cases: CaseService, case_id: str, user: User, since: int) -> Response:
    """The case's detail from timeline row ``since``; opening it whole (``since`` 0) is written in the audit log
    before the answer."""
    case = case_or_404(cases, case_id)
    if since == 0:
        cases.store.record(user, "case.open", case_id, case.record.model_version)
    return _detail(case.to_dict(since))


def _created(case) -> dict:
    base = f"/{API_VERSION}/cases/{case.id}"
    return {"id": case.id, "status": case.status.value, "url": base, "events": base + "/events"}


def _busy(seconds: int) -> HTTPException:
    return problem(503, f"the work queue is full; retry in about {seconds} s", {"Retry-After": str(seconds)})


def _no_frame(case_id: str, number: int, ext: str) -> HTTPException:
    return problem(404, f"case {case_id} has no frame {number}.{ext} (yet)")


def _read_frame(engine: Engine, frames: FrameStore, number: int, ext: str, gradcam: bool) -> bytes:
    """Frame ``number`` as the route gives it: the display JPEG as stored, or a PNG (with its Grad-CAM)."""
    return frames.display_path(number).read_bytes() if ext == "jpg" else engine.frame_png(frames, number, gradcam)


def _frame_bytes(cases: CaseService, engine: Engine, case, number: int, ext: str, gradcam: bool) -> bytes:
    """The frame's bytes, read whole before the answer starts. A worker that finishes the case moves its frames
    from its attempt's folder into the case's own folder, maybe while they are read here: then the case is
    looked up again and they are read from there."""
    try:
        return _read_frame(engine, case.store, number, ext, gradcam)
    except FileNotFoundError:
        case = case_with_files(cases, case.id, gradcam)
    if case.store is None or number not in case.store:
        raise _no_frame(case.id, number, ext)
    try:
        return _read_frame(engine, case.store, number, ext, gradcam)
    except FileNotFoundError:  # the case was deleted meanwhile
        raise _no_frame(case.id, number, ext) from None


def _check_gradcam(case, number: int, ext: str) -> None:
    """409 unless the frame has a Grad-CAM: a PNG of a frame the quality gate kept."""
    row = next((r for r in case.timeline if r["frame"] == number), None)
    if ext != "png" or row is None or row["dropped"]:
        raise problem(409, f"frame {number} has no Grad-CAM: " + (
            "the quality gate dropped it" if row is not None and row["dropped"] else "use .png"))


async def _case_files(request: Request, folder: Path, settings: ServeSettings) -> tuple[list[Path], list[str],
                                                                                         dict[str, str]]:
    """The files of a case being opened (uploaded into ``folder``, or named under --data-root), their names
    to show, and the fields the client gave (``name``, ``patient``, ``exam_date``, ``region``)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await _json_body(request)
        try:
            sources, files = await run_in_threadpool(case_sources, body, settings.data_root)
        except HTTPException as error:
            if settings.pseudonym is None:
                raise
            reason = hidden_paths(str(error.detail), body.paths or [body.path], settings.pseudonym)
            raise problem(error.status_code, reason, error.headers) from None
        return sources, files, body.model_dump(include={"name", "patient", "exam_date", "region"})
    upload = await read_upload(request, folder / "upload", settings)
    if not upload.files:
        raise problem(422, "no file in the request (multipart field 'file')")
    sources = [finalize(item, k, settings.pseudonym) for k, item in enumerate(upload.files)]
    return sources, [item.name for item in upload.files], upload.fields


async def _json_body(request: Request) -> schemas.CaseByPath:
    """The JSON body of ``POST /v1/cases`` (at most 64 KB), parsed and checked in one step by pydantic, whose
    parser also refuses nesting too deep; 422 with one sentence saying what is wrong."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON:
            raise problem(413, "a JSON body is at most 64 KB")
    try:
        return schemas.CaseByPath.model_validate_json(raw or b"{}")
    except ValidationError as error:
        raise problem(422, f"the JSON body is not valid: {readable(error.errors())}") from None


_DETAIL = TypeAdapter(schemas.CaseDetail)


def _detail(case: dict) -> Response:
    """A case's detail checked against ``CaseDetail`` and written as JSON here, in the route's own thread: the JSON
    FastAPI writes for the route's ``response_model`` (which then only documents it), without the second thread
    FastAPI takes to check a plain route's answer (under load, a second wait for a free one)."""
    return Response(_DETAIL.dump_json(_DETAIL.validate_python(case), by_alias=True), media_type="application/json")


async def _events(request: Request, cases: CaseService, case_id: str, sent: int, batch: int = 500,
                  quiet: float = 15.0):
    """Server-sent events of one case: ``update`` with new rows, ``end`` when the work stops."""
    yield "retry: 2000\n\n"
    first, idle = True, 0.0
    while True:
        case = await run_in_threadpool(cases.view, case_id, False)
        if case is None:
            yield 'event: end\ndata: {"status": "deleted"}\n\n'
            return
        if case.finished_work and case.live is None:  # read its timeline, kept with the case
            case = await run_in_threadpool(cases.view, case_id, True) or case
        finished = case.finished_work  # read before the rows: a finished case has all its rows
        timeline = case.timeline
        rows = timeline[sent:sent + batch]
        if rows or first or finished:
            data = {**case.summary(), "since": sent, "timeline": rows}
            sent += len(rows)
            yield f"id: {sent}\nevent: update\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            first, idle = False, 0.0
            if finished and sent >= len(timeline):
                yield f"event: end\ndata: {json.dumps({'status': case.status})}\n\n"
                return
            if len(rows) == batch:
                continue
        elif idle >= quiet:
            yield ": keep-alive\n\n"
            idle = 0.0
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.25)
        idle += 0.25
