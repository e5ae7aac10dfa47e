"""``GET /v1/audit`` and ``/v1/audit/calibration.png``: the running audit of the reviewed cases.

Accuracy, sensitivity, specificity (and PPV, NPV) with exact intervals, the confusion table and the
calibration curve, overall, by model version and by month (:func:`mucosa.evaluation.audit.running_audit`,
through :meth:`mucosa.store.Store.audit`); the latest review of each case is its histology.
"""

from __future__ import annotations

import datetime as dt
import math

from fastapi import APIRouter, Query
from fastapi.responses import Response

from mucosa.service import schemas
from mucosa.service.dependencies import CardDep, StoreDep
from mucosa.service.plots import calibration_figure
from mucosa.service.problems import problem

__all__ = ["router"]

router = APIRouter(prefix="/audit", tags=["audit"])

SINCE = Query(None, description="only cases from this day on (exam date, else upload day)")
MODEL = Query(None, max_length=200, description="only verdicts of this model version")


def _safe(value):
    """The audit as strict JSON: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(item) for item in value]
    return value


def _audit(store, card: dict, since: dt.date | None, model: str | None) -> dict:
    return _safe(store.audit(since=since, model=model, classes=card["classes"], positive=card.get("positive")))


@router.get("")
def audit(store: StoreDep, card: CardDep, since: dt.date | None = SINCE, model: str | None = MODEL) -> dict:
    """The running audit: ``classes``, ``positive``, ``overall``, ``by_model`` and ``by_month``."""
    return _audit(store, card, since, model)


@router.get("/calibration.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}},
    409: {"model": schemas.Problem, "description": "no reviewed case has a probability"}})
def calibration(store: StoreDep, card: CardDep, since: dt.date | None = SINCE, model: str | None = MODEL) -> Response:
    """The calibration curve of the reviewed cases: observed share of the positive class against the predicted
    probability, with intervals."""
    found = _audit(store, card, since, model)
    bins = [row for row in found["overall"].get("calibration") or [] if row.get("cases")]
    if not bins:
        raise problem(409, "no reviewed case has a probability: the calibration curve needs some")
    return Response(calibration_figure(found, card), media_type="image/png", headers={"Cache-Control": "no-cache"})
