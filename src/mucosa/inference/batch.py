"""Predictions for new images and videos (``mucosa predict``): per frame, per file and per case.

Inputs are image files, video files, folders (searched recursively) or a manifest CSV. Every source is
preprocessed exactly as for training and ``evaluate`` (``data.preparation.iter_frames``, or the frame cache with
the same key), with the preprocessing read from the checkpoint or the ONNX model.

The quality gate: frames scoring below the model's quality threshold are listed in ``predictions.csv``
with their quality and no probability (``used`` = 0), and count for nothing else, as in ``evaluate``,
which drops them. A case's verdict is the mean probability of its used frames against the threshold
(0.5 by default), ``evaluate``'s mean aggregation; a case with no used frame gets no verdict.

Cases: a manifest's ``patient``; for a folder, the images of one sub-folder form one case (one
examination's frames) and every video is a case of its own; a file named on the command line is its own
case. A file given twice for the same case (a folder or a file named twice, a manifest row repeated) counts once
in it, with a warning.

A file that cannot be read is reported (one warning naming it) and left out of every output, and the
others are predicted; :attr:`PredictResult.unreadable` lists it (the CLI then exits with status 3). The three
files are written as one set (``atomic.OutputSet``): an earlier result in the folder is replaced whole, or,
when the run fails, not at all.

A large archive can be shared out over several processes, GPUs or nodes (``predict(..., processes=...)``,
``mucosa predict --devices N --num-nodes M``; see ``distributed``): each file is scored by one process, and
rank 0 writes the same three files, row for row, as one process would.
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
from mucosa.data.manifest import load_manifest
from mucosa.data.preparation import PreparedFrames, prepare_file
from mucosa.data.readers import FrameSelection, is_image, is_video, media_in, path_key
from mucosa.errors import ConfigError, MucosaError, MucosaWarning, UnreadableFileError
from mucosa.inference import distributed
from mucosa.inference import verdict as verdicts
from mucosa.inference.distributed import Processes
from mucosa.inference.runtime import open_predictor
from mucosa.tables import safe_row

OUTPUTS = ("predictions.csv", "files.csv", "cases.csv")


@dataclass(frozen=True)
class Source:
    """One image or video to predict, with the case it belongs to."""

    path: Path
    case: str
    frames: FrameSelection = FrameSelection()


def collect_sources(paths: list[str | Path]) -> list[Source]:
    """Images, videos, folders and manifests (``.csv``) → sources with their case (see the module doc).

    Raises:
        MucosaError: a path that does not exist, is not an image, video, folder or CSV, or a folder
            without images or videos; ManifestError for a bad manifest.
    """
    sources: list[Source] = []
    for given in paths:
        if not str(given).strip():
            raise MucosaError("an empty path was given")
        path = Path(given)
        if path.is_dir():
            found = media_in(path)
            if not found:
                raise MucosaError(f"{path}: no images or videos in this folder")
            sources += [Source(p, str(p) if is_video(p) else str(p.parent)) for p in found]
        elif path.suffix.lower() == ".csv":
            cohort = load_manifest(path)
            sources += [Source(r.path, r.patient, r.frames) for r in cohort.records]
        elif path.is_file() and (is_image(path) or is_video(path)):
            sources.append(Source(path, str(path)))
        elif not path.exists():
            raise MucosaError(f"{path}: not found")
        else:
            raise UnreadableFileError(f"{path}: not an image, a video, a folder or a manifest (.csv)")
    return _once_each(sources)


def _once_each(sources: list[Source]) -> list[Source]:
    """The sources without repeats of the same frames at the same path in the same case (a folder or a file
    named twice, a manifest row listed twice), the first kept, with one warning: a repeat would count twice in
    its case's verdict. A file named on its own and within its folder is in two cases, and kept in both; two
    paths to one file (a link) are two files, as the user named them."""
    seen: set = set()
    kept, repeated = [], []
    for source in sources:
        key = (path_key(source.path), source.frames, source.case)
        (repeated if key in seen else kept).append(source)
        seen.add(key)
    if repeated:
        warnings.warn(f"{len(repeated)} of {len(sources)} files were given more than once (e.g. {repeated[0].path}): "
                      "each counts once in its case", MucosaWarning, stacklevel=3)
    return kept


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

    @property
    def total(self) -> int:
        """Files given: read and unreadable."""
        return len(self.files) + len(self.unreadable)

    def verdict(self, summary: Summary) -> str:
        return verdicts.verdict(summary.mean(), self.classes, self.threshold)


def _prepared(source: Source, prep, cache: FrameCache | None) -> PreparedFrames:
    path = source.path.resolve()
    return cache.get(path, prep, source.frames) if cache is not None else prepare_file(path, prep, source.frames)


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
                    cache: FrameCache | None = None, progress=None) -> PredictResult:
    """Predict every frame of every source; write ``predictions.csv``, ``files.csv`` and ``cases.csv``.

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

    Raises:
        MucosaError: no source could be read (nothing is written).
        OutputError: ``out`` cannot be written.
    """
    threshold = verdicts.check_threshold(threshold)

    def one(position: int, writer) -> Summary | str:
        source = sources[position]
        try:
            prepared = _prepared(source, predictor.preprocessing, cache)
        except (UnreadableFileError, OSError) as error:
            return _unreadable_reason(error, source)
        return _predict_file(predictor, source, prepared, writer, threshold)

    return _write_outputs(out, predictor.classes, threshold, sources, one, progress)


def _write_outputs(out: str | Path, classes: list[str], threshold: float, sources: list[Source], one,
                   progress=None) -> PredictResult:
    """Write the three files as one set, in the order of ``sources``: ``one(position, writer)`` writes a
    source's rows of ``predictions.csv`` and returns its summary, or returns why it cannot be read."""
    header = _probability_header(classes)
    out = Path(out)
    result = PredictResult(classes, threshold, [], [], out)
    cases: dict[str, Summary] = {}
    with atomic.OutputSet(out, OUTPUTS) as staged:
        with open(staged.path("predictions.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(safe_row(["path", "case", "frame", "quality", "used", *header, "label"]))
            for done, source in enumerate(sources, start=1):
                summary = one(done - 1, writer)
                if isinstance(summary, str):
                    warnings.warn(f"{summary}; left out", MucosaWarning, stacklevel=3)
                    result.unreadable.append((source.path, summary))
                else:
                    result.files.append(summary)
                    _add_to_case(cases.setdefault(source.case, Summary(source.case, source.case)), summary)
                if progress is not None:
                    progress(done, len(sources), source.path)
        if not result.files:
            raise MucosaError(f"none of the {len(sources)} file(s) could be read; nothing written to {out}")
        result.cases = list(cases.values())
        _write_summaries(staged.path("files.csv"), result.files, result, "path")
        _write_summaries(staged.path("cases.csv"), result.cases, result, "case")
    return result


@dataclass
class FileScores:
    """One file's frames as predicted: what ``predictions.csv`` and the summaries need (small: it travels
    between processes in ``distributed`` prediction)."""

    indices: np.ndarray  # frame numbers in the file
    quality: np.ndarray  # quality score of each frame
    keep: np.ndarray     # positions (in indices) of the frames that passed the quality gate
    probs: np.ndarray | None  # their probabilities, (len(keep),) or (len(keep), K); None when none passed
    corrupt: int


def _score_file(predictor, prepared: PreparedFrames) -> FileScores:
    """Run the model on the frames of one file that pass the quality gate."""
    keep = prepared.keep(predictor.preprocessing.quality_threshold)
    probs = predictor(np.asarray(prepared.frames[keep])) if len(keep) else None
    return FileScores(np.asarray(prepared.indices), np.asarray(prepared.quality), np.asarray(keep), probs,
                      prepared.corrupt)


def _write_file(writer, source: Source, scores: FileScores, classes: list[str], threshold: float) -> Summary:
    """Write one file's rows of ``predictions.csv`` and return its summary."""
    width = len(_probability_header(classes))
    probs = scores.probs
    by_position = dict(zip(scores.keep.tolist(), probs if probs is not None else []))
    for position, (index, quality) in enumerate(zip(scores.indices, scores.quality)):
        p = by_position.get(position)
        if p is None:  # below the quality gate: listed, not predicted
            writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 0,
                                      *[""] * width, ""]))
            continue
        label = classes[verdicts.call(p, threshold)]
        writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 1,
                                  *_probability_text(p), label]))
    return Summary(str(source.path), source.case, 1, len(scores.indices), len(scores.keep), scores.corrupt,
                   list(probs) if probs is not None else [])


