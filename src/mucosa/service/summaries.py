"""What a list of cases shows, kept: the checked JSON summary of each finished case, by its id and version.

A list or a search (``GET /v1/cases``) reads the page's case ids and versions (:meth:`mucosa.store.Store.listing`,
from the index and by id), and builds, checks against ``CaseSummary`` and writes as JSON only the cases it has not
shown at that version before. The database raises a case's version with every change of its row, whichever
server makes it (revision 0005), and a review raises it too: a kept summary is never older than its case. Cases
that are still queued or running (their summary changes without their row: progress, the verdict so far) are
never kept. Each server keeps at most :data:`KEPT` summaries and :data:`KEPT_BYTES` of them (a case of 1,000
images lists its 1,000 file names: 0.1 MB), the least recently shown going first.

    >>> kept = Summaries(cases=None, size=2)
    >>> kept._keep("a", 1, b'{"id":"a"}'); kept._keep("b", 1, b'{"id":"b"}'); kept._keep("c", 1, b'{"id":"c"}')
    >>> kept._known((("a", 1), ("b", 1), ("c", 2)))
    {'b': b'{"id":"b"}'}
    >>> small = Summaries(cases=None, most_bytes=25)  # each summary below is 10 bytes
    >>> for case_id, version in (("a", 1), ("b", 1), ("b", 2), ("c", 1)):
    ...     small._keep(case_id, version, b'{"id":"%s"}' % case_id.encode())
    >>> sorted(small._known((("a", 1), ("b", 2), ("c", 1)))), small._bytes
    (['b', 'c'], 20)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from mucosa.service import schemas

if TYPE_CHECKING:
    from mucosa.service.cases import CaseService
    from mucosa.service.views import CaseView

__all__ = ["KEPT", "KEPT_BYTES", "Summaries"]

log = logging.getLogger(__name__)

KEPT = 20_000  # summaries kept per server (about 0.7 KB each)
KEPT_BYTES = 32 * 2**20  # and at most this much of them
_SUMMARY = TypeAdapter(schemas.CaseSummary)


class Summaries:
    """The case summaries this server has shown, by case id and version (see the module's text)."""

    def __init__(self, cases: CaseService | None, size: int = KEPT, most_bytes: int = KEPT_BYTES) -> None:
        self.cases, self.size, self.most_bytes = cases, size, most_bytes
        self._kept: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0  # of the summaries kept
        self._lock = threading.Lock()

    def page(self, **filters) -> tuple[bytes, int]:
        """A page of case summaries (``Store.search``'s filters, limit and offset) as a JSON array, and how many
        cases match. A summary that cannot be checked is logged and left out, so that it never breaks the list."""
        listing = self.cases.store.listing(**filters)
        shown = self._known(listing.versions)
        missing = [case_id for case_id, _ in listing.versions if case_id not in shown]
        for view in self.cases.views_of(missing) if missing else ():
            written = _written(view)
            if written is None:
                continue
            shown[view.id] = written
            if view.finished_work and view.live is None:  # its summary changes only with its row
                self._keep(view.id, view.record.version, written)
        body = b",".join(shown[case_id] for case_id, _ in listing.versions if case_id in shown)
        return b"[" + body + b"]", listing.total

    def _known(self, versions) -> dict[str, bytes]:
        """The kept summaries of these (case id, version) pairs, by case id (a case kept at another version is not
        among them)."""
        found = {}
        with self._lock:
            for case_id, version in versions:
                kept = self._kept.get(case_id)
                if kept is not None and kept[0] == version:
                    self._kept.move_to_end(case_id)
                    found[case_id] = kept[1]
        return found

    def _keep(self, case_id: str, version: int, written: bytes) -> None:
        with self._lock:
            earlier = self._kept.pop(case_id, None)
            self._bytes -= 0 if earlier is None else len(earlier[1])
            self._kept[case_id] = (version, written)
            self._bytes += len(written)
            while len(self._kept) > self.size or self._bytes > self.most_bytes:
                self._bytes -= len(self._kept.popitem(last=False)[1][1])


def _written(view: CaseView) -> bytes | None:
    """The case's summary checked against ``CaseSummary``, as JSON; None (logged) when it cannot be."""
    try:
        return _SUMMARY.dump_json(_SUMMARY.validate_python(view.summary()), by_alias=True)
    except Exception as error:  # a bug's, never the client's: the others are still listed
        log.error("case %s left out of the list: %s", view.id, error)
        return None
