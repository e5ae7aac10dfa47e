"""The web service (``mucosa serve``): a versioned REST API under ``/v1`` and the viewer at ``/``.

:func:`create_app` builds the FastAPI application around an :class:`~mucosa.service.engine.Engine` loaded
once. Its lifespan makes one temporary folder for the server (uploads, case frames) and removes it on
shutdown. Routes (the OpenAPI page at ``/docs`` documents each):

- ``POST /v1/predict``: one image → probabilities, verdict, quality, dropped (``?gradcam=1``: the overlay).
- ``POST /v1/cases``: a video or images (multipart), or ``{"path": ...}`` under ``--data-root`` → case id;
  ``GET /v1/cases``, ``GET /v1/cases/{id}``, ``/events`` (server-sent events), ``/frames/{n}.png|jpg``,
  ``/timeline.csv``, ``/report.html``, ``DELETE /v1/cases/{id}``.
- ``GET /v1/model`` (the model card), ``GET /healthz``.

With a token, every ``/v1`` route needs ``Authorization: Bearer TOKEN`` (or ``?token=TOKEN``, for the
viewer's images and event stream). Errors are JSON ``{"detail": reason}``, one sentence that never shows the
server's folders (:mod:`~mucosa.service.problems`); paths under ``--data-root`` are checked by
:mod:`~mucosa.service.paths`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mucosa.service import schemas
from mucosa.service.cases import CaseStore, QueueFull
from mucosa.service.engine import Engine, ModelOutputError, UnreadableMedia, UnsupportedMedia, media_kind, media_suffix
from mucosa.service.paths import case_sources
from mucosa.service.problems import install, problem, readable
from mucosa.service.report import report_html, timeline_csv
from mucosa.service.settings import ServeSettings
from mucosa.service.uploads import UploadedFile, UploadError, discard, receive, safe_stem

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_VERSION = "v1"
_BEARER = HTTPBearer(auto_error=False)  # documents the token at /docs ("Authorize")
_QUERY_TOKEN = APIKeyQuery(name="token", auto_error=False)  # for the viewer's images and event stream


Settings = ServeSettings  # the name this module gave the server's settings before they had their own module


ERRORS = {401: {"model": schemas.Problem, "description": "missing or wrong token (with --token)"}}
MEDIA_ERRORS = {413: {"model": schemas.Problem, "description": "larger than --max-upload-mb"},
                415: {"model": schemas.Problem, "description": "not an image or video type mucosa reads"},
                422: {"model": schemas.Problem, "description": "the file does not decode, or no verdict is "
                      "possible (the reason says which)"}}


def _upload_body(description: str, many: bool) -> dict:
    file_schema = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": file_schema} if many else file_schema
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": prop}, "required": ["file"]}},
        **({"application/json": {"schema": schemas.CaseByPath.model_json_schema()}} if many else {})}}}


# --------------------------------------------------------------------------------------------------
# Helpers shared by the routes
# --------------------------------------------------------------------------------------------------


def _state(request: Request):
    return request.app.state


async def _receive(request: Request, folder: Path, settings: ServeSettings):
    try:
        return await receive(request, folder, settings.max_upload_bytes)
    except UploadError as error:
        raise problem(error.status, error.reason) from None
    except ClientDisconnect:  # nobody will read the answer; the partial files are already gone
        log.info("client disconnected mid-upload; partial files removed")
        raise problem(400, "the client disconnected mid-upload") from None


def _finalize(item: UploadedFile, index: int) -> Path:
    """Rename an uploaded part to a safe name with its media suffix; 415 when the type is unknown."""
    suffix = media_suffix(item.name, item.head)
    if suffix is None:
        raise problem(415, f"{item.name}: not an image or video type mucosa reads (by its name and content)")
    path = item.path.with_name(f"{index:04d}-{safe_stem(item.name)}{suffix}")
    item.path.rename(path)
    return path


def _media_error(error: Exception) -> HTTPException:
    if isinstance(error, UnsupportedMedia):
        return problem(415, str(error))
    return problem(422, str(error))


# --------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application: API, viewer and lifespan (temporary folder, case worker)."""
    settings = settings or ServeSettings()
    card = engine.card()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        parent = Path(settings.temp_parent or tempfile.gettempdir())
        _remove_orphans(parent)
        root = Path(tempfile.mkdtemp(prefix=f"mucosa-serve-{os.getpid()}-", dir=parent))
        app.state.root = root
        app.state.store = CaseStore(engine, root, settings.queue_size)
        # image predictions prepared at once: a few more than the model's slots, so that under load one is
        # always waiting at the model lock and case frames get only their overdue turns (PriorityLock)
        app.state.limiter = anyio.CapacityLimiter(2 * engine.slots + 2)
        log.info("temporary files in %s (removed on shutdown)", root)
        try:
            yield
        finally:
            app.state.store.close()
            shutil.rmtree(root, ignore_errors=True)
            log.info("stopped; temporary files removed")

    app = FastAPI(title="mucosa", version=card.get("mucosa_version") or "0", lifespan=lifespan,
                  description="Computer-aided confirmation of mucosal healing from confocal laser endomicroscopy "
                  "(CLE). Research software: not a diagnosis. The viewer is at `/`.")
    app.state.engine, app.state.settings, app.state.card = engine, settings, card
    data_roots = [settings.data_root, settings.data_root.resolve()] if settings.data_root else []
    install(app, lambda: [p for p in (getattr(app.state, "root", None), *data_roots) if p is not None])

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
                      token: Annotated[str | None, Depends(_QUERY_TOKEN)]) -> None:
        if settings.secret is None:
            return
        given = credentials.credentials if credentials is not None else token
        if not given or not hmac.compare_digest(given.encode(), settings.secret.encode()):
            raise problem(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})

    api = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(require_token)], responses=ERRORS)
    _model_routes(api, card)
    _predict_route(api, engine, settings)
    _case_routes(api, engine, settings, card)
    app.include_router(api)

    @app.get("/healthz", response_model=schemas.Health, tags=["service"])
    async def healthz(request: Request) -> dict:
        """Liveness: the model is loaded and the case worker runs (no token needed). Answered on the event
        loop itself, so it answers while every worker thread is busy."""
        return {"status": "ok", "model": card["name"], "runtime": engine.runtime, "device": engine.device,
                **_state(request).store.counts()}

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _remove_orphans(parent: Path) -> None:
    """Remove the temporary folders of servers that were killed before they could (their process is gone)."""
    for folder in parent.glob("mucosa-serve-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a server that was killed", folder)
        except PermissionError:
            pass  # another user's live process


