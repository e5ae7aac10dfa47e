"""What the routes ask FastAPI for (``Depends``): the token check, and the server's parts kept on ``app.state``.

:func:`~mucosa.service.app.create_app` puts the settings, the engine and the model card on ``app.state``; its
lifespan adds the case store, the temporary folder and the limiter of image predictions. A route names what
it needs by type, for example ``cases: CasesDep``, and never reads ``app.state`` itself, so that a part can be
replaced in one place (another case store, a database session, the user behind a token). They are ``async``:
FastAPI runs them on the event loop, not in a worker thread, so ``/healthz`` answers while every thread is
busy.

Example (a route of a router under ``/v1``, whose dependencies already include :func:`require_token`)::

    @router.get("/cases/{case_id}/name")
    def case_name(case_id: str, cases: CasesDep) -> str:
        return case_or_404(cases, case_id).name
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from mucosa.service import schemas
from mucosa.service.cases import Case, CaseStore
from mucosa.service.engine import Engine
from mucosa.service.problems import problem
from mucosa.service.settings import ServeSettings

__all__ = ["TOKEN_ERRORS", "CardDep", "CasesDep", "EngineDep", "LimiterDep", "SettingsDep", "WorkspaceDep",
           "case_or_404", "get_card", "get_cases", "get_engine", "get_limiter", "get_settings", "get_workspace",
           "require_token"]

_BEARER = HTTPBearer(auto_error=False)  # documents the token at /docs ("Authorize")
_QUERY_TOKEN = APIKeyQuery(name="token", auto_error=False)  # for the viewer's images and event stream

TOKEN_ERRORS = {401: {"model": schemas.Problem, "description": "missing or wrong token (with --token)"}}


async def get_settings(request: Request) -> ServeSettings:
    """The server's settings."""
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    """The model, loaded once."""
    return request.app.state.engine


async def get_card(request: Request) -> dict:
    """The model card (``GET /v1/model``)."""
    return request.app.state.card


async def get_cases(request: Request) -> CaseStore:
    """The cases opened since the server started, and their background worker."""
    return request.app.state.store


async def get_workspace(request: Request) -> Path:
    """The server's temporary folder (uploads being read, case frames)."""
    return request.app.state.root


async def get_limiter(request: Request) -> anyio.CapacityLimiter:
    """How many image predictions are prepared at once."""
    return request.app.state.limiter


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
CardDep = Annotated[dict, Depends(get_card)]
CasesDep = Annotated[CaseStore, Depends(get_cases)]
WorkspaceDep = Annotated[Path, Depends(get_workspace)]
LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]


async def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
                  token: Annotated[str | None, Depends(_QUERY_TOKEN)]) -> None:
    """401 unless the request carries the server's token (``Authorization: Bearer``, or ``?token=``); nothing
    to check when the server has none."""
    expected = settings.secret
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else token
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise problem(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})


def case_or_404(cases: CaseStore, case_id: str) -> Case:
    """The case, or the 404 that says there is none. Called in a route's body, after FastAPI has checked the
    route's own parameters (a malformed query stays a 422 whether or not the case exists)."""
    case = cases.get(case_id)
    if case is None:
        raise problem(404, f"no case {case_id} (unknown, or deleted)")
    return case
