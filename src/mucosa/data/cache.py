"""Prepared frames on disk, keyed by file content and preprocessing, so a file is never decoded twice.

The frames of one file are cached as uint8 (N, S, S) keyed by the file's content, the frame selection and
the preprocessing parameters, so epochs and reruns never decode a video twice, and frames are read back as
a memory map (a 100,000-frame cohort does not need to fit in RAM). The quality threshold is not part of
the key: the score of every frame is stored, and frames are dropped when the cohort is assembled.

An entry is checked each time it is read: its metadata must parse and describe the frames, and its data
file must hold exactly N x S x S bytes. One damaged from outside (truncated, overwritten, half-copied) is
rebuilt with a warning instead of being reused. Temporary files left by a killed run are removed when
the cache is first used, once they are older than a few minutes (a younger one may be a live writer's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from mucosa import atomic
from mucosa.data.preparation import PreparedFrames, Preprocessing, prepare_file
from mucosa.data.readers import FrameSelection, is_video
from mucosa.errors import MucosaWarning

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: a video starting with dark frames re-locates its field of view


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUCOSA_CACHE") or Path.home() / ".cache" / "mucosa")


class FrameCache:
    """Preprocessed frames on disk, keyed by file content and preprocessing parameters."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0  # damaged entries found and prepared again (counted in misses too)
        self._hashes: dict[tuple, str] = {}
        self._swept = False

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

    def sweep(self) -> int:
        """Remove temporary files of killed runs (older than ``atomic.STALE_SECONDS``); returns the count."""
        self._swept = True
        if not self.root.is_dir():
            return 0
        removed = atomic.remove_stale(self.root, ("*/*.tmp", "*.tmp"))
        if removed:
            log.info(f"cache {self.root}: removed {removed} temporary file(s) left by an interrupted run")
        return removed

    def get(self, path: str | Path, prep: Preprocessing, selection: FrameSelection | None = None) -> PreparedFrames:
        """Cached frames of a file, preparing (and storing) them on a miss or when the entry is damaged."""
        if not self._swept:
            self.sweep()
        path = Path(path)
        key = self.key(path, prep, selection)
        data_path, meta_path = self._paths(key)
        if meta_path.is_file():
            meta, problem = read_entry(data_path, meta_path, prep.size)
            if meta is not None:
                self.hits += 1
                return self._frames(meta, data_path, prep.size)
            warnings.warn(f"cache entry {data_path} for {path} is damaged ({problem}); preparing it again",
                          MucosaWarning, stacklevel=2)
            self.rebuilt += 1
        self.misses += 1
        # Frames stream to a temporary file that is renamed only when complete; the metadata, written
        # last and also atomically, marks the entry valid. A killed run never leaves a half entry.
        meta_path.unlink(missing_ok=True)
        with atomic.temporary_beside(data_path) as sink:
            prepared = prepare_file(path, prep, selection, sink)
        meta = {"source": str(path), "indices": prepared.indices.tolist(),
                "quality": prepared.quality.tolist(), "fov": prepared.fov, "corrupt": prepared.corrupt,
                "size": prep.size}
        atomic.write_text(meta_path, json.dumps(meta))
        return self._frames(meta, data_path, prep.size)

    @staticmethod
    def _frames(meta: dict, data_path: Path, size: int) -> PreparedFrames:
        return PreparedFrames(np.asarray(meta["indices"], np.int64), np.asarray(meta["quality"], np.float32),
                              meta["fov"], meta.get("corrupt", 0), path=data_path, size=size)


def read_entry(data_path: Path, meta_path: Path, size: int) -> tuple[dict | None, str]:
    """An entry's metadata when the entry is whole, else ``(None, what is wrong)``.

    Whole: the metadata is a JSON object with ``indices``, ``quality`` (as many) and ``fov``, made for
    frames of side ``size``, and the data file holds exactly ``len(indices) * size * size`` bytes.
    """
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "its metadata file is missing"
    except (OSError, ValueError) as error:
        return None, f"its metadata cannot be read: {type(error).__name__}"
    if not isinstance(meta, dict) or not {"indices", "quality", "fov"} <= meta.keys():
        return None, "its metadata lacks indices, quality or fov"
    indices, quality = meta["indices"], meta["quality"]
    if not (isinstance(indices, list) and isinstance(quality, list) and len(indices) == len(quality)
            and all(type(v) is int for v in indices) and all(type(v) in (int, float) for v in quality)
            and isinstance(meta["fov"], dict)):
        return None, "its metadata lists frames and quality scores that do not match"
    if meta.get("size", size) != size:
        return None, f"it holds frames of side {meta.get('size')}, not {size}"
    expected = len(indices) * size * size
    try:
        actual = data_path.stat().st_size
    except FileNotFoundError:
        return None, "its data file is missing"
    except OSError as error:
        return None, f"its data file cannot be read: {error.strerror}"
    if actual != expected:
        return None, f"its data file holds {actual} bytes, not {expected} ({len(indices)} frames of {size}x{size})"
    return meta, ""
