"""Predictions for new images and videos (``mucosa predict``): per frame, per file and per case.

Inputs are image files, video files, folders (searched recursively) or a manifest CSV. Every source is
preprocessed exactly as for training and ``evaluate`` (``data.preparation.iter_frames``, or the frame cache with
the same key), with the preprocessing read from the checkpoint or the ONNX model.

The quality gate: frames scoring below the model's quality threshold are listed in ``predictions.csv``
with their quality and no probability (``used`` = 0), and count for nothing else, as in ``evaluate``,
which drops them. A case's verdict is the mean probability of its used frames against the threshold
(0.5 by default), ``evaluate``'s mean aggregation; a case with no used frame gets no verdict.

Cases are formed by ``sources.collect_sources`` (a manifest's ``patient``, a folder's sub-folder of images, each
video, each file named on the command line; a file given twice for the same case counts once in it, with a warning).

The atlas (``mucosa.inference.atlas``; ``atlas/`` beside the checkpoint, or one named): with one, every used frame
is embedded in the same pass as its probability, and ``predictions.csv`` gives its unfamiliarity score and whether
it is ``unfamiliar``; ``files.csv`` and ``cases.csv`` give each file's and case's share of unfamiliar used frames,
the verdict ``unfamiliar`` when their median score is above the atlas's case threshold
(``verdict.verdict_or_unfamiliar``, the one rule) and the atlas's nearest-neighbour vote as a second opinion
(``atlas_vote``, ``atlas_vote_share``; for an ``unfamiliar`` row these are empty and the vote is given as
``nearest_atlas_frames``, ``nearest_atlas_frames_share``: no second opinion); ``similar.json`` lists each case's
most similar confirmed cases, with their closest frames as PNG thumbnails in ``similar/``. A case's own patients are
left out of every answer of the atlas, for each of its frames (``leave_out``): the atlas's patients of its files,
when they are atlas cases, and the patient a manifest names. Without an atlas these cells are empty and one warning
says that mucosa cannot tell unfamiliar recordings.

A file that cannot be read is reported (one warning naming it) and left out of every output, and the
others are predicted; :attr:`PredictResult.unreadable` lists it (the CLI then exits with status 3). The
files are written as one set (``atomic.OutputSet``): an earlier result in the folder is replaced whole, or,
when the run fails, not at all.

A large archive can be shared out over several processes, GPUs or nodes (``predict(..., processes=...)``,
``mucosa predict --devices N --num-nodes M``; see ``distributed``): each file is scored by one process, and
rank 0 writes the same files, row for row, as one process would.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mucosa import atomic
from mucosa.data.cache import FrameCache
from mucosa.data.preparation import PreparedFrames
from mucosa.errors import ConfigError, MucosaError, MucosaWarning, UnreadableFileError
from mucosa.inference import distributed
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import Atlas
from mucosa.inference.atlas_build import file_weights, find_atlas, model_weights, open_atlas
from mucosa.inference.distributed import Processes
from mucosa.inference.leave_out import own_patients_by_case
from mucosa.inference.runtime import open_predictor
from mucosa.inference.similar import (
    VOTE_COLUMNS,
    AtlasView,
    consult,
    flags_text,
    similar_entry,
    similar_json,
    vote_cells,
)
from mucosa.inference.sources import Source, collect_sources, prepared_frames
from mucosa.inference.texture_view import query_textures
from mucosa.tables import safe_row

OUTPUTS = ("predictions.csv", "files.csv", "cases.csv", "similar.json", "similar")


@dataclass
class Summary:
    """Counts and mean probability of one file or case."""

    name: str
    case: str = ""
    files: int = 0
    frames: int = 0
    used: int = 0
    corrupt: int = 0
    scores: list = field(default_factory=list)  # probabilities of used frames
    embeddings: list = field(default_factory=list)  # their embeddings, (frames, D) arrays (with an atlas)
    textures: list = field(default_factory=list)  # texture vectors of some of them (texture_view), with an atlas
    left_out: tuple[str, ...] | None = None  # the case's own patients, left out of the atlas's answers
    atlas: AtlasView | None = None  # what the atlas says about the used frames

    @property
    def skipped(self) -> int:
        return self.frames - self.used

    def mean(self) -> np.ndarray | None:
        return verdicts.mean_score(self.scores)


@dataclass
class PredictResult:
    """What ``predict`` wrote: per-file and per-case summaries, and the output files."""

    classes: list[str]
    threshold: float
    files: list[Summary]
    cases: list[Summary]
    out: Path
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, why), left out of the outputs
    atlas: Atlas | None = None  # the atlas asked, if any

    @property
    def total(self) -> int:
        """Files given: read and unreadable."""
        return len(self.files) + len(self.unreadable)

    def verdict_and_share(self, summary: Summary) -> tuple[str, float | None]:
        """The verdict (``unfamiliar`` when the case as a whole is: ``verdict.unfamiliar_case``) and the share of
        unfamiliar used frames."""
        view = summary.atlas
        calibration = None if self.atlas is None else self.atlas.calibration
        told = view is not None and view.flags is not None and calibration is not None
        return verdicts.verdict_or_unfamiliar(summary.mean(), self.classes, None if view is None else view.flags,
                                              self.threshold, view.scores if told else None,
                                              calibration.case_threshold if told else None,
                                              view.texture_scores if told else None,
                                              calibration.scales if told else None)

    def verdict(self, summary: Summary) -> str:
        return self.verdict_and_share(summary)[0]

    def unfamiliarity(self, summary: Summary) -> float | None:
        """How unlike the atlas's cases a file or case is, over the case threshold (above 1: ``unfamiliar``)."""
        view, calibration = summary.atlas, None if self.atlas is None else self.atlas.calibration
        if view is None or calibration is None:
            return None
        return verdicts.unfamiliarity_ratio(view.scores, calibration.case_threshold, view.texture_scores,
                                            calibration.scales)

    @property
    def unfamiliar(self) -> list[Summary]:
        """The cases whose verdict is ``unfamiliar``."""
        return [case for case in self.cases if self.verdict(case) == verdicts.UNFAMILIAR]


