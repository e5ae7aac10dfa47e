"""The atlas: the confirmed cases' frames, to show the cases that look alike and to say when a frame is
unlike them all.

The paper's clinical use compares a patient's CLE images "with our database of thousands of normal and
pathologic cases" (Udristoiu et al. 2021, Discussion); the Smart Atlas of André et al. (Medical Image
Analysis 2011) retrieves the expert-annotated pCLE videos most like the one under study. An :class:`Atlas`
holds a model's frame embeddings (float32, L2-normalised) of confirmed cases, with what each frame is (its
case, patient, label, frame number, source file and a small gray thumbnail) and the model it belongs to.

- **Similar cases** (:meth:`Atlas.similar_cases`): each query frame's :data:`NEIGHBOURS_PER_FRAME`
  nearest atlas frames, never of the query's own patients (``exclude_patient``: the one rule of
  :mod:`mucosa.inference.leave_out`), are pooled per atlas case. A case ranks by how
  many query frames found it among their nearest (its ``matched`` frames), then by its ``distance``: the
  mean, over those query frames, of the cosine distance to the case's closest frame. So a case that looks
  like much of the recording comes before one that looks like a single frame. Each comes with its closest
  frames (up to :data:`CLOSEST_FRAMES`, with thumbnails).
- **The atlas's vote** (:meth:`Atlas.vote`), a second opinion beside the network's: the share of each
  class among the query frames' nearest atlas frames (the Smart Atlas's k-nearest-neighbour vote).
- **Unfamiliar frames** (:meth:`Atlas.unfamiliar`): a frame's score is the cosine distance to its
  :data:`UNFAMILIAR_K`-th nearest atlas frame of another patient (deep nearest-neighbour
  out-of-distribution detection, Sun et al., ICML 2022); it is unfamiliar above a threshold that
  :meth:`Atlas.calibrate` sets on validation frames, so that about 2.5% of them are flagged (and, on the
  real data, under 5% of a new patient's: :mod:`~mucosa.inference.atlas_calibration`).
  A case (a file, a recording) is judged as a whole (``verdict.unfamiliar_case``): its frames' median score
  against a case threshold that :meth:`Atlas.calibrate` sets on the atlas's own cases, each scored with its
  patient left out, so that about 5% of in-domain cases would be called unfamiliar. An atlas without a
  calibration cannot tell, and says so (``flags`` and ``case_threshold`` are ``None``).
- **The texture view** (:class:`TextureView`, :mod:`mucosa.inference.texture_view`): texture vectors of some
  frames of each case at near the recording's own resolution, which the network's small input has lost. With
  one, a case's score joins its embedding median and its texture median (:meth:`Atlas.texture_scores`), each
  over its scale (that view's own case threshold), and the case threshold is set on that
  (``Calibration.scales``).

Distances are cosine distances, 1 - cosine similarity, from 0 to 2 (:mod:`mucosa.inference.atlas_index`);
where fewer atlas frames than needed are left (a tiny atlas, most of it the query's own patient), a missing
neighbour counts as the farthest possible, 2. An atlas is saved as a folder (:meth:`Atlas.save`,
:func:`load`; :mod:`mucosa.inference.atlas_store`, which also holds the records' types) and is refused on
loading for another model.

Example:
    >>> import numpy as np
    >>> vectors = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    >>> vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    >>> records = FrameRecords.of(cases=["a", "a", "b", "b"], patients=["p1", "p1", "p2", "p2"],
    ...                           labels=["control", "control", "active", "active"], frames=[0, 1, 0, 1],
    ...                           files=["a.mp4", "a.mp4", "b.mp4", "b.mp4"])
    >>> atlas = Atlas(AtlasModel("0" * 64, ("control", "active"), 2), vectors, records,
    ...               np.zeros((4, 8, 8), np.uint8))
    >>> [case.case for case in atlas.similar_cases(np.array([[1.0, 0.0]]), k=2)]
    ['a', 'b']
    >>> atlas.vote(np.array([[0.0, 1.0]])).shares.tolist()  # its 10 nearest frames: all four, here
    [0.5, 0.5]
    >>> atlas.vote(np.array([[0.0, 1.0]]), exclude_patient="p1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mucosa.inference.atlas_store.AtlasError: the atlas's frames of other patients are all active: ...
    >>> atlas.unfamiliar(np.array([[0.0, 1.0]])).flags is None  # not calibrated: it cannot tell
    True
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mucosa.inference import atlas_calibration, atlas_store, texture_view, verdict
from mucosa.inference.atlas_calibration import (
    CASE_CALIBRATION_FRAMES,
    CASE_QUANTILE,
    FARTHEST,
    FRAME_QUANTILE,
    MIN_CALIBRATION_FRAMES,
    UNFAMILIAR_K,
)
from mucosa.inference.atlas_index import HNSW, IndexFileError, VectorIndex
from mucosa.inference.atlas_store import (
    AtlasError,
    AtlasFileError,
    AtlasModel,
    Calibration,
    CalibrationError,
    FrameRecords,
    checked_embeddings,
)

__all__ = ["Atlas", "AtlasError", "AtlasFileError", "AtlasModel", "Calibration", "CalibrationError", "Familiarity",
           "FrameRecords", "Match", "SimilarCase", "TextureView", "Vote", "CASE_CALIBRATION_FRAMES", "CASE_QUANTILE",
           "CLOSEST_FRAMES", "FARTHEST", "FRAME_QUANTILE", "MIN_CALIBRATION_FRAMES", "NEIGHBOURS_PER_FRAME",
           "UNFAMILIAR_K", "load", "refuse_other_model"]

log = logging.getLogger(__name__)

NEIGHBOURS_PER_FRAME = 10  # nearest atlas frames of each query frame, for similar cases and the vote
CLOSEST_FRAMES = 3  # closest frames shown for each similar case
Patients = str | tuple[str, ...] | None  # the patients a search leaves out (``leave_out.own_patients``)


@dataclass
class Match:
    """An atlas frame close to a query frame."""

    row: int  # the atlas frame's row
    frame: int  # its frame number in its file
    file: str
    distance: float  # cosine distance to the query frame
    query_frame: int  # which query frame (row of the query) it matched
    thumbnail: np.ndarray = field(repr=False)


@dataclass
class SimilarCase:
    """An atlas case like the query: ``matched`` of ``query_frames`` query frames found it among their
    nearest; ``distance`` is the mean, over those, of the distance to its closest frame."""

    case: str
    patient: str
    label: str
    distance: float
    matched: int
    query_frames: int
    closest: list[Match]


@dataclass
class Vote:
    """The atlas's nearest-neighbour vote: the share of each class among the query frames' neighbours
    (``shares``, summing to 1) and each frame's own shares (``frame_shares``, (N, classes))."""

    classes: tuple[str, ...]
    shares: np.ndarray
    frame_shares: np.ndarray

    @property
    def label(self) -> str:
        """The class with the largest share (the first of them on a tie)."""
        return self.classes[int(np.argmax(self.shares))]


