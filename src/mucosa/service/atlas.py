"""The engine's atlas: the confirmed cases a case is compared with (part of the engine's door to mucosa).

:func:`atlas_beside` opens the atlas that ``mucosa train`` wrote beside the checkpoint (``atlas_build``); without
one, :data:`NO_ATLAS` is what the model card and the viewer say. :class:`CaseFamiliarity` follows one case frame
by frame: each used frame's unfamiliarity score and flag (``Atlas.unfamiliar``), the frames' embeddings, kept in
the case's own folder as ``embeddings.npy`` (with ``embedded_frames.npy``, their frame numbers) so that whatever
stores cases can keep them, and, once the case is read, the atlas's vote. :func:`similar_cases` answers
``GET /v1/cases/{id}/similar`` from those files (``similar.consult`` and ``similar.similar_entry``, which the
commands use too), each closest frame's thumbnail as a PNG data URL.

The case's own patients are left out of the search, the vote and the unfamiliarity scores, frame by frame and in
its similar cases alike (``inference.leave_out``, the rule of every entry point): the atlas's patients of its files
(when they are atlas cases: the same SHA-256, which the atlas's case ids carry) and the patient its exam names.
"""

from __future__ import annotations

import base64
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from mucosa.errors import MucosaError
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import Atlas, AtlasError
from mucosa.inference.atlas_build import find_atlas, open_atlas
from mucosa.inference.leave_out import own_patients
from mucosa.inference.similar import SIMILAR_CASES, consult, similar_entry
from mucosa.service.framestore import encode
from mucosa.service.presentation import is_unfamiliar

__all__ = ["EMBEDDINGS", "FRAME_NUMBERS", "MAX_SIMILAR", "NO_ATLAS", "SIMILAR_CASES", "CaseFamiliarity", "NotReady",
           "atlas_beside", "atlas_card", "similar_cases", "unfamiliar_note"]

log = logging.getLogger(__name__)

NO_ATLAS = "no atlas: mucosa cannot tell whether this recording is unlike its training data"
NOT_CALIBRATED = ("recordings unlike the training data are not detected: the atlas of confirmed cases was built "
                  "with too few validation frames or patients to set its threshold (it still shows similar cases)")
EMBEDDINGS, FRAME_NUMBERS = "embeddings.npy", "embedded_frames.npy"
MAX_SIMILAR = 20  # most similar cases a request may ask for


class NotReady(MucosaError):
    """The case cannot be compared yet, or at all (HTTP 409): still running, no usable frame, no atlas."""


def atlas_beside(checkpoint: Path, weights_sha256: str | None) -> tuple[Atlas | None, str | None]:
    """The atlas beside ``checkpoint`` and None, or None and why there is none, or an atlas that is not calibrated
    and why it cannot tell unfamiliar frames (the sentence for the model card, logged once).

    Raises:
        AtlasError: an atlas is beside it but cannot be used (damaged, of another model, made otherwise): the
            service refuses to start, as ``predict`` and ``stream`` refuse, rather than judge without it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the service says it in its card, and logs it once here
        folder = find_atlas(checkpoint)
        if folder is None:
            log.warning("%s", NO_ATLAS)
            return None, NO_ATLAS
        try:
            atlas = open_atlas(folder, weights_sha256)
        except (AtlasError, MucosaError) as error:  # as predict and stream: a damaged atlas is refused, not skipped
            raise AtlasError(f"{str(error).splitlines()[0]} (move the folder away to serve without an atlas)") from None
    if atlas.calibration is None:
        log.warning("%s", NOT_CALIBRATED)
        return atlas, NOT_CALIBRATED
    return atlas, None


def atlas_card(atlas: Atlas | None, note: str | None) -> dict | None:
    """The model card's ``atlas``: its size and unfamiliarity threshold (None without an atlas)."""
    if atlas is None:
        return None
    calibration = atlas.calibration
    return {"frames": len(atlas), "cases": len(set(atlas.records.cases.tolist())),
            "patients": len(set(atlas.records.patients.tolist())),
            "unfamiliar_threshold": None if calibration is None else calibration.threshold,
            "calibrated": calibration is not None, "note": note}


