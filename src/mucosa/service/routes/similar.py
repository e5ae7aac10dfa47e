"""``GET /v1/cases/{id}/similar?k=5``: the confirmed cases of the model's atlas that look most like a case."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from mucosa.service import schemas
from mucosa.service.atlas import MAX_SIMILAR, NotReady, similar_cases, unfamiliar_note
from mucosa.service.dependencies import CasesDep, EngineDep, SettingsDep, UserDep, case_with_files
from mucosa.service.privacy import private_similar
from mucosa.service.problems import problem

__all__ = ["router"]

router = APIRouter(prefix="/cases", tags=["cases"])


@router.get("/{case_id}/similar", response_model=schemas.SimilarCases, responses={
    404: {"model": schemas.Problem, "description": "unknown case"},
    409: {"model": schemas.Problem, "description": "the case is not done, has no usable frame, its files are missing "
          "from the store, or the model has no atlas"}})
async def similar(case_id: str, engine: EngineDep, cases: CasesDep, settings: SettingsDep, user: UserDep,
                  k: int = Query(5, ge=1, le=MAX_SIMILAR, description="how many similar cases (1 to 20)")
                  ) -> schemas.SimilarCases:
    """The ``k`` confirmed cases most like this one (never of its own patient: the atlas's patient whose files
    these are, nor the patient its exam names; logged as ``case.similar`` by the user):
    each with its label, patient, distance and closest frames (thumbnails as PNG data URLs, ``query_frame``: the
    case's frame it matched), and the atlas's vote (``atlas_vote``, shares by class). A case whose verdict is
    ``unfamiliar`` says so (``unfamiliar``) and why (``reason``): its vote is no second opinion and its cases are
    the nearest, not similar. Under ``--pseudonymise``, cases, patients and files are keyed pseudonyms."""
    case = await run_in_threadpool(case_with_files, cases, case_id)
    if case.status != "done" or case.folder is None:
        raise problem(409, f"case {case_id} is {case.status}: similar cases come once it is done")
    try:
        answer = await run_in_threadpool(similar_cases, engine.atlas, case.folder, case.sources, k, case.record.patient)
    except NotReady as error:
        raise problem(409, f"case {case_id}: {error}") from None
    await run_in_threadpool(cases.store.record, user, "case.similar", case_id, case.record.model_version, {"k": k})
    answer = {**answer, **unfamiliar_note(case.summary()["verdict"])}
    return answer if settings.pseudonym is None else private_similar(answer, settings.pseudonym)
