"""``/v1/cases/{id}/report.json|html|pdf``: the case report, as data, as a page and as a document to file.

The three hold the same report (:mod:`mucosa.service.report`): the case and its exam fields, the model and
its weights' SHA-256, the verdict with its confidence, shares and interval, the timeline, key frames with
Grad-CAM, quality and decode warnings, the reviewer's sign-off once there is one, and the banner. A report
of a case still running says so (its status); the first one computes the key frames' Grad-CAM. Under
``serve --pseudonymise`` they name patients, cases and files by keyed pseudonyms and withhold free text
(:mod:`mucosa.service.privacy`). Each is logged as ``case.report`` by the user, with its format.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mucosa.data.pseudonyms import Pseudonym
from mucosa.service import schemas
from mucosa.service.cases import CaseService
from mucosa.service.dependencies import CardDep, CasesDep, EngineDep, SettingsDep, UserDep, case_with_files
from mucosa.service.engine import Engine
from mucosa.service.problems import problem
from mucosa.service.report import ReportParts, gather, report_html
from mucosa.service.report_pdf import report_pdf
from mucosa.service.routes.common import API_VERSION, log
from mucosa.service.uploads import safe_stem
from mucosa.service.views import CaseView

__all__ = ["router"]

router = APIRouter(prefix="/cases", tags=["reports"])

NOT_FOUND = {404: {"model": schemas.Problem},
             409: {"model": schemas.Problem, "description": "a done case whose files are missing from the store"}}


async def _logged(cases, user, case, form: str) -> None:
    """The audit log's line: ``user`` took the case's report as ``form``."""
    await run_in_threadpool(cases.store.record, user, "case.report", case.id, case.record.model_version, {"as": form})


def _attachment(parts, suffix: str, download: bool = True) -> dict | None:
    """The file name to save a report under: the case's name as the report gives it."""
    return {"Content-Disposition": f'attachment; filename="{safe_stem(parts.data["case"]["name"])}-report.{suffix}"'} \
        if download else None


def _report(cases: CaseService, case_id: str, engine: Engine, card: dict, pictures: bool,
            pseudonym: Pseudonym | None) -> tuple[CaseView, ReportParts]:
    """The case and its report (404 unknown, 409 a done case whose files are missing). A worker that finishes the case
    moves its frames into the case's own folder, maybe while the report reads them: then it is gathered again."""
    try:
        case = case_with_files(cases, case_id)
        return case, gather(case, engine, card, pictures, pseudonym)
    except FileNotFoundError:
        case = case_with_files(cases, case_id)
        return case, gather(case, engine, card, pictures, pseudonym)


@router.get("/{case_id}/report.json", responses=NOT_FOUND)
async def case_report_json(case_id: str, cases: CasesDep, engine: EngineDep, card: CardDep,
                           settings: SettingsDep, user: UserDep, download: bool = True) -> JSONResponse:
    """The case report as data: everything the PDF and HTML reports say, with the key frames' image URLs
    (``frame``: as shown; ``gradcam``: with its heat map)."""
    case, parts = await run_in_threadpool(_report, cases, case_id, engine, card, False, settings.pseudonym)
    await _logged(cases, user, case, "report.json")
    data = parts.data
    base = f"/{API_VERSION}/cases/{case.id}/frames"
    for key in data["key_frames"]:
        key["images"] = {"frame": f"{base}/{key['frame']}.jpg", "gradcam": f"{base}/{key['frame']}.png?gradcam=1"}
    return JSONResponse(data, headers=_attachment(parts, "json", download))


@router.get("/{case_id}/report.html", response_class=HTMLResponse, responses=NOT_FOUND)
async def case_report_html(case_id: str, cases: CasesDep, engine: EngineDep, card: CardDep, settings: SettingsDep,
                           user: UserDep, download: bool = False) -> HTMLResponse:
    """The case report as one self-contained page (pictures embedded)."""
    case, parts = await run_in_threadpool(_report, cases, case_id, engine, card, True, settings.pseudonym)
    await _logged(cases, user, case, "report.html")
    return HTMLResponse(report_html(parts), headers=_attachment(parts, "html", download))


@router.get("/{case_id}/report.pdf", response_class=Response, responses={
    200: {"content": {"application/pdf": {}}}, **NOT_FOUND,
    501: {"model": schemas.Problem, "description": "ReportLab is not installed"}})
async def case_report_pdf(case_id: str, cases: CasesDep, engine: EngineDep, card: CardDep, settings: SettingsDep,
                          user: UserDep, download: bool = True) -> Response:
    """The case report as PDF (A4), to file."""
    case, parts = await run_in_threadpool(_report, cases, case_id, engine, card, True, settings.pseudonym)
    try:
        data = await run_in_threadpool(report_pdf, parts)
    except ImportError:  # the serve extra installs it
        raise problem(501, "the PDF report needs ReportLab: pip install 'mucosa[serve]'") from None
    log.info("case %s: PDF report, %d bytes", case.id, len(data))
    await _logged(cases, user, case, "report.pdf")
    return Response(data, media_type="application/pdf", headers=_attachment(parts, "pdf", download))
