"""One model call at a time, with priorities: someone waiting for an answer goes before background work."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class PriorityLock:
    """One model call at a time; ``urgent`` callers go first, ``background`` ones after at most ``max_wait``.

    ``with lock.urgent():`` (a client waits for the answer: single images, Grad-CAM) is served before any
    waiting ``with lock.background():`` (the frames of a case). A background caller that has waited
    ``max_wait`` seconds goes next, so a stream of urgent calls slows background work down but never stops
    it, and delays each urgent call by at most one background call.
    """

    def __init__(self, max_wait: float = 0.25) -> None:
        self.max_wait = max_wait
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0          # urgent callers waiting
        self._overdue = False     # a background caller has waited max_wait: it goes next

    @contextmanager
    def urgent(self):
        with self._cond:
            self._urgent += 1
            while self._busy or self._overdue:
                self._cond.wait()
            self._urgent -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self):
        with self._cond:
            deadline = time.monotonic() + self.max_wait
            while self._busy or (self._urgent and not self._overdue):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._overdue = True
                self._cond.wait(None if self._overdue else left)
            self._overdue = False
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