def _probability_header(classes: list[str]) -> list[str]:
    return ["probability"] if len(classes) == 2 else [f"probability_{c}" for c in classes]


def _probability_text(p) -> list[str]:
    # 9 significant digits: float32 probabilities round-trip exactly (as in evaluate's predictions.csv)
    return [f"{float(p):.9g}"] if np.ndim(p) == 0 else [f"{float(v):.9g}" for v in p]


def _unreadable_reason(error: Exception, source: Source) -> str:
    """One line naming the file and why it cannot be read."""
    if isinstance(error, OSError):
        return f"{error.filename or source.path}: cannot read ({error.strerror or error})"
    return str(error)


def predict_sources(predictor, sources: list[Source], out: str | Path, threshold: float = 0.5,
                    cache: FrameCache | None = None, progress=None, atlas: Atlas | None = None) -> PredictResult:
    """Predict every frame of every source; write ``predictions.csv``, ``files.csv`` and ``cases.csv`` (and,
    with an atlas, ``similar.json`` and ``similar/``).

    A source that cannot be read is warned about (:class:`MucosaWarning`), listed in the result's
    ``unreadable`` and left out; the others are predicted. The files replace an earlier result in ``out``
    as one set.

    Args:
        predictor: ``pytorch.TorchPredictor`` or ``onnx.OnnxPredictor`` (see ``runtime.open_predictor``).
        sources: from :func:`collect_sources`.
        out: output folder.
        threshold: a binary case (and frame) is called positive when its probability reaches this.
        cache: reuse and fill the preprocessing cache (as ``evaluate`` does); default: prepare in memory.
        progress: called with (done, total, path) after each source.
        atlas: the model's atlas (``atlas_build.open_atlas``), to tell unfamiliar frames and find similar cases.

    Raises:
        MucosaError: no source could be read (nothing is written).
        OutputError: ``out`` cannot be written.
    """
    threshold = verdicts.check_threshold(threshold)

    def one(position: int, writer, left_out) -> Summary | str:
        source = sources[position]
        try:
            prepared = prepared_frames(source, predictor.preprocessing, cache)
        except (UnreadableFileError, OSError) as error:
            return _unreadable_reason(error, source)
        textures_from = source if atlas is not None and atlas.judges_texture else None
        return _write_file(writer, source, _score_file(predictor, prepared, atlas is not None, textures_from),
                           predictor.classes, threshold, atlas, left_out)

    return _write_outputs(out, predictor.classes, threshold, sources, one, progress, atlas, cache)


