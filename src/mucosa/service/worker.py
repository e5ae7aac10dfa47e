"""The server's case workers: threads that take jobs from the store's job table and read the cases.

Each worker :meth:`~mucosa.store.Store.claim`\\ s the oldest job waiting (in any server's store: a PostgreSQL
store shares its jobs between the servers, which never take one job twice), reads the case with the engine
into a partial case folder (:mod:`~mucosa.service.casefolders`) while a heartbeat thread extends the job's
lease, then moves the folder into place and writes the result with :meth:`~mucosa.store.Store.finish`, in
that order: a case is done only once its files are whole. A worker that dies (``kill -9``, a lost machine)
stops its heartbeat; once the lease has run out, another worker takes the job up again.

While a case runs, what it has so far (timeline, running verdict, frames) is kept in memory as a
:class:`LiveCase`: the server that runs it answers with it; the others show the progress the heartbeat
records. Deleting a case stops its work (at once in this server, at the next heartbeat in another).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mucosa.errors import MucosaError
from mucosa.service.casefolders import CaseFolders
from mucosa.service.engine import Engine, ModelOutputError
from mucosa.service.framestore import FrameStore
from mucosa.service.reading import UnreadableMedia
from mucosa.store import CaseResult, Job, LeaseLost, NotFound, Store, StoreError

__all__ = ["LiveCase", "Workers", "case_result"]

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often an idle worker looks for jobs that other servers received


@dataclass
class LiveCase:
    """A case being read by a worker of this server, as far as it has got."""

    id: str
    folder: Path                 # the attempt's partial folder (frames/, embeddings)
    frames: FrameStore
    sources: list[Path]
    fps: float | None
    patient: str | None = None   # the one its exam names (left out of the atlas's answers)
    started: float = field(default_factory=time.time)
    timeline: list[dict] = field(default_factory=list)
    verdict: dict | None = None
    warnings: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False           # the job is no longer this worker's (deleted, or taken by another)


def _fps(engine: Engine, sources: list[Path]) -> float | None:
    try:
        return engine.inspect(sources).get("fps")
    except MucosaError:  # the reading itself says what is wrong
        return None


def case_result(live: LiveCase, model_version: str) -> CaseResult:
    """What the store keeps of a case read to its end: the verdict's columns, the summary a list shows, the
    timeline as the case's detail."""
    verdict = live.verdict or {}
    score = verdict.get("score")
    dropped = sum(1 for row in live.timeline if row["dropped"])
    summary = {"verdict": verdict, "fps": live.fps, "started": live.started, "frames_done": len(live.timeline),
               "frames_dropped": dropped}
    return CaseResult(verdict.get("class"), verdict.get("label") or verdict.get("text") or "", model_version,
                      score=score if isinstance(score, float) else None, unfamiliar_share=verdict.get("unfamiliar"),
                      frames_decoded=len(live.timeline), decode_warnings=tuple(live.warnings),
                      detail={"timeline": live.timeline}, summary=summary)