@dataclass
class Familiarity:
    """Each query frame's unfamiliarity score, and whether it is unfamiliar (``flags``: None when the atlas
    has no calibration and cannot tell); the thresholds of a frame and of a case (``verdict.unfamiliar_case``)."""

    scores: np.ndarray
    flags: np.ndarray | None
    threshold: float | None
    case_threshold: float | None = None


@dataclass
class TextureView:
    """Texture vectors (M, T) float32, L2-normalised, of M atlas frames (``rows``: their rows, (M,))."""

    rows: np.ndarray
    vectors: np.ndarray

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, np.int64).ravel()
        self.vectors = checked_embeddings(self.vectors, None, "texture vectors")
        if len(self.rows) != len(self.vectors):
            raise AtlasError(f"{len(self.vectors)} texture vectors for {len(self.rows)} rows: one a row")

    def moved(self, offset: int) -> TextureView:
        return TextureView(self.rows + offset, self.vectors)


def _checked_parts(model: AtlasModel, embeddings, records: FrameRecords,
                   thumbnails) -> tuple[np.ndarray, np.ndarray]:
    embeddings = checked_embeddings(embeddings, model.embedding_size)
    thumbnails = np.asarray(thumbnails)  # a memory map stays one
    if thumbnails.ndim != 3 or thumbnails.dtype != np.uint8:
        raise AtlasError(f"thumbnails: expected (frames, h, w) uint8, got {thumbnails.dtype} {thumbnails.shape}")
    if not len(embeddings) == len(records) == len(thumbnails):
        raise AtlasError(f"{len(embeddings)} embeddings, {len(records)} frame records and {len(thumbnails)} "
                         "thumbnails: one of each a frame is needed")
    unknown = sorted(set(records.labels.tolist()) - set(model.classes))
    if unknown:
        raise AtlasError(f"label{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:5])} not among the model's "
                         f"classes ({', '.join(model.classes)})")
    return embeddings, thumbnails


