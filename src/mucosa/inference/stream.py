"""Live inference on a video (``mucosa stream``): frames are processed one by one as they arrive.

Per frame: decode → field-of-view crop → quality gate → inference → temporal smoothing → running verdict.

- Field of view: the first ``fov_frames`` frames (the checkpoint's preprocessing, 32 by default, as in
  training) are buffered and the field is fixed from them by ``data.preparation.iter_frames``, the
  frame iterator cohort preparation uses for ``evaluate``; if all of them are dark (the probe not yet on
  tissue), it is located again from the next frames, until a lit frame has been seen.
- Quality gate: a frame below the model's quality threshold is skipped (counted, no probability).
- Smoothing (``running_verdict.Smoother``): ``smoothed`` is the mean probability of the last ``window``
  informative frames (what is under the probe now); the case verdict is the mean of *all* informative frames so
  far against the threshold, ``predict``'s and ``evaluate``'s rule, so the final verdict is the one ``predict``
  gives for the file.
- A corrupt packet in the middle of the video is skipped and counted (``video.iter_video_frames``).
- With an atlas (``atlas/`` beside the checkpoint, or one named), each used frame is embedded in the same
  pass as its probability and marked unfamiliar or not (``atlas.Atlas.unfamiliar``); the status line and
  the timeline carry the flag and the running share of unfamiliar used frames, and the running and final
  verdicts follow ``verdict.verdict_or_unfamiliar`` (``unfamiliar`` while the median score of the used
  frames so far is above the atlas's case threshold), as ``predict`` does for the file. A video that is
  one of the atlas's cases is not compared with its own patient (``leave_out``, the rule of every entry
  point): its file is read once for its SHA-256 before the first frame.
- With a calibrated atlas, the running verdict (timeline, status line) is :data:`verdict.GATHERING`, neither a
  class nor ``unfamiliar``, until there are as many used frames as score each atlas case in the case threshold's
  calibration (``atlas.CASE_CALIBRATION_FRAMES``): a median of fewer is not comparable with it. The final
  verdict is not held back (``running_verdict.Smoother.case_verdict``, ``predict``'s, however few the frames).

Decoding and preprocessing run in a background thread, inference in the calling one, so the two overlap
(PyAV, NumPy, Pillow and both runtimes release the GIL). ``realtime`` paces frames at the source frame
rate, as a live probe would deliver them; by default frames are read as fast as they can be processed.
Frames are never dropped: when processing is slower than the source, latency grows (the status line
shows it).
"""

from __future__ import annotations

import contextlib
import csv
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from mucosa import atomic
from mucosa.data.preparation import Preprocessing, fov_buffer, iter_frames
from mucosa.data.readers import is_video
from mucosa.data.video import DecodeReport, video_info
from mucosa.errors import UnreadableFileError
from mucosa.inference import verdict as verdicts
from mucosa.inference.annotate import Annotator, short_number
from mucosa.inference.atlas import Atlas
from mucosa.inference.atlas_build import find_atlas, model_weights, open_atlas
from mucosa.inference.leave_out import own_patients
from mucosa.inference.running_verdict import Smoother
from mucosa.inference.runtime import describe, open_predictor
from mucosa.inference.similar import flags_text
from mucosa.inference.texture_view import frame_texture, textured
from mucosa.tables import safe_row

STAGES = ("decode", "prepare", "infer", "atlas", "smooth")


@dataclass
class FrameResult:
    """One row of the timeline."""

    index: int
    time: float                  # seconds from the start of the video
    quality: float
    skipped: bool                # below the quality threshold: no probability
    probability: object          # float (binary) or (K,) array; None when skipped
    smoothed: object             # mean over the window of informative frames; None before the first
    case_probability: object     # mean over all informative frames so far
    verdict: str
    latency_ms: float            # from arrival (decoded, or due in real time) to result
    unfamiliarity: float | None = None  # the atlas's score of the frame (None: skipped, or no atlas)
    unfamiliar: bool | None = None  # whether it is unfamiliar (None: skipped, or the atlas cannot tell)
    unfamiliar_share: float | None = None  # of the used frames so far (None: the atlas cannot tell)
    unfamiliarity_ratio: float | None = None  # of the used frames so far, over the case threshold (None: cannot tell)


