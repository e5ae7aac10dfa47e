"""``mucosa atlas search``: the confirmed cases of an atlas most like each recording given.

Each case given (a file named alone, the images of a folder, a manifest's patient: as ``mucosa predict``
groups them, ``sources.collect_sources``) is prepared as for training, its used frames embedded by the
atlas's checkpoint (as ``predict`` runs it), and the atlas asked once (``similar.consult``): the ``k`` most
similar cases with their closest frames, the atlas's nearest-neighbour vote and the share of unfamiliar
frames. A case that is unfamiliar as a whole (``verdict.unfamiliar_case``, the one rule, with the texture view
when the atlas has one) has no similar cases and no second opinion: its cases are printed as the nearest, not
similar, its vote as its nearest atlas frames', and ``similar.csv`` gives that vote as ``nearest_atlas_frames``
(``atlas_vote`` empty), as ``predict``'s tables do.
A case's own patients are never returned nor counted (``leave_out``): the atlas's patients of its
files, when they are atlas cases, and the patient a manifest names.

:func:`write_search` writes ``similar.csv`` (one row per similar case), ``similar.json`` (as
``predict``'s) and the closest frames' thumbnails (``similar/*.png``) as one set.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa import atomic
from mucosa.data.cache import FrameCache
from mucosa.errors import UnreadableFileError
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import Atlas, load, refuse_other_model
from mucosa.inference.atlas_build import atlas_checkpoint, say_if_uncalibrated
from mucosa.inference.leave_out import own_patients_by_case
from mucosa.inference.runtime import for_checkpoint
from mucosa.inference.similar import (
    SIMILAR_CASES,
    VOTE_COLUMNS,
    AtlasView,
    consult,
    similar_entry,
    similar_json,
    vote_cells,
)
from mucosa.inference.sources import Source, collect_sources, prepared_frames
from mucosa.inference.texture_view import query_textures
from mucosa.models.checkpoint import load_checkpoint
from mucosa.tables import safe_row

__all__ = ["OUTPUTS", "CaseSearch", "SearchResult", "format_search", "search_atlas", "write_search"]

OUTPUTS = ("similar.csv", "similar.json", "similar")


@dataclass
class CaseSearch:
    """One case searched: its name, frames read and used, what the atlas says, and (``unfamiliar``; None: the
    atlas cannot tell) whether it is unfamiliar as a whole, with its unfamiliarity over the case threshold."""

    case: str
    frames: int
    used: int
    view: AtlasView
    unfamiliar: bool | None = None
    ratio: float | None = None

    @property
    def unfamiliar_share(self) -> float | None:
        return verdicts.unfamiliar_share(self.view.flags)


@dataclass
class SearchResult:
    atlas: Atlas
    folder: Path
    cases: list[CaseSearch]


def _embedded(predictor, sources: list[Source], cache: FrameCache | None,
              texture: bool) -> tuple[np.ndarray, int, np.ndarray | None]:
    """The used frames' embeddings of a case's sources, the count of frames read and (``texture``) the texture
    vectors of some used frames (``texture_view.query_textures``)."""
    vectors, frames, textures = [], 0, []
    for source in sources:
        try:
            prepared = prepared_frames(source, predictor.preprocessing, cache)
        except OSError as error:
            raise UnreadableFileError(f"{source.path}: cannot read ({error.strerror or error})") from None
        keep = prepared.keep(predictor.preprocessing.quality_threshold)
        frames += len(prepared.indices)
        if len(keep):
            vectors.append(predictor.predict_and_embed(np.asarray(prepared.frames[keep]))[1])
            found = None if not texture else query_textures(source.path.resolve(), predictor.preprocessing,
                                                            np.asarray(prepared.indices)[keep], source.frames)
            textures += [] if found is None else [found]
    width = predictor.embedding_size
    return ((np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)), frames,
            np.concatenate(textures) if textures else None)


def _judged(atlas: Atlas, case: str, frames: int, used: int, view: AtlasView) -> CaseSearch:
    """A case searched, judged by the case rule (``verdict.unfamiliar_case``) when the atlas is calibrated."""
    calibration = atlas.calibration
    if calibration is None or view.flags is None:
        return CaseSearch(case, frames, used, view)
    rule = (view.scores, calibration.case_threshold, view.texture_scores, calibration.scales)
    return CaseSearch(case, frames, used, view, verdicts.unfamiliar_case(*rule), verdicts.unfamiliarity_ratio(*rule))


def search_atlas(folder: str | Path, paths: list[str | Path], k: int = SIMILAR_CASES,
                 checkpoint: str | Path | None = None, cache: FrameCache | None = None, runtime: str = "auto",
                 device: str = "auto") -> SearchResult:
    """Search the atlas in ``folder`` for each case of ``paths`` (images, videos, folders, manifests), with
    ``checkpoint`` (default: the one the atlas was built for, beside it).

    Raises:
        AtlasFileError: the atlas cannot be read, or belongs to another model. UnreadableFileError,
        MucosaError: a path that cannot be read. CheckpointFileError: a bad checkpoint.
    """
    folder = Path(folder)
    atlas = load(folder)
    sources = collect_sources(paths)
    loaded = load_checkpoint(atlas_checkpoint(folder, atlas, checkpoint))
    refuse_other_model(folder, atlas.model, loaded.weights_sha256)
    say_if_uncalibrated(folder, atlas)
    predictor = for_checkpoint(loaded, runtime, device=device)
    cases: dict[str, list[Source]] = {}
    for source in sources:
        cases.setdefault(source.case, []).append(source)
    own = own_patients_by_case(atlas, [(s.case, s.path, s.patient) for s in sources], cache)
    found = []
    for case, members in cases.items():
        embeddings, frames, textures = _embedded(predictor, members, cache, atlas.judges_texture)
        view = consult(atlas, embeddings, own[case], k, textures=textures)
        found.append(_judged(atlas, case, frames, len(embeddings), view))
    return SearchResult(atlas, folder, found)


def format_search(result: SearchResult) -> str:
    """Per case: the atlas's vote, the unfamiliar share, and each similar case on a line. A case unfamiliar as a
    whole says so and why (``verdict.unfamiliar_reason``), its vote is its nearest atlas frames', no second
    opinion, and its cases are the nearest, not similar."""
    lines = []
    for case in result.cases:
        share = case.unfamiliar_share
        vote = vote_cells(case.view.vote)
        said = f"; {verdicts.NO_SECOND_OPINION}: " if case.unfamiliar else "; atlas vote "
        lines.append(f"{case.case}: {case.used} of {case.frames} frames used"
                     + (f"{said}{vote[0]} {float(vote[1]):.2f}" if vote[0] else "")
                     + ("" if share is None else f"; {verdicts.percent(share)} unfamiliar"))
        if case.unfamiliar:
            lines.append(f"  {verdicts.UNFAMILIAR}: {verdicts.unfamiliar_reason(share, case.ratio)}")
            lines += [f"  {verdicts.NOT_SIMILAR}:"] if case.view.similar else []
        if not case.view.similar:
            lines.append("  no similar case (no frame passed the quality gate)")
        for rank, similar in enumerate(case.view.similar, start=1):
            closest = ", ".join(f"{m.file} frame {m.frame} ({m.distance:.3f})" for m in similar.closest)
            lines.append(f"  {rank}. {similar.label}: {similar.case}, patient {similar.patient}, distance "
                         f"{similar.distance:.4f}, {similar.matched} of {similar.query_frames} frames matched; "
                         f"closest: {closest}")
    return "\n".join(lines)


def write_search(result: SearchResult, out: str | Path) -> Path:
    """Write ``similar.csv``, ``similar.json`` and ``similar/*.png`` into ``out`` as one set."""
    out = Path(out)
    with atomic.OutputSet(out, OUTPUTS) as staged:
        entries, thumbnails = [], staged.staging / "similar"
        thumbnails.mkdir()
        with open(staged.path("similar.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(safe_row(["query", "rank", "case", "patient", "label", "distance", "matched_frames",
                                      "query_frames", "closest_frames", *VOTE_COLUMNS[:2], "unfamiliar_share",
                                      *VOTE_COLUMNS[2:]]))
            for number, case in enumerate(result.cases, start=1):
                share = case.unfamiliar_share
                entry = similar_entry(case.view, thumbnails, str(number), staged.staging)
                reason = verdicts.unfamiliar_reason(share, case.ratio) if case.unfamiliar else None
                entries.append({"case": case.case, "frames": case.frames, "used": case.used,
                                "unfamiliar_share": share, "unfamiliar": case.unfamiliar, "reason": reason, **entry})
                votes = vote_cells(case.view.vote, bool(case.unfamiliar))
                for rank, similar in enumerate(case.view.similar, start=1):
                    closest = " ".join(f"{m.file}:{m.frame}" for m in similar.closest)
                    writer.writerow(safe_row([case.case, rank, similar.case, similar.patient, similar.label,
                                              f"{similar.distance:.6f}", similar.matched, similar.query_frames,
                                              closest, *votes[:2], "" if share is None else f"{share:.4f}",
                                              *votes[2:]]))
        staged.path("similar.json").write_text(similar_json(result.atlas, entries), encoding="utf-8")
    return out
