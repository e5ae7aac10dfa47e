"""Cases: a video or the images of one examination, kept in the case store and read by the job workers.

:class:`CaseService` is what the routes use. An upload takes a place in the queue before its body is read
(:meth:`CaseService.reserve`, which raises :class:`QueueFull` when the store's waiting jobs and the uploads
arriving here fill every place: the API answers 503 with Retry-After), is streamed into the server's
temporary folder, then kept in the store's media (content-addressed) and added as a case with its job
(:meth:`CaseService.submit`); the temporary files go either way. The workers (:mod:`~mucosa.service.worker`)
of any server sharing the store read it. Cases, verdicts, timelines, exam fields and reviews live in the
store, the files the engine wrote in the store's ``media/shared`` (:mod:`~mucosa.service.casefolders`):
they survive a restart, and every server of a PostgreSQL store sees them.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from mucosa.service.casefolders import CaseFolders
from mucosa.service.engine import Engine
from mucosa.service.framestore import FrameStore
from mucosa.service.views import CaseView
from mucosa.service.worker import Workers
from mucosa.store import Case, MediaFile, NotFound, Store, User

__all__ = ["QueueFull", "CaseService", "model_version"]

log = logging.getLogger(__name__)

_KEPT_FRAME_STORES = 64  # frame indexes of finished cases kept open


class QueueFull(Exception):
    """The work queue is full; ``retry_after`` estimates when a place frees up (seconds)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the work queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


RUN_CHECKPOINTS = ("best.ckpt", "last.ckpt")  # what mucosa train names every run's checkpoints


def model_version(card: dict) -> str:
    """How the store, the audit and the reports name the model: its file and the start of its weights' SHA-256,
    e.g. ``crohn-v3.ckpt:65c45907c282``. The card names no run, and every run's checkpoint is ``best.ckpt``:
    such a file is named with its run's folder, ``pcle-quick/best.ckpt:65c45907c282``."""
    name = card["name"]
    if name in RUN_CHECKPOINTS and card.get("run"):
        name = f"{card['run']}/{name}"
    return f"{name}:{(card.get('weights_sha256') or 'unknown')[:12]}"


