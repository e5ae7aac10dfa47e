"""The web service (``mucosa serve``): a versioned REST API under ``/v1`` and the viewer at ``/``.

:func:`create_app` builds the FastAPI application around an :class:`~mucosa.service.engine.Engine` loaded
once and its :class:`~mucosa.service.settings.ServeSettings`. Its lifespan opens the case store
(:mod:`mucosa.store`: cases, jobs, reviews, users, audit log; :func:`open_store`), starts the case workers
(:mod:`~mucosa.service.worker`) and makes one temporary folder for the uploads arriving, removed on shutdown.
Routes (:mod:`mucosa.service.routes`, one router per resource; the OpenAPI page at ``/docs`` documents each):

- ``POST /v1/predict``: one image → probabilities, verdict, quality, dropped (``?gradcam=1``: the overlay).
- ``POST /v1/cases``: a video or images (multipart), or ``{"path": ...}`` under ``--data-root`` → case id;
  ``GET /v1/cases``, ``GET /v1/cases/{id}``, ``/events`` (server-sent events), ``/frames/{n}.png|jpg``,
  ``/timeline.csv``, ``/report.json|html|pdf`` (the case report), ``DELETE /v1/cases/{id}``.
- ``POST /v1/cases/{id}/review`` (reviewers), ``GET /v1/audit`` and ``/v1/audit/calibration.png`` (the running
  audit of the reviewed cases), ``GET /v1/me`` (who is asking).
- ``GET /v1/model`` (the model card), ``GET /healthz``.
- ``/docs`` and ``/redoc``: the API's pages, their scripts served from the ``fastapi-offline`` package (they
  work without internet).

Every ``/v1`` request is made as a user (:func:`~mucosa.service.dependencies.current_user`): the one whose
token it carries (``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` for the viewer's images and event
stream); without ``--token``, while the store has never had another user, the built-in admin ``local``. Errors are JSON
``{"detail": reason}``, one sentence that never shows the server's folders (:mod:`~mucosa.service.problems`);
paths under ``--data-root`` are checked by :mod:`~mucosa.service.paths`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from mucosa.service.cases import CaseService, model_version
from mucosa.service.dependencies import TOKEN_ERRORS, current_user
from mucosa.service.engine import Engine
from mucosa.service.presentation import BANNER, class_colours
from mucosa.service.problems import install
from mucosa.service.routes import audit, cases, health, me, model, predict, reports, reviews, similar
from mucosa.service.routes.common import API_VERSION
from mucosa.service.settings import ServeSettings
from mucosa.service.summaries import Summaries
from mucosa.store import Store

__all__ = ["READERS", "create_app", "open_store"]

log = logging.getLogger(__name__)

# Threads that read the store for the viewer's lists, searches and cases at once; more such requests wait their
# turn, in order. Forty threads (anyio's default for plain routes) took the Python lock in no order, and the last
# of 50 clients waited longest (benchmarks/store_load.py, runs side by side: the same throughput, a lower p95
# with six; three were no different). A few are enough for SQLite, whose queries run outside the lock, and for
# PostgreSQL's round trips.
READERS = 6


def open_store(settings: ServeSettings) -> Store:
    """The case store the settings name (``store``, else ``$MUCOSA_STORE``, else the default folder), made when
    it is a new folder or an empty database. Raises StoreError (MigrationNeeded: ``mucosa store upgrade``)."""
    from mucosa.store.location import default_location

    return Store.open(settings.store or default_location(), settings.media, create=True,
                      lease_seconds=settings.lease_seconds)


def create_app(engine: Engine, settings: ServeSettings | None = None, store: Store | None = None) -> FastAPI:
    """The FastAPI application: API, viewer and lifespan (temporary folder, case store and its workers).
    ``store``: the case store, opened already (default: :func:`open_store` when the server starts); the
    application closes it when it stops."""
    settings = settings or ServeSettings()
    card = engine.card()
    card["colours"] = class_colours(card)  # the viewer's and the reports' colour of each class
    version = model_version(card)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        parent = Path(settings.temp_parent or tempfile.gettempdir())
        _remove_orphans(parent)
        app.state.store = store or open_store(settings)
        if settings.secret is not None:  # the laptop's one token: its admin user, accepted by this server only
            app.state.store.use_token(settings.secret)
        root = Path(tempfile.mkdtemp(prefix=f"mucosa-serve-{os.getpid()}-", dir=parent))
        app.state.root = root
        app.state.cases = CaseService(app.state.store, engine, version, root, settings.queue_size, settings.workers)
        app.state.summaries = Summaries(app.state.cases)
        # image predictions prepared at once: a few more than the model's slots, so that under load one is
        # always waiting at the model lock and case frames get only their overdue turns (PriorityLock)
        app.state.limiter = anyio.CapacityLimiter(2 * engine.slots + 2)
        app.state.readers = anyio.CapacityLimiter(READERS)
        log.info("case store %s (%s); temporary files in %s (removed on shutdown)", app.state.store.location,
                 app.state.store.backend, root)
        try:
            yield
        finally:
            app.state.cases.close()
            app.state.store.close()
            shutil.rmtree(root, ignore_errors=True)
            log.info("stopped; temporary files removed")

    app = FastAPIOffline(title="mucosa", version=card.get("mucosa_version") or "0", lifespan=lifespan,
                         swagger_ui_parameters={"validatorUrl": None},  # no call to an outside validator
                  description=f"**{BANNER}.** Computer-aided confirmation of mucosal healing from confocal laser "
                  "endomicroscopy (CLE). Research software: not a diagnosis. The viewer is at `/`.")
    app.state.engine, app.state.settings, app.state.card, app.state.model_version = engine, settings, card, version
    data_roots = [settings.data_root, settings.data_root.resolve()] if settings.data_root else []
    install(app, lambda: [p for p in (getattr(app.state, "root", None), _media(app), *data_roots) if p is not None])

    api = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(current_user)], responses=TOKEN_ERRORS)
    for router in (me.router, model.router, predict.router, cases.router, similar.router, reports.router,
                   reviews.router, audit.router):
        api.include_router(router)
    app.include_router(api)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=health.STATIC), name="static")
    return app


def _media(app: FastAPI) -> Path | None:
    store = getattr(app.state, "store", None)
    return None if store is None else store.media.root


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
