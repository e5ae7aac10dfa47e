"""``GET /v1/model``: the model card."""

from __future__ import annotations

from fastapi import APIRouter

from mucosa.service.dependencies import CardDep

__all__ = ["router"]

router = APIRouter(tags=["model"])


@router.get("/model")
def model(card: CardDep) -> dict:
    """The model card: classes and how the verdict words them, input size, preprocessing, training cohort
    counts (no ids), validation metrics, decision threshold and the runtime chosen."""
    return card