def _write_outputs(out: str | Path, classes: list[str], threshold: float, sources: list[Source], one,
                   progress=None, atlas: Atlas | None = None, cache: FrameCache | None = None) -> PredictResult:
    """Write the files as one set, in the order of ``sources``: ``one(position, writer, left_out)`` writes a
    source's rows of ``predictions.csv`` (its case's own patients, ``left_out``, left out of the atlas's answers)
    and returns its summary, or returns why it cannot be read."""
    header = _probability_header(classes)
    out = Path(out)
    result = PredictResult(classes, threshold, [], [], out, atlas=atlas)
    own = {} if atlas is None else own_patients_by_case(atlas, [(s.case, s.path, s.patient) for s in sources], cache)
    cases: dict[str, Summary] = {}
    with atomic.OutputSet(out, OUTPUTS) as staged:
        with open(staged.path("predictions.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(safe_row(["path", "case", "frame", "quality", "used", *header, "label", "unfamiliarity",
                                      "unfamiliar"]))
            for done, source in enumerate(sources, start=1):
                summary = one(done - 1, writer, own.get(source.case))
                if isinstance(summary, str):
                    warnings.warn(f"{summary}; left out", MucosaWarning, stacklevel=3)
                    result.unreadable.append((source.path, summary))
                else:
                    result.files.append(summary)
                    _add_to_case(cases.setdefault(source.case, Summary(source.case, source.case,
                                                                       left_out=summary.left_out)), summary)
                if progress is not None:
                    progress(done, len(sources), source.path)
        if not result.files:
            raise MucosaError(f"none of the {len(sources)} file(s) could be read; nothing written to {out}")
        result.cases = list(cases.values())
        _write_summaries(staged.path("files.csv"), result.files, result, "path")
        if atlas is not None:
            for case in result.cases:
                case.atlas = consult(atlas, np.concatenate(case.embeddings) if case.embeddings else None,
                                     case.left_out, textures=np.concatenate(case.textures) if case.textures else None)
            _write_similar(staged, result)
        _write_summaries(staged.path("cases.csv"), result.cases, result, "case")
    return result


def _write_similar(staged: atomic.OutputSet, result: PredictResult) -> None:
    """``similar.json``: each case's verdict, unfamiliar share, the atlas's vote and most similar cases, their
    closest frames as PNG files in ``similar/``."""
    entries, thumbnails = [], staged.staging / "similar"
    thumbnails.mkdir()
    for number, case in enumerate(result.cases, start=1):
        verdict, share = result.verdict_and_share(case)
        reason = verdicts.unfamiliar_reason(share, result.unfamiliarity(case)) if verdict == verdicts.UNFAMILIAR \
            else None  # then the atlas_vote is no second opinion, the similar cases only the nearest
        entries.append({"case": case.case, "verdict": verdict, "unfamiliar_share": share, "reason": reason,
                        **similar_entry(case.atlas, thumbnails, str(number), staged.staging)})
    staged.path("similar.json").write_text(similar_json(result.atlas, entries), encoding="utf-8")


@dataclass
class FileScores:
    """One file's frames as predicted: what ``predictions.csv`` and the summaries need (small: it travels
    between processes in ``distributed`` prediction)."""

    indices: np.ndarray  # frame numbers in the file
    quality: np.ndarray  # quality score of each frame
    keep: np.ndarray     # positions (in indices) of the frames that passed the quality gate
    probs: np.ndarray | None  # their probabilities, (len(keep),) or (len(keep), K); None when none passed
    corrupt: int
    embeddings: np.ndarray | None = None  # their embeddings (len(keep), D), when asked for
    textures: np.ndarray | None = None  # texture vectors of the textured ones (texture_view), when asked for


def _score_file(predictor, prepared: PreparedFrames, embed: bool = False, source: Source | None = None
                ) -> FileScores:
    """Run the model on the frames of one file that pass the quality gate (``embed``: and embed them, in the
    same pass, and take the texture of every ``TEXTURE_STRIDE``-th of them from ``source``, decoded again)."""
    keep = prepared.keep(predictor.preprocessing.quality_threshold)
    probs = embeddings = textures = None
    if len(keep):
        frames = np.asarray(prepared.frames[keep])
        probs, embeddings = predictor.predict_and_embed(frames) if embed else (predictor(frames), None)
        if embed and source is not None:
            textures = query_textures(source.path.resolve(), predictor.preprocessing,
                                      np.asarray(prepared.indices)[keep], source.frames)
    return FileScores(np.asarray(prepared.indices), np.asarray(prepared.quality), np.asarray(keep), probs,
                      prepared.corrupt, embeddings, textures)