class CaseService:
    """The cases of a store, as this server serves and reads them.

    Args:
        store: the case store (opened by the server, closed by it).
        engine: the model.
        version: the model's version (:func:`model_version`).
        root: the server's temporary folder (uploads arriving).
        queue_size: jobs that may wait (in the whole store), uploads arriving here included.
        workers: worker threads of this server.
    """

    def __init__(self, store: Store, engine: Engine, version: str, root: Path, queue_size: int,
                 workers: int = 1) -> None:
        self.store, self.engine, self.model_version, self.root = store, engine, version, Path(root)
        self.places = max(1, queue_size)
        self.folders = CaseFolders(store.media.root)
        self._reserved: set[str] = set()
        self._lock = threading.Lock()
        self._frames: OrderedDict[str, FrameStore] = OrderedDict()
        self.workers = Workers(store, engine, self.folders, version, workers)

    # ---------------------------------------------------------------------------------------------- uploads

    def reserve(self) -> tuple[str, Path]:
        """A place in the queue for a case about to arrive, and a (created) folder for its upload.

        Raises:
            QueueFull: every place is taken by a waiting job or reserved by an arriving upload.
        """
        with self._lock:
            waiting = self.store.job_counts().get("queued", 0)
            free = waiting + len(self._reserved) < self.places
            token = uuid.uuid4().hex[:12]
            if free:
                self._reserved.add(token)
        if not free:
            raise QueueFull(self.retry_after())
        folder = self.root / "uploads" / token
        folder.mkdir(parents=True)
        return token, folder

    def release(self, token: str, folder: Path) -> None:
        """Give up a reserved place and remove its upload folder (done with it, or refused)."""
        with self._lock:
            self._reserved.discard(token)
        shutil.rmtree(folder, ignore_errors=True)

    def submit(self, name: str, files: list[str], sources: list[Path], info: dict, user: User | None,
               exam: dict) -> Case:
        """Keep the files in the store and add the case with its job (one transaction); the caller then releases
        the place (:meth:`release`). ``info`` is ``Engine.inspect``'s, ``exam`` the exam fields."""
        media = []
        for path, given in zip(sources, files):
            shown = given if Path(given).suffix.lower() == path.suffix.lower() else given + path.suffix.lower()
            media.append(MediaFile(self.store.put_media(path), shown))
        case = self.store.add_case(name, media, kind=info["kind"], by=user, frames_announced=int(info["frames"]),
                                   model_version=self.model_version, **exam)
        self.workers.nudge()
        log.info("case %s queued: %s (%s, about %d frames)", case.id, name, case.kind, int(info["frames"]))
        return case

    # ---------------------------------------------------------------------------------------------- reading

    def view(self, case_id: str, detail: bool = True) -> CaseView | None:
        """The case (None: unknown or deleted); ``detail``: with its timeline and every review."""
        try:
            record = self.store.case(case_id, detail=detail)
            reviews = self.store.reviews(case_id) if detail and record.reviewed else [] if detail else None
        except NotFound:
            return None
        latest = reviews[-1] if reviews else None
        if not detail and record.reviewed:
            latest = self.store.latest_reviews([case_id]).get(case_id)
        return self._view(record, latest, reviews)

    def views_of(self, case_ids: list[str]) -> list[CaseView]:
        """The live cases among these ids, in their order, as a list shows them (:mod:`~mucosa.service.summaries`):
        summaries only, no file of theirs looked up (their folder, frames and sources are left empty)."""
        found = self.store.cases(case_ids)
        records = [found[case_id] for case_id in case_ids if case_id in found]
        latest = self.store.latest_reviews([case.id for case in records if case.reviewed])
        return [CaseView(case, self.workers.live.get(case.id), None, [], None, self._placeholder,
                         latest.get(case.id), None) for case in records]

    def _view(self, record: Case, review, reviews) -> CaseView:
        live = self.workers.live.get(record.id)
        sources = [self.store.media_path(media) for media in record.media]
        if live is not None:
            folder, frames = live.folder, live.frames
            if not folder.is_dir():  # its worker has just moved them into the case's own folder
                folder = self.folders.final(record.id)
                frames = self._frames_of(record.id, folder)
            return CaseView(record, live, folder, sources, frames, self._placeholder, review, reviews)
        folder, done = self.folders.final(record.id), record.status.value == "done"
        frames = self._frames_of(record.id, folder) if done or record.status.value == "failed" else None
        if frames is None and done:
            log.warning("case %s is done but its folder (frames, embeddings) is missing or damaged: %s", record.id,
                        folder)
        return CaseView(record, None, folder if frames is not None else None, sources, frames, self._placeholder,
                        review, reviews, files_missing=frames is None and done)

    def _placeholder(self, state: str, seen: int) -> dict:
        return self.engine.verdict(None, 0, seen, state)

    def _frames_of(self, case_id: str, folder: Path) -> FrameStore | None:
        """The frames a finished case left in ``folder`` (kept open for the next request); None: not there."""
        if not folder.is_dir():  # gone since it was kept open (restored without it, removed by hand)
            return None
        with self._lock:
            found = self._frames.get(case_id)
            if found is not None and found.folder == folder / "frames":
                self._frames.move_to_end(case_id)
                return found
        try:
            found = FrameStore.load(folder / "frames")
        except (OSError, ValueError, KeyError):
            return None
        with self._lock:
            self._frames[case_id] = found
            while len(self._frames) > _KEPT_FRAME_STORES:
                self._frames.popitem(last=False)
        return found

    def counts(self) -> dict[str, int]:
        """``cases`` in the store and ``queued`` (jobs waiting for a worker)."""
        return {"cases": self.store.search(limit=1).total, "queued": self.store.job_counts().get("queued", 0)}

    def retry_after(self) -> int:
        """Seconds until a worker has probably freed a place in the queue (1 to 120)."""
        seconds = self.workers.seconds_per_case
        return int(min(120, max(1, seconds if seconds > 0 else 10)))

    # ---------------------------------------------------------------------------------------------- changes

    def delete(self, case_id: str, user: User | None) -> None:
        """Delete the case (admins; raises NotAllowed, NotFound): its work stops, its files go."""
        self.store.delete_case(case_id, by=user, model_version=self.model_version)
        self.workers.cancel(case_id)
        with self._lock:
            self._frames.pop(case_id, None)
        self.folders.remove(case_id)
        log.info("case %s deleted", case_id)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (the cases they read go back to the queue)."""
        self.workers.close(timeout)
