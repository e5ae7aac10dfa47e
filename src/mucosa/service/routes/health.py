"""``GET /healthz`` and the viewer at ``/``: open without the token (the viewer asks for it). Without a token
``/healthz`` says only that the server is alive; what it holds is for its users."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from mucosa.service import schemas
from mucosa.service.dependencies import CardDep, CasesDep, EngineDep, MaybeUserDep

__all__ = ["STATIC", "router"]

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, response_model_exclude_none=True, tags=["service"])
async def healthz(engine: EngineDep, card: CardDep, cases: CasesDep, user: MaybeUserDep) -> dict:
    """Liveness (no token needed): ``{"status": "ok"}``. A request made as a user (a token, or ``local`` on a
    laptop) also gets the model, its runtime and device, the cases the store holds and the jobs waiting.
    Answered on the event loop itself (two quick reads), so it answers while every worker thread is busy."""
    if user is None:
        return {"status": "ok"}
    return {"status": "ok", "model": card["name"], "runtime": engine.runtime, "device": engine.device,
            **cases.counts()}


@router.get("/", include_in_schema=False)
def viewer() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