@dataclass
class StreamSummary:
    """What a stream run did: counts, speed, latency, time per stage and the final verdict."""

    source: Path
    runtime: str
    frames: int = 0
    used: int = 0
    corrupt: int = 0
    seconds: float = 0.0
    latency_ms: list = field(default_factory=list)
    stage_seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    verdict: str = verdicts.NO_VERDICT
    case_probability: object = None
    unfamiliar_share: float | None = None  # of the used frames (None: no atlas, or one that cannot tell)
    unfamiliarity_ratio: float | None = None  # as predict's files.csv (None: no atlas, or one that cannot tell)
    network_alone: str | None = None  # an unfamiliar verdict: what the network alone would say (verdict.network_alone)
    fov: object = None  # the field of view used (``fov.FieldOfView``)
    buffered: int = 0   # first frames held back to find the field of view (their latency includes the wait)

    @property
    def skipped(self) -> int:
        return self.frames - self.used

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def stage_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame spent in each stage (decode and prepare overlap inference)."""
        return {k: 1000 * v / max(self.frames, 1) for k, v in self.stage_seconds.items()}

    def format(self) -> str:
        steady = self.latency_ms[self.buffered:] if len(self.latency_ms) > self.buffered else self.latency_ms
        latency = np.asarray(steady) if steady else np.zeros(1)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms().items())
        score = "" if self.case_probability is None else (
            f" (mean probability {float(self.case_probability):.3f})" if np.ndim(self.case_probability) == 0
            else "")
        if self.verdict == verdicts.UNFAMILIAR:  # its probability is no verdict's: worded as the network's alone
            score = "" if self.unfamiliarity_ratio is None else f" (unfamiliarity ratio {self.unfamiliarity_ratio:.2f})"
        return (f"{self.source}: {self.frames} frames in {self.seconds:.1f} s = {self.fps:.1f} fps ({self.runtime}); "
                f"{self.used} used, {self.skipped} skipped by the quality gate, {self.corrupt} corrupt packets "
                f"skipped\nlatency ms after the first {self.buffered} frames (held to find the field of view): "
                f"median {np.median(latency):.1f}, 95th percentile {np.percentile(latency, 95):.1f}\n"
                f"ms per frame by stage: {stages}\n"
                f"verdict: {self.verdict}{score}"
                + ("" if self.unfamiliar_share is None
                   else f"; {verdicts.percent(self.unfamiliar_share)} of used frames unfamiliar")
                + ("" if self.network_alone is None else f"\n{self.network_alone}"))


class _Producer(threading.Thread):
    """Decode, crop and score frames in the background (``iter_frames``); items go to a small queue, then
    ``None``."""

    def __init__(self, path: Path, prep: Preprocessing, fps: float, realtime: bool, report: DecodeReport,
                 stage_seconds: dict) -> None:
        super().__init__(daemon=True, name="mucosa-decode")
        self.path, self.prep, self.fps, self.realtime = path, prep, fps, realtime
        self.report, self.stage_seconds = report, stage_seconds
        self.items: queue.Queue = queue.Queue(maxsize=2)  # enough to overlap; more only adds latency
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.arrival: dict[int, float] = {}  # frame index -> when it was decoded (or due in real time)
        self.waited = 0.0  # seconds spent decoding or pacing, not preparing

    def _paced(self, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        start = time.perf_counter()
        while True:
            tic = time.perf_counter()
            item = next(frames, None)
            self.stage_seconds["decode"] += time.perf_counter() - tic
            if item is None:
                return
            index, frame = item
            arrival = time.perf_counter()
            if self.realtime and self.fps > 0:
                due = start + index / self.fps
                if due > arrival:
                    time.sleep(due - arrival)
                arrival = max(arrival, due)
            self.arrival[index] = arrival
            self.waited += time.perf_counter() - tic
            yield index, frame

    def run(self) -> None:
        try:
            frames = iter_frames(self.path, self.prep, report=self.report, wrap=self._paced)
            while not self.stop.is_set():
                tic, waited = time.perf_counter(), self.waited
                frame = next(frames, None)
                if frame is None:
                    return
                self.stage_seconds["prepare"] += time.perf_counter() - tic - (self.waited - waited)
                self.items.put((frame, self.arrival.pop(frame.index)))
        except BaseException as error:  # handed to the consuming thread, which raises it
            self.error = error
        finally:
            self.items.put(None)

    def __iter__(self):
        while (item := self.items.get()) is not None:
            yield item
        if self.error is not None:
            raise self.error


def _columns(name: str, classes: list[str]) -> list[str]:
    if len(classes) == 2:
        return [name]
    return [f"{name}_{c}" for c in classes]


def _values(value, classes: list[str]) -> list[str]:
    width = 1 if len(classes) == 2 else len(classes)
    if value is None:
        return [""] * width
    return [f"{float(value):.9g}"] if np.ndim(value) == 0 else [f"{float(v):.9g}" for v in value]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


class Timeline:
    """The per-frame CSV: frame, time, quality, skipped, probability, smoothed, case_probability, verdict,
    latency_ms (per-class columns for more than two classes), and the atlas's unfamiliarity, unfamiliar flag,
    running unfamiliar_share and running unfamiliarity_ratio (``Smoother.unfamiliarity_ratio``: above 1, the
    case rule says ``unfamiliar``), empty without an atlas (the ratio also without a calibration).

    Rows go to a temporary file beside ``path``, which replaces it only when the stream ends well
    (``close(keep=True)``): a stopped or failed run leaves an earlier timeline as it was."""

    def __init__(self, path: Path, classes: list[str]) -> None:
        self.classes = classes
        self.pending = atomic.PendingFile(path, "w", newline="", encoding="utf-8")
        self.handle = self.pending.handle
        self.writer = csv.writer(self.handle)
        self.writer.writerow(safe_row(["frame", "time", "quality", "skipped", *_columns("probability", classes),
                                       *_columns("smoothed", classes), *_columns("case_probability", classes),
                                       "verdict", "latency_ms", "unfamiliarity", "unfamiliar", "unfamiliar_share",
                                       "unfamiliarity_ratio"]))

    def write(self, r: FrameResult) -> None:
        try:
            self.writer.writerow(safe_row([r.index, f"{r.time:.3f}", f"{r.quality:.4f}", int(r.skipped),
                                           *_values(r.probability, self.classes), *_values(r.smoothed, self.classes),
                                           *_values(r.case_probability, self.classes), r.verdict,
                                           f"{r.latency_ms:.2f}", _number(r.unfamiliarity), flags_text(r.unfamiliar),
                                           _number(r.unfamiliar_share), _number(r.unfamiliarity_ratio)]))
        except OSError as error:
            raise atomic.write_error(error, self.pending.path) from None

    def close(self, keep: bool = True) -> None:
        """Put the timeline in place (``keep``), or throw it away."""
        if keep:
            self.pending.commit()
        else:
            self.pending.discard()


class StatusLine:
    """The live status line, rewritten in place on a terminal (at most ten times a second)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.last = 0.0

    def show(self, r: FrameResult, fps: float, force: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or (now - self.last < 0.1 and not force):
            return
        self.last = now
        p = "skipped" if r.skipped else f"p {short_number(r.probability)}" + (" unfamiliar" if r.unfamiliar else "")
        share = "" if r.unfamiliar_share is None else f" | unfamiliar {r.unfamiliar_share:4.0%}"
        line = (f"frame {r.index:>6} | {fps:5.1f} fps | latency {r.latency_ms:6.1f} ms | {p} | smoothed "
                f"{short_number(r.smoothed)}{share} | {r.verdict}")
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def end(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


def stream(predictor, source: str | Path, window: int = 16, realtime: bool = False,
           timeline: str | Path | None = None, annotate: str | Path | None = None, status: TextIO | None = None,
           threshold: float = 0.5, gradcam: bool = True, atlas: Atlas | None = None) -> StreamSummary:
    """Run a video through the model frame by frame (``mucosa stream``).

    Args:
        predictor: ``pytorch.TorchPredictor`` or ``onnx.OnnxPredictor`` (see ``runtime.open_predictor``).
        source: a video file.
        window: informative frames averaged into ``smoothed``.
        realtime: pace at the source frame rate instead of as fast as possible.
        timeline: CSV to write, one row per decoded frame.
        annotate: MP4 to write with the field of view, probabilities and verdict (and Grad-CAM) burned in.
        status: where the live status line goes (only shown on a terminal), e.g. ``sys.stderr``.
        threshold: decision threshold of a binary model.
        gradcam: overlay Grad-CAM in the annotated video when ``mucosa.evaluation.explain`` and the PyTorch model
            are available.
        atlas: the model's atlas (``atlas_build.open_atlas``): each used frame is marked unfamiliar or not, the
            video's own patient left out of the atlas when the video is one of its cases (``leave_out``: read
            once, before the first frame).

    The timeline and the annotated video replace earlier files only when the whole video was streamed.

    Raises:
        UnreadableFileError: ``source`` is missing or not a video. OutputError: ``timeline`` or ``annotate``
            cannot be written (checked before the first frame), or is the source itself.
    """
    source = Path(source)
    if not source.is_file():
        raise UnreadableFileError(f"{source}: file not found")
    if not is_video(source):
        raise UnreadableFileError(f"{source}: not a video file type (stream reads videos; use predict for images)")
    check_outputs(source, timeline, annotate)
    info = video_info(source)
    classes = predictor.classes
    calibration = None if atlas is None else atlas.calibration
    own = None if atlas is None else own_patients(atlas, [source])
    smoother = Smoother(classes, window, threshold, *((calibration.case_threshold, calibration.scales)
                                                      if calibration is not None else ()))
    report = DecodeReport()
    prep = predictor.preprocessing
    choice = getattr(predictor, "choice", None)
    summary = StreamSummary(source, describe(choice) if choice else predictor.runtime, buffered=fov_buffer(prep))
    writer = Timeline(Path(timeline), classes) if timeline else None
    video = Annotator(Path(annotate), predictor, info.fps, gradcam) if annotate else None
    line = StatusLine(status)
    producer = _Producer(source, prep, info.fps, realtime, report, summary.stage_seconds)
    fov = None
    finished = False
    start = time.perf_counter()
    producer.start()
    try:
        for frame, arrival in producer:
            index, quality, fov = frame.index, frame.quality, frame.fov
            skipped = not prep.passes(quality)
            probability = score = flag = None
            if not skipped:
                probability, score, flag = _infer(predictor, atlas, own, frame.image, summary.stage_seconds)
                texture = _texture(atlas, own, frame, prep, summary.used, summary.stage_seconds)
                toc = time.perf_counter()
                smoother.update(probability, flag, score, texture)
                summary.stage_seconds["smooth"] += time.perf_counter() - toc
                summary.used += 1
            result = FrameResult(index, index / info.fps if info.fps else 0.0, float(quality), skipped, probability,
                                 smoother.smoothed, smoother.case_probability, smoother.verdict,
                                 1000 * (time.perf_counter() - arrival), score, flag, smoother.unfamiliar_share,
                                 smoother.unfamiliarity_ratio)
            summary.frames += 1
            summary.latency_ms.append(result.latency_ms)
            if writer is not None:
                writer.write(result)
            if video is not None:
                video.write(frame.source, frame.image, frame.fov, result)
            line.show(result, summary.frames / (time.perf_counter() - start))
        finished = True
    finally:
        producer.stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                producer.items.get(timeout=0.05)
        line.end()
        try:
            if writer is not None:
                writer.close(keep=finished)
        finally:
            if video is not None:
                video.close(keep=finished)
    summary.seconds = time.perf_counter() - start
    summary.corrupt = report.corrupt
    summary.verdict, summary.case_probability = smoother.case_verdict, smoother.case_probability
    summary.unfamiliar_share, summary.unfamiliarity_ratio = smoother.unfamiliar_share, smoother.unfamiliarity_ratio
    if summary.verdict == verdicts.UNFAMILIAR:
        summary.network_alone = verdicts.network_alone(smoother.case_probability, smoother.classes, smoother.threshold)
    summary.fov = fov
    return summary


def _infer(predictor, atlas: Atlas | None, own: tuple[str, ...] | None, image: np.ndarray, stage_seconds: dict):
    """One used frame's probability and, with an atlas, its unfamiliarity score and flag (None: cannot tell),
    ``own`` patients left out."""
    tic = time.perf_counter()
    if atlas is None:
        probability = predictor(image[None])[0]
        stage_seconds["infer"] += time.perf_counter() - tic
        return probability, None, None
    probabilities, embedding = predictor.predict_and_embed(image[None])
    toc = time.perf_counter()
    familiarity = atlas.unfamiliar(embedding, own)
    stage_seconds["infer"] += toc - tic
    stage_seconds["atlas"] += time.perf_counter() - toc
    flag = None if familiarity.flags is None else bool(familiarity.flags[0])
    return probabilities[0], float(familiarity.scores[0]), flag


def _texture(atlas: Atlas | None, own: tuple[str, ...] | None, frame, prep, used: int,
             stage_seconds: dict) -> float | None:
    """The texture score of the ``used``-th used frame, ``own`` patients left out, when it has one
    (``texture_view.textured``) and the atlas a texture view."""
    if atlas is None or not atlas.judges_texture or not textured(used):
        return None
    tic = time.perf_counter()
    score = float(atlas.texture_scores(frame_texture(frame, prep)[None], exclude_patient=own)[0])
    stage_seconds["atlas"] += time.perf_counter() - tic
    return score


def check_outputs(source: Path, timeline: str | Path | None, annotate: str | Path | None) -> None:
    """Refuse, before the first frame, a timeline or annotated video that cannot be written, that is the
    source video itself, or two outputs at one path."""
    given = [(Path(p), what) for p, what in ((timeline, "timeline"), (annotate, "annotated video")) if p]
    for path, what in given:
        atomic.check_writable_file(path, what)
        if path.resolve() == source.resolve():
            raise atomic.OutputError(f"the {what} {path} would overwrite the video being streamed")
    if len(given) == 2 and given[0][0].resolve() == given[1][0].resolve():
        raise atomic.OutputError(f"--timeline and --annotate name the same file {given[0][0]}")


def default_threads() -> int:
    """Inference threads for streaming: all cores but one, which decodes and preprocesses the next frames."""
    return max(1, (os.cpu_count() or 1) - 1)


def run(checkpoint: str | Path, source: str | Path, runtime: str = "auto", threads: int | None = None,
        device: str = "auto", atlas: str | Path | None = None, use_atlas: bool = True, **options) -> StreamSummary:
    """Open the checkpoint (or ``.onnx`` model) and its atlas, and :func:`stream` the video; status on stderr.

    Args:
        threads: inference threads (default :func:`default_threads`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        atlas, use_atlas: the atlas to use (default: ``atlas/`` beside the checkpoint; none, with a warning,
            when there is none), or none at all (``use_atlas=False``).
        options: as for :func:`stream`.
    """
    check_outputs(Path(source), options.get("timeline"), options.get("annotate"))
    predictor = open_predictor(checkpoint, runtime, batch_size=1, threads=threads or default_threads(),
                               device=device)
    options.setdefault("status", sys.stderr)
    folder = find_atlas(checkpoint, atlas, use_atlas)
    found = open_atlas(folder, model_weights(predictor)) if folder is not None else None
    return stream(predictor, source, atlas=found, **options)
