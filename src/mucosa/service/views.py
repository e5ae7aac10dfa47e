"""A stored case as the API shows it: :class:`CaseView` joins the store's record, what a worker of this server
has of it while it runs (:class:`~mucosa.service.worker.LiveCase`) and its files, and gives the API's
summary and detail (``GET /v1/cases``, ``GET /v1/cases/{id}``, the events, the reports)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mucosa.service.framestore import FrameStore
from mucosa.service.worker import LiveCase
from mucosa.store import Case, Review

__all__ = ["CaseView", "review_json"]

ENDED = ("done", "failed", "cancelled")


def _unix(moment: dt.datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def review_json(review: Review | None) -> dict | None:
    """A review as the API gives it (``at``: ISO 8601, UTC)."""
    if review is None:
        return None
    return {"id": review.id, "case_id": review.case_id, "reviewer": review.reviewer, "histology": review.histology,
            "agrees": review.agrees, "note": review.note,
            "at": review.created_at.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_version": review.model_version, "verdict": review.verdict, "verdict_text": review.verdict_text}


@dataclass
class CaseView:
    """One case: its record, its live state (a worker of this server reads it now), its files.

    Attributes:
        folder: where its frames and embeddings are (the attempt's folder while it runs here, else its case
            folder; None while no file of it is reachable).
        frames: its stored frames (None: none yet, or not here).
        placeholder: the engine's verdict before any frame, ``(state, frames seen) -> verdict``.
        review, reviews: its latest review, and (detail only) every review, oldest first.
        files_missing: the case is done but its folder (frames, embeddings) is missing or damaged: a store
            restored from a backup that did not hold it, or a folder removed by hand. Its frames, similar cases
            and reports cannot be given (the API answers 409).
    """

    record: Case
    live: LiveCase | None
    folder: Path | None
    sources: list[Path]
    frames: FrameStore | None
    placeholder: Callable[[str, int], dict]
    review: Review | None = None
    reviews: list[Review] | None = None
    files_missing: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def status(self) -> str:
        return self.record.status.value

    @property
    def finished_work(self) -> bool:
        return self.status in ENDED

    @property
    def store(self) -> FrameStore | None:  # the name the report and the engine use
        return self.frames

    @property
    def timeline(self) -> list[dict]:
        if self.live is not None:
            return self.live.timeline
        return list((self.record.detail or {}).get("timeline") or [])

    def _verdict(self, done: int) -> dict | None:
        record, kept = self.record, self.record.summary or {}
        if self.live is not None and self.status == "running":
            return self.live.verdict
        if kept.get("verdict"):
            return kept["verdict"]
        if self.status == "failed":
            return {**self.placeholder("error", done), "text": f"no verdict: {record.error}"}
        return self.placeholder("queued" if self.status == "queued" else "running", done)

    def summary(self) -> dict:
        """Everything but the timeline."""
        record, kept, live = self.record, self.record.summary or {}, self.live
        if live is not None:
            done = len(live.timeline)
            dropped = sum(1 for row in live.timeline if row["dropped"])
        else:
            done = kept.get("frames_done", record.frames_decoded or 0)
            dropped = kept.get("frames_dropped", 0)
        expected = max(record.frames_announced or 0, 0)
        progress = 1.0 if self.status == "done" else min(0.99, done / expected) if expected else 0.0
        warnings = live.warnings if live is not None else record.decode_warnings
        return {"id": record.id, "name": record.name, "kind": record.kind, "files": [m.name for m in record.media],
                "status": self.status, "progress": round(progress, 4), "frames_expected": expected,
                "frames_done": done, "frames_dropped": dropped,
                "fps": live.fps if live is not None else kept.get("fps"), "verdict": self._verdict(done),
                "error": record.error, "warnings": list(warnings), "created": _unix(record.created_at),
                "started": live.started if live is not None else kept.get("started"),
                "finished": _unix(record.finished_at), "patient": record.patient,
                "exam_date": None if record.exam_date is None else record.exam_date.isoformat(),
                "region": record.region, "model_version": record.model_version, "reviewed": record.reviewed,
                "review": review_json(self.review)}

    def to_dict(self, since: int = 0) -> dict:
        """The summary with the timeline (from row ``since``) and (detail) every review."""
        found = {**self.summary(), "timeline": self.timeline[since:]}
        if self.reviews is not None:
            found["reviews"] = [review_json(review) for review in self.reviews]
        return found
