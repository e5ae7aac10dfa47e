"""How an atlas calibrates its unfamiliarity thresholds, on in-domain data only.

- A frame's threshold: the :data:`FRAME_QUANTILE` (97.5%) of validation frames' scores (each frame's own
  patient left out of the atlas). It aims at 2.5% of validation frames flagged, below the goal of 5% of a new
  patient's frames, because the validation frames chose the checkpoint: a new patient's frames lie a little
  further from the atlas than they do (at their 95th percentile, 4.6–6.0% of held-out frames were flagged on
  the real data; docs/results.md).
- A case's threshold: the :data:`CASE_QUANTILE` (95%) of the atlas's own cases' scores, each case scored as a
  query of it would be (:func:`case_medians`: its patient left out, 64 evenly spaced frames, and the texture
  frames a query would texture). With a texture view, each view's median is divided by that view's own edge
  (the same quantile of the atlas's cases in that view) before the two are averaged (``verdict.joined``).

``Atlas.calibrate`` and ``Atlas.case_medians`` call these with the atlas (an ``inference.atlas.Atlas``; not
imported here, which would make a circle).

Example:
    >>> case_edge(np.arange(1.0, 17.0), CASE_QUANTILE)  # with 20 cases or fewer, the 95th percentile is the largest
    16.0
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from mucosa.inference import texture_view, verdict
from mucosa.inference.atlas_store import AtlasError, Calibration, CalibrationError, checked_embeddings

__all__ = ["CASE_CALIBRATION_FRAMES", "CASE_QUANTILE", "FARTHEST", "FRAME_QUANTILE", "MIN_CALIBRATION_FRAMES",
           "UNFAMILIAR_K", "calibrate", "case_edge", "case_medians", "left_out_scores"]

log = logging.getLogger(__name__)

UNFAMILIAR_K = 10  # the unfamiliarity score is the distance to this nearest atlas frame (Sun et al.)
FRAME_QUANTILE = 0.975  # share of validation frames below the frame threshold (aiming under the 5% goal)
CASE_QUANTILE = 0.95  # share of the atlas's cases at or below the case threshold, and each view's scale
MIN_CALIBRATION_FRAMES = 20  # fewer cannot place a threshold (with 20-39, the 97.5% one lies between the largest two)
CASE_CALIBRATION_FRAMES = 64  # frames of each atlas case (evenly spaced) whose median scores the case
FARTHEST = 2.0  # the cosine distance of a missing neighbour (fewer than k atlas frames of other patients)
_ALIKE = 1e-6  # a view's scale at or below this (float32 rounding of a cosine distance): its cases are alike


def calibrate(atlas, val_embeddings, val_patients, quantile: float = FRAME_QUANTILE, k: int = UNFAMILIAR_K,
              case_quantile: float = CASE_QUANTILE) -> Calibration:
    """The unfamiliarity thresholds of ``atlas``: a frame's, the ``quantile`` of in-domain validation
    frames' scores, each frame's own patient left out of the atlas, so that about ``1 - quantile`` of such
    frames are flagged; and a case's, the ``case_quantile`` of the atlas's own cases' scores
    (``Atlas.case_scores``; the smallest of them at or above it: their largest with 20 cases or fewer at 0.95).
    With a texture view, a case's score joins its two medians, each over that view's own case threshold,
    the same ``case_quantile`` of the atlas's cases' medians in that view (``Calibration.scales``): each view
    then counts in units of its own in-domain edge, so that a view whose in-domain scores spread far (the
    EGC-Z embedding) cannot drown what the other sees. ``Atlas.calibrate`` keeps it, and it is saved with the
    atlas.

    An atlas case without a texture cannot be scored as a query of it would be (a query's case rule needs
    texture scores), so it sets neither the texture view's scale nor the case threshold (``cases`` counts
    those that do); one such case, scored as farthest, would otherwise set the scale of a small atlas alone.

    Raises:
        AtlasError: a quantile not strictly between 0 and 1, not one patient a frame, or a texture view
            without a texture of any case.
        CalibrationError: the data cannot set a threshold that means anything: fewer than
            :data:`MIN_CALIBRATION_FRAMES` frames; a threshold at :data:`FARTHEST`, where too few frames of
            other patients are left to compare with (an atlas of one patient, whose thresholds would let nothing
            be unfamiliar); or a view whose cases are alike to the last digit (whose scale would make anything
            unfamiliar).
    """
    for value in (quantile, case_quantile):
        if not 0.0 < float(value) < 1.0:
            raise AtlasError(f"calibration quantile {value!r} must be between 0 and 1 (e.g. 0.95)")
    scores, patients = _frame_scores(atlas, val_embeddings, val_patients, k)
    threshold = float(np.quantile(scores, quantile))
    _check_compared(threshold, "validation frames", k, atlas)
    case_threshold, cases, scales = _case_rule(atlas, k, case_quantile)
    calibration = Calibration(int(k), threshold, float(quantile), len(scores), patients,
                              float(np.mean(scores > threshold)), len(atlas), case_threshold, cases,
                              embedding_scale=None if scales is None else scales[0],
                              texture_scale=None if scales is None else scales[1],
                              case_quantile=float(case_quantile))
    log.info("atlas calibrated: threshold %.4f (%d validation frames, %.1f%% flagged), case threshold %.4f "
             "(%d atlas cases%s)", threshold, len(scores), 100 * calibration.flagged_share, case_threshold,
             cases, ", with the texture view" if scales else "")
    return calibration


def _frame_scores(atlas, val_embeddings, val_patients, k: int) -> tuple[np.ndarray, int]:
    """The validation frames' scores, each frame's own patient left out of the atlas, and their patients."""
    embeddings = checked_embeddings(val_embeddings, atlas.model.embedding_size, "validation embeddings")
    patients = np.array([str(p) for p in val_patients], dtype=object)
    if len(patients) != len(embeddings):
        raise AtlasError(f"{len(embeddings)} validation embeddings but {len(patients)} patients: one a frame")
    if len(embeddings) < MIN_CALIBRATION_FRAMES:
        raise CalibrationError(f"{len(embeddings)} validation frames (rows whose split is val; at least "
                               f"{MIN_CALIBRATION_FRAMES} are needed) cannot calibrate the unfamiliarity threshold")
    return left_out_scores(atlas, embeddings, patients, k), len(set(patients.tolist()))


def left_out_scores(atlas, embeddings: np.ndarray, patients, k: int = UNFAMILIAR_K) -> np.ndarray:
    """Each frame's unfamiliarity score with its own patient's frames left out of the atlas (as a new patient's
    would be scored): the scores the frame threshold is calibrated on."""
    patients = np.asarray([str(p) for p in patients], dtype=object)
    scores = np.empty(len(embeddings))
    for patient in sorted(set(patients.tolist())):
        own = patients == patient
        scores[own] = atlas.scores(embeddings[own], k, exclude_patient=patient)
    return scores


def _case_rule(atlas, k: int, quantile: float) -> tuple[float, int, tuple[float, float] | None]:
    """The case threshold, the number of atlas cases that set it, and the views' scales (None without a
    texture view)."""
    medians, texture_medians = atlas.case_medians(k)
    scales = None
    if texture_medians is not None:
        scored = np.isfinite(texture_medians)
        if not scored.any():
            raise AtlasError("the texture view holds no texture of any atlas case: build the atlas again")
        if not scored.all():
            log.warning("%d of %d atlas cases have no texture: they do not set the case threshold",
                        int(np.sum(~scored)), len(scored))
        medians, texture_medians = medians[scored], texture_medians[scored]
        scales = (case_edge(medians, quantile), case_edge(texture_medians, quantile))
        if min(scales) <= _ALIKE:
            view = "embedding" if scales[0] <= _ALIKE else "texture"
            raise CalibrationError(f"the atlas's cases are alike to the last digit in the {view} view: it cannot "
                                   "scale the case rule (an atlas of real recordings differs)")
        cases = verdict.joined(medians, texture_medians, scales)
    else:
        cases = medians
    case_threshold = case_edge(cases, quantile)
    _check_compared(case_threshold if scales is None else max(scales), "atlas cases", k, atlas)
    return case_threshold, len(cases), scales


def _check_compared(threshold: float, what: str, k: int, atlas) -> None:
    """Refuse a threshold set by missing neighbours: most of ``what`` found fewer than ``k`` frames of other
    patients in the atlas, so the threshold is the farthest distance and nothing could pass it."""
    if threshold >= FARTHEST:
        lacks = ("an atlas needs frames of at least two patients" if len(set(atlas.records.patients.tolist())) < 2
                 else "it needs more frames of more patients")
        raise CalibrationError(f"the atlas holds too few frames of other patients to compare its {what} with, each "
                               f"with {k} frames of patients other than its own ({lacks})")


def case_medians(atlas, k: int = UNFAMILIAR_K) -> tuple[np.ndarray, np.ndarray | None]:
    """Each atlas case (sorted by name) as a query case would get it, its own patient left out of the atlas:
    the median of its frames' scores (up to :data:`CASE_CALIBRATION_FRAMES` of them, evenly spaced), and
    with a texture view the median of its texture frames' texture scores (else None; NaN for a case without
    a texture): of the frames a query of its file would texture (``texture_view.textured``) when the view
    holds every frame of the case (a still's tiles, a short recording), else of all it holds."""
    rows: dict[str, list[int]] = defaultdict(list)
    for row, case in enumerate(atlas.records.cases.tolist()):
        rows[case].append(row)
    texture_rows: dict[str, list[int]] = defaultdict(list)
    if atlas.textures is not None:
        for position, row in enumerate(atlas.textures.rows.tolist()):
            texture_rows[atlas.records.cases[row]].append(position)
    medians, texture_medians = [], []
    for case in sorted(rows):
        found = np.asarray(rows[case])
        chosen = found[np.unique(np.linspace(0, len(found) - 1, CASE_CALIBRATION_FRAMES).round().astype(int))]
        patient = str(atlas.records.patients[chosen[0]])
        medians.append(float(np.median(atlas.scores(atlas.embeddings[chosen], k, exclude_patient=patient))))
        if atlas.textures is not None:
            positions = texture_rows[case]
            vectors = atlas.textures.vectors[_as_queried(atlas, positions) if len(positions) == len(found)
                                             else positions]
            scored = atlas.texture_scores(vectors, k, exclude_patient=patient) if len(vectors) else [np.nan]
            texture_medians.append(float(np.median(scored)))
    return np.asarray(medians), (np.asarray(texture_medians) if atlas.textures is not None else None)


def _as_queried(atlas, positions: list[int]) -> list[int]:
    """Of texture-view positions that hold every frame of one case, those a query of its files textures: each
    file's first frame, then every ``TEXTURE_STRIDE``-th (``texture_view.textured``), in frame order."""
    rows = atlas.textures.rows
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for position in sorted(positions, key=lambda p: (atlas.records.files[rows[p]], atlas.records.frames[rows[p]])):
        file = str(atlas.records.files[rows[position]])
        if texture_view.textured(seen[file]):
            kept.append(position)
        seen[file] += 1
    return kept


def case_edge(scores, quantile: float) -> float:
    """The ``quantile`` of in-domain case scores (those that are finite), the smallest of them at or above it
    (their largest with 20 or fewer at 0.95), kept above 0: a case threshold, or a view's scale."""
    scores = np.asarray(scores, np.float64)
    return max(float(np.quantile(scores[np.isfinite(scores)], quantile, method="higher")), 1e-9)
