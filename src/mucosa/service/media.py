"""What an uploaded file is, by its name or first bytes, and what of an error message a client may read."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from mucosa.data.readers import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_image, is_video

__all__ = ["media_kind", "media_suffix", "public"]

_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
          (b"BM", ".bmp"), (b"\x00\x00\x01\xba", ".mpg"), (b"\x00\x00\x01\xb3", ".mpg"),
          (b"\x1a\x45\xdf\xa3", ".mkv"))


def media_suffix(filename: str, head: bytes) -> str | None:
    """The suffix to store an upload under: its name's when mucosa reads that type, else one found from
    its first bytes (``head``), else None (not a type mucosa reads)."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        return suffix
    for magic, found in _MAGIC:
        if head.startswith(magic):
            return found
    if head[4:8] == b"ftyp":
        return ".mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    return None


def media_kind(path: Path) -> str | None:
    """``image``, ``video`` or None, by the file's suffix."""
    return "image" if is_image(path) else "video" if is_video(path) else None


_ERRNO = re.compile(r"\s*\[(?:Errno|WinError) -?\d+\]|\s*\berrno:? -?\d+\b", re.IGNORECASE)


def public(reason: str, folders: Iterable[Path]) -> str:
    """``reason`` with every path inside ``folders`` shortened to its file name and error numbers removed: what
    a client may read of a message (never the server's temporary folder, whose name holds the process id)."""
    for folder in folders:
        pattern = re.escape(str(folder).rstrip("/")) + r"(/[^\s'\"`]*)?(?![\w.-])"
        reason = re.sub(pattern, lambda m: Path(m.group(1) or "").name or "the server's folder", reason)
    return _ERRNO.sub("", reason).strip()
