"""Atomic writes: the one place where mucosa puts a file (or a set of files) on disk.

A reader, or a process killed at any moment, sees either the previous content or the new one, never a
torn file: data goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target. :class:`OutputSet` does the same for all the files of one command, so an earlier result is
replaced whole or not at all.

Example:
    >>> import tempfile, pathlib
    >>> from mucosa.atomic import write_text
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_text(folder / "note.txt", "hello").read_text()
    'hello'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["write_bytes", "write_text", "write_with", "temporary_beside", "OutputSet"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def temporary_beside(path: str | Path, mode: str = "wb", **open_args) -> Iterator[IO]:
    """An open temporary file beside ``path`` that replaces it when the block ends without an error.

    On an error (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, **open_args)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # temporary files are private; results are not
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(binary_handle)`` into a temporary file, then rename it over ``path``."""
    with temporary_beside(path) as handle:
        write(handle)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_with(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode(encoding))


class OutputSet:
    """The files of one command, written into a staging folder and moved into ``out`` together.

    Use as a context manager; write every output under :attr:`staging`. On success, each staged file
    replaces its namesake in ``out`` and files of an earlier run of the same command (``names`` given
    to the constructor) that this run did not write are removed, so ``out`` never mixes two runs. On an
    error nothing in ``out`` changes and the staging folder is removed.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "result"
        >>> with OutputSet(out) as staged:
        ...     _ = (staged.staging / "a.csv").write_text("x")
        >>> sorted(p.name for p in out.iterdir())
        ['a.csv']
    """

    def __init__(self, out: str | Path, names: tuple[str, ...] = ()) -> None:
        self.out = Path(out)
        self.names = names  # outputs this command may have written before (removed when not rewritten)
        self.staging: Path = self.out

    def __enter__(self) -> OutputSet:
        self.out.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out))
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _commit(self) -> None:
        written = {p.name for p in self.staging.iterdir()}
        for name in self.names:
            if name not in written:
                target = self.out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        for item in sorted(self.staging.iterdir()):
            target = self.out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
