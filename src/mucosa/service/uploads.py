"""Multipart uploads streamed to disk, with the size limit enforced while they arrive.

Starlette's own form parsing stores every file whole (in the system's temporary folder) before a route sees
it. Here the request body is parsed as it streams in (``python-multipart``'s push parser) and each file part
is written straight into the case's folder under a name the server chooses. The limit is checked against
``Content-Length`` before anything is read and against the bytes received while reading: past it, the partial
files are removed and :class:`TooLarge` is raised. Only the field ``file`` (:data:`FILE_FIELD`, the one the
API documents) may carry a file: a file in any other field (``-F patient=@clip.avi``) is refused. Whatever
goes wrong (a bad body, a client that disconnects mid-upload), the folder given to :func:`receive` is removed:
nothing is left behind.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mucosa.data.manifest import has_control

try:
    import python_multipart as multipart
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # python-multipart < 0.0.13
    import multipart
    from multipart.multipart import parse_options_header

FILE_FIELD = "file"            # the form field of the files uploaded
MAX_FIELD = 64 * 1024          # bytes of a plain (non-file) form field
MAX_DRAIN = 256 * 1024 * 1024  # bytes read and discarded after the limit, so the client sees the 413


class UploadError(Exception):
    """A request body the service cannot take; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class TooLarge(UploadError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is larger than the server's limit of {limit / 2**20:g} MB "
                         "(--max-upload-mb)")


@dataclass
class UploadedFile:
    """One file part: the client's file name (for display), where it was stored, its size and first bytes."""

    name: str
    path: Path
    size: int = 0
    head: bytes = b""


@dataclass
class Upload:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def display_name(name: str) -> str:
    """The last part of a client's file name, without control characters, at most 120 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    return "".join(c for c in base if not has_control(c))[:120].strip() or "upload"


def safe_stem(name: str) -> str:
    """A file-system-safe stem made from a client's file name."""
    stem = Path(display_name(name)).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:60].strip("_") or "file"


class _Parser:
    """python-multipart callbacks writing file parts into ``folder`` as ``NNN.part``."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder, self.max_files = folder, max_files
        self.upload = Upload()
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._field: tuple[str, bytearray] | None = None
        self._file: tuple[UploadedFile, BinaryIO] | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            self._field = (name, bytearray())
            return
        if name != FILE_FIELD:
            raise UploadError(422, f"form field {name[:40]!r} holds a file: send files in the field "
                              f"{FILE_FIELD!r}, and {name[:40]!r} as text")
        if len(self.upload.files) >= self.max_files:
            raise UploadError(422, f"too many files in one request (at most {self.max_files})")
        path = self.folder / f"{len(self.upload.files):04d}.part"
        item = UploadedFile(display_name(options[b"filename"].decode("utf-8", "replace")), path)
        self.upload.files.append(item)
        self._file = (item, open(path, "wb"))  # noqa: SIM115 (closed by on_part_end or close)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            item, handle = self._file
            if len(item.head) < 16:
                item.head += chunk[:16 - len(item.head)]
            handle.write(chunk)
            item.size += len(chunk)
        elif self._field is not None:
            if len(self._field[1]) + len(chunk) > MAX_FIELD:
                raise UploadError(422, f"form field {self._field[0]!r} is longer than {MAX_FIELD} bytes")
            self._field[1].extend(chunk)

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None
        elif self._field is not None:
            self.upload.fields[self._field[0]] = self._field[1].decode("utf-8", "replace")
            self._field = None

    def close(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None


async def receive(request, folder: Path, limit: int, max_files: int = 1000) -> Upload:
    """Stream a ``multipart/form-data`` request body into ``folder`` (created if needed).

    Files are stored as ``folder/NNN.part`` in the order they come; rename them once their type is known.

    Raises:
        TooLarge: the body is (announced or found) larger than ``limit`` bytes.
        UploadError: not multipart, malformed, too many files, a field too long.
        starlette.requests.ClientDisconnect: the client went away.
        In every case ``folder`` has been removed.
    """
    parser = _Parser(folder, max_files)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or b"boundary" not in params:
            raise UploadError(415, "send the file(s) as multipart/form-data (a form with a file field)")
        announced = request.headers.get("content-length")
        if announced and announced.isdigit() and int(announced) > limit:
            raise TooLarge(limit)
        push = multipart.MultipartParser(params[b"boundary"], parser.callbacks())
        received = 0
        stream = request.stream()
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                parser.close()
                shutil.rmtree(folder, ignore_errors=True)  # before draining: nothing stays on disk
                await _drain(stream)
                raise TooLarge(limit)
            push.write(chunk)
        push.finalize()
        if parser._file is not None or parser._field is not None:
            raise UploadError(422, "the multipart body ended in the middle of a part")
        return parser.upload
    except BaseException as error:
        parser.close()
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, multipart.exceptions.FormParserError):
            raise UploadError(422, f"malformed multipart body ({error})") from None
        raise


async def discard(request) -> None:
    """Read and drop a request's body (up to ``MAX_DRAIN`` bytes) that will not be used, so that a client still
    sending it reads the answer instead of finding the connection closed."""
    await _drain(request.stream())


async def _drain(stream) -> None:
    """Read (and drop) what the client still sends, up to ``MAX_DRAIN`` bytes, so it gets the answer."""
    dropped = 0
    try:
        async for chunk in stream:
            dropped += len(chunk)
            if dropped > MAX_DRAIN:
                return
    except Exception:
        return
