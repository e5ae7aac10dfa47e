"""Workers for the store's multi-process tests, run in processes of their own (multiprocessing, spawn)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from mucosa.store import CaseResult, Store


def claim_all(location, media, worker: str, start, out: Path) -> None:
    """Once ``start`` is set, process jobs until none is left; write the ids of the cases it processed to ``out``."""
    store = Store.open(location, media, lease_seconds=30)
    start.wait(30)
    processed = []
    while (job := store.claim(worker)) is not None:
        time.sleep(0.005)  # "the work": the other process claims meanwhile
        job = store.heartbeat(job)
        store.finish(job, CaseResult("active", "active disease", "v1", score=0.7, detail={"worker": worker}))
        processed.append(job.case_id)
    store.close()
    Path(out).write_text(json.dumps(processed))


def claim_and_die(location, media, worker: str) -> None:
    """Claim one job, then die as ``kill -9`` kills: no release, no cleanup."""
    store = Store.open(location, media, lease_seconds=1)
    store.claim(worker)
    os.kill(os.getpid(), signal.SIGKILL)
