"""Files a client names by path instead of uploading them: only those under the server's ``--data-root``.

Every path is resolved, symbolic links followed, the images inside a named folder included, and must stay
inside the data root: a link leading out is refused (403) as much as ``../`` is. A path that is missing (404)
or cannot be used (422: a NUL character, a name too long, a loop of links, a device or pipe) is refused
before anything is read. Reasons name the entry relative to the data root (or as the client gave it), never
by the server's absolute path.
"""

from __future__ import annotations

import errno
from pathlib import Path

from mucosa.service.engine import media_kind
from mucosa.service.problems import problem
from mucosa.service.schemas import CaseByPath

__all__ = ["case_sources", "inside_root"]

SHOWN = 80  # characters of a client's path repeated in a reason


def _shown(given: str) -> str:
    """A client's path as a reason repeats it: control characters escaped, at most ``SHOWN`` characters."""
    text = given.encode("unicode_escape").decode("ascii") if not given.isprintable() else given
    return text if len(text) <= SHOWN else f"{text[:SHOWN // 2]}…{text[-SHOWN // 4:]}"


def inside_root(root: Path, given: str) -> Path:
    """``given`` (relative to ``root``, which is resolved) resolved, links followed.

    Raises:
        HTTPException: 403 outside ``root``; 404 missing; 422 a NUL character, a name too long, a loop of links.
    """
    shown = _shown(given)
    if "\x00" in given:
        raise problem(422, f"{shown}: a path may not hold a NUL character")
    try:
        path = (root / given).resolve()  # not strict: whether a file outside the root exists is not told
    except RuntimeError:  # Python 3.11 reports a loop of links so
        raise problem(422, f"{shown}: a loop of symbolic links") from None
    except OSError as error:
        raise _unusable(shown, error) from None
    if not path.is_relative_to(root):
        raise problem(403, f"{shown}: outside the server's --data-root")
    try:
        path.stat()
    except FileNotFoundError:
        raise problem(404, f"{shown}: not found under the server's --data-root") from None
    except OSError as error:
        raise _unusable(shown, error) from None
    return path


def _unusable(shown: str, error: OSError):
    if error.errno == errno.ELOOP:
        return problem(422, f"{shown}: a loop of symbolic links")
    if error.errno == errno.ENAMETOOLONG:
        return problem(422, f"{shown}: a name in the path is too long")
    return problem(422, f"{shown}: cannot be opened ({error.strerror or type(error).__name__})")


def case_sources(body: CaseByPath, data_root: Path | None) -> tuple[list[Path], list[str]]:
    """The files of a case named by path, and their names to show: a file, or the images of a folder.

    Raises:
        HTTPException: 403 without ``--data-root`` or outside it; 404 missing; 422 an unusable path, an empty
        folder, something that is neither a file nor a folder.
    """
    if data_root is None:
        raise problem(403, "this server takes no paths: it was started without --data-root")
    root = data_root.resolve()
    sources: list[Path] = []
    for given in body.paths or [body.path]:
        path = inside_root(root, given)
        if path.is_dir():
            found = _folder_images(root, path)
            if not found:
                raise problem(422, f"{_shown(given)}: no images in this folder (a folder is one case of images)")
            sources += found
        elif path.is_file():
            sources.append(path)
        else:
            raise problem(422, f"{_shown(given)}: neither a file nor a folder")
    return sources, [p.name for p in sources]


def _folder_images(root: Path, folder: Path) -> list[Path]:
    """The images of ``folder`` (not hidden, by suffix), each resolved and checked like a path given."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        raise _unusable(_shown(str(folder.relative_to(root))), error) from None
    found = []
    for entry in entries:
        if entry.name.startswith(".") or media_kind(entry) != "image":
            continue
        path = inside_root(root, str(entry.relative_to(root)))
        if path.is_file():
            found.append(path)
    return found
