"""From a manifest row to model-ready frames: decode, crop the field of view, resize, score quality, cache.

The result of one row is cached on disk as uint8 frames (N, S, S) keyed by the file's content and the
preprocessing parameters, so epochs and reruns never decode a video twice, and frames are read back as a
memory map (a 100,000-frame cohort does not need to fit in RAM). The quality threshold is not part of the
key: the score of every frame is stored, and frames are dropped when the cohort is assembled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mucosa import preprocess
from mucosa.errors import ConfigError
from mucosa.frames import CHANNELS, DecodeReport, iter_video_frames, read_image
from mucosa.manifest import Record

NORMALIZE = ("none", "stretch")
CACHE_VERSION = 3  # 3: a video starting with dark frames re-locates its field of view


@dataclass(frozen=True)
class Preprocessing:
    """How frames are turned into model input; stored in every checkpoint.

    Attributes:
        size: side of the square model input (paper: 300).
        crop: ``auto`` (detect the circular pCLE / rectangular eCLE field of view and take the largest
            square inside it), ``disc`` (the same detection, but a circular field is kept whole, black
            outside the circle; rectangles as ``auto``), ``none`` (whole
            frame) or a fixed box ``[x0, y0, x1, y1]``.
        channel: ``auto``, ``luminance``, ``red``, ``green`` or ``blue`` (see ``frames.to_gray``).
        quality_threshold: frames scoring below are dropped as uninformative (0 keeps all).
        fov_frames: frames of a video looked at together to find its field of view.
        tile: cut the field of view of a still image into tiles of this side (source pixels), each
            resized to ``size`` and treated as one frame (numbered row by row); 0 = the whole image.
            Videos are never tiled.
        normalize: ``none`` (intensities as recorded) or ``stretch``: the 1st and 99.5th intensity
            percentiles of a still image's field of view (before tiling) or of each video frame are
            mapped to black and white, evening out gain and background between animals or sessions.
            The quality gate still judges the recorded intensities.
    """

    size: int = 300
    crop: str | tuple[int, int, int, int] = "auto"
    channel: str = "auto"
    quality_threshold: float = preprocess.DEFAULT_QUALITY_THRESHOLD
    fov_frames: int = 32
    tile: int = 0
    normalize: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.crop, list):
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))
        if not (self.crop in ("auto", "disc", "none") or (isinstance(self.crop, tuple) and len(self.crop) == 4)):
            raise ConfigError(f"crop {self.crop!r} must be 'auto', 'disc', 'none' or a box [x0, y0, x1, y1]")
        if self.channel not in CHANNELS:
            raise ConfigError(f"channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        if not 0.0 <= self.quality_threshold <= 1.0:
            raise ConfigError(f"quality_threshold {self.quality_threshold} must be in [0, 1]")
        if self.size < 8 or self.fov_frames < 1:
            raise ConfigError(f"size {self.size} must be >= 8 and fov_frames {self.fov_frames} >= 1")
        if self.tile and self.tile < 8:
            raise ConfigError(f"tile {self.tile} must be 0 (whole image) or a side of at least 8 pixels")
        if self.normalize not in NORMALIZE:
            raise ConfigError(f"normalize {self.normalize!r} must be one of {', '.join(NORMALIZE)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["crop"] = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        return data

    def cache_key(self) -> dict:
        data = self.to_dict()
        data.pop("quality_threshold")
        if data["normalize"] == "none":
            data.pop("normalize")  # caches made before the option existed stay valid
        return data


class FramePreparer:
    """Crop, resize and score frames of one source, once its field of view is known.

    Used for cohort preparation and, frame by frame, for live streams.
    """

    def __init__(self, prep: Preprocessing, still: bool = False) -> None:
        self.prep = prep
        self.fov: preprocess.FieldOfView | None = None
        # still images are judged on brightness, saturation and contrast only (see STILL_COMPONENTS)
        self.components = preprocess.STILL_COMPONENTS if still else None

    def locate(self, frames: np.ndarray) -> preprocess.FieldOfView:
        """Fix the field of view from one frame (H, W) or several (N, H, W) of the same source."""
        shape = frames.shape[-2:]
        if self.prep.crop in ("auto", "disc"):
            self.fov = preprocess.detect_field_of_view(frames)
            if self.prep.crop == "disc":
                self.fov = preprocess.whole_disc(self.fov, shape)
        elif self.prep.crop == "none":
            self.fov = preprocess.FieldOfView("full", (0, 0, shape[1], shape[0]))
        else:
            self.fov = preprocess.fixed_field_of_view(self.prep.crop, shape)
        return self.fov

    def still(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """A still image (H, W) → its model frames with quality scores: the field of view whole, or in
        tiles when ``tile`` is set (row by row)."""
        field = preprocess.crop(image, self.locate(image))
        levels = self._levels(field)  # of the whole field: tiles of one image are stretched alike
        parts = preprocess.tiles(field, self.prep.tile) if self.prep.tile else [field]
        return [self._finish(part, levels) for part in parts]

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """One frame (H, W) float → (model frame uint8 (S, S), quality score)."""
        if self.fov is None:
            self.locate(frame)
        cropped = preprocess.crop(frame, self.fov)  # (h, w)
        return self._finish(cropped, self._levels(cropped))

    def _levels(self, field: np.ndarray) -> tuple[float, float] | None:
        return preprocess.stretch_levels(field) if self.prep.normalize == "stretch" else None

    def _finish(self, cropped: np.ndarray, levels: tuple[float, float] | None) -> tuple[np.ndarray, float]:
        quality = preprocess.quality_score(cropped, self.components)  # on the recorded intensities
        if levels is not None:
            cropped = preprocess.stretch(cropped, levels)
        return preprocess.to_uint8(preprocess.resize(cropped, self.prep.size)), quality


class PreparedFrames:
    """Preprocessed frames of one manifest row.

    Attributes:
        indices: (N,) frame index in the source (0 for an image).
        quality: (N,) float32 quality scores in [0, 1].
        fov: the field of view used (``FieldOfView`` as a dict).
        corrupt: damaged video packets skipped while decoding.
    """

    def __init__(self, indices: np.ndarray, quality: np.ndarray, fov: dict, corrupt: int = 0,
                 frames: np.ndarray | None = None, path: Path | None = None, size: int = 0) -> None:
        self.indices, self.quality, self.fov, self.corrupt = indices, quality, fov, corrupt
        self.path, self.size, self._frames = path, size, frames

    @property
    def frames(self) -> np.ndarray:
        """(N, S, S) uint8; a read-only memory map of the cache file, opened on first use."""
        if self._frames is None:
            count = len(self.indices)
            self._frames = (np.memmap(self.path, dtype=np.uint8, mode="r", shape=(count, self.size, self.size))
                            if count else np.zeros((0, self.size, self.size), np.uint8))
        return self._frames

    def __getstate__(self) -> dict:
        # Data-loading workers reopen the memory map instead of receiving a copy of the frames.
        state = self.__dict__.copy()
        if self.path is not None:
            state["_frames"] = None
        return state

    def keep(self, threshold: float) -> np.ndarray:
        """Positions (into ``indices``/``frames``) of the frames that pass the quality gate."""
        return np.flatnonzero(self.quality >= threshold)


_DARK_LEVEL = 0.1   # a pixel brighter than this is lit
_DARK_SHARE = 0.03  # a frame with less lit than this is dark (burned-in overlays alone are about 1%)


def is_dark(frame: np.ndarray) -> bool:
    """A frame with (almost) nothing lit: the probe is not on tissue yet."""
    return float(np.mean(frame[::4, ::4] > _DARK_LEVEL)) < _DARK_SHARE


def buffered_field_of_view(preparer: FramePreparer, items: Iterator[tuple], count: int | None = None
                           ) -> Iterator[tuple]:
    """Fix a video's field of view from its first frames, then yield every item unchanged.

    ``items`` are tuples whose second element is the frame (``(index, frame, ...)``). The first ``count``
    (default ``fov_frames``) are held back and the field is located from them; if all of them are dark, it
    is located again from the next ``count``, until a lit frame has been seen. Cohort preparation, explain
    and stream all use this, so they crop a video the same way.
    """
    count = count or preparer.prep.fov_frames
    while True:
        head = []
        for item in items:
            head.append(item)
            if len(head) == count:
                break
        if not head:
            return
        preparer.locate(np.stack([item[1] for item in head]))
        yield from head
        if not all(is_dark(item[1]) for item in head):
            break
    yield from items


def prepare_source(record: Record, prep: Preprocessing, sink: BinaryIO | None = None) -> PreparedFrames:
    """Decode and preprocess one row; frames are written to ``sink`` (a binary file) when given."""
    preparer = FramePreparer(prep, still=not record.is_video)
    report = DecodeReport()
    if record.is_video:
        decoded = buffered_field_of_view(preparer, iter_video_frames(record.path, record.frames, prep.channel, report))
        results = ((index, *preparer(frame)) for index, frame in decoded)
    else:  # one frame, or one per tile
        results = ((index, *pair) for index, pair in enumerate(preparer.still(read_image(record.path, prep.channel))))
    indices, quality, kept = [], [], []
    for index, model_frame, score in results:
        indices.append(index)
        quality.append(score)
        if sink is not None:
            sink.write(model_frame.tobytes())
        else:
            kept.append(model_frame)
    frames = np.stack(kept) if kept else np.zeros((0, prep.size, prep.size), np.uint8)
    fov = asdict(preparer.fov) if preparer.fov is not None else {}
    return PreparedFrames(np.asarray(indices, np.int64), np.asarray(quality, np.float32), fov, report.corrupt,
                          frames=frames, size=prep.size)


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

    def key(self, record: Record, prep: Preprocessing) -> str:
        parts = {"v": CACHE_VERSION, "content": self.content_hash(record.path), "frames": str(record.frames),
                 "video": record.is_video, "prep": prep.cache_key()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.u8", folder / f"{key}.json"

    def get(self, record: Record, prep: Preprocessing) -> PreparedFrames:
        """Cached frames of a row, preparing (and storing) them on a miss."""
        key = self.key(record, prep)
        data_path, meta_path = self._paths(key)
        if meta_path.is_file() and data_path.is_file():
            self.hits += 1
            return self._load(data_path, meta_path, prep.size)
        self.misses += 1
        data_path.parent.mkdir(parents=True, exist_ok=True)
        # Frames stream to a temporary file that is renamed only when complete; the metadata, written
        # last and also atomically, marks the entry valid. A killed run never leaves a half entry.
        with tempfile.NamedTemporaryFile(dir=data_path.parent, suffix=".tmp", delete=False) as sink:
            try:
                prepared = prepare_source(record, prep, sink)
            except BaseException:
                os.unlink(sink.name)
                raise
        os.replace(sink.name, data_path)
        meta = {"source": str(record.path), "indices": prepared.indices.tolist(),
                "quality": prepared.quality.tolist(), "fov": prepared.fov, "corrupt": prepared.corrupt,
                "size": prep.size}
        _atomic_write_text(meta_path, json.dumps(meta))
        return self._load(data_path, meta_path, prep.size)

    @staticmethod
    def _load(data_path: Path, meta_path: Path, size: int) -> PreparedFrames:
        meta = json.loads(meta_path.read_text())
        return PreparedFrames(np.asarray(meta["indices"], np.int64), np.asarray(meta["quality"], np.float32),
                              meta["fov"], meta.get("corrupt", 0), path=data_path, size=size)


def _atomic_write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)
