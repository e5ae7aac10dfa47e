"""Reading pCLE videos as grayscale frames, lazily, and telling damage apart from the end of a file.

Frames are decoded with PyAV one at a time, so a long recording never sits in memory; each comes out as
``readers.to_gray`` gives an image's: float32 in [0, 1], (H, W). A video that ends early, skips frames or
cannot be decoded past some point gives the frames that could be read, with one warning that says so
(:class:`DecodeReport`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mucosa.data.readers import CHANNELS, FrameSelection, check_frame_size, to_gray
from mucosa.errors import ConfigError, MucosaWarning, UnreadableFileError


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says, read without decoding it (:func:`video_info`)."""

    frames: int  # frame numbers the video spans: the count it announces, else its packets' last timestamp + 1
    fps: float
    width: int
    height: int
    announced: int = 0  # frames the container announces (0 when it does not say)
    packets: int = 0  # packets holding data, when they had to be counted (the container announced nothing)


def _open_video(path: Path):
    """Open a video with PyAV; refuses files without a video stream and frames too small or too large."""
    import av

    if not path.is_file():
        raise UnreadableFileError(f"{path}: file not found")
    try:
        container = av.open(str(path))
    except Exception as error:
        raise UnreadableFileError(f"{path}: cannot open video ({type(error).__name__}: {error})") from None
    if not container.streams.video:
        container.close()
        raise UnreadableFileError(f"{path}: no video stream (file truncated or not a video)")
    codec = container.streams.video[0].codec_context
    if codec.width and codec.height:
        try:
            check_frame_size(path, codec.width, codec.height, what="video frame")
        except UnreadableFileError:
            container.close()
            raise
    return container


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video, without decoding it.

    Raises:
        UnreadableFileError: not a video, or frames smaller than 8x8 (see :func:`check_frame_size`).
    """
    path = Path(path)
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        announced, packets, last = max(int(stream.frames or 0), 0), 0, -1
        if not announced:  # count packets; a damaged video lost some, so its frames also span the last timestamp
            start, rate = stream.start_time or 0, stream.average_rate
            for packet in container.demux(stream):
                if packet.size > 0:
                    packets += 1
                    last = max(last, _frame_number(packet, start, rate))
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        return VideoInfo(announced or max(packets, last + 1), fps, stream.codec_context.width,
                         stream.codec_context.height, announced, packets)
    except Exception as error:
        raise UnreadableFileError(f"{path}: cannot read video ({type(error).__name__}: {error})") from None
    finally:
        container.close()


_GAP_FRAMES = 2  # a jump of this many missing frames or more in the timestamps is a gap (damage)


@dataclass(frozen=True)
class Gap:
    """Frames missing between two decoded frames, found from their timestamps."""

    frame: int      # index (by timestamp) of the first frame after the gap
    missing: int    # frames missing before it
    seconds: float  # time missing


@dataclass
class DecodeReport:
    """What happened while decoding one video; filled in by :func:`iter_video_frames`.

    Attributes:
        decoded: frames decoded cleanly (selected or not); damaged frames are not counted.
        errors: decode errors: packets the decoder refused plus frames it flagged as damaged (errors
            concealed); both are skipped.
        expected: frames the video should have: announced by the container, or (``estimated``) its
            duration times its frame rate; 0 when unknown.
        estimated: ``expected`` is an estimate from the duration, not a count.
        gaps: jumps in the frame timestamps (lost data); the frames after a gap keep their true index.
        truncated: the file ends early (the demuxer failed, or fewer frames than expected).
        last: index of the last frame decoded (by timestamp), -1 before the first.
    """

    decoded: int = 0
    errors: int = 0
    expected: int = 0
    estimated: bool = False
    gaps: list[Gap] = field(default_factory=list)
    truncated: bool = False
    last: int = -1

    @property
    def corrupt(self) -> int:
        """Damage events (decode errors, gaps, an early end): 0 for an intact video."""
        return self.errors + len(self.gaps) + int(self.truncated)

    @property
    def damaged(self) -> bool:
        return self.corrupt > 0

    @property
    def missing(self) -> int:
        """Frames missing from what the video should hold (lost in gaps or at a cut end), at least 0."""
        lost = sum(g.missing for g in self.gaps)
        return max(lost, self.expected - self.decoded if self.expected else 0)

    def describe(self) -> str:
        """One sentence: '476 frames decoded of about 500 expected; 1 damaged frame or packet skipped; ...'."""
        return "; ".join(self.findings())

    def findings(self) -> list[str]:
        """What :meth:`describe` says, one item per finding: the frames decoded (of how many), then each
        kind of damage."""
        shown = self.expected and not (self.estimated and self.expected - self.decoded <= _tolerance(self))
        parts = [f"{self.decoded} frames decoded"
                 + (f" of {'about ' if self.estimated else ''}{self.expected} "
                    f"{'expected' if self.estimated else 'announced'}" if shown else "")]
        if self.errors:
            parts.append(f"{self.errors} decode error(s) (corrupt packets or damaged frames, skipped)")
        parts += [f"gap of {g.seconds:.2f} s ({g.missing} frames) before frame {g.frame}" for g in self.gaps[:3]]
        if len(self.gaps) > 3:
            parts.append(f"{len(self.gaps) - 3} more gaps")
        if self.truncated:
            parts.append("the file ends early (cut short?)")
        return parts


def iter_video_frames(path: str | Path, frames: FrameSelection | str | None = None, channel: str = "auto",
                      report: DecodeReport | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video lazily and yield ``(frame_index, frame)`` for the selected frames.

    Frames are numbered by their timestamps (``(pts - start) x frame rate``; by counting when the video has
    no usable timing), so after lost data the later frames keep their true index and time. Damage is
    detected and reported, never fatal: packets the decoder refuses and frames it flags as damaged are
    skipped and counted, jumps in the timestamps are gaps, and a file that ends early (demuxer error, or
    fewer frames than announced or than its duration implies) is truncated. A damaged video warns once
    (``MucosaWarning``): "video is damaged — N frames decoded of about M expected; K decode errors; gap of T s
    before frame F". A video from which no frame at all can be decoded is an UnreadableFileError.

    Args:
        frames: a FrameSelection or its text form (``all``, ``every:K``, ``A-B``...).
        channel: as in :func:`to_gray`.
        report: filled in while decoding (see :class:`DecodeReport`).
    """
    path = Path(path)
    selection = frames if isinstance(frames, FrameSelection) else FrameSelection.parse(frames)
    if channel not in CHANNELS:
        raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    report = report if report is not None else DecodeReport()
    container = _open_video(path)
    finished = False  # the demuxer ran to the end (not stopped early by the caller or the selection)
    try:
        for index, frame in _numbered_frames(container, report):
            if selection.stop is not None and index > selection.stop:
                return
            if index in selection:
                yield index, _video_frame_to_gray(frame, channel)
        finished = True
    finally:
        container.close()
        if report.damaged and not (finished and report.decoded == 0):
            warnings.warn(f"{path}: video is damaged — {report.describe()}; using the frames that could be read",
                          MucosaWarning, stacklevel=2)
    if report.decoded == 0:
        raise UnreadableFileError(f"{path}: no frame of the video could be decoded ({report.describe()})")


