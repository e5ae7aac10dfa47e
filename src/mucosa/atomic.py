"""Atomic writes: the one place where mucosa puts a file (or a set of files) on disk.

A reader, or a process killed at any moment, sees either the previous content or the new one, never a
torn file: data goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target. :class:`OutputSet` does the same for all the files of one command, so an earlier result is
replaced whole or not at all.

Output places are checked before the work (:func:`check_writable_folder`, :func:`check_writable_file`:
a file where a folder is needed or the reverse, a read-only or full folder) and raise :class:`OutputError`;
a write that fails during the work (disk full, file-size limit, read-only file system) raises
:class:`WriteError`, one line naming the file, never a half-written file.

Example:
    >>> import tempfile, pathlib
    >>> from mucosa.atomic import write_text
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_text(folder / "note.txt", "hello").read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mucosa.errors import MucosaError

__all__ = ["OutputError", "WriteError", "check_writable_folder", "check_writable_file", "write_error",
           "write_bytes", "write_text", "write_with", "write_torch", "temporary_beside", "PendingFile",
           "OutputSet", "remove_stale", "file_sha256"]

STALE_SECONDS = 600  # a temporary file or staging folder untouched this long belongs to a killed run
_PROBE_BYTES = 4096  # written (and synced) by the writability probe, so a full disk shows before the work


class OutputError(MucosaError):
    """An output place cannot work: a file where a folder is needed (or the reverse), a read-only or full
    folder, a parent that cannot be created. Found before the work; the CLI exits with status 2."""


class WriteError(OutputError):
    """A write failed during the work (disk full, file-size limit, read-only file system...); nothing
    half-written is left. The CLI exits with status 74."""

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(error: OSError) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.EFBIG:
        reason += " (the file-size limit, see `ulimit -f`)"
    return reason


def write_error(error: OSError, path: str | Path) -> WriteError:
    """A failed write as one line: ``cannot write PATH: No space left on device``."""
    return WriteError(f"cannot write {path}: {_reason(error)}", error.errno)


# --------------------------------------------------------------------------------------------------
# Checking output places before the work
# --------------------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path) -> None:
    """Create, fill, sync and remove a small hidden file in ``folder`` (raises OSError when it cannot)."""
    fd, name = tempfile.mkstemp(prefix=".mucosa-probe-", suffix=".tmp", dir=folder)
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def check_writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a folder mucosa can write into.

    Nothing is created: a missing folder is judged by its closest existing parent.

    Raises:
        OutputError: ``path`` is a file; a parent is a file; the folder (or the parent it would be created
            in) is read-only, not writable by this user, or full.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"cannot write the {what} {path}: it is a file, not a folder")
        existing = _nearest_existing(path.absolute())
        if not existing.is_dir():
            raise OutputError(f"cannot create the {what} {path}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write the {what} {path}: {existing} is not writable (permission denied)")
        _probe(existing)
    except OSError as error:
        folder = None if error.filename is None else Path(os.fsdecode(error.filename)).parent
        where = "" if folder is None or folder.absolute() == path.absolute() else f" (in {folder})"
        raise OutputError(f"cannot write the {what} {path}{where}: {_reason(error)}") from None
    return path


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that ``path`` can be written as a file (replacing a file there).

    Raises:
        OutputError: ``path`` is a folder or not a regular file (a device, a socket), or its folder cannot
            be written (see :func:`check_writable_folder`).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise OutputError(f"cannot write the {what} {path}: it is a folder, not a file")
        if path.exists() and not path.is_file():
            raise OutputError(f"cannot write the {what} {path}: it exists and is not a regular file")
    except OSError as error:
        raise OutputError(f"cannot write the {what} {path}: {_reason(error)}") from None
    check_writable_folder(path.parent, f"folder of the {what}")
    return path


def remove_stale(folder: str | Path, patterns: tuple[str, ...], older_than: float = STALE_SECONDS) -> int:
    """Remove what killed runs left in ``folder`` (temporary files, staging folders) matching ``patterns``
    and untouched for ``older_than`` seconds; younger ones may belong to a live process. Returns the count."""
    folder, removed, now = Path(folder), 0, time.time()
    for pattern in patterns:
        for item in folder.glob(pattern):
            try:
                if now - item.lstat().st_mtime < older_than:
                    continue
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
                removed += 1
            except OSError:  # gone meanwhile, or not ours to remove: leave it
                continue
    return removed


# --------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------


class PendingFile:
    """A temporary file beside ``path``, renamed over it by :meth:`commit` or removed by :meth:`discard`.

    ``handle`` is the open file (``open_file=False`` leaves it closed, for writers that open a path
    themselves, such as PyAV: they write to :attr:`temp`). Failures to create or commit it raise
    :class:`WriteError` naming ``path``.
    """

    def __init__(self, path: str | Path, mode: str = "wb", open_file: bool = True, **open_args: Any) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(mode, dir=self.path.parent, prefix=f".{self.path.name}.",  # noqa: SIM115
                                                 suffix=".tmp", delete=False, **open_args)
        except OSError as error:
            raise write_error(error, self.path) from None
        self.temp = Path(handle.name)
        self.handle: IO | None = handle
        if not open_file:
            handle.close()
            self.handle = None

    def commit(self) -> Path:
        """Flush and sync the data, then rename the temporary file over ``path``."""
        try:
            if self.handle is not None:
                with self.handle:
                    self.handle.flush()
                    os.fsync(self.handle.fileno())
            else:
                fd = os.open(self.temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(self.temp, 0o666 & ~_umask())  # temporary files are private; results are not
            os.replace(self.temp, self.path)
        except OSError as error:
            self.discard()
            raise write_error(error, self.path) from None
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; ``path`` is untouched."""
        if self.handle is not None:
            with contextlib.suppress(OSError):  # the data is thrown away: a failed flush does not matter
                self.handle.close()
        self.temp.unlink(missing_ok=True)

    def owns(self, error: BaseException) -> bool:
        """Whether ``error`` is a failed write of this file (an OSError naming no file, or its temporary file)."""
        return isinstance(error, OSError) and error.filename in (None, str(self.temp))