class Workers:
    """``count`` worker threads of this server on ``store``'s jobs.

    Args:
        store, engine: the case store and the model.
        folders: where the cases' files go.
        model_version: recorded with each result.
    """

    def __init__(self, store: Store, engine: Engine, folders: CaseFolders, model_version: str, count: int = 1) -> None:
        self.store, self.engine, self.folders, self.model_version = store, engine, folders, model_version
        self.live: dict[str, LiveCase] = {}
        self.seconds_per_case = 0.0  # how long the last case read here took (for Retry-After)
        self._wake, self._closed = threading.Event(), threading.Event()
        host = socket.gethostname().split(".")[0][:40]
        self._threads = [threading.Thread(target=self._run, args=(f"{host}:{os.getpid()}:{n}",), daemon=True,
                                          name=f"mucosa-cases-{n}") for n in range(count)]
        folders.remove_stale(older_than=4 * store.lease_seconds)
        for thread in self._threads:
            thread.start()

    def nudge(self) -> None:
        """A job was added here: look for it now rather than at the next poll."""
        self._wake.set()

    def cancel(self, case_id: str) -> None:
        """Stop the work on a deleted case, if a worker of this server has it."""
        live = self.live.get(case_id)
        if live is not None:
            live.lost = True
            live.cancel.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers; the cases they were reading are given back to the queue (another server, or this
        one when it starts again, takes them)."""
        self._closed.set()
        self._wake.set()
        for live in list(self.live.values()):
            live.cancel.set()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------------------------------------ work

    def _run(self, name: str) -> None:
        while not self._closed.is_set():
            try:
                job = self.store.claim(name)
            except StoreError as error:
                log.warning("cannot take a job: %s", error)
                self._closed.wait(POLL_SECONDS)
                continue
            if job is None:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            try:
                self._process(job)
            except Exception:  # never let one case stop the worker
                log.exception("case %s failed", job.case_id)
                self._end(job, partial(self.store.fail, job, "internal error while processing the case (see the "
                                       "server log)", model_version=self.model_version))
            finally:
                self.live.pop(job.case_id, None)

    def _process(self, job: Job) -> None:
        case = self.store.case(job.case_id, detail=False)
        sources = [self.store.media_path(media) for media in case.media]
        folder = self.folders.partial(case.id, job.worker, job.attempt)
        fps = _fps(self.engine, sources) if case.kind == "video" else None
        live = LiveCase(case.id, folder, FrameStore(folder / "frames", self.engine.input_size), sources, fps,
                        patient=case.patient)
        live.verdict = self.engine.verdict(None, 0, 0, "running")
        self.live[case.id] = live
        log.info("case %s running (attempt %d): %s", case.id, job.attempt, case.name)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, live, stop), daemon=True,
                                name=f"mucosa-heartbeat-{case.id}")
        beat.start()
        try:
            error = self._read(live)
        finally:
            stop.set()
            beat.join()
        if live.cancel.is_set():
            self.folders.discard(folder)
            if not live.lost:  # the server is stopping: another worker takes the case up
                self._end(job, lambda: self.store.release(job))
            log.info("case %s stopped", case.id)
            return
        live.frames.save_index()
        self.folders.commit(folder, case.id)
        if error is not None:
            for path, media in zip(sources, case.media):  # the client's file names, not the store's
                error = error.replace(path.name, media.name)
            self._end(job, lambda: self.store.fail(job, error, live.warnings, self.model_version))
            return
        if self._end(job, lambda: self.store.finish(job, case_result(live, self.model_version))):
            seconds = time.time() - live.started
            self.seconds_per_case = seconds
            log.info("case %s done: %s (%d frames, %.1f s)", case.id, live.verdict["text"], len(live.timeline),
                     seconds)

    def _read(self, live: LiveCase) -> str | None:
        """Read the case frame by frame into ``live``; the reason when its media cannot give a verdict."""
        try:
            for row in self.engine.frames(live.sources, live.frames, live.cancel, warnings=live.warnings,
                                          patient=live.patient):
                live.verdict = row.pop("case")
                live.timeline.append(row)
        except (UnreadableMedia, ModelOutputError) as error:
            log.warning("case %s failed: %s", live.id, error)
            return str(error)
        if live.verdict is None or not live.timeline:
            live.verdict = self.engine.verdict(None, 0, 0, "final")
        live.verdict = {**live.verdict, "state": "final"}
        return None

    def _heartbeat(self, job: Job, live: LiveCase, stop: threading.Event) -> None:
        interval = self.store.lease_seconds / 4
        while not stop.wait(interval):
            try:
                self.store.heartbeat(job, frames_decoded=len(live.timeline))
            except LeaseLost as error:
                log.warning("%s", error)
                live.lost = True
                live.cancel.set()
                return
            except StoreError as error:  # the database is away for a moment: the lease has time left
                log.warning("case %s: heartbeat failed: %s", job.case_id, error)

    def _end(self, job: Job, write) -> bool:
        """Write a job's end; False when it is no longer this worker's (its folder goes if the case was deleted)."""
        try:
            write()
            return True
        except LeaseLost as error:
            log.warning("%s", error)
        except StoreError as error:
            log.error("case %s: its end could not be written: %s", job.case_id, error)
        try:
            self.store.case(job.case_id, detail=False)
        except NotFound:
            self.folders.remove(job.case_id)
        except StoreError:
            pass
        return False