def _write_file(writer, source: Source, scores: FileScores, classes: list[str], threshold: float,
                atlas: Atlas | None = None, left_out: tuple[str, ...] | None = None) -> Summary:
    """Write one file's rows of ``predictions.csv`` and return its summary (with the atlas's view of it, its
    case's own patients ``left_out``)."""
    width = len(_probability_header(classes))
    probs = scores.probs
    view = None if atlas is None else consult(atlas, scores.embeddings, left_out, similar=False,
                                              textures=scores.textures)
    by_position = {position: k for k, position in enumerate(scores.keep.tolist())}
    for position, (index, quality) in enumerate(zip(scores.indices, scores.quality)):
        k = by_position.get(position)
        if k is None:  # below the quality gate: listed, not predicted
            writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 0,
                                      *[""] * width, "", "", ""]))
            continue
        label = classes[verdicts.call(probs[k], threshold)]
        familiarity = ["", ""] if view is None else [f"{view.scores[k]:.4f}",
                                                     flags_text(None if view.flags is None else view.flags[k])]
        writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 1,
                                  *_probability_text(probs[k]), label, *familiarity]))
    embedded = [] if scores.embeddings is None else [scores.embeddings]
    textured_ = [] if scores.textures is None else [scores.textures]
    return Summary(str(source.path), source.case, 1, len(scores.indices), len(scores.keep), scores.corrupt,
                   list(probs) if probs is not None else [], embedded, textured_, left_out, view)


def _add_to_case(case: Summary, summary: Summary) -> None:
    case.files += 1
    case.frames, case.used, case.corrupt = (case.frames + summary.frames, case.used + summary.used,
                                            case.corrupt + summary.corrupt)
    case.scores += summary.scores
    case.embeddings += summary.embeddings
    case.textures += summary.textures


def _write_summaries(path: Path, rows: list[Summary], result: PredictResult, key: str) -> None:
    binary = len(result.classes) == 2
    mean_header = ["mean_probability"] if binary else [f"mean_probability_{c}" for c in result.classes]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(safe_row([key, *(["case"] if key == "path" else ["files"]), "frames", "used",
                                  "skipped_quality", "corrupt", *mean_header, "verdict", "unfamiliar_share",
                                  "unfamiliarity_ratio", *VOTE_COLUMNS]))
        for s in rows:
            mean = s.mean()
            verdict, share = result.verdict_and_share(s)
            ratio = result.unfamiliarity(s)
            writer.writerow(safe_row([s.name, s.case if key == "path" else s.files, s.frames, s.used, s.skipped,
                                      s.corrupt,
                                      *(_probability_text(mean) if mean is not None else [""] * len(mean_header)),
                                      verdict, "" if share is None else f"{share:.4f}",
                                      "" if ratio is None else f"{ratio:.4f}",
                                      *vote_cells(None if s.atlas is None else s.atlas.vote,
                                                  verdict == verdicts.UNFAMILIAR)]))


def predict(checkpoint: str | Path, paths: list[str | Path], out: str | Path, runtime: str = "auto",
            threshold: float = 0.5, cache: FrameCache | None = None, batch_size: int = 16,
            threads: int | None = None, progress=None, device: str = "auto",
            processes: Processes | None = None, atlas: str | Path | None = None,
            use_atlas: bool = True) -> PredictResult | None:
    """``mucosa predict``: open the checkpoint (or ``.onnx`` model) on ``device`` and predict the given paths.

    With ``processes`` naming several devices or nodes, the files are shared out over that many processes
    (``distributed``; ``device`` must stay ``auto``) and the outputs are the same as in one process, written
    by rank 0, which returns the result; the other processes return None.

    The atlas is ``atlas`` when named, else ``atlas/`` beside the checkpoint (none, with a warning, when there
    is none); ``use_atlas=False`` asks none.

    Raises:
        AtlasFileError: the atlas cannot be read, or belongs to another model (before any work).
    """
    threshold = verdicts.check_threshold(threshold)
    processes = processes or Processes()
    processes.check_launcher()
    several = processes.several
    if several and device != "auto":
        raise ConfigError(f"device {device!r} names one device; on several processes choose them with the "
                          "accelerator and devices settings (--accelerator, --devices)")
    atomic.check_writable_folder(out)
    sources = collect_sources(paths)
    if several:  # every process checks the atlas, so that none waits for one that refused it
        folder = find_atlas(checkpoint, atlas, use_atlas)
        found = open_atlas(folder, file_weights(checkpoint)) if folder is not None else None
        work = _ShareWork(checkpoint, runtime, batch_size, threads, cache, progress, embed=found is not None,
                           texture=found is not None and found.judges_texture)
        return _predict_shared(sources, out, threshold, processes, work, found)
    predictor = open_predictor(checkpoint, runtime, batch_size, threads, device)
    folder = find_atlas(checkpoint, atlas, use_atlas)
    found = open_atlas(folder, model_weights(predictor)) if folder is not None else None
    return predict_sources(predictor, sources, out, threshold, cache, progress, found)


