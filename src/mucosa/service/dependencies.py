"""What the routes ask FastAPI for (``Depends``): the user behind the request, and the server's parts kept on
``app.state``.

:func:`~mucosa.service.app.create_app` puts the settings, the engine and the model card on ``app.state``; its
lifespan adds the case store, the case service, the temporary folder, the limiter of image predictions and that
of the threads that read the store for lists and cases. A route names what it needs by type, for example
``cases: CasesDep`` or ``user: UserDep``, and never reads ``app.state`` itself. They are ``async``: FastAPI runs
them on the event loop, not in a worker thread, so ``/healthz`` answers while every thread is busy (the check of
a token, which reads the store, runs in a thread; a token checked in the last
:data:`~mucosa.store.TRUST_SECONDS` is known without one).

Every ``/v1`` request is made as a user (:func:`current_user`): the one whose token it carries
(``Authorization: Bearer TOKEN`` or ``?token=TOKEN``, checked by :meth:`mucosa.store.Store.authenticate`), else,
while the store has never had a user other than ``local`` (disabled ones count) and the server runs without
``--token`` (a laptop), the built-in admin ``local``.

Example (a route of a router under ``/v1``)::

    @router.get("/cases/{case_id}/name")
    def case_name(case_id: str, cases: CasesDep) -> str:
        return case_or_404(cases, case_id).name
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mucosa.service import schemas
from mucosa.service.cases import CaseService
from mucosa.service.engine import Engine
from mucosa.service.problems import problem
from mucosa.service.settings import ServeSettings
from mucosa.service.summaries import Summaries
from mucosa.service.views import CaseView
from mucosa.store import TRUST_SECONDS, NotFound, Role, Store, StoreError, User

__all__ = ["LOCAL_USER", "TOKEN_ERRORS", "CardDep", "CasesDep", "EngineDep", "LimiterDep", "MaybeUserDep",
           "ReadersDep", "SettingsDep", "StoreDep", "SummariesDep", "UserDep", "WorkspaceDep", "case_or_404",
           "case_with_files", "current_user", "get_card", "get_cases", "get_engine", "get_limiter", "get_readers",
           "get_settings", "get_store", "get_summaries", "get_workspace", "local_user", "requesting_user"]

_BEARER = HTTPBearer(auto_error=False)  # documents the token at /docs ("Authorize")
_QUERY_TOKEN = APIKeyQuery(name="token", auto_error=False)  # for the viewer's images and event stream

LOCAL_USER = "local"  # who a request without a token is made as: no --token, a store that never had another user
TOKEN_ERRORS = {401: {"model": schemas.Problem, "description": "missing or unknown token"},
                403: {"model": schemas.Problem, "description": "the user's role may not do this"}}


async def get_settings(request: Request) -> ServeSettings:
    """The server's settings."""
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    """The model, loaded once."""
    return request.app.state.engine


async def get_card(request: Request) -> dict:
    """The model card (``GET /v1/model``)."""
    return request.app.state.card


async def get_cases(request: Request) -> CaseService:
    """The store's cases as this server serves them, and its workers."""
    return request.app.state.cases


async def get_summaries(request: Request) -> Summaries:
    """The case summaries this server has shown, by case id and version (what lists show)."""
    return request.app.state.summaries


async def get_store(request: Request) -> Store:
    """The case store."""
    return request.app.state.store


async def get_workspace(request: Request) -> Path:
    """The server's temporary folder (uploads being read)."""
    return request.app.state.root


async def get_limiter(request: Request) -> anyio.CapacityLimiter:
    """How many image predictions are prepared at once."""
    return request.app.state.limiter


async def get_readers(request: Request) -> anyio.CapacityLimiter:
    """The threads that read the store for lists, searches and cases (:data:`~mucosa.service.app.READERS`)."""
    return request.app.state.readers


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
CardDep = Annotated[dict, Depends(get_card)]
CasesDep = Annotated[CaseService, Depends(get_cases)]
StoreDep = Annotated[Store, Depends(get_store)]
SummariesDep = Annotated[Summaries, Depends(get_summaries)]
WorkspaceDep = Annotated[Path, Depends(get_workspace)]
LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]
ReadersDep = Annotated[anyio.CapacityLimiter, Depends(get_readers)]


def local_user(store: Store) -> User | None:
    """The built-in admin ``local`` while the store has never had another user (made the first time); None
    once it has, even when every other user is disabled since (disabling users must never open the server to
    anyone). The users' list is the one this server read in the last :data:`~mucosa.store.TRUST_SECONDS`
    (not a read of the store per request): a user added by another process ends the local mode within that
    time, one added by this server at once."""
    people = store.users(max_age=TRUST_SECONDS)
    if any(user.name != LOCAL_USER for user in people):
        return None
    for user in people:
        if user.name == LOCAL_USER:
            return user if user.active else None
    with contextlib.suppress(StoreError):  # another server made it at the same moment
        store.add_user(LOCAL_USER, Role.ADMIN)
    try:
        return store.user(LOCAL_USER)
    except NotFound:
        return None


async def requesting_user(request: Request,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
                          token: Annotated[str | None, Depends(_QUERY_TOKEN)]) -> User | None:
    """The user making the request; None for a missing or unknown token. (The settings and the store are read
    from ``app.state`` here, not asked for: two dependencies fewer to solve on every request.)"""
    settings, store = request.app.state.settings, request.app.state.store
    given = credentials.credentials if credentials is not None else token
    if given:  # a token trusted already is known here, without a thread; any other is checked in one
        return store.trusted(given) or await run_in_threadpool(store.authenticate, given)
    if settings.secret is None:  # on the event loop: the users' list read at most every TRUST_SECONDS
        return local_user(store)
    return None


MaybeUserDep = Annotated[User | None, Depends(requesting_user)]


async def current_user(user: MaybeUserDep) -> User:
    """The user making the request; 401 for a missing or unknown token."""
    if user is None:
        raise problem(401, "missing or unknown token", {"WWW-Authenticate": "Bearer"})
    return user


UserDep = Annotated[User, Depends(current_user)]


def case_or_404(cases: CaseService, case_id: str, detail: bool = True) -> CaseView:
    """The case, or the 404 that says there is none. Called in a route's body, after FastAPI has checked the
    route's own parameters (a malformed query stays a 422 whether or not the case exists)."""
    case = cases.view(case_id, detail)
    if case is None:
        raise problem(404, f"no case {case_id} (unknown, or deleted)")
    return case


def case_with_files(cases: CaseService, case_id: str, detail: bool = True) -> CaseView:
    """The case (404 as :func:`case_or_404`), or the 409 that says a done case's files (frames, embeddings) are
    missing from the store: its frames, similar cases and reports need them."""
    case = case_or_404(cases, case_id, detail)
    if case.files_missing:
        raise problem(409, f"case {case_id} is done, but its frames and embeddings are missing from the store's "
                      "media folder: restore them from a backup made by mucosa store backup, or upload the case "
                      "again")
    return case