def scan_video(path: str | Path) -> DecodeReport:
    """Decode every frame of a video (without converting it) and report damage, without warning.

    Raises:
        UnreadableFileError: not a video, or frames smaller than 8x8.
    """
    report = DecodeReport()
    container = _open_video(Path(path))
    try:
        for _ in _numbered_frames(container, report):
            pass
    finally:
        container.close()
    return report


def _numbered_frames(container, report: DecodeReport) -> Iterator[tuple[int, object]]:
    """``(index, av.VideoFrame)`` of every frame decoded, numbered by timestamp; fills ``report``."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    report.expected, report.estimated = _expected_frames(container, stream)
    start, rate = stream.start_time or 0, stream.average_rate
    for frame in _decoded_frames(container, stream, report):
        yield _place(report, _frame_number(frame, start, rate), rate), frame
    _check_end(report)


def _decoded_frames(container, stream, report: DecodeReport) -> Iterator:
    """Frames as the decoder delivers them; refused packets, damaged frames and a broken end are counted."""
    import av

    packets, trailing = container.demux(stream), 0  # errors since the last good frame
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            report.truncated = report.truncated or trailing > 0  # ends in damage: cut short
            return
        except av.error.FFmpegError:  # the container itself ends in garbage: stop here
            report.truncated = True
            return
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            report.errors, trailing = report.errors + 1, trailing + 1
            continue
        for frame in decoded:
            if frame.is_corrupt:  # decoded with errors concealed (e.g. the cut end of an MPEG-1 file)
                report.errors, trailing = report.errors + 1, trailing + 1
                continue
            trailing = 0
            yield frame


def _place(report: DecodeReport, stamped: int, rate) -> int:
    """The index of the next decoded frame: its timestamp's, never before the previous frame's + 1."""
    index = report.last + 1 if stamped < 0 else max(report.last + 1, stamped)
    missing = index - (report.last + 1)
    if missing >= _GAP_FRAMES:
        report.gaps.append(Gap(index, missing, round(missing / float(rate), 3) if rate else 0.0))
    report.last = index
    report.decoded += 1
    return index


def _expected_frames(container, stream) -> tuple[int, bool]:
    """(frames the video should hold, whether that is an estimate from its duration); (0, False) if unknown."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames), False
    rate = stream.average_rate
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        return 0, False
    return (round(seconds * float(rate)), True) if rate and seconds > 0 else (0, False)


def _check_end(report: DecodeReport) -> None:
    """After the last packet: fewer frames than the video should hold means it was cut short."""
    if report.expected and report.last + 1 < report.expected - _tolerance(report):
        report.truncated = True


def _tolerance(report: DecodeReport) -> int:
    """Frames an estimate from the duration may be off by (none for a count the container announces)."""
    return max(3, round(0.02 * report.expected)) if report.estimated else 0


def _frame_number(frame, start: int, rate) -> int:
    """The position in the video of a frame (or packet) from its timestamp (-1 without usable timing)."""
    if frame.pts is None or frame.time_base is None or not rate:
        return -1
    return int(round(float((frame.pts - start) * frame.time_base * rate)))


def _video_frame_to_gray(frame, channel: str) -> np.ndarray:
    if channel in ("auto", "luminance"):
        # Y plane, converted to full range by libswscale: the gray of an R=G=B video, the luma otherwise
        return frame.to_ndarray(format="gray").astype(np.float32) / 255.0
    return to_gray(frame.to_ndarray(format="rgb24"), channel)