def _check_cases(records: FrameRecords) -> None:
    """Every case belongs to one patient and has one label."""
    seen: dict[str, tuple[str, str]] = {}
    for case, patient, label in zip(records.cases.tolist(), records.patients.tolist(), records.labels.tolist()):
        first = seen.setdefault(case, (patient, label))
        if first != (patient, label):
            raise AtlasError(f"case {case!r} has frames of patient {first[0]!r} labelled {first[1]!r} and of "
                             f"patient {patient!r} labelled {label!r}: a case is one patient's, with one label")


class Atlas:
    """Confirmed cases' frame embeddings with their records and thumbnails, searchable (see the module).

    Searches may run from several threads at once; :meth:`add` and :meth:`calibrate` change the atlas and
    must not run beside them.
    """

    def __init__(self, model: AtlasModel, embeddings, records: FrameRecords, thumbnails,
                 calibration: Calibration | None = None, index: VectorIndex | None = None,
                 origin: dict | None = None, textures: TextureView | None = None) -> None:
        embeddings, thumbnails = _checked_parts(model, embeddings, records, thumbnails)
        if not len(embeddings):
            raise AtlasError("an atlas needs at least one frame")
        _check_cases(records)
        self._set_textures(textures, len(embeddings))
        self.model, self.embeddings, self.records, self.thumbnails = model, embeddings, records, thumbnails
        self.calibration = calibration
        self.origin = dict(origin or {})  # how it was built (plain data, saved as atlas.json's built_from)
        self.index = VectorIndex.build(embeddings) if index is None else index
        self._label_codes = np.array([model.classes.index(label) for label in records.labels.tolist()])
        self._patient_rows: dict[str, np.ndarray] | None = None

    def _set_textures(self, textures: TextureView | None, frames: int) -> None:
        if textures is not None and len(textures.rows) and (textures.rows.min() < 0 or textures.rows.max() >= frames):
            raise AtlasError(f"texture rows outside the atlas's {frames} frames")
        self.textures = textures
        self._texture_index = None if textures is None else VectorIndex.build(textures.vectors)

    @property
    def judges_texture(self) -> bool:
        """Whether the case rule uses the texture view: the atlas has one and a calibration with its scales
        (otherwise texture scores would be computed for nothing)."""
        return self.textures is not None and self.calibration is not None and self.calibration.scales is not None

    def __len__(self) -> int:
        return len(self.embeddings)

    def add(self, model: AtlasModel, embeddings, records: FrameRecords, thumbnails,
            textures: TextureView | None = None) -> None:
        """Grow the atlas by new cases' frames, of the same model.

        The calibration is kept: it was set on fewer atlas frames (``Calibration.atlas_frames``), and with
        more, in-domain frames find closer neighbours, so fewer are flagged; calibrate again to restore 5%.

        Raises:
            AtlasError: another model (weights, classes or embedding size), a case already in the atlas,
                arrays that do not fit (see :class:`Atlas`), or textures for one side only.
        """
        if self.textures is None and textures is not None:
            raise AtlasError("this atlas has no texture view; build it again (mucosa atlas build)")
        if (textures is None) != (self.textures is None):
            raise AtlasError("both the atlas and the new frames must have a texture view, or neither")
        difference = self.model.differs(model)
        if difference:
            raise AtlasError(f"cannot add frames of another model to this atlas ({difference}); build an atlas "
                             "for that model instead")
        embeddings, thumbnails = _checked_parts(self.model, embeddings, records, thumbnails)
        if thumbnails.shape[1:] != self.thumbnails.shape[1:]:
            raise AtlasError(f"thumbnails of {thumbnails.shape[1:]} pixels; the atlas's are "
                             f"{self.thumbnails.shape[1:]}")
        again = sorted(set(records.cases.tolist()) & set(self.records.cases.tolist()))
        if again:
            raise AtlasError(f"case{'s' if len(again) > 1 else ''} {', '.join(map(repr, again[:5]))} already in the "
                             "atlas: an atlas grows by new cases")
        joined = self.records.joined(records)
        _check_cases(joined)
        all_embeddings = np.concatenate([self.embeddings, embeddings])
        if textures is not None:
            moved = textures.moved(len(self.embeddings))
            self._set_textures(TextureView(np.concatenate([self.textures.rows, moved.rows]),
                                           np.concatenate([self.textures.vectors, moved.vectors])),
                               len(all_embeddings))
        self.index = self.index.add(embeddings, all_embeddings)
        self.embeddings, self.records = all_embeddings, joined
        self.thumbnails = np.concatenate([self.thumbnails, thumbnails])
        self._label_codes = np.concatenate([self._label_codes, [self.model.classes.index(v) for v in
                                                                 records.labels.tolist()]]).astype(np.int64)
        self._patient_rows = None
        log.info("atlas grown by %d frames to %d", len(embeddings), len(self))

    # --- searching ------------------------------------------------------------------------------

    def patient_rows(self, patient: Patients) -> np.ndarray:
        """The atlas rows of ``patient``, or of each of several (none for None or a patient not in the atlas)."""
        if patient is None:
            return np.zeros(0, np.int64)
        if isinstance(patient, tuple):
            return np.concatenate([np.zeros(0, np.int64), *(self.patient_rows(p) for p in patient)])
        if self._patient_rows is None:
            rows: dict[str, list[int]] = defaultdict(list)
            for row, name in enumerate(self.records.patients.tolist()):
                rows[name].append(row)
            self._patient_rows = {name: np.array(found, np.int64) for name, found in rows.items()}
        return self._patient_rows.get(str(patient), np.zeros(0, np.int64))

    def neighbours(self, query_embeddings, k: int, exclude_patient: Patients = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Each query frame's ``k`` nearest atlas frames, leaving out ``exclude_patient``'s: (distances,
        rows), both (N, k), nearest first; a missing neighbour has distance ``inf`` and row -1."""
        queries = checked_embeddings(query_embeddings, self.model.embedding_size, "query embeddings")
        return self.index.search(queries, k, self.patient_rows(exclude_patient))

    def similar_cases(self, query_embeddings, k: int = 5, exclude_patient: Patients = None) -> list[SimilarCase]:
        """The ``k`` atlas cases most like the query frames (a file's or case's), never of
        ``exclude_patient``; ranked as the module says."""
        distances, rows = self.neighbours(query_embeddings, NEIGHBOURS_PER_FRAME, exclude_patient)
        matches: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
        cases = self.records.cases
        for query_frame, (frame_distances, frame_rows) in enumerate(zip(distances.tolist(), rows.tolist())):
            for distance, row in zip(frame_distances, frame_rows):
                if row >= 0:
                    matches[cases[row]].append((distance, row, query_frame))
        ranked = []
        for case, found in matches.items():
            closest_per_frame: dict[int, float] = {}
            for distance, _, query_frame in found:
                closest_per_frame[query_frame] = min(distance, closest_per_frame.get(query_frame, np.inf))
            ranked.append((-len(closest_per_frame), float(np.mean(list(closest_per_frame.values()))), case, found))
        ranked.sort(key=lambda item: item[:3])
        return [self._similar_case(case, -matched, distance, found, len(rows))
                for matched, distance, case, found in ranked[:k]]

    def _similar_case(self, case: str, matched: int, distance: float, found: list, query_frames: int) -> SimilarCase:
        closest, seen = [], set()
        for frame_distance, row, query_frame in sorted(found):
            if row not in seen and len(closest) < CLOSEST_FRAMES:
                seen.add(row)
                closest.append(Match(row, int(self.records.frames[row]), str(self.records.files[row]),
                                     frame_distance, query_frame, np.asarray(self.thumbnails[row])))
        first = closest[0].row
        return SimilarCase(case, str(self.records.patients[first]), str(self.records.labels[first]), distance,
                           matched, query_frames, closest)

    def vote(self, query_embeddings, exclude_patient: Patients = None) -> Vote:
        """The share of each class among the query frames' :data:`NEIGHBOURS_PER_FRAME` nearest atlas frames
        (never of ``exclude_patient``).

        Raises:
            AtlasError: no atlas frame is left to vote (all of them are ``exclude_patient``'s), or those left are
                all of one class: a vote that can only name that class is no second opinion.
        """
        self._check_voters(exclude_patient)
        _, rows = self.neighbours(query_embeddings, NEIGHBOURS_PER_FRAME, exclude_patient)
        counts = np.zeros((len(rows), len(self.model.classes)))
        found = rows >= 0
        np.add.at(counts, (np.nonzero(found)[0], self._label_codes[rows[found]]), 1.0)
        if len(rows) and not found.any():
            raise AtlasError(f"the atlas has no frame of another patient than {exclude_patient!r} to vote")
        total = counts.sum()
        shares = counts.sum(0) / total if total else np.zeros(len(self.model.classes))
        frame_shares = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
        return Vote(self.model.classes, shares, frame_shares)

    def _check_voters(self, exclude_patient: Patients) -> None:
        """Refuse a vote from atlas frames (``exclude_patient``'s left out) that hold fewer than two classes."""
        counts = np.bincount(self._label_codes, minlength=len(self.model.classes))
        left_out = np.unique(self.patient_rows(exclude_patient))  # a patient named twice is left out once
        counts -= np.bincount(self._label_codes[left_out], minlength=len(counts))
        if 0 < np.count_nonzero(counts) < 2:
            only = self.model.classes[int(np.argmax(counts))]
            raise AtlasError(f"the atlas's frames of other patients are all {only}: its vote could name no other "
                             "class, so it gives none")

    # --- unfamiliar frames ----------------------------------------------------------------------

    def scores(self, query_embeddings, k: int | None = None, exclude_patient: Patients = None) -> np.ndarray:
        """Each frame's unfamiliarity score: the cosine distance to its ``k``-th nearest atlas frame not of
        ``exclude_patient`` (``k``: the calibration's, else :data:`UNFAMILIAR_K`; missing: 2)."""
        k = k or (self.calibration.k if self.calibration else UNFAMILIAR_K)
        distances, _ = self.neighbours(query_embeddings, k, exclude_patient)
        return np.minimum(distances[:, k - 1], FARTHEST).astype(np.float64) if len(distances) else np.zeros(0)

    def texture_scores(self, query_textures, k: int | None = None, exclude_patient: Patients = None) -> np.ndarray:
        """Each texture vector's distance to its ``k``-th nearest atlas texture not of ``exclude_patient`` (the
        texture view's; ``k`` as :meth:`scores`; missing: 2).

        Raises:
            AtlasError: the atlas has no texture view, or vectors of another width.
        """
        if self.textures is None:
            raise AtlasError("this atlas has no texture view; build it again (mucosa atlas build)")
        k = k or (self.calibration.k if self.calibration else UNFAMILIAR_K)
        queries = checked_embeddings(query_textures, self.textures.vectors.shape[1], "texture vectors")
        own = self.patient_rows(exclude_patient)
        left_out = np.flatnonzero(np.isin(self.textures.rows, own)) if len(own) else own
        distances, _ = self._texture_index.search(queries, k, left_out)
        return np.minimum(distances[:, k - 1], FARTHEST).astype(np.float64) if len(distances) else np.zeros(0)

    def calibrate(self, val_embeddings, val_patients, quantile: float = FRAME_QUANTILE,
                  k: int = UNFAMILIAR_K, case_quantile: float = CASE_QUANTILE) -> Calibration:
        """Set (and return) the unfamiliarity thresholds (:func:`atlas_calibration.calibrate`), saved with the
        atlas."""
        self.calibration = atlas_calibration.calibrate(self, val_embeddings, val_patients, quantile, k,
                                                       case_quantile)
        return self.calibration

    def case_medians(self, k: int = UNFAMILIAR_K) -> tuple[np.ndarray, np.ndarray | None]:
        """Each atlas case's medians as a query case would get them (:func:`atlas_calibration.case_medians`)."""
        return atlas_calibration.case_medians(self, k)

    def case_scores(self, k: int = UNFAMILIAR_K) -> np.ndarray:
        """Each atlas case's score by the case rule (:meth:`case_medians`, joined by the calibration's scales
        when the atlas has a texture view and a calibration; NaN for a case without a texture)."""
        medians, texture_medians = self.case_medians(k)
        scales = None if self.calibration is None else self.calibration.scales
        if texture_medians is None or scales is None:
            return medians
        return verdict.joined(medians, texture_medians, scales)

    def unfamiliar(self, query_embeddings, exclude_patient: Patients = None) -> Familiarity:
        """Each query frame's score and, when the atlas is calibrated, whether it is unfamiliar (score above
        the threshold); ``flags`` is None when it cannot tell."""
        scores = self.scores(query_embeddings, exclude_patient=exclude_patient)
        if self.calibration is None:
            return Familiarity(scores, None, None)
        calibration = self.calibration
        return Familiarity(scores, scores > calibration.threshold, calibration.threshold, calibration.case_threshold)

    # --- files ----------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the atlas as a folder (:mod:`mucosa.inference.atlas_store`), replacing an earlier one whole."""
        description = {"model": self.model.to_dict(), "frames": len(self), "index": self.index.describe(),
                       "calibration": None if self.calibration is None else self.calibration.to_dict(),
                       "built_from": self.origin}
        if self.textures is not None:
            description["texture_view"] = texture_view.description()
        index = self.index.to_bytes() if self.index.kind == HNSW else None
        textures = None if self.textures is None else (self.textures.rows, self.textures.vectors)
        return atlas_store.write(folder, description, self.embeddings, self.thumbnails, self.records.columns(),
                                 index, textures)


def refuse_other_model(folder: str | Path, model: AtlasModel, weights_sha256: str | None) -> None:
    """Refuse (AtlasFileError naming ``folder``) an atlas of ``model`` for other weights than ``weights_sha256``
    (None: any)."""
    if weights_sha256 is not None and weights_sha256 != model.weights_sha256:
        raise AtlasFileError(f"{folder}: an atlas of another model (weights {model.weights_sha256[:12]}…, this "
                             f"checkpoint's {weights_sha256[:12]}…); build an atlas for this checkpoint")


def _texture_view(folder: Path, files: atlas_store.AtlasFiles) -> TextureView | None:
    """The atlas's texture view, checked to be made as this mucosa makes it (AtlasFileError naming the file)."""
    made = files.description.get("texture_view")
    if files.textures is None:
        if made is not None:
            raise AtlasFileError(f"{folder / atlas_store.MANIFEST}: describes a texture view, but has no "
                                 f"{atlas_store.TEXTURES}")
        return None
    if made != texture_view.description():
        raise AtlasFileError(f"{folder / atlas_store.MANIFEST}: its texture view was made otherwise than this mucosa "
                             "makes one; build the atlas again (mucosa atlas build)")
    try:
        view = TextureView(*files.textures)
        checked_embeddings(view.vectors, texture_view.TEXTURE_WIDTH, "texture vectors")
    except AtlasError as error:
        raise AtlasFileError(f"{folder / atlas_store.TEXTURES}: {error}") from None
    return view


def load(folder: str | Path, weights_sha256: str | None = None) -> Atlas:
    """An atlas from its folder, every file checked (see :mod:`mucosa.inference.atlas_store`).

    Args:
        weights_sha256: when given, the atlas must belong to the model with these weights.

    Raises:
        AtlasFileError: one line naming the file: missing, damaged, changed, another format or a version
            this mucosa does not know, counts that disagree, non-finite embeddings, or another model.
    """
    folder = Path(folder)
    files = atlas_store.read(folder)
    manifest = folder / atlas_store.MANIFEST
    try:
        model = AtlasModel.from_dict(files.description.get("model"))
        calibration = Calibration.from_dict(files.description.get("calibration"))
    except AtlasError as error:
        raise AtlasFileError(f"{manifest}: {error}") from None
    refuse_other_model(folder, model, weights_sha256)
    count = files.description.get("frames")
    for name, array in ((atlas_store.EMBEDDINGS, files.embeddings), (atlas_store.THUMBNAILS, files.thumbnails),
                        (atlas_store.FRAMES, files.columns["frame"])):
        if len(array) != count:
            raise AtlasFileError(f"{folder / name}: {len(array)} frames, but {atlas_store.MANIFEST} says {count!r}")
    try:
        embeddings = checked_embeddings(files.embeddings, model.embedding_size, str(folder / atlas_store.EMBEDDINGS))
    except AtlasError as error:
        raise AtlasFileError(str(error)) from None
    records = FrameRecords.of(*(files.columns[name] for name in atlas_store.COLUMNS))
    index = None
    if files.index is not None:
        try:
            index = VectorIndex.from_bytes(files.index, len(embeddings), model.embedding_size)
        except IndexFileError as error:
            raise AtlasFileError(f"{folder / atlas_store.INDEX}: {error}") from None
    try:
        origin = files.description.get("built_from")
        textures = _texture_view(folder, files)
        if calibration is not None and (textures is None) != (calibration.scales is None):
            raise AtlasError("the texture view and the calibration's scales disagree")
        return Atlas(model, embeddings, records, files.thumbnails, calibration, index,
                     origin if isinstance(origin, dict) else None, textures)
    except AtlasFileError:
        raise  # it names its file already
    except AtlasError as error:
        raise AtlasFileError(f"{folder}: {error}") from None
