"""Cases: a video or the images of one examination, processed in the background, one at a time.

:class:`CaseStore` keeps every case opened since the server started, each in its own folder under the
server's temporary folder (uploads, display frames, model frames). Work goes through a bounded queue to one
worker thread. A case takes its place in the queue before its upload is read (:meth:`CaseStore.reserve`,
which raises :class:`QueueFull` when every place is taken or reserved: the API answers 503 with Retry-After)
and keeps it until it is queued (:meth:`CaseStore.submit`) or given up (:meth:`CaseStore.release`). The
store's lock guards its bookkeeping only: it is never held while computing an estimate or waiting. Deleting a
case stops its work and removes its folder; :meth:`CaseStore.close` does so for all of them.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mucosa.service.engine import Engine, ModelOutputError, UnreadableMedia
from mucosa.service.framestore import FrameStore

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")


class QueueFull(Exception):
    """The work queue is full; ``retry_after`` estimates when a place frees up (seconds)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the work queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Case:
    """One case and what is known about it so far."""

    id: str
    name: str
    kind: str                      # "video" or "images"
    files: list[str]               # names as given by the client (display only)
    sources: list[Path]            # the files the engine reads
    folder: Path                   # removed with the case
    frames_expected: int           # announced by the video (images: how many), kept when fewer are decoded
    fps: float | None
    created: float = field(default_factory=time.time)
    status: str = "queued"
    error: str | None = None
    timeline: list[dict] = field(default_factory=list)
    verdict: dict | None = None
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    store: FrameStore | None = None
    warnings: list[str] = field(default_factory=list)  # damage found while decoding (truncated, corrupt)

    @property
    def finished_work(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return min(0.99, len(self.timeline) / self.frames_expected) if self.frames_expected else 0.0

    def summary(self) -> dict:
        """Everything but the timeline."""
        dropped = sum(1 for row in self.timeline if row["dropped"])
        return {"id": self.id, "name": self.name, "kind": self.kind, "files": self.files, "status": self.status,
                "progress": round(self.progress, 4), "frames_expected": self.frames_expected,
                "frames_done": len(self.timeline), "frames_dropped": dropped, "fps": self.fps,
                "verdict": self.verdict, "error": self.error, "warnings": list(self.warnings), "created": self.created,
                "started": self.started, "finished": self.finished}

    def to_dict(self, since: int = 0) -> dict:
        """The summary with the timeline (from row ``since``)."""
        return {**self.summary(), "timeline": self.timeline[since:]}


class CaseStore:
    """Cases of this server, their folders and the background worker that processes them.

    Args:
        engine: the model.
        root: folder for the cases' files (the server's temporary folder).
        queue_size: cases that may wait for the worker besides the one it is processing.
    """

    def __init__(self, engine: Engine, root: Path, queue_size: int) -> None:
        self.engine, self.root = engine, Path(root)
        self.cases: dict[str, Case] = {}
        self.places = max(1, queue_size)
        self._queue: queue.Queue = queue.Queue()  # bounded by the places reserved (see reserve)
        self._reserved: set[str] = set()          # case ids whose upload is arriving
        self._lock = threading.Lock()             # cases, _reserved and the queue's length; never held long
        self._closed = threading.Event()
        self._fps = 0.0  # frames per second of the last case, for Retry-After
        self._worker = threading.Thread(target=self._work, name="mucosa-cases", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------------------------------------- API

    def reserve(self) -> tuple[str, Path]:
        """A place in the queue for a case about to arrive: its id and (created) folder for the upload.

        Raises:
            QueueFull: every place is taken by a waiting case or reserved by an arriving one.
        """
        with self._lock:
            free = self._queue.qsize() + len(self._reserved) < self.places
            case_id = uuid.uuid4().hex[:12]
            if free:
                self._reserved.add(case_id)
        if not free:
            raise QueueFull(self.retry_after())
        folder = self.root / "cases" / case_id
        folder.mkdir(parents=True)
        return case_id, folder

    def release(self, case_id: str, folder: Path) -> None:
        """Give up a reserved place (the upload failed or was refused) and remove its folder."""
        with self._lock:
            self._reserved.discard(case_id)
        shutil.rmtree(folder, ignore_errors=True)

    def counts(self) -> dict[str, int]:
        """``cases`` kept and ``queued`` (waiting for the worker)."""
        with self._lock:
            cases = list(self.cases.values())
        return {"cases": len(cases), "queued": sum(c.status == "queued" for c in cases)}

    def retry_after(self) -> int:
        """Seconds until the worker has probably freed a place in the queue (1 to 120)."""
        with self._lock:
            cases = list(self.cases.values())
            waiting = self._queue.qsize() or 1
        left = sum(max(0, c.frames_expected - len(c.timeline)) for c in cases if c.status in ("queued", "running"))
        per_case = left / waiting
        return int(min(120, max(1, per_case / self._fps if self._fps > 0 else 10)))

    def submit(self, case_id: str, folder: Path, name: str, files: list[str], sources: list[Path],
               info: dict) -> Case:
        """Queue a case whose place was reserved (:meth:`reserve`) and whose files are in place (``info``
        from ``Engine.inspect``)."""
        case = Case(case_id, name, info["kind"], files, sources, folder, int(info["frames"]), info.get("fps"))
        case.verdict = self.engine.verdict(None, 0, 0, "queued")
        with self._lock:
            if case_id not in self._reserved:
                raise ValueError(f"case {case_id} has no reserved place in the queue")
            self._reserved.discard(case_id)
            self.cases[case.id] = case
            self._queue.put_nowait(case)  # unbounded: the reservation kept a place for it
        log.info("case %s queued: %s (%s, about %d frames)", case.id, name, case.kind, case.frames_expected)
        return case

    def get(self, case_id: str) -> Case | None:
        return self.cases.get(case_id)

    def list(self) -> list[Case]:
        with self._lock:
            cases = list(self.cases.values())
        return sorted(cases, key=lambda c: c.created, reverse=True)

    def delete(self, case_id: str) -> bool:
        """Stop the case's work and remove its files; False when there is no such case."""
        with self._lock:
            case = self.cases.pop(case_id, None)
        if case is None:
            return False
        case.cancel.set()
        if case.status in ("queued", "done", "failed", "cancelled"):
            shutil.rmtree(case.folder, ignore_errors=True)
        # a running case's folder is removed by the worker when it stops (see _work)
        log.info("case %s deleted", case_id)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (cancelling the running case) and remove every case's files."""
        self._closed.set()
        with self._lock:
            cases = list(self.cases.values())
        for case in cases:
            case.cancel.set()
        self._queue.put_nowait(None)
        self._worker.join(timeout)
        for case in cases:
            shutil.rmtree(case.folder, ignore_errors=True)
        with self._lock:
            self.cases.clear()

    # ---------------------------------------------------------------------------------------------- worker

    def _work(self) -> None:
        while not self._closed.is_set():
            case = self._queue.get()
            if case is None:
                return
            try:
                if not case.cancel.is_set():
                    self._process(case)
            except Exception:  # never let one case stop the worker
                log.exception("case %s failed", case.id)
                case.status, case.error = "failed", "internal error while processing the case (see the server log)"
            finally:
                case.finished = time.time()
                if case.id not in self.cases:  # deleted while it ran
                    shutil.rmtree(case.folder, ignore_errors=True)

    def _process(self, case: Case) -> None:
        case.status, case.started = "running", time.time()
        case.store = FrameStore(case.folder / "frames", self.engine.input_size)
        log.info("case %s running", case.id)
        try:
            for row in self.engine.frames(case.sources, case.store, case.cancel, warnings=case.warnings):
                case.verdict = row.pop("case")
                case.timeline.append(row)
        except (UnreadableMedia, ModelOutputError) as error:
            case.status, case.error = "failed", str(error)
            if case.verdict is not None:
                case.verdict = {**case.verdict, "state": "error", "label": None, "class": None, "score": None,
                                "text": "no verdict: " + str(error)}
            log.warning("case %s failed: %s", case.id, error)
            return
        if case.cancel.is_set():
            case.status = "cancelled"
            return
        if case.verdict is None:
            case.verdict = self.engine.verdict(None, 0, 0, "final")
        case.verdict = {**case.verdict, "state": "final"}
        case.status = "done"
        seconds = time.time() - case.started
        self._fps = len(case.timeline) / seconds if seconds > 0 else self._fps
        log.info("case %s done: %s (%d frames, %.1f s)", case.id, case.verdict["text"], len(case.timeline), seconds)
