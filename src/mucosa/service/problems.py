"""What the API answers when something is wrong: always JSON ``{"detail": "one sentence"}``.

- :func:`problem`: the HTTP error a route raises (status, reason, optional headers).
- :func:`readable`: pydantic's validation errors (a request body, a query parameter) as one sentence.
- :func:`public` (from the engine): a reason with the server's own folders (its temporary folder, whose name
  holds the process id; ``--data-root``) reduced to file names, and error numbers removed.
- :func:`install`: exception handlers that give every error that shape: FastAPI's request validation errors
  (422 with one sentence instead of a list), HTTP errors (their reason made :func:`public`), the store's
  refusals (403 for a role that may not, 404 for a case or user that is not there, 422 for a value it refuses,
  503 when the database cannot be used: never saying where the store is, which the server's log says), a
  full disk or database (507: nothing was kept, the operator must make room) and anything unexpected (500,
  "internal error"; the server logs the traceback).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mucosa.atomic import WriteError
from mucosa.service.engine import public
from mucosa.store import NotAllowed, NotFound, StoreError, StoreUnavailable

__all__ = ["FULL", "UNAVAILABLE", "install", "problem", "public", "readable"]

log = logging.getLogger("mucosa.service.app")

MAX_ERRORS = 3  # validation errors named in one answer
FULL = "the server's disk or database is full: nothing was kept; tell the server's operator to make room"
UNAVAILABLE = "the case store cannot be used just now (the server's log says why); try again in a minute"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def problem(status: int, reason: str, headers: dict | None = None) -> HTTPException:
    """The HTTP error to raise: the client gets ``{"detail": reason}`` with ``status``."""
    return HTTPException(status_code=status, detail=reason, headers=headers)


def readable(errors: Iterable[dict]) -> str:
    """Pydantic validation errors as one sentence, e.g. ``name: input should be a valid string``."""
    parts = []
    for error in list(errors)[:MAX_ERRORS]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "the request is not valid"


def install(app: FastAPI, folders: Callable[[], list[Path]]) -> None:
    """Give every error of ``app`` the shape ``{"detail": "one sentence"}``; ``folders()`` lists the
    server's folders no answer may show (called when an error is answered)."""

    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": public(readable(error.errors()), folders())}, status_code=422)

    async def http_error(request: Request, error: StarletteHTTPException):
        if isinstance(error.detail, str):
            error = HTTPException(error.status_code, public(error.detail, folders()), error.headers)
        return await http_exception_handler(request, error)

    async def store_error(request: Request, error: StoreError) -> JSONResponse:
        if isinstance(error, StoreUnavailable):  # its message names the store: for the log, not the client
            log.error("%s %s: %s", request.method, request.url.path, error)
            return JSONResponse({"detail": FULL if error.full else UNAVAILABLE}, status_code=507 if error.full else 503,
                                headers=None if error.full else {"Retry-After": "60"})
        status = 403 if isinstance(error, NotAllowed) else 404 if isinstance(error, NotFound) else 422
        return JSONResponse({"detail": public(str(error), folders())}, status_code=status)

    async def file_error(request: Request, error: OSError | WriteError) -> JSONResponse:
        if error.errno in _FULL_ERRNOS:
            log.error("%s %s: %s", request.method, request.url.path, error)
            return JSONResponse({"detail": FULL}, status_code=507)
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=error)
        return await internal_error(request, error)

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error (see the server's log)"}, status_code=500)

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(OSError, file_error)
    app.add_exception_handler(WriteError, file_error)
    app.add_exception_handler(Exception, internal_error)
