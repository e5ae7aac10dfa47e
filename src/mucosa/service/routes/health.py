"""``GET /healthz`` and the viewer at ``/``: open without the token (the viewer asks for it)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from mucosa.service import schemas
from mucosa.service.dependencies import CardDep, CasesDep, EngineDep

__all__ = ["STATIC", "router"]

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, tags=["service"])
async def healthz(engine: EngineDep, card: CardDep, cases: CasesDep) -> dict:
    """Liveness: the model is loaded and the case store answers (no token needed): the cases it holds and
    the jobs waiting. Answered on the event loop itself (two quick reads), so it answers while every worker
    thread is busy."""
    return {"status": "ok", "model": card["name"], "runtime": engine.runtime, "device": engine.device,
            **cases.counts()}


@router.get("/", include_in_schema=False)
def viewer() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
