"""What an atlas stores (its model, what each frame is, its calibration) and the folder it is saved in.

The folder is written as a set and checked on reading like a checkpoint. It holds (no pickle anywhere:
NumPy's ``.npy`` read with ``allow_pickle=False``, JSON, CSV, and FAISS's own index format):

- ``atlas.json``: ``format: "mucosa-atlas"``, ``version`` (:data:`VERSION`), the model it belongs to, the
  frame count, the index's settings, the unfamiliarity calibration, how it was built (``built_from``: the
  checkpoint's file name, the runtime, the manifests; ``inference.atlas_build``), and the SHA-256 of every
  other file;
- ``embeddings.npy``: (N, D) float32, L2-normalised frame embeddings;
- ``thumbnails.npy``: (N, h, w) uint8 gray thumbnails (read as a memory map: an atlas of a million frames
  holds gigabytes of them);
- ``frames.csv``: one row a frame, in the order of the embeddings: case, patient, label, frame, file;
- ``index.faiss``: the HNSW graph, for atlases large enough to have one (an exact index is rebuilt from
  the embeddings on loading, in a moment);
- ``textures.npy`` and ``texture_rows.npy``: the texture view (``inference.texture_view``), (M, 56) float32
  L2-normalised texture vectors of M atlas frames and their rows (M,) int64, for atlases that have one.

:func:`write` puts them in place together (:class:`mucosa.atomic.OutputSet`): a killed run leaves the
previous atlas whole. :func:`read` refuses, with one line naming the file, a missing or empty folder, a
missing, changed or damaged file (its SHA-256 differs from ``atlas.json``'s), another format, a version
this mucosa does not know, and files whose contents do not parse.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "atlas"
    >>> columns = {"case": ["c1"], "patient": ["p1"], "label": ["control"], "frame": [0], "file": ["v.mp4"]}
    >>> _ = write(folder, {"frames": 1}, np.ones((1, 1), np.float32), np.zeros((1, 2, 2), np.uint8), columns)
    >>> read(folder).columns["patient"]
    ['p1']
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa import tables
from mucosa._version import __version__
from mucosa.atomic import OutputSet, file_sha256
from mucosa.data import fov
from mucosa.errors import MucosaError, first_line
from mucosa.formats import check_version, read_json_object

__all__ = ["AtlasError", "AtlasFileError", "AtlasFiles", "AtlasModel", "Calibration", "CalibrationError",
           "FrameRecords", "COLUMNS", "EMBEDDINGS", "FRAMES", "INDEX", "TEXTURES", "TEXTURE_ROWS", "THUMBNAILS",
           "FORMAT", "KNOWN_VERSIONS", "MANIFEST", "OLDER_VERSIONS", "THUMBNAIL_SIZE", "VERSION", "checked_embeddings",
           "make_thumbnails", "read", "write"]

log = logging.getLogger(__name__)

FORMAT = "mucosa-atlas"
VERSION = 3  # 2: the calibration holds the case threshold of the unfamiliar verdict; 3: and the texture view
KNOWN_VERSIONS = (3,)  # the versions this mucosa reads
OLDER_VERSIONS = (1, 2)  # versions of earlier mucosa: refused with a word on what to do
MANIFEST, EMBEDDINGS, THUMBNAILS, FRAMES, INDEX = ("atlas.json", "embeddings.npy", "thumbnails.npy", "frames.csv",
                                                   "index.faiss")
TEXTURES, TEXTURE_ROWS = "textures.npy", "texture_rows.npy"
COLUMNS = ("case", "patient", "label", "frame", "file")
THUMBNAIL_SIZE = 48  # pixels a side
_NORM_TOLERANCE = 1e-3  # |norm - 1| allowed for an L2-normalised embedding


class AtlasError(MucosaError):
    """An atlas cannot be built, grown or searched as asked (other model, bad arrays, no calibration data)."""


class CalibrationError(AtlasError):
    """An atlas's data cannot set its unfamiliarity thresholds: too few validation frames, too few frames of
    other patients to compare them with (an atlas of one patient), or cases alike to the last digit."""


class AtlasFileError(AtlasError):
    """An atlas folder that cannot be read: missing, damaged or changed files, another format or version."""


@dataclass(frozen=True)
class AtlasModel:
    """The model an atlas belongs to: its weights' SHA-256 (``LoadedCheckpoint.weights_sha256``), its
    classes in order, and the size of its frame embeddings."""

    weights_sha256: str
    classes: tuple[str, ...]
    embedding_size: int

    def to_dict(self) -> dict:
        return {"weights_sha256": self.weights_sha256, "classes": list(self.classes),
                "embedding_size": self.embedding_size}

    @classmethod
    def from_dict(cls, values: object) -> AtlasModel:
        values = values if isinstance(values, dict) else {}
        sha, classes, size = values.get("weights_sha256"), values.get("classes"), values.get("embedding_size")
        if (not isinstance(sha, str) or not isinstance(classes, list) or len(classes) < 2
                or not all(isinstance(c, str) for c in classes) or not isinstance(size, int) or size < 1):
            raise AtlasError("the atlas's model is not described (weights_sha256, two or more classes, "
                             "embedding_size)")
        return cls(sha, tuple(classes), size)

    def differs(self, other: AtlasModel) -> str | None:
        """How ``other`` differs from this model, in words (None when it is the same)."""
        if other.weights_sha256 != self.weights_sha256:
            return f"weights {other.weights_sha256[:12]}…, the atlas's {self.weights_sha256[:12]}…"
        if tuple(other.classes) != tuple(self.classes):
            return f"classes {', '.join(other.classes)}; the atlas's {', '.join(self.classes)}"
        if other.embedding_size != self.embedding_size:
            return f"embeddings of {other.embedding_size} numbers, the atlas's {self.embedding_size}"
        return None


@dataclass(frozen=True)
class FrameRecords:
    """What each atlas frame is, one entry a frame: columns of equal length (text as object arrays).

    A case is one confirmed recording (a manifest row: a video or image), or any group of frames of one
    patient and one label.
    """

    cases: np.ndarray
    patients: np.ndarray
    labels: np.ndarray
    frames: np.ndarray  # frame numbers in their files (int64; 0 for a still image)
    files: np.ndarray  # source file names

    @classmethod
    def of(cls, cases, patients, labels, frames, files) -> FrameRecords:
        """Records from sequences of equal length (text is kept as ``str``)."""
        columns = [np.array([str(v) for v in values], dtype=object) for values in (cases, patients, labels)]
        names = np.array([str(v) for v in files], dtype=object)
        try:
            numbers = np.asarray(frames, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise AtlasError("frame numbers must be whole numbers") from None
        lengths = {len(c) for c in (*columns, numbers, names)}
        if len(lengths) != 1:
            raise AtlasError(f"the frame records' columns differ in length ({sorted(lengths)})")
        return cls(*columns, numbers, names)

    def __len__(self) -> int:
        return len(self.cases)

    def columns(self) -> dict[str, list]:
        return {"case": self.cases.tolist(), "patient": self.patients.tolist(), "label": self.labels.tolist(),
                "frame": self.frames.tolist(), "file": self.files.tolist()}

    def joined(self, other: FrameRecords) -> FrameRecords:
        return FrameRecords(*(np.concatenate([a, b]) for a, b in zip(
            (self.cases, self.patients, self.labels, self.frames, self.files),
            (other.cases, other.patients, other.labels, other.frames, other.files))))


@dataclass(frozen=True)
class Calibration:
    """The unfamiliarity thresholds and how they were set.

    - ``threshold``, for a frame: the ``quantile`` of ``frames`` validation frames' scores (the ``k``-th
      nearest atlas frame's distance, own patient left out) of ``patients`` patients.
    - ``case_threshold``, for a case: the ``case_quantile`` (the smallest value at or above it; in an atlas
      made before the two differed, None: the same as ``quantile``) of the atlas's
      ``cases`` cases' scores, each case's own patient left out of the atlas: the median of its frames'
      scores or, for an atlas with a texture view, the mean of that median over ``embedding_scale`` and the
      median of its texture scores over ``texture_scale``, as ``verdict.unfamiliar_case`` computes it. Each
      scale is that view's own edge: the ``case_quantile`` of the atlas's cases' medians in it.
    """

    k: int
    threshold: float
    quantile: float
    frames: int
    patients: int
    flagged_share: float  # share of those validation frames above the threshold
    atlas_frames: int  # the atlas's size then (it may have grown since)
    case_threshold: float
    cases: int
    method: str = ("cosine distance to the k-th nearest atlas frame of another patient (Sun et al., ICML 2022); "
                   "a case: the median of its frames' distances, joined with the median of its texture distances "
                   "when the atlas has a texture view, each over that view's own case threshold")
    embedding_scale: float | None = None  # with a texture view: the quantile of the atlas cases' embedding medians
    texture_scale: float | None = None  # and of their texture medians
    case_quantile: float | None = None  # of the case threshold and the scales (None: ``quantile``, made before)

    @property
    def scales(self) -> tuple[float, float] | None:
        """(embedding, texture) scales of the case rule; None without a texture view."""
        if self.embedding_scale is None or self.texture_scale is None:
            return None
        return float(self.embedding_scale), float(self.texture_scale)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: object) -> Calibration | None:
        if values is None:
            return None
        try:
            calibration = cls(**values)
        except TypeError:
            raise AtlasError("the unfamiliarity calibration is damaged") from None
        thresholds = (calibration.threshold, calibration.case_threshold)
        scales = [v for v in (calibration.embedding_scale, calibration.texture_scale) if v is not None]

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))

        if (not isinstance(calibration.k, int) or calibration.k < 1
                or not all(number(t) for t in thresholds) or not calibration.case_threshold > 0
                or not all(number(v) and v > 0 for v in scales) or len(scales) == 1
                or not all(number(q) and 0 < q < 1 for q in (calibration.quantile, calibration.case_quantile)
                           if q is not None)):
            raise AtlasError("the unfamiliarity calibration is damaged (k, threshold, case_threshold, scales, "
                             "quantiles)")
        return calibration


def checked_embeddings(embeddings, size: int | None, what: str = "embeddings") -> np.ndarray:
    """``embeddings`` as a (N, size) float32 array, refused (AtlasError naming ``what``) when not finite or
    not L2-normalised."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating) or (size and array.shape[1] != size):
        raise AtlasError(f"{what}: expected a (frames, {size or 'D'}) float array, got {array.dtype} "
                         f"{tuple(array.shape)}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(np.sum(~np.isfinite(array).all(1)))
    if bad:
        raise AtlasError(f"{what}: {bad} vector{'s are' if bad > 1 else ' is'} NaN or infinite")
    norms = np.linalg.norm(array, axis=1)
    if len(array) and np.max(np.abs(norms - 1.0)) > _NORM_TOLERANCE:
        raise AtlasError(f"{what}: embeddings must be L2-normalised (norms from {norms.min():.3g} to "
                         f"{norms.max():.3g})")
    return array


def make_thumbnails(frames, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(N, size, size) uint8 gray thumbnails of frames (N, H, W): uint8, or floats in [0, 1]."""
    frames = np.asarray(frames)
    scale = 1.0 if np.issubdtype(frames.dtype, np.floating) else 1.0 / 255.0
    return np.stack([fov.to_uint8(fov.resize(frame * scale, size)) for frame in frames]) if len(frames) else \
        np.zeros((0, size, size), np.uint8)


@dataclass
class AtlasFiles:
    """What an atlas folder holds, read and checked against ``atlas.json``'s hashes."""

    folder: Path
    description: dict  # atlas.json, less the hashes
    embeddings: np.ndarray
    thumbnails: np.ndarray
    columns: dict[str, list]  # frames.csv: COLUMNS → values (``frame`` as ints)
    index: bytes | None  # index.faiss, when the atlas has one
    textures: tuple[np.ndarray, np.ndarray] | None = None  # (texture_rows, textures), when the atlas has a view


def write(folder: str | Path, description: dict, embeddings: np.ndarray, thumbnails: np.ndarray,
          columns: dict[str, list], index: bytes | None = None,
          textures: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write an atlas folder as a set: the data files, then ``atlas.json`` with their SHA-256.

    ``description`` is the rest of ``atlas.json`` (model, frames, index settings, calibration); ``textures``
    the texture view (its rows, its vectors);
    ``format``, ``version``, ``mucosa_version`` and ``files`` are added here.

    Raises:
        OutputError: ``folder`` cannot be written. WriteError: a write failed (the previous atlas is whole).
    """
    folder = Path(folder)
    with OutputSet(folder, (MANIFEST, EMBEDDINGS, THUMBNAILS, FRAMES, INDEX, TEXTURES, TEXTURE_ROWS),
                   what="atlas folder") as staged:
        np.save(staged.path(EMBEDDINGS), np.ascontiguousarray(embeddings, dtype=np.float32), allow_pickle=False)
        np.save(staged.path(THUMBNAILS), np.ascontiguousarray(thumbnails, dtype=np.uint8), allow_pickle=False)
        tables.write_csv(staged.path(FRAMES), COLUMNS, zip(*(columns[name] for name in COLUMNS)))
        names = [EMBEDDINGS, THUMBNAILS, FRAMES]
        if index is not None:
            staged.path(INDEX).write_bytes(index)
            names.append(INDEX)
        if textures is not None:
            np.save(staged.path(TEXTURE_ROWS), np.asarray(textures[0], np.int64), allow_pickle=False)
            np.save(staged.path(TEXTURES), np.ascontiguousarray(textures[1], np.float32), allow_pickle=False)
            names += [TEXTURE_ROWS, TEXTURES]
        manifest = {"format": FORMAT, "version": VERSION, "mucosa_version": __version__, **description,
                    "files": {name: file_sha256(staged.path(name)) for name in names}}
        staged.path(MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    log.info("atlas written to %s (%d frames)", folder, len(embeddings))
    return folder


def _manifest(folder: Path) -> dict:
    """``atlas.json``, checked for format and version."""
    if not folder.exists():
        raise AtlasFileError(f"{folder}: atlas not found")
    if not folder.is_dir():
        raise AtlasFileError(f"{folder}: a file, not an atlas folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise AtlasFileError(f"{folder}: not an atlas (no {MANIFEST} in it)")
    manifest = read_json_object(path, "a mucosa atlas", AtlasFileError)
    if manifest.get("format") != FORMAT:
        raise AtlasFileError(f"{path}: not a mucosa atlas (format {manifest.get('format')!r:.40}, expected "
                             f"{FORMAT!r})")
    if manifest.get("version") in OLDER_VERSIONS:
        raise AtlasFileError(f"{path}: atlas format version {manifest['version']}, made by an earlier mucosa without "
                             "the texture view of the unfamiliar verdict; build it again (mucosa atlas build)")
    check_version(path, "atlas", manifest.get("version"), KNOWN_VERSIONS, AtlasFileError)  # the one rule
    if not isinstance(manifest.get("files"), dict):
        raise AtlasFileError(f"{path}: damaged (no SHA-256 of the atlas's files)")
    return manifest


def _checked(folder: Path, manifest: dict, name: str) -> Path:
    """The path of data file ``name``, once its SHA-256 matches ``atlas.json``'s."""
    path, expected = folder / name, manifest["files"].get(name)
    if not isinstance(expected, str):
        raise AtlasFileError(f"{folder / MANIFEST}: damaged (no SHA-256 of {name})")
    if not path.is_file():
        raise AtlasFileError(f"{path}: missing from the atlas")
    try:
        found = file_sha256(path)
    except OSError as error:
        raise AtlasFileError(f"{path}: cannot be read ({first_line(error)})") from None
    if found != expected:
        raise AtlasFileError(f"{path}: damaged or changed since the atlas was written (its SHA-256 differs from "
                             f"the one in {MANIFEST}); rebuild the atlas")
    return path


def _array(path: Path, memory_map: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if memory_map else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise AtlasFileError(f"{path}: not a readable NumPy array ({first_line(error)})") from None


def _columns(path: Path) -> dict[str, list]:
    try:
        rows = tables.read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AtlasFileError(f"{path}: not a readable CSV table ({first_line(error)})") from None
    if not rows:
        raise AtlasFileError(f"{path}: no frames in it")
    if tuple(rows[0]) != COLUMNS:
        raise AtlasFileError(f"{path}: columns {', '.join(map(str, rows[0]))}; expected {', '.join(COLUMNS)}")
    if any(None in row or None in row.values() for row in rows):
        raise AtlasFileError(f"{path}: a row with missing or extra cells")
    columns: dict[str, list] = {name: [row[name] for row in rows] for name in COLUMNS}
    try:
        columns["frame"] = [int(value) for value in columns["frame"]]
    except (TypeError, ValueError):
        raise AtlasFileError(f"{path}: a frame number that is not a whole number") from None
    return columns


def _texture_files(folder: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """``texture_rows.npy`` (1-D, whole numbers, increasing) and ``textures.npy`` (one float row each)."""
    rows_path, vectors_path = _checked(folder, manifest, TEXTURE_ROWS), _checked(folder, manifest, TEXTURES)
    rows, vectors = _array(rows_path), _array(vectors_path)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or not len(rows):
        raise AtlasFileError(f"{rows_path}: expected the atlas rows of the texture view, one whole number each, got "
                             f"{rows.dtype} {rows.shape}")
    if np.any(np.diff(rows) <= 0):
        raise AtlasFileError(f"{rows_path}: the texture view's rows must increase, each row once")
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating) or len(vectors) != len(rows):
        raise AtlasFileError(f"{vectors_path}: expected ({len(rows)}, width) float texture vectors, one a row of "
                             f"{TEXTURE_ROWS}, got {vectors.dtype} {vectors.shape}")
    return rows, vectors


def read(folder: str | Path) -> AtlasFiles:
    """Read an atlas folder, every data file checked against ``atlas.json``'s SHA-256.

    Raises:
        AtlasFileError: one line naming the file: missing, damaged or changed, another format, an unknown
            or newer version, or contents that do not parse.
    """
    folder = Path(folder)
    manifest = _manifest(folder)
    embeddings = _array(_checked(folder, manifest, EMBEDDINGS))
    thumbnails = _array(_checked(folder, manifest, THUMBNAILS), memory_map=True)
    columns = _columns(_checked(folder, manifest, FRAMES))
    index = _checked(folder, manifest, INDEX).read_bytes() if INDEX in manifest["files"] else None
    textures = None
    if TEXTURES in manifest["files"] or TEXTURE_ROWS in manifest["files"]:
        textures = _texture_files(folder, manifest)
    description = {key: value for key, value in manifest.items() if key != "files"}
    return AtlasFiles(folder, description, embeddings, thumbnails, columns, index, textures)