def _model_routes(api: APIRouter, card: dict) -> None:
    @api.get("/model", tags=["model"])
    def model() -> dict:
        """The model card: classes and how the verdict words them, input size, preprocessing, training cohort
        counts (no ids), validation metrics, decision threshold and the runtime chosen."""
        return card


def _predict_route(api: APIRouter, engine: Engine, settings: ServeSettings) -> None:
    @api.post("/predict", response_model=schemas.Prediction, response_model_exclude_none=False, tags=["predict"],
              responses=MEDIA_ERRORS, openapi_extra=_upload_body("one image (PNG, TIFF, JPEG, BMP)", many=False))
    async def predict(request: Request, gradcam: bool = Query(False, description="add the Grad-CAM overlay")):
        """One image: class probabilities, verdict, quality score and whether the quality gate dropped it."""
        state = _state(request)
        folder = state.root / "requests" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            upload = await _receive(request, folder, settings)
            if len(upload.files) != 1:
                raise problem(422, f"send exactly one image in the form's file field ({len(upload.files)} sent)")
            path = _finalize(upload.files[0], 0)
            if media_kind(path) == "video":
                raise problem(415, f"{upload.files[0].name}: a video; POST it to /{API_VERSION}/cases")
            try:
                result = await anyio.to_thread.run_sync(engine.predict_image, path, gradcam,
                                                        limiter=state.limiter)
            except (UnsupportedMedia, UnreadableMedia, ModelOutputError) as error:
                raise _media_error(error) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        png = result.pop("gradcam_png", None)
        if png is not None:
            result["gradcam"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return result


def _case_or_404(request: Request, case_id: str):
    case = _state(request).store.get(case_id)
    if case is None:
        raise problem(404, f"no case {case_id} (unknown, or deleted)")
    return case


def _busy(seconds: int) -> HTTPException:
    return problem(503, f"the work queue is full; retry in about {seconds} s", {"Retry-After": str(seconds)})


async def _case_files(request: Request, folder: Path,
                      settings: ServeSettings) -> tuple[list[Path], list[str], str | None]:
    """The files of a case being opened (uploaded into ``folder``, or named under --data-root), their names
    to show, and the name the client gave the case."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await _json_body(request)
        sources, files = await run_in_threadpool(case_sources, body, settings.data_root)
        return sources, files, body.name
    upload = await _receive(request, folder / "upload", settings)
    if not upload.files:
        raise problem(422, "no file in the request (multipart field 'file')")
    sources = [_finalize(item, k) for k, item in enumerate(upload.files)]
    return sources, [item.name for item in upload.files], upload.fields.get("name")


def _listable(cases: list) -> list[dict]:
    """The summaries of ``cases`` that the API can answer with; one that cannot is logged and left out, so that
    it never breaks the list."""
    summaries = []
    for case in cases:
        try:
            summary = case.summary()
            schemas.CaseSummary.model_validate(summary)
        except Exception as error:  # a bug's, never the client's: the others are still listed
            log.error("case %s left out of the list: %s", case.id, error)
            continue
        summaries.append(summary)
    return summaries


def _case_routes(api: APIRouter, engine: Engine, settings: ServeSettings, card: dict) -> None:
    @api.post("/cases", status_code=202, response_model=schemas.CaseCreated, tags=["cases"],
              responses={**MEDIA_ERRORS, 403: {"model": schemas.Problem, "description": "path outside --data-root"},
                         503: {"model": schemas.Problem, "description": "work queue full (Retry-After)"}},
              openapi_extra=_upload_body("a video, or several images of one case (multipart field `file`); or "
                                         "JSON naming files already under --data-root", many=True))
    async def create_case(request: Request, name: str | None = Query(None, description="the case's name")):
        """Open a case: returns its id at once; frames are processed in the background (follow
        ``GET /v1/cases/{id}`` or its ``/events``)."""
        store: CaseStore = _state(request).store
        try:
            case_id, folder = store.reserve()  # before reading the body: no upload waits for a place
        except QueueFull as error:
            await discard(request)  # so that the client, still sending, reads the answer
            raise _busy(error.retry_after) from None
        try:
            sources, files, given_name = await _case_files(request, folder, settings)
            try:
                info = await run_in_threadpool(engine.inspect, sources)
            except (UnsupportedMedia, UnreadableMedia) as error:
                raise _media_error(error) from None
            case = store.submit(case_id, folder, (name or given_name or files[0])[:120], files, sources, info)
        except BaseException:
            store.release(case_id, folder)
            raise
        base = f"/{API_VERSION}/cases/{case.id}"
        return {"id": case.id, "status": case.status, "url": base, "events": base + "/events"}

    @api.get("/cases", response_model=list[schemas.CaseSummary], tags=["cases"])
    def list_cases(request: Request) -> list[dict]:
        """The cases opened since the server started, newest first (without timelines)."""
        return _listable(_state(request).store.list())

    @api.get("/cases/{case_id}", response_model=schemas.Case, tags=["cases"],
             responses={404: {"model": schemas.Problem}})
    def get_case(request: Request, case_id: str,
                 since: int = Query(0, ge=0, description="timeline rows from this one on")) -> dict:
        """Status, progress, the per-frame timeline and the running or final verdict."""
        return _case_or_404(request, case_id).to_dict(since)

    @api.get("/cases/{case_id}/events", tags=["cases"], responses={
        200: {"content": {"text/event-stream": {}}, "description": "`update` events (the case summary with "
              "the new timeline rows in `timeline`, from row `since`), then one `end` event"},
        404: {"model": schemas.Problem}})
    async def case_events(request: Request, case_id: str) -> StreamingResponse:
        """The case as server-sent events while it runs: each ``update`` carries the summary and the new
        timeline rows; ``end`` follows the last one. Reconnecting with ``Last-Event-ID`` resumes."""
        _case_or_404(request, case_id)
        start = request.headers.get("last-event-id", "0")
        return StreamingResponse(_events(request, case_id, int(start) if start.isdigit() else 0),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/cases/{case_id}/frames/{number}.{ext}", tags=["cases"], response_class=Response, responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {"model": schemas.Problem},
        409: {"model": schemas.Problem, "description": "Grad-CAM of a frame the quality gate dropped"}})
    async def frame(request: Request, case_id: str, number: int, ext: str,
                    gradcam: bool = Query(False, description="overlay the Grad-CAM heat map (PNG only)")):
        """Frame ``number`` of the case as the viewer shows it (``.jpg``: as stored; ``.png``: lossless, and
        with ``?gradcam=1`` the heat map of the predicted class over the part the model saw)."""
        case = _case_or_404(request, case_id)
        if ext not in ("png", "jpg") or case.store is None or number not in case.store:
            raise problem(404, f"case {case_id} has no frame {number}.{ext} (yet)")
        if gradcam:
            row = next((r for r in case.timeline if r["frame"] == number), None)
            if ext != "png" or row is None or row["dropped"]:
                raise problem(409, f"frame {number} has no Grad-CAM: " + (
                    "the quality gate dropped it" if row is not None and row["dropped"] else "use .png"))
        headers = {"Cache-Control": "private, max-age=3600"}
        if ext == "jpg":
            return FileResponse(case.store.display_path(number), media_type="image/jpeg", headers=headers)
        data = await run_in_threadpool(engine.frame_png, case.store, number, gradcam)
        return Response(data, media_type="image/png", headers=headers)

    @api.get("/cases/{case_id}/timeline.csv", tags=["cases"], response_class=Response,
             responses={200: {"content": {"text/csv": {}}}, 404: {"model": schemas.Problem}})
    def case_timeline(request: Request, case_id: str) -> Response:
        """The per-frame timeline: frame, time, probability, smoothed, quality, dropped."""
        case = _case_or_404(request, case_id)
        return Response(timeline_csv(case.to_dict(), card["classes"]), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{safe_stem(case.name)}-timeline.csv"'})

    @api.get("/cases/{case_id}/report.html", tags=["cases"], response_class=HTMLResponse,
             responses={404: {"model": schemas.Problem}})
    def case_report(request: Request, case_id: str, download: bool = False) -> HTMLResponse:
        """A one-page case report: verdict, score, frames it rests on, timeline, model."""
        case = _case_or_404(request, case_id)
        headers = {"Content-Disposition": f'attachment; filename="{safe_stem(case.name)}-report.html"'} \
            if download else None
        return HTMLResponse(report_html(case.to_dict(), card), headers=headers)

    @api.delete("/cases/{case_id}", status_code=204, tags=["cases"], responses={404: {"model": schemas.Problem}})
    def delete_case(request: Request, case_id: str) -> Response:
        """Stop the case's work and remove its files."""
        if not _state(request).store.delete(case_id):
            raise problem(404, f"no case {case_id} (unknown, or deleted)")
        return Response(status_code=204)


async def _json_body(request: Request) -> schemas.CaseByPath:
    """The JSON body of ``POST /v1/cases`` (at most 64 KB), parsed and checked in one step by pydantic, whose
    parser also refuses nesting too deep; 422 with one sentence saying what is wrong."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > 64 * 1024:
            raise problem(413, "a JSON body is at most 64 KB")
    try:
        return schemas.CaseByPath.model_validate_json(raw or b"{}")
    except ValidationError as error:
        raise problem(422, f"the JSON body is not valid: {readable(error.errors())}") from None


async def _events(request: Request, case_id: str, sent: int, batch: int = 500, quiet: float = 15.0):
    """Server-sent events of one case: ``update`` with new rows, ``end`` when the work stops."""
    store: CaseStore = _state(request).store
    yield "retry: 2000\n\n"
    first, idle = True, 0.0
    while True:
        case = store.get(case_id)
        if case is None:
            yield 'event: end\ndata: {"status": "deleted"}\n\n'
            return
        finished = case.finished_work  # read before the rows: a finished case has all its rows
        rows = case.timeline[sent:sent + batch]
        if rows or first or finished:
            data = {**case.summary(), "since": sent, "timeline": rows}
            sent += len(rows)
            yield f"id: {sent}\nevent: update\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            first, idle = False, 0.0
            if finished and sent >= len(case.timeline):
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
