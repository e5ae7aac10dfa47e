"""Format versions: the one rule by which every file mucosa reads says what it is and which version.

Checkpoints, pretrained encoders, ONNX metadata, atlases and the case store's schema each carry a format name
and a version number. A file of another format, or of a version this mucosa does not know (a newer one, or
a damaged number), is refused with the version found and the versions known, never read on a guess.

>>> check_version("run/best.ckpt", "checkpoint", 1, (1,))
1
>>> try:  # doctest: +ELLIPSIS
...     check_version("run/best.ckpt", "checkpoint", 99, (1,))
... except FormatError as error:
...     print(error)
run/best.ckpt: checkpoint format version 99, which this mucosa does not know (it knows 1); upgrade mucosa to ...
"""

from __future__ import annotations

import json
from pathlib import Path

from mucosa.errors import MucosaError, first_line

__all__ = ["FormatError", "check_version", "read_json_object", "split_format"]


class FormatError(MucosaError):
    """A file of an unknown format or format version."""


def check_version(where, what: str, found, known: tuple[int, ...], error: type[MucosaError] = FormatError) -> int:
    """``found`` when it is one of the ``known`` versions of ``what`` (e.g. ``checkpoint``); else ``error``
    naming ``where``, the version found and the versions known."""
    listed = ", ".join(str(v) for v in known)
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{where}: damaged {what} format version {found!r:.40} (this mucosa knows {listed})")
    if found not in known:
        newer = " upgrade mucosa to read it" if found > max(known) else ""
        raise error(f"{where}: {what} format version {found}, which this mucosa does not know (it knows "
                    f"{listed});{newer}".rstrip(";"))
    return found


def read_json_object(path: str | Path, what: str, error: type[MucosaError] = FormatError, advice: str = "") -> dict:
    """The JSON object that a file of mucosa's holds; else ``error``, one line naming ``path``: unreadable or
    truncated, or not an object (then it is not ``what``, e.g. ``a mucosa atlas``), with ``advice`` after.

    >>> try:
    ...     read_json_object("no/such.json", "the metrics of `mucosa evaluate`")
    ... except FormatError as error:
    ...     print(str(error).split(" (")[0])
    no/such.json: unreadable or truncated JSON
    """
    tail = f"; {advice}" if advice else ""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path}: unreadable or truncated JSON ({first_line(problem, 120)}){tail}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: not {what} (a JSON object){tail}")
    return value


def split_format(value, family: str) -> tuple[str, int | None] | None:
    """``("mucosa-encoder", 99)`` for ``mucosa-encoder-99`` (a family name with a version suffix),
    ``("mucosa-encoder", None)`` for the bare family name, None for anything else.

    >>> split_format("mucosa-encoder-2", "mucosa-encoder"), split_format("other", "mucosa-encoder")
    (('mucosa-encoder', 2), None)
    """
    if not isinstance(value, str) or not value.startswith(family):
        return None
    rest = value[len(family):]
    if not rest:
        return family, None
    if rest.startswith("-") and rest[1:].isdigit():
        return family, int(rest[1:])
    return None
