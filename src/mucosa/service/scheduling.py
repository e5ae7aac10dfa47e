"""One model call at a time, with priorities: someone waiting for an answer goes before background work."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class PriorityLock:
    """At most ``slots`` model calls at a time; ``urgent`` callers go first, ``background`` ones after at most
    ``max_wait`` seconds.

    ``with lock.urgent():`` (a client waits for the answer: single images, Grad-CAM) is served before any
    waiting ``with lock.background():`` (the frames of a case). A background caller that has waited
    ``max_wait`` seconds takes the next free slot, so a stream of urgent calls slows background work down but
    never stops it, and delays an urgent call by at most one background call.
    """

    def __init__(self, slots: int = 1, max_wait: float = 0.25) -> None:
        if slots < 1:
            raise ValueError(f"slots {slots} must be at least 1")
        self.slots, self.max_wait = slots, max_wait
        self._cond = threading.Condition()
        self._in_use = 0          # calls running
        self._urgent = 0          # urgent callers waiting
        self._overdue = False     # a background caller has waited max_wait: it goes next

    @contextmanager
    def urgent(self):
        with self._cond:
            self._urgent += 1
            while self._in_use >= self.slots or self._overdue:
                self._cond.wait()
            self._urgent -= 1
            self._in_use += 1
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self):
        with self._cond:
            deadline = time.monotonic() + self.max_wait
            while self._in_use >= self.slots or (self._urgent and not self._overdue):
                left = deadline - time.monotonic()
                if left <= 0 and not self._overdue:
                    self._overdue = True  # urgent callers now wait; look again at once, a slot may be free
                    continue
                self._cond.wait(None if self._overdue else left)
            self._overdue = False
            self._in_use += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify_all()
