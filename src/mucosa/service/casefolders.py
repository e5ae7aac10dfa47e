"""Where the files the engine writes for a case lie: the store's ``media/shared`` folder, one folder per case.

A case's folder, ``MEDIA/shared/CASE_ID``, holds ``frames/`` (display JPEGs, the model's frames, their
``index.json``: :class:`~mucosa.service.framestore.FrameStore`) and the atlas's ``embeddings.npy``. It is only
ever seen whole: a worker fills ``MEDIA/shared/.partial/CASE_ID-WORKER-ATTEMPT`` and renames it into place
(:meth:`CaseFolders.commit`) before the store marks the case done, so any server sharing the store (the
same folder on a shared file system) finds a done case's files, after a restart too. A partial folder left by
a killed worker is removed when the job is taken again, or by :meth:`CaseFolders.remove_stale`. The store's
backups hold the cases' folders (:func:`mucosa.store.media.copy_case_folders`), not the partial ones.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from mucosa.store.media import PARTIAL, SHARED

__all__ = ["CaseFolders"]

log = logging.getLogger(__name__)

_TRASH = ".trash"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CaseFolders:
    """The case folders under a store's media folder."""

    def __init__(self, media_root: Path) -> None:
        self.root = Path(media_root) / SHARED

    def final(self, case_id: str) -> Path:
        """The folder of a case whose work ended (it may not exist: not finished, or made by nothing)."""
        return self.root / _UNSAFE.sub("_", case_id)

    def partial(self, case_id: str, worker: str, attempt: int) -> Path:
        """A fresh folder for one attempt at a case; an earlier one of the same attempt is removed."""
        folder = self.root / PARTIAL / _UNSAFE.sub("_", f"{case_id}-{worker}-{attempt}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def commit(self, partial: Path, case_id: str) -> Path:
        """Move an attempt's folder into its place at once (a folder there before, of an earlier attempt, goes)."""
        target = self.final(case_id)
        if target.exists():
            self._discard(target)
        os.replace(partial, target)
        return target

    def remove(self, case_id: str) -> None:
        """Remove a deleted case's folder, if any."""
        if self.final(case_id).exists():
            self._discard(self.final(case_id))

    def discard(self, partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)

    def remove_stale(self, older_than: float) -> int:
        """Remove the partial folders of attempts that ended without a word (a killed server) more than
        ``older_than`` seconds ago; returns how many."""
        removed, now = 0, time.time()
        for folder in [*(self.root / PARTIAL).glob("*"), *(self.root / _TRASH).glob("*")]:
            try:
                if now - folder.stat().st_mtime > older_than:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("removed %d case folder(s) that stopped servers left", removed)
        return removed

    def _discard(self, folder: Path) -> None:
        """Rename a folder out of the way at once, then remove it."""
        trash = self.root / _TRASH / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
