"""What the atlas says about a recording, and how the commands write it: its unfamiliar frames, the atlas's
nearest-neighbour vote (a second opinion beside the network's), and the confirmed cases that look alike.

:func:`consult` asks the atlas (:mod:`mucosa.inference.atlas`) once for a file's or a case's used frames
(their embeddings) and gives an :class:`AtlasView`. :func:`similar_entry` turns a view into plain data for
``similar.json``, writing each closest frame's thumbnail as a PNG file beside it; :func:`vote_cells` gives
the :data:`VOTE_COLUMNS` cells of a CSV row: the vote as ``atlas_vote`` and ``atlas_vote_share``, or, for a
recording whose verdict is ``unfamiliar``, as ``nearest_atlas_frames`` and ``nearest_atlas_frames_share`` (then
no second opinion), the other two left empty. ``mucosa predict``, ``mucosa atlas search``
and the Python API use them, so the three say the same.

Example:
    >>> import numpy as np
    >>> from mucosa.inference.atlas import Atlas, AtlasModel, FrameRecords
    >>> vectors = np.eye(2, dtype=np.float32).repeat(12, axis=0)  # 12 frames of case a, then 12 of case b
    >>> records = FrameRecords.of(["a"] * 12 + ["b"] * 12, ["p1"] * 12 + ["p2"] * 12,
    ...                           ["control"] * 12 + ["active"] * 12, list(range(12)) * 2,
    ...                           ["a.mp4"] * 12 + ["b.mp4"] * 12)
    >>> atlas = Atlas(AtlasModel("0" * 64, ("control", "active"), 2), vectors, records, np.zeros((24, 8, 8), np.uint8))
    >>> view = consult(atlas, np.array([[0.0, 1.0]], np.float32), k=1)
    >>> vote_cells(view.vote), [case.case for case in view.similar], view.flags is None  # not calibrated
    (['active', '1.0000', '', ''], ['b'], True)
    >>> vote_cells(view.vote, unfamiliar=True)  # the recording is unfamiliar: no second opinion
    ['', '', 'active', '1.0000']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mucosa.inference.atlas import Atlas, AtlasError, SimilarCase, Vote

__all__ = ["SIMILAR_CASES", "VOTE_COLUMNS", "AtlasView", "consult", "flags_text", "save_thumbnail", "similar_entry",
           "similar_json", "vote_cells"]

SIMILAR_CASES = 5  # similar cases shown for a case, by default
VOTE_COLUMNS = ["atlas_vote", "atlas_vote_share", "nearest_atlas_frames", "nearest_atlas_frames_share"]


@dataclass
class AtlasView:
    """What the atlas says about some frames: each frame's unfamiliarity score and flag (``flags`` None: the
    atlas is not calibrated and cannot tell), the atlas's vote (None: no frame, or no atlas frame of another
    patient, or those all of one class) and the most similar cases."""

    scores: np.ndarray
    flags: np.ndarray | None
    vote: Vote | None = None
    similar: list[SimilarCase] = field(default_factory=list)
    texture_scores: np.ndarray | None = None  # of the frames with a texture, when the atlas has a texture view


def consult(atlas: Atlas, embeddings: np.ndarray | None, exclude_patient: str | tuple[str, ...] | None = None,
            k: int = SIMILAR_CASES, similar: bool = True, textures: np.ndarray | None = None) -> AtlasView:
    """Ask the atlas about frames (their embeddings, (N, D); None for no frame), leaving ``exclude_patient``'s
    frames out (the query's own patients, ``leave_out.own_patients``): their familiarity, the vote and (with
    ``similar``) the ``k`` most similar cases; with the texture vectors of some of them (``textures``) and an
    atlas with a texture view, their texture scores."""
    embeddings = np.asarray([] if embeddings is None else embeddings, np.float32).reshape(
        -1, atlas.model.embedding_size)
    familiarity = atlas.unfamiliar(embeddings, exclude_patient)
    view = AtlasView(familiarity.scores, familiarity.flags)
    if atlas.judges_texture and textures is not None and len(textures):
        view.texture_scores = atlas.texture_scores(textures, exclude_patient=exclude_patient)
    if len(embeddings):
        try:
            view.vote = atlas.vote(embeddings, exclude_patient)
        except AtlasError:  # no atlas frame of another patient, or those all of one class: no second opinion
            view.vote = None
        if similar:
            view.similar = atlas.similar_cases(embeddings, k, exclude_patient)
    return view


def vote_cells(vote: Vote | None, unfamiliar: bool = False) -> list[str]:
    """The :data:`VOTE_COLUMNS` cells of a row: the class most of the nearest atlas frames have, and their
    share, as the atlas's vote (a second opinion), or, when the recording is ``unfamiliar``, as its nearest atlas
    frames' (no second opinion); the other pair empty, and all four without a vote."""
    cells = ["", ""] if vote is None else [vote.label, f"{float(np.max(vote.shares)):.4f}"]
    return ["", "", *cells] if unfamiliar else [*cells, "", ""]


def flags_text(flag) -> str:
    """A frame's ``unfamiliar`` cell: 1, 0, or empty where the atlas cannot tell."""
    return "" if flag is None else str(int(bool(flag)))


def save_thumbnail(path: Path, thumbnail: np.ndarray) -> Path:
    """A gray thumbnail (h, w) uint8 as a PNG file."""
    Image.fromarray(np.ascontiguousarray(thumbnail, dtype=np.uint8)).save(path, format="PNG")
    return path


def similar_entry(view: AtlasView, folder: Path | None, prefix: str, relative_to: Path | None = None) -> dict:
    """Plain data for ``similar.json``: the vote's shares and each similar case (label, patient, distance,
    frames matched, closest frames). With ``folder``, each closest frame's thumbnail is written there as
    ``{prefix}-{rank}-{n}.png`` and named in the entry (relative to ``relative_to``)."""
    vote = None if view.vote is None else {c: round(float(s), 4) for c, s in zip(view.vote.classes, view.vote.shares)}
    cases = []
    for rank, case in enumerate(view.similar, start=1):
        closest = []
        for n, match in enumerate(case.closest, start=1):
            frame = {"file": match.file, "frame": match.frame, "distance": round(match.distance, 6),
                     "query_frame": match.query_frame}
            if folder is not None:
                path = save_thumbnail(folder / f"{prefix}-{rank}-{n}.png", match.thumbnail)
                frame["thumbnail"] = (path.relative_to(relative_to) if relative_to else path).as_posix()
            closest.append(frame)
        cases.append({"rank": rank, "case": case.case, "patient": case.patient, "label": case.label,
                      "distance": round(case.distance, 6), "matched_frames": case.matched,
                      "query_frames": case.query_frames, "closest": closest})
    return {"atlas_vote": vote, "similar": cases}


def similar_json(atlas: Atlas, cases: list[dict]) -> str:
    """The text of ``similar.json``: the atlas asked (its size, checkpoint and unfamiliarity threshold) and one
    entry per case (:func:`similar_entry`, with what the command adds)."""
    calibration = atlas.calibration
    about = {"frames": len(atlas), "cases": len(set(atlas.records.cases.tolist())),
             "checkpoint": atlas.origin.get("checkpoint"),
             "unfamiliar_threshold": None if calibration is None else calibration.threshold,
             "k": None if calibration is None else calibration.k}
    return json.dumps({"atlas": about, "cases": cases}, indent=1) + "\n"