@contextlib.contextmanager
def temporary_beside(path: str | Path, mode: str = "wb", **open_args) -> Iterator[IO]:
    """An open temporary file beside ``path`` that replaces it when the block ends without an error.

    On an error (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched; an
    OSError of the write itself (disk full, file-size limit) becomes a :class:`WriteError` naming ``path``.
    """
    pending = PendingFile(path, mode, **open_args)
    try:
        yield pending.handle
    except BaseException as error:
        pending.discard()
        if pending.owns(error):
            raise write_error(error, path) from None
        raise
    pending.commit()


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


def is_torch_write_failure(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a failed write (``enforce fail at inline_container.cc ...
    unexpected pos``), which says nothing of the cause: a full disk or the file-size limit."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text
                                                or "unexpected pos" in text)


def _torch_reason(path: Path, written: int) -> str:
    import resource

    try:
        if shutil.disk_usage(path.parent).free < (1 << 20):
            return os.strerror(errno.ENOSPC)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and written >= limit - (1 << 16):
            return os.strerror(errno.EFBIG) + " (the file-size limit, see `ulimit -f`)"
    except OSError:
        pass
    return "the write failed (the disk is probably full, or a file-size limit was reached)"


def write_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; a failed write is a :class:`WriteError` naming ``path``
    (torch itself only says "enforce fail ... unexpected pos")."""
    import torch

    path = Path(path)
    with temporary_beside(path) as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as error:
            if not is_torch_write_failure(error):
                raise
            raise WriteError(f"cannot write {path}: {_torch_reason(path, handle.tell())}") from None
    return path


# --------------------------------------------------------------------------------------------------
# The files of one command
# --------------------------------------------------------------------------------------------------


class OutputSet:
    """The files of one command, written into a staging folder and moved into ``out`` together.

    Use as a context manager; write every output under :attr:`staging` (or at :meth:`path`). On success,
    each staged file replaces its namesake in ``out``, and the files of an earlier run of the same command
    that this run did not write are removed: ``names`` lists them, as names or glob patterns
    (``"*_gradcam.png"``). So ``out`` never mixes two runs, and files of other commands or of the user in
    ``out`` are left alone. On an error nothing in ``out`` changes and the staging folder is removed
    (``out`` too, when this run made it). ``out`` is checked first (:func:`check_writable_folder`);
    staging folders left by killed runs are removed when older than :data:`STALE_SECONDS`.

    For a command that writes a report (``evaluate``, ``compare``)::

        with OutputSet(out, ("metrics.json", "report.html", "*.png", "gallery")) as staged:
            staged.path("metrics.json").write_text(...)
            plot(..., staged.path("roc.png"))
            gallery(..., staged.path("gallery"))  # folders are moved whole
        # now out/metrics.json etc. are the new run's, and an old out/pr.png this run did not draw is gone

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "result"
        >>> with OutputSet(out) as staged:
        ...     _ = staged.path("a.csv").write_text("x")
        >>> sorted(p.name for p in out.iterdir())
        ['a.csv']
    """

    STAGING_PREFIX = ".staging-"

    def __init__(self, out: str | Path, names: tuple[str, ...] = (), what: str = "output folder") -> None:
        self.out = Path(out)
        self.names = names  # outputs this command may have written before (removed when not rewritten)
        self.what = what
        self.staging: Path = self.out
        self._created = False

    def path(self, name: str) -> Path:
        """Where to write the output ``name`` (a file name, or a relative path whose folders are created)."""
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def __enter__(self) -> OutputSet:
        check_writable_folder(self.out, self.what)
        try:
            self._created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale(self.out, (self.STAGING_PREFIX + "*",))
            self.staging = Path(tempfile.mkdtemp(prefix=self.STAGING_PREFIX, dir=self.out))
        except OSError as error:
            raise write_error(error, self.out) from None
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self._commit()
            elif isinstance(error, OSError) and self._staged(error.filename):
                raise write_error(error, self._target(error.filename)) from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if kind is not None and self._created:
                with contextlib.suppress(OSError):  # made for this run, which wrote nothing: leave no trace
                    self.out.rmdir()

    def _staged(self, filename) -> bool:
        """Whether an OSError's file is a staged output (or unnamed, as for a failed ``write``)."""
        return filename is None or Path(os.fsdecode(filename)).is_relative_to(self.staging)

    def _target(self, filename) -> Path:
        """The output a staged file becomes (``out`` itself when the error names no file)."""
        return self.out if filename is None else self.out / Path(os.fsdecode(filename)).relative_to(self.staging)

    def _stale(self, written: set[str]) -> list[Path]:
        """Files in ``out`` from an earlier run (matching ``names``) that this run did not write."""
        stale = []
        for item in self.out.iterdir():
            if item.name in written or item.name.startswith(self.STAGING_PREFIX):
                continue
            if any(fnmatch.fnmatchcase(item.name, pattern) for pattern in self.names):
                stale.append(item)
        return stale

    def _commit(self) -> None:
        written = {p.name for p in self.staging.iterdir()}
        try:
            for item in sorted(self.staging.iterdir()):
                self._sync(item)
            for target in self._stale(written):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            for item in sorted(self.staging.iterdir()):
                target = self.out / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        except OSError as error:
            raise write_error(error, error.filename or self.out) from None

    @staticmethod
    def _sync(item: Path) -> None:
        """Flush a staged file (or a folder's files) to disk before it replaces the earlier result."""
        for path in (item.rglob("*") if item.is_dir() else (item,)):
            if path.is_file() and not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file, read a megabyte at a time (what the atlas and pretraining record of files).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     empty = Path(folder) / "empty"
    ...     _ = empty.write_bytes(b"")
    ...     file_sha256(empty)[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