@dataclass
class _ShareWork:
    """What one process does with its share of the files: open the model on its device, score each file.

    Unreadable files become the reason (a string); they are warned about once, by rank 0, when it writes.
    """

    checkpoint: str | Path
    runtime: str
    batch_size: int
    threads: int | None
    cache: FrameCache | None
    progress: object = None
    embed: bool = False  # embed the used frames too (for the atlas)
    texture: bool = False  # and take their texture view (an atlas whose case rule uses it)
    classes: list[str] | None = None  # the model's, once opened in this process

    def __call__(self, share: list[Source], device, rank: int) -> list[FileScores | str]:
        # default threads: the share Lightning gave this process (ONNX Runtime would take every core in each)
        threads = self.threads or torch.get_num_threads()
        predictor = open_predictor(self.checkpoint, self.runtime, self.batch_size, threads, device)
        self.classes = predictor.classes
        outcomes: list[FileScores | str] = []
        for done, source in enumerate(share, start=1):
            try:
                prepared = prepared_frames(source, predictor.preprocessing, self.cache)
            except (UnreadableFileError, OSError) as error:
                outcomes.append(_unreadable_reason(error, source))
            else:
                outcomes.append(_score_file(predictor, prepared, self.embed, source if self.texture else None))
            if self.progress is not None and rank == 0:  # rank 0's share: one progress line, not one a process
                self.progress(done, len(share), source.path)
        return outcomes


def _size(source: Source) -> float:
    """A file's size in bytes (0 when it cannot be read): balances the processes' shares."""
    try:
        return float(source.path.stat().st_size)
    except OSError:
        return 0.0


def _predict_shared(sources: list[Source], out, threshold: float, processes: Processes,
                    work: _ShareWork, atlas: Atlas | None = None) -> PredictResult | None:
    """Score the files on several processes; rank 0 writes the outputs exactly as one process would."""
    shared = distributed.map_files(sources, work, processes, weight=_size)
    if shared is None:  # not rank 0
        return None
    sources, outcomes = shared  # rank 0's list of files, in its order

    def one(position: int, writer, left_out) -> Summary | str:
        outcome = outcomes[position]
        return outcome if isinstance(outcome, str) else _write_file(writer, sources[position], outcome,
                                                                    work.classes, threshold, atlas, left_out)

    return _write_outputs(out, work.classes, threshold, sources, one, atlas=atlas, cache=work.cache)


def format_cases(result: PredictResult) -> str:
    """One line per case: verdict, mean probability, frames used and skipped, and with an atlas the share of
    unfamiliar frames, the atlas's vote and the most similar case. An unfamiliar case's line gives its ratio and
    the network's mean probability as no verdict, the vote as no second opinion and the nearest case as not similar."""
    lines = []
    for s in result.cases:
        mean = s.mean()
        score = "" if mean is None else (f"mean probability {float(mean):.3f}" if np.ndim(mean) == 0 else
                                         ", ".join(f"{c} {v:.3f}" for c, v in zip(result.classes, mean)))
        verdict, share = result.verdict_and_share(s)
        unfamiliar = verdict == verdicts.UNFAMILIAR
        if unfamiliar and score:
            ratio = result.unfamiliarity(s)
            score = ("" if ratio is None else f"unfamiliarity ratio {ratio:.2f}; ") + f"the network alone: {score}"
        lines.append(f"{s.case}: {verdict}{f' ({score})' if score else ''}; {s.used} frames used, {s.skipped} skipped "
                     "by the quality gate" + (f", {s.corrupt} corrupt" if s.corrupt else "") +
                     _atlas_words(s, share, unfamiliar))
    return "\n".join(lines)


def _atlas_words(summary: Summary, share: float | None, unfamiliar: bool) -> str:
    view = summary.atlas
    if view is None:
        return ""
    words = "" if share is None else f"; {verdicts.percent(share)} of them unfamiliar"
    if view.vote is not None:
        words += (f"; {verdicts.NO_SECOND_OPINION}: {view.vote.label}" if unfamiliar else
                  f"; atlas vote {view.vote.label}") + f" {float(np.max(view.vote.shares)):.2f}"
    if view.similar:
        words += (f"; {verdicts.NOT_SIMILAR if unfamiliar else 'most similar'}: {view.similar[0].case} "
                  f"({view.similar[0].label})")
    return words

