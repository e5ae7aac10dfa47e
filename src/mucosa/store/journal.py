"""Lines of the audit log that stand alone (``case.open``), written together: a group commit.

Each caller of :meth:`GroupCommit.write` waits until its line is committed, as with a transaction of its own,
but the lines that arrive while one transaction is being written go into the next one, together. On SQLite
(one writer at a time) many viewers opening cases then cost one transaction per batch instead of one each,
and no request thread holds the write lock while it waits for its turn to run.

Example:
    >>> written = []
    >>> commit = GroupCommit(written.extend)
    >>> commit.write("case.open 1"); commit.write("case.open 2")
    >>> commit.close(); written
    ['case.open 1', 'case.open 2']
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from mucosa.store.records import StoreError

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

_STOP = object()


class GroupCommit:
    """Writes items in batches with ``write_batch`` (one transaction per call), from one thread of its own.

    Args:
        write_batch: writes a list of items in one transaction; raises when nothing was written.
        most: the largest batch.
    """

    def __init__(self, write_batch: Callable[[list[Any]], None], most: int = 500) -> None:
        self._write_batch, self._most = write_batch, most
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def write(self, item: Any) -> None:
        """Write ``item``; returns once it is committed, raises what its transaction raised."""
        done: Future = Future()
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed: its audit log takes no more lines")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mucosa-audit-log", daemon=True)
                self._thread.start()
            self._waiting.put((item, done))
        done.result()

    def close(self) -> None:
        """Write what is waiting, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._waiting.put(_STOP)
            thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._waiting.get()]
            while len(batch) < self._most and not self._waiting.empty():
                batch.append(self._waiting.get())
            stopping = any(entry is _STOP for entry in batch)
            self._commit([entry for entry in batch if entry is not _STOP])

    def _commit(self, batch: list[tuple[Any, Future]]) -> None:
        if not batch:
            return
        try:
            self._write_batch([item for item, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            log.warning("a batch of %d audit lines failed (%s); writing them one by one", len(batch), error)
            for entry in batch:  # one bad line must not cost the others theirs
                self._commit([entry])
            return
        for _, done in batch:
            done.set_result(None)
