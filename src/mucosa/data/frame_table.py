"""A cohort as a table of preprocessed frames (the PyTorch dataset over it is ``mucosa.models.dataset``).

:func:`assemble` prepares (or reads from the cache) every manifest row and applies the quality gate;
training, evaluation and prediction all iterate over the resulting :class:`FrameTable`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mucosa.data.cache import FrameCache
from mucosa.data.manifest import Cohort, Record
from mucosa.data.preparation import PreparedFrames, Preprocessing
from mucosa.errors import MucosaWarning


@dataclass
class FrameTable:
    """Kept frames of a cohort (after the quality gate), each pointing into its row's cached frames."""

    cohort: Cohort
    prep: Preprocessing
    sources: list[PreparedFrames]  # one per cohort record
    row: np.ndarray       # (N,) index into cohort.records
    position: np.ndarray  # (N,) index into sources[row].frames
    dropped: Counter = field(default_factory=Counter)  # frames dropped by the quality gate, per label
    corrupt: Counter = field(default_factory=Counter)  # corrupt video packets skipped, per file name

    def __len__(self) -> int:
        return len(self.row)

    def record(self, i: int) -> Record:
        return self.cohort.records[self.row[i]]

    def frame(self, i: int) -> np.ndarray:
        """uint8 (S, S) frame ``i``."""
        return np.asarray(self.sources[self.row[i]].frames[self.position[i]])

    __getitem__ = frame  # a FrameTable reads like a lazy (N, S, S) array of its frames

    @property
    def labels(self) -> np.ndarray:
        """(N,) class index of every frame."""
        index = {c: k for k, c in enumerate(self.cohort.classes)}
        per_record = np.array([index.get(r.label, -1) for r in self.cohort.records], dtype=np.int64)
        return per_record[self.row] if len(self.row) else np.zeros(0, np.int64)

    @property
    def patients(self) -> np.ndarray:
        return np.array([self.cohort.records[r].patient for r in self.row], dtype=object)

    @property
    def frame_index(self) -> np.ndarray:
        """(N,) frame number in the source video (0 for images)."""
        return np.array([self.sources[r].indices[p] for r, p in zip(self.row, self.position)], np.int64)

    @property
    def quality(self) -> np.ndarray:
        return np.array([self.sources[r].quality[p] for r, p in zip(self.row, self.position)], np.float32)

    def summary(self) -> str:
        kept = Counter(self.cohort.records[r].label for r in self.row)
        lines = [f"frames at {self.prep.size}x{self.prep.size}, quality threshold "
                 f"{self.prep.quality_threshold:g}:"]
        for label in self.cohort.classes:
            lines.append(f"  {label:<20} kept {kept[label]:>7}   dropped as uninformative {self.dropped[label]:>6}")
        total = sum(self.dropped.values())
        lines.append(f"  dropped {total} of {total + len(self)} frames by the quality gate")
        if self.corrupt:
            named = ", ".join(f"{name} ({count})" for name, count in self.corrupt.most_common(5))
            more = f" and {len(self.corrupt) - 5} more files" if len(self.corrupt) > 5 else ""
            lines.append(f"  {sum(self.corrupt.values())} corrupt video packets skipped in {named}{more}")
        return "\n".join(lines)


def assemble(cohort: Cohort, prep: Preprocessing, cache: FrameCache | None = None,
             progress: bool = False) -> FrameTable:
    """Prepare (or read from the cache) every row of the cohort and apply the quality gate."""
    cache = cache or FrameCache()
    sources, rows, positions, dropped, corrupt = [], [], [], Counter(), Counter()
    taken: dict = {}  # file → frame numbers already in the table: overlapping frame ranges count a frame once
    repeated = 0
    from tqdm import tqdm

    for i, record in enumerate(tqdm(cohort.records, desc="preparing frames", unit="file", disable=not progress,
                                    leave=False)):
        prepared = cache.get(record.path, prep, record.frames)
        seen = taken.setdefault(record.path, set())
        fresh = np.array([p for p, n in enumerate(prepared.indices) if int(n) not in seen], np.int64)
        repeated += len(prepared.indices) - len(fresh)
        seen.update(int(n) for n in np.asarray(prepared.indices)[fresh])
        keep = np.intersect1d(prepared.keep(prep.quality_threshold), fresh)
        sources.append(prepared)
        rows.append(np.full(len(keep), i, np.int64))
        positions.append(keep)
        dropped[record.label] += len(fresh) - len(keep)
        if prepared.corrupt:
            corrupt[record.path.name] += prepared.corrupt
    if repeated:
        warnings.warn(f"{repeated} frame(s) lie in more than one row of {cohort.source} (overlapping frame ranges "
                      "of one video): each is counted once", MucosaWarning, stacklevel=2)
    total = sum(dropped.values()) + sum(len(r) for r in rows)
    if total and sum(dropped.values()) > 0.25 * total:
        warnings.warn(f"the quality gate (threshold {prep.quality_threshold:g}) dropped {sum(dropped.values())} "
                      f"of {total} frames; if those frames show tissue, lower the quality threshold "
                      "(--quality, or preprocessing.quality_threshold in the config)", MucosaWarning, stacklevel=2)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    position = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    return FrameTable(cohort, prep, sources, row, position, dropped, corrupt)
