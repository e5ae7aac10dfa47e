"""What the routes that take files share: the API's version, reading an upload, naming its files, the errors
of media, and how OpenAPI documents them."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from mucosa.data.manifest import has_control
from mucosa.data.pseudonyms import Pseudonym
from mucosa.service import schemas
from mucosa.service.engine import media_suffix
from mucosa.service.privacy import shown_name
from mucosa.service.problems import problem
from mucosa.service.reading import UnsupportedMedia
from mucosa.service.settings import ServeSettings
from mucosa.service.uploads import Upload, UploadedFile, UploadError, receive, safe_stem
from mucosa.store import StoreError
from mucosa.store.cases import as_day

__all__ = ["API_VERSION", "EXAM_LIMIT", "MEDIA_ERRORS", "checked_text", "exam_fields", "finalize", "log", "media_error",
           "read_upload", "upload_body"]

log = logging.getLogger("mucosa.service.app")  # the routes' log keeps the service's one name (logging configs)

API_VERSION = "v1"

MEDIA_ERRORS = {413: {"model": schemas.Problem, "description": "larger than --max-upload-mb"},
                415: {"model": schemas.Problem, "description": "not an image or video type mucosa reads"},
                422: {"model": schemas.Problem, "description": "the file does not decode, or no verdict is "
                      "possible (the reason says which)"}}


def upload_body(description: str, many: bool) -> dict:
    """OpenAPI's description of a multipart body with the field ``file`` (``many``: several files, or JSON
    naming files under --data-root)."""
    file_schema = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": file_schema} if many else file_schema
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": prop}, "required": ["file"]}},
        **({"application/json": {"schema": schemas.CaseByPath.model_json_schema()}} if many else {})}}}


async def read_upload(request: Request, folder: Path, settings: ServeSettings) -> Upload:
    """The request's multipart body, streamed into ``folder`` within --max-upload-mb; its problems as HTTP
    errors."""
    try:
        return await receive(request, folder, settings.max_upload_bytes)
    except UploadError as error:
        raise problem(error.status, error.reason) from None
    except ClientDisconnect:  # nobody will read the answer; the partial files are already gone
        log.info("client disconnected mid-upload; partial files removed")
        raise problem(400, "the client disconnected mid-upload") from None


def finalize(item: UploadedFile, index: int, pseudonym: Pseudonym | None = None) -> Path:
    """Rename an uploaded part to a safe name with its media suffix; 415 when the type is unknown (naming the
    file, by its ``pseudonym`` under ``--pseudonymise``)."""
    suffix = media_suffix(item.name, item.head)
    if suffix is None:
        raise problem(415, f"{shown_name(item.name, pseudonym)}: not an image or video type mucosa reads (by its "
                      "name and content)")
    path = item.path.with_name(f"{index:04d}-{safe_stem(item.name)}{suffix}")
    item.path.rename(path)
    return path


def media_error(error: Exception, names: dict[str, str] | None = None) -> HTTPException:
    """A file the engine cannot use: 415 for a type it does not read, 422 for one that does not decode.
    ``names`` maps the names the server stored files under to the client's (the reason then says the latter)."""
    reason = str(error)
    for stored, given in (names or {}).items():
        reason = reason.replace(stored, given)
    return problem(415 if isinstance(error, UnsupportedMedia) else 422, reason)


EXAM_LIMIT = 64  # characters of a patient id or a region


def checked_text(value: str | None, what: str, limit: int = EXAM_LIMIT, blank: bool = True) -> str | None:
    """A text field or parameter of a request, stripped: None when missing (or blank, when ``blank`` allows it);
    422 naming it when it is blank, longer than ``limit`` or holds control or format characters (a NUL, U+0085,
    U+202E...)."""
    if value is None or (blank and not value.strip()):
        return None
    cleaned = value.strip()
    if not cleaned or len(cleaned) > limit or has_control(cleaned):
        raise problem(422, f"{what}: 1 to {limit} printable characters (no control or format characters)")
    return cleaned


def exam_fields(patient: str | None, exam_date: str | None, region: str | None) -> dict:
    """The optional exam fields of a new case, checked: a pseudonymous patient id and a region (each at most
    64 printable characters), the exam date (``YYYY-MM-DD``, from 1900, not in the future); 422 naming the
    field."""
    day = None
    if exam_date is not None and exam_date.strip():
        try:
            day = as_day(exam_date, "exam_date")
        except StoreError as error:
            raise problem(422, str(error)) from None
        if day > dt.date.today() + dt.timedelta(days=1):  # a day of slack for the time zones
            raise problem(422, f"exam_date: {day} is in the future")
    return {"patient": checked_text(patient, "patient"), "exam_date": day, "region": checked_text(region, "region")}
