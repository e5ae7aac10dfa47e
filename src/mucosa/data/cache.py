"""Prepared frames on disk, keyed by file content and preprocessing, so a file is never decoded twice.

The frames of one file are cached as uint8 (N, S, S) keyed by the file's content, the frame selection and
the preprocessing parameters, so epochs and reruns never decode a video twice, and frames are read back as
a memory map (a 100,000-frame cohort does not need to fit in RAM). The quality threshold is not part of
the key: the score of every frame is stored, and frames are dropped when the cohort is assembled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mucosa import atomic
from mucosa.data.preparation import PreparedFrames, Preprocessing, prepare_file
from mucosa.data.readers import FrameSelection, is_video

CACHE_VERSION = 3  # 3: a video starting with dark frames re-locates its field of view


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUCOSA_CACHE") or Path.home() / ".cache" / "mucosa")


class FrameCache:
    """Preprocessed frames on disk, keyed by file content and preprocessing parameters."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self._hashes: dict[tuple, str] = {}

    def content_hash(self, path: Path) -> str:
        stat = path.stat()
        memo = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo not in self._hashes:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._hashes[memo] = digest.hexdigest()
        return self._hashes[memo]

    def key(self, path: Path, prep: Preprocessing, selection: FrameSelection | None = None) -> str:
        parts = {"v": CACHE_VERSION, "content": self.content_hash(path), "frames": str(selection or FrameSelection()),
                 "video": is_video(path), "prep": prep.cache_key()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.u8", folder / f"{key}.json"

    def get(self, path: str | Path, prep: Preprocessing, selection: FrameSelection | None = None) -> PreparedFrames:
        """Cached frames of a file, preparing (and storing) them on a miss."""
        path = Path(path)
        key = self.key(path, prep, selection)
        data_path, meta_path = self._paths(key)
        if meta_path.is_file() and data_path.is_file():
            self.hits += 1
            return self._load(data_path, meta_path, prep.size)
        self.misses += 1
        # Frames stream to a temporary file that is renamed only when complete; the metadata, written
        # last and also atomically, marks the entry valid. A killed run never leaves a half entry.
        with atomic.temporary_beside(data_path) as sink:
            prepared = prepare_file(path, prep, selection, sink)
        meta = {"source": str(path), "indices": prepared.indices.tolist(),
                "quality": prepared.quality.tolist(), "fov": prepared.fov, "corrupt": prepared.corrupt,
                "size": prep.size}
        atomic.write_text(meta_path, json.dumps(meta))
        return self._load(data_path, meta_path, prep.size)

    @staticmethod
    def _load(data_path: Path, meta_path: Path, size: int) -> PreparedFrames:
        meta = json.loads(meta_path.read_text())
        return PreparedFrames(np.asarray(meta["indices"], np.int64), np.asarray(meta["quality"], np.float32),
                              meta["fov"], meta.get("corrupt", 0), path=data_path, size=size)
