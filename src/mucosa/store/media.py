"""Content-addressed media: every uploaded file is kept once, under its SHA-256.

A file with SHA-256 ``abcdef…`` and suffix ``.mp4`` lies at ``MEDIA/ab/cdef….mp4``: the first two hex digits
name a subfolder (so no folder holds more than a few thousand files), and the suffix stays because readers
tell a video from an image by it. Files are written atomically (:mod:`mucosa.atomic`): a temporary file in
``MEDIA`` is filled and hashed in one pass, synced, then renamed into place, so a file at its address is
always complete and right; the same content stored twice is written once.

Beside them, ``MEDIA/shared`` (:data:`SHARED`) holds one folder per case, ``MEDIA/shared/CASE_ID``: the files the
service's engine wrote for it (display frames, model frames, embeddings), which only the original upload can
give again. A folder there whose name starts with a dot (:data:`PARTIAL`, the attempts still running, and
folders being removed) is no case's yet. :func:`copy_case_folders` copies the cases' folders for backups and
restores.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from mucosa.atomic import PendingFile, remove_stale, write_error, write_with
from mucosa.store.records import StoreError

__all__ = ["MediaFolder", "copy_media", "copy_case_folders", "SHARED", "PARTIAL"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SUFFIX = re.compile(r"(\.[0-9A-Za-z]{1,10})?")
_INCOMING = "incoming"
_CHUNK = 1 << 20

SHARED = "shared"  # MEDIA/shared/CASE_ID: the files the engine wrote for each case
PARTIAL = ".partial"  # MEDIA/shared/.partial: a case's folder while an attempt fills it (not a case's yet)


class MediaFolder:
    """The store's media folder (``DIR/media``, or the shared folder of a PostgreSQL store)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str, suffix: str = "") -> Path:
        """Where the content ``sha256`` with ``suffix`` lies (whether or not it is there).

        Raises:
            StoreError: ``sha256`` is not 64 lower-case hex digits, or ``suffix`` is not ``.`` and 1-10 letters
                or digits.
        """
        if not _SHA256.fullmatch(sha256):
            raise StoreError(f"not a SHA-256 (64 lower-case hex digits): {sha256[:80]!r}")
        if not _SUFFIX.fullmatch(suffix):
            raise StoreError(f"not a file suffix: {suffix[:20]!r}")
        return self.root / sha256[:2] / (sha256[2:] + suffix.lower())

    def has(self, sha256: str, suffix: str = "") -> bool:
        return self.path(sha256, suffix).is_file()

    def put(self, source: str | Path | bytes | BinaryIO, suffix: str | None = None) -> str:
        """Store a file, bytes or an open binary file, and return its SHA-256.

        Args:
            source: the content.
            suffix: the suffix to keep (``.mp4``); by default that of ``source`` when it is a path, else none.

        Raises:
            WriteError: the media folder cannot be written (one line naming it).
            FileNotFoundError, IsADirectoryError: ``source`` is a path that is not a readable file.
        """
        if suffix is None:
            suffix = Path(source).suffix if isinstance(source, (str, Path)) else ""
        self.path("0" * 64, suffix)  # check the suffix before any work
        if isinstance(source, (str, Path)):
            with open(source, "rb") as handle:
                return self._put(handle, suffix)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self._put(None, suffix, bytes(source))
        return self._put(source, suffix)

    def _put(self, handle: BinaryIO | None, suffix: str, data: bytes = b"") -> str:
        self._clean()
        pending = PendingFile(self.root / _INCOMING)
        digest = hashlib.sha256()
        try:
            if handle is None:
                pending.handle.write(data)
                digest.update(data)
            else:
                while chunk := handle.read(_CHUNK):
                    pending.handle.write(chunk)
                    digest.update(chunk)
        except BaseException as error:
            pending.discard()
            if pending.owns(error):
                raise write_error(error, self.root) from None
            raise
        sha256 = digest.hexdigest()
        target = self.path(sha256, suffix)
        if target.is_file():
            pending.discard()
            return sha256
        try:
            target.parent.mkdir(exist_ok=True)
        except OSError as error:
            pending.discard()
            raise write_error(error, target.parent) from None
        pending.path = target  # hashed while written: now it has its address
        pending.commit()
        return sha256

    def _clean(self) -> None:
        """Create the folder; remove temporary files that killed uploads left (older than ten minutes)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(error, self.root) from None
        remove_stale(self.root, (f".{_INCOMING}.*.tmp",))


def copy_media(source: Path, target: Path) -> int:
    """Copy every media file under ``source`` that ``target`` lacks into it, in the same layout, each file
    atomically (for backups and restores); returns how many files ``source`` holds."""
    count = 0
    for item in sorted(Path(source).glob("??/*")):
        if item.name.startswith(".") or not item.is_file():
            continue
        count += 1
        destination = Path(target) / item.parent.name / item.name
        if destination.is_file() and destination.stat().st_size == item.stat().st_size:
            continue
        with open(item, "rb") as handle:
            write_with(destination, lambda out, handle=handle: shutil.copyfileobj(handle, out, _CHUNK))
    return count


def copy_case_folders(source: Path, target: Path) -> int:
    """Copy every case folder under ``source/shared`` (not the partial ones, whose names start with a dot) that
    ``target/shared`` lacks, each whole (copied beside its place, then renamed into it); returns how many were
    found. A folder that goes while it is copied (its case was deleted) is left out.

    Raises:
        WriteError: ``target`` cannot be written (one line naming it).
    """
    shared = Path(source) / SHARED
    count = 0
    for folder in sorted(shared.iterdir()) if shared.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        destination = Path(target) / SHARED / folder.name
        if destination.is_dir() or _copy_folder(folder, destination):
            count += 1
    with contextlib.suppress(OSError):  # where the copies were made, when nothing else is there
        (Path(target) / SHARED / PARTIAL).rmdir()
    return count


def _copy_folder(folder: Path, destination: Path) -> bool:
    """Copy ``folder`` to ``destination`` whole; False when ``folder`` went meanwhile (a deleted case). A copy that
    fails while ``folder`` is still there is tried once more (the case was run again, its folder replaced)."""
    staging = destination.parent / PARTIAL / f"copy-{destination.name}-{uuid.uuid4().hex[:8]}"
    for last in (False, True):
        try:
            shutil.copytree(folder, staging)
            os.replace(staging, destination)
            return True
        except OSError as error:  # shutil.Error too
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.is_dir():
                return False
            if last:
                raise write_error(_os_error(error), destination) from None
    return False


def _os_error(error: OSError | shutil.Error) -> OSError:
    """The first failure of a folder copy (shutil.Error lists them all: (source, target, why))."""
    if isinstance(error, shutil.Error) and error.args and error.args[0]:
        return OSError(str(error.args[0][0][-1])[:200])
    return error if isinstance(error, OSError) else OSError(str(error)[:200])