class CaseFamiliarity:
    """One case, frame by frame, against the atlas (see the module docstring); ``folder`` keeps its embeddings,
    ``patient`` is the one its exam names (None: not named)."""

    def __init__(self, atlas: Atlas, sources: list[Path], folder: Path | None, patient: str | None = None) -> None:
        self.atlas, self.folder = atlas, folder
        self.patient = own_patients(atlas, sources, [patient])  # the case's own patients, left out
        self.vectors: list[np.ndarray] = []
        self.numbers: list[int] = []

    def add(self, number: int, vector: np.ndarray) -> tuple[bool | None, float]:
        """A used frame's embedding: whether it is unfamiliar (None: the atlas cannot tell) and its score."""
        self.vectors.append(np.asarray(vector, np.float32))
        self.numbers.append(int(number))
        found = self.atlas.unfamiliar(np.asarray(vector, np.float32)[None], self.patient)
        return (None if found.flags is None else bool(found.flags[0])), round(float(found.scores[0]), 6)

    def vote(self) -> dict | None:
        """The atlas's vote over the case's used frames: ``{label, share}`` (None without a frame or a voter)."""
        if not self.vectors:
            return None
        try:
            vote = self.atlas.vote(np.stack(self.vectors), self.patient)
        except AtlasError:  # no atlas frame of another patient, or those all of one class
            return None
        return {"label": vote.label, "share": round(float(np.max(vote.shares)), 4)}

    def save(self) -> None:
        """Write the embeddings and their frame numbers into the case's folder (each file atomically)."""
        if self.folder is None:
            return
        width = self.atlas.model.embedding_size
        vectors = np.stack(self.vectors) if self.vectors else np.zeros((0, width), np.float32)
        for name, array in ((EMBEDDINGS, vectors), (FRAME_NUMBERS, np.asarray(self.numbers, np.int64))):
            partial = self.folder / f".{name}.partial"
            with open(partial, "wb") as handle:
                np.save(handle, array)
            os.replace(partial, self.folder / name)


def _data_url(thumbnail: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode(np.asarray(thumbnail, np.uint8))).decode("ascii")


def similar_cases(atlas: Atlas | None, folder: Path, sources: list[Path], k: int, patient: str | None = None) -> dict:
    """The ``k`` confirmed cases most like a finished case (its embeddings in ``folder``): ``atlas_vote``
    (shares by class), ``similar`` (``similar.similar_entry``'s list: rank, case, patient, label, distance, closest
    frames, each with ``thumbnail`` as a PNG data URL and ``query_frame`` as the case's frame number). Never of
    the case's own patients (``leave_out``): the atlas's patients of its files, nor ``patient`` (its exam field).

    Raises:
        NotReady: no atlas, or no usable frame kept.
    """
    if atlas is None:
        raise NotReady(NO_ATLAS)
    path = folder / EMBEDDINGS
    if not path.is_file():
        raise NotReady("the case has no frame embeddings (it is not finished, or failed)")
    vectors, numbers = np.load(path), np.load(folder / FRAME_NUMBERS)
    if not len(vectors):
        raise NotReady("the case has no usable frame to compare")
    view = consult(atlas, vectors, own_patients(atlas, sources, [patient]), k)
    entry = similar_entry(view, None, "")
    for case, found in zip(entry["similar"], view.similar):
        for frame, match in zip(case["closest"], found.closest):
            frame["thumbnail"] = _data_url(match.thumbnail)
            frame["query_frame"] = int(numbers[match.query_frame])
    return entry


def unfamiliar_note(verdict: dict | None) -> dict:
    """The similar cases' ``unfamiliar`` and ``reason`` for a case's ``verdict``: whether it is ``unfamiliar``
    (None: the atlas cannot tell), and then why (``verdict.unfamiliar_reason``) and what its vote and cases are
    (``verdict.NEAREST_NOTE``: no second opinion, the nearest, not similar); ``reason`` None for any other
    verdict."""
    if not is_unfamiliar(verdict):
        return {"unfamiliar": None if not verdict or verdict.get("unfamiliar") is None else False, "reason": None}
    why = verdicts.unfamiliar_reason(verdict.get("unfamiliar"), verdict.get("unfamiliarity_ratio"))
    return {"unfamiliar": True, "reason": f"{why} {verdicts.NEAREST_NOTE}"}