def _predict_file(predictor, source: Source, prepared: PreparedFrames, writer, threshold: float) -> Summary:
    """Predict one file's frames, write its rows of ``predictions.csv``, and return its summary."""
    return _write_file(writer, source, _score_file(predictor, prepared), predictor.classes, threshold)


def _add_to_case(case: Summary, summary: Summary) -> None:
    case.files += 1
    case.frames, case.used, case.corrupt = (case.frames + summary.frames, case.used + summary.used,
                                            case.corrupt + summary.corrupt)
    case.scores += summary.scores


def _write_summaries(path: Path, rows: list[Summary], result: PredictResult, key: str) -> None:
    binary = len(result.classes) == 2
    mean_header = ["mean_probability"] if binary else [f"mean_probability_{c}" for c in result.classes]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(safe_row([key, *(["case"] if key == "path" else ["files"]), "frames", "used",
                                  "skipped_quality", "corrupt", *mean_header, "verdict"]))
        for s in rows:
            mean = s.mean()
            writer.writerow(safe_row([s.name, s.case if key == "path" else s.files, s.frames, s.used, s.skipped,
                                      s.corrupt,
                                      *(_probability_text(mean) if mean is not None else [""] * len(mean_header)),
                                      result.verdict(s)]))


def predict(checkpoint: str | Path, paths: list[str | Path], out: str | Path, runtime: str = "auto",
            threshold: float = 0.5, cache: FrameCache | None = None, batch_size: int = 16,
            threads: int | None = None, progress=None, device: str = "auto",
            processes: Processes | None = None) -> PredictResult | None:
    """``mucosa predict``: open the checkpoint (or ``.onnx`` model) on ``device`` and predict the given paths.

    With ``processes`` naming several devices or nodes, the files are shared out over that many processes
    (``distributed``; ``device`` must stay ``auto``) and the outputs are the same as in one process, written
    by rank 0, which returns the result; the other processes return None.
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
    if several:
        work = _ShareWork(checkpoint, runtime, batch_size, threads, cache, progress)
        return _predict_shared(sources, out, threshold, processes, work)
    predictor = open_predictor(checkpoint, runtime, batch_size, threads, device)
    return predict_sources(predictor, sources, out, threshold, cache, progress)


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
    classes: list[str] | None = None  # the model's, once opened in this process

    def __call__(self, share: list[Source], device, rank: int) -> list[FileScores | str]:
        # default threads: the share Lightning gave this process (ONNX Runtime would take every core in each)
        threads = self.threads or torch.get_num_threads()
        predictor = open_predictor(self.checkpoint, self.runtime, self.batch_size, threads, device)
        self.classes = predictor.classes
        outcomes: list[FileScores | str] = []
        for done, source in enumerate(share, start=1):
            try:
                prepared = _prepared(source, predictor.preprocessing, self.cache)
            except (UnreadableFileError, OSError) as error:
                outcomes.append(_unreadable_reason(error, source))
            else:
                outcomes.append(_score_file(predictor, prepared))
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
                    work: _ShareWork) -> PredictResult | None:
    """Score the files on several processes; rank 0 writes the outputs exactly as one process would."""
    shared = distributed.map_files(sources, work, processes, weight=_size)
    if shared is None:  # not rank 0
        return None
    sources, outcomes = shared  # rank 0's list of files, in its order

    def one(position: int, writer) -> Summary | str:
        outcome = outcomes[position]
        return outcome if isinstance(outcome, str) else _write_file(writer, sources[position], outcome,
                                                                    work.classes, threshold)

    return _write_outputs(out, work.classes, threshold, sources, one)


def format_cases(result: PredictResult) -> str:
    """One line per case: verdict, mean probability, frames used and skipped."""
    lines = []
    for s in result.cases:
        mean = s.mean()
        score = "" if mean is None else (f" (mean probability {float(mean):.3f})" if np.ndim(mean) == 0 else
                                         " (" + ", ".join(f"{c} {v:.3f}" for c, v in zip(result.classes, mean)) + ")")
        lines.append(f"{s.case}: {result.verdict(s)}{score}; {s.used} frames used, {s.skipped} skipped by the "
                     f"quality gate" + (f", {s.corrupt} corrupt" if s.corrupt else ""))
    return "\n".join(lines)

