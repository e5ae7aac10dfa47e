"""``POST /v1/cases/{id}/review``: a reviewer's histology and whether they agree with the verdict.

A review is kept with the reviewer, the time, the model version and the verdict it judged; a later review
never changes an earlier one (the latest is the case's histology truth for the audit). Reviewers and admins
review; a viewer gets 403. A review that contradicts itself is refused by the store (422, see
:func:`mucosa.store.reviews.check_agreement`).
"""

from __future__ import annotations

from fastapi import APIRouter

from mucosa.choices import OUTSIDE_CLASSES
from mucosa.service import schemas
from mucosa.service.dependencies import CardDep, CasesDep, UserDep, case_or_404
from mucosa.service.problems import problem
from mucosa.service.views import review_json
from mucosa.store import Role

__all__ = ["router"]

router = APIRouter(prefix="/cases", tags=["reviews"])


@router.post("/{case_id}/review", status_code=201, response_model=schemas.ReviewOut, responses={
    403: {"model": schemas.Problem, "description": "the user is a viewer"},
    404: {"model": schemas.Problem, "description": "unknown case"},
    409: {"model": schemas.Problem, "description": "the case is not done"},
    422: {"model": schemas.Problem, "description": "histology is neither one of the model's classes nor "
          f"{OUTSIDE_CLASSES!r} (tissue the model does not know), or agrees "
          "contradicts it (a verdict that is a class: agrees must be histology == verdict)"}})
def review_case(case_id: str, body: schemas.ReviewIn, cases: CasesDep, card: CardDep, user: UserDep) -> dict:
    """Record the histology of a finished case and whether the reviewer agrees with its verdict."""
    if not user.allows(Role.REVIEWER):
        raise problem(403, f"{user.name} is a {user.role.value}: only reviewers and admins review cases")
    case = case_or_404(cases, case_id, detail=False)
    if case.status != "done":
        raise problem(409, f"case {case_id} is {case.status}: only a finished case can be reviewed")
    if body.histology not in (*card["classes"], OUTSIDE_CLASSES):
        raise problem(422, f"histology: {body.histology!r} is not one of the model's classes "
                      f"({', '.join(card['classes'])}) nor {OUTSIDE_CLASSES!r}")
    return review_json(cases.store.add_review(case_id, user, body.histology, body.agrees, body.note))
