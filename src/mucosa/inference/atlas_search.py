"""``mucosa atlas search``: the confirmed cases of an atlas most like each recording given.

Each case given (a file named alone, the images of a folder, a manifest's patient: as ``mucosa predict``
groups them, ``batch.collect_sources``) is prepared as for training, its used frames embedded by the
atlas's checkpoint (as ``predict`` runs it), and the atlas asked once (``similar.consult``): the ``k`` most
similar cases with their closest frames, the atlas's nearest-neighbour vote and the share of unfamiliar
frames. A case's own patients are never returned nor counted (``leave_out``): the atlas's patients of its
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
from mucosa.inference.atlas_build import atlas_checkpoint
from mucosa.inference.batch import Source, collect_sources, prepared_frames
from mucosa.inference.leave_out import own_patients_by_case
from mucosa.inference.runtime import for_checkpoint
from mucosa.inference.similar import SIMILAR_CASES, AtlasView, consult, similar_entry, similar_json, vote_cells
from mucosa.models.checkpoint import load_checkpoint
from mucosa.tables import safe_row

__all__ = ["OUTPUTS", "CaseSearch", "SearchResult", "format_search", "search_atlas", "write_search"]

OUTPUTS = ("similar.csv", "similar.json", "similar")


@dataclass
class CaseSearch:
    """One case searched: its name, frames read and used, and what the atlas says."""

    case: str
    frames: int
    used: int
    view: AtlasView

    @property
    def unfamiliar_share(self) -> float | None:
        return verdicts.unfamiliar_share(self.view.flags)


@dataclass
class SearchResult:
    atlas: Atlas
    folder: Path
    cases: list[CaseSearch]


def _embedded(predictor, sources: list[Source], cache: FrameCache | None) -> tuple[np.ndarray, int]:
    """The used frames' embeddings of a case's sources, and the count of frames read."""
    vectors, frames = [], 0
    for source in sources:
        try:
            prepared = prepared_frames(source, predictor.preprocessing, cache)
        except OSError as error:
            raise UnreadableFileError(f"{source.path}: cannot read ({error.strerror or error})") from None
        keep = prepared.keep(predictor.preprocessing.quality_threshold)
        frames += len(prepared.indices)
        if len(keep):
            vectors.append(predictor.predict_and_embed(np.asarray(prepared.frames[keep]))[1])
    width = predictor.embedding_size
    return (np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)), frames


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
    predictor = for_checkpoint(loaded, runtime, device=device)
    cases: dict[str, list[Source]] = {}
    for source in sources:
        cases.setdefault(source.case, []).append(source)
    own = own_patients_by_case(atlas, [(s.case, s.path, s.patient) for s in sources], cache)
    found = []
    for case, members in cases.items():
        embeddings, frames = _embedded(predictor, members, cache)
        view = consult(atlas, embeddings, own[case], k)
        found.append(CaseSearch(case, frames, len(embeddings), view))
    return SearchResult(atlas, folder, found)


def format_search(result: SearchResult) -> str:
    """Per case: the atlas's vote, the unfamiliar share, and each similar case on a line."""
    lines = []
    for case in result.cases:
        share = case.unfamiliar_share
        vote = vote_cells(case.view.vote)
        lines.append(f"{case.case}: {case.used} of {case.frames} frames used"
                     + (f"; atlas vote {vote[0]} {float(vote[1]):.2f}" if vote[0] else "")
                     + ("" if share is None else f"; {share:.0%} unfamiliar"))
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
                                      "query_frames", "closest_frames", "atlas_vote", "atlas_vote_share",
                                      "unfamiliar_share"]))
            for number, case in enumerate(result.cases, start=1):
                share = case.unfamiliar_share
                entry = similar_entry(case.view, thumbnails, str(number), staged.staging)
                entries.append({"case": case.case, "frames": case.frames, "used": case.used,
                                "unfamiliar_share": share, **entry})
                for rank, similar in enumerate(case.view.similar, start=1):
                    closest = " ".join(f"{m.file}:{m.frame}" for m in similar.closest)
                    writer.writerow(safe_row([case.case, rank, similar.case, similar.patient, similar.label,
                                              f"{similar.distance:.6f}", similar.matched, similar.query_frames,
                                              closest, *vote_cells(case.view.vote),
                                              "" if share is None else f"{share:.4f}"]))
        staged.path("similar.json").write_text(similar_json(result.atlas, entries), encoding="utf-8")
    return out
