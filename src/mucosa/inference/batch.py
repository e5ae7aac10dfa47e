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
case.

A file that cannot be read is reported (one warning naming it) and left out of every output, and the
others are predicted; :attr:`PredictResult.unreadable` lists it (the CLI then exits with status 3). The three
files are written as one set (``atomic.OutputSet``): an earlier result in the folder is replaced whole, or,
when the run fails, not at all.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mucosa import atomic
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest
from mucosa.data.preparation import PreparedFrames, prepare_file
from mucosa.data.readers import FrameSelection, is_image, is_video
from mucosa.errors import MucosaError, MucosaWarning, UnreadableFileError
from mucosa.inference import verdict as verdicts
from mucosa.inference.runtime import open_predictor
from mucosa.tables import safe_row

OUTPUTS = ("predictions.csv", "files.csv", "cases.csv")


@dataclass(frozen=True)
class Source:
    """One image or video to predict, with the case it belongs to."""

    path: Path
    case: str
    frames: FrameSelection = FrameSelection()


def _media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (is_image(p) or is_video(p)))


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
            found = _media(path)
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
    return sources


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
    header = _probability_header(predictor.classes)
    out = Path(out)
    result = PredictResult(predictor.classes, threshold, [], [], out)
    cases: dict[str, Summary] = {}
    with atomic.OutputSet(out, OUTPUTS) as staged:
        with open(staged.path("predictions.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(safe_row(["path", "case", "frame", "quality", "used", *header, "label"]))
            for done, source in enumerate(sources, start=1):
                try:
                    prepared = _prepared(source, predictor.preprocessing, cache)
                except (UnreadableFileError, OSError) as error:
                    reason = _unreadable_reason(error, source)
                    warnings.warn(f"{reason}; left out", MucosaWarning, stacklevel=2)
                    result.unreadable.append((source.path, reason))
                else:
                    summary = _predict_file(predictor, source, prepared, writer, threshold)
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


def _predict_file(predictor, source: Source, prepared: PreparedFrames, writer, threshold: float) -> Summary:
    """Predict one file's frames, write its rows of ``predictions.csv``, and return its summary."""
    classes, prep = predictor.classes, predictor.preprocessing
    width = len(_probability_header(classes))
    keep = prepared.keep(prep.quality_threshold)
    probs = predictor(np.asarray(prepared.frames[keep])) if len(keep) else None
    by_position = dict(zip(keep.tolist(), probs if probs is not None else []))
    for position, (index, quality) in enumerate(zip(prepared.indices, prepared.quality)):
        p = by_position.get(position)
        if p is None:  # below the quality gate: listed, not predicted
            writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 0,
                                      *[""] * width, ""]))
            continue
        label = classes[verdicts.call(p, threshold)]
        writer.writerow(safe_row([str(source.path), source.case, int(index), f"{quality:.4f}", 1,
                                  *_probability_text(p), label]))
    return Summary(str(source.path), source.case, 1, len(prepared.indices), len(keep), prepared.corrupt,
                   list(probs) if probs is not None else [])


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
            threads: int | None = None, progress=None, device: str = "auto") -> PredictResult:
    """``mucosa predict``: open the checkpoint (or ``.onnx`` model) on ``device`` and predict the given paths."""
    threshold = verdicts.check_threshold(threshold)
    atomic.check_writable_folder(out)
    sources = collect_sources(paths)
    predictor = open_predictor(checkpoint, runtime, batch_size, threads, device)
    return predict_sources(predictor, sources, out, threshold, cache, progress)


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

