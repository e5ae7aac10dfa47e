"""Reading CLE images and videos as grayscale frames.

Every reader returns frames as float32 arrays in [0, 1] of shape (H, W). Colour images whose channels are
equal (pCLE videos are stored that way) are gray; otherwise one channel is chosen (``red`` for
immunofluorescence stained with a red dye) or the luminance is used. Videos are decoded lazily with PyAV,
one frame at a time, so a long recording never sits in memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa.errors import ConfigError, MucosaWarning, UnreadableFileError

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mpg", ".mpeg", ".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm"})
CHANNELS = ("auto", "luminance", "red", "green", "blue")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


# --------------------------------------------------------------------------------------------------
# Frame selection in a video: "all", "every:K", "A-B", "A-B:K" or a single index "K"
# --------------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)-(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a video to use: ``start``..``stop`` (inclusive, ``None`` = to the end), every ``step``."""

    start: int = 0
    stop: int | None = None
    step: int = 1

    @classmethod
    def parse(cls, spec: str | None) -> FrameSelection:
        """Parse ``all``, ``every:K``, ``A-B``, ``A-B:K`` or ``K``; raises ValueError with the grammar."""
        text = (spec or "all").strip().lower()
        if text in ("", "all"):
            return cls()
        if text.startswith("every:") and text[6:].isdigit() and int(text[6:]) > 0:
            return cls(step=int(text[6:]))
        if text.isdigit():
            return cls(int(text), int(text))
        match = _RANGE.match(text)
        if match and int(match[1]) <= int(match[2]) and int(match[3] or 1) > 0:
            return cls(int(match[1]), int(match[2]), int(match[3] or 1))
        raise ValueError(f"frames {spec!r} is not one of: all, every:K, A-B, A-B:K, K (frame indices from 0)")

    def __str__(self) -> str:
        if self.stop is None:
            return "all" if (self.start, self.step) == (0, 1) else (
                f"every:{self.step}" if self.start == 0 else f"{self.start}-end:{self.step}")
        if self.start == self.stop:
            return str(self.start)
        return f"{self.start}-{self.stop}" + (f":{self.step}" if self.step > 1 else "")

    def __contains__(self, index: int) -> bool:
        if index < self.start or (self.stop is not None and index > self.stop):
            return False
        return (index - self.start) % self.step == 0

    def indices(self, total: int) -> list[int]:
        """Selected indices of a video with ``total`` frames."""
        stop = total - 1 if self.stop is None else min(self.stop, total - 1)
        return list(range(self.start, stop + 1, self.step))

    @property
    def is_all(self) -> bool:
        return self == FrameSelection()


def runs_to_selections(indices: list[int], step: int = 1) -> list[FrameSelection]:
    """Compress sorted frame indices into as few selections as possible (runs of constant ``step``)."""
    selections: list[FrameSelection] = []
    start = prev = None
    for index in indices:
        if start is not None and index == prev + step:
            prev = index
            continue
        if start is not None:
            selections.append(FrameSelection(start, prev, step))
        start = prev = index
    if start is not None:
        selections.append(FrameSelection(start, prev, step))
    return selections


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def to_gray(array: np.ndarray, channel: str = "auto", source: str | Path = "image") -> np.ndarray:
    """Convert an image array of any integer or float dtype to gray float32 (H, W) in [0, 1].

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha is dropped).
        channel: ``auto`` (gray if the colour channels are equal, else luminance), ``luminance``,
            ``red``, ``green`` or ``blue``.
        source: named in error messages.
    """
    if channel not in CHANNELS:
        raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    scaled = _scale_to_unit(np.asarray(array), source)
    if scaled.ndim == 3 and scaled.shape[2] in (1, 3, 4):
        if scaled.shape[2] == 1:
            return np.ascontiguousarray(scaled[..., 0])
        rgb = scaled[..., :3]
        if channel in ("red", "green", "blue"):
            return np.ascontiguousarray(rgb[..., ("red", "green", "blue").index(channel)])
        if channel == "auto" and _channels_equal(rgb):
            return np.ascontiguousarray(rgb[..., 0])
        return np.clip(rgb @ _LUMA, 0.0, 1.0).astype(np.float32)
    if scaled.ndim != 2:
        raise UnreadableFileError(
            f"{source}: image has shape {array.shape}; expected one 2-D gray or RGB image "
            "(multi-page stacks are not supported: write one image per file)")
    return scaled


def array_frames(array: np.ndarray, channel: str = "auto") -> tuple[bool, list[np.ndarray]]:
    """An in-memory image or stack of frames, of any integer or float dtype, as gray float32 frames.

    Args:
        array: (H, W) or (H, W, 1|3|4): one still image; (N, H, W): N frames of one video or case,
            scaled together (one intensity range for the stack).

    Returns:
        ``(still, frames)``: whether it is one still image, and the (H, W) frames in [0, 1].
    """
    array = np.asarray(array)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return True, [to_gray(array, channel, "array")]
    if array.ndim != 3:
        raise UnreadableFileError(f"array: shape {array.shape}; expected (H, W), (H, W, C) or (N, H, W)")
    stack = _scale_to_unit(array, "array")
    return False, [np.ascontiguousarray(frame) for frame in stack]


def _scale_to_unit(array: np.ndarray, source: str | Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) / float(np.iinfo(array.dtype).max)).clip(0.0, 1.0)
    if np.issubdtype(array.dtype, np.floating):
        out = np.nan_to_num(array.astype(np.float32))
        peak = float(out.max()) if out.size else 0.0
        return (out / peak if peak > 1.0 else out).clip(0.0, 1.0)
    raise UnreadableFileError(f"{source}: unsupported pixel type {array.dtype}")


def _channels_equal(rgb: np.ndarray, tolerance: float = 2.5 / 255) -> bool:
    sample = rgb[::4, ::4]
    return bool(np.abs(sample - sample[..., :1]).max() <= tolerance)


def read_image(path: str | Path, channel: str = "auto") -> np.ndarray:
    """Read PNG, TIFF (8/16-bit or float), JPEG or BMP as gray float32 (H, W) in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    image = image.convert("RGB")
                elif image.mode == "LA":
                    image = image.convert("L")
                array = np.asarray(image)
    except Exception as error:  # Pillow and tifffile raise many types for a broken file
        raise UnreadableFileError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    return to_gray(array, channel, path)


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # frame count (from the container, or by counting packets when it does not say)
    fps: float
    width: int
    height: int


def _open_video(path: Path):
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
    return container


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video, without decoding it."""
    path = Path(path)
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        frames = int(stream.frames or 0)
        if frames <= 0:
            frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        return VideoInfo(frames, fps, stream.codec_context.width, stream.codec_context.height)
    except Exception as error:
        raise UnreadableFileError(f"{path}: cannot read video ({type(error).__name__}: {error})") from None
    finally:
        container.close()


@dataclass
class DecodeReport:
    """What happened while decoding one video: frames read, corrupt packets skipped, early end."""

    decoded: int = 0
    corrupt: int = 0
    truncated: bool = False


def iter_video_frames(path: str | Path, frames: FrameSelection | str | None = None, channel: str = "auto",
                      report: DecodeReport | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video lazily and yield ``(frame_index, frame)`` for the selected frames.

    A corrupt packet in the middle is skipped and counted; a truncated file yields the frames it has and
    warns (``MucosaWarning``) instead of failing.

    Args:
        frames: a FrameSelection or its text form (``all``, ``every:K``, ``A-B``...).
        channel: as in :func:`to_gray`.
        report: filled in while decoding, for callers that count skipped frames.
    """
    import av

    path = Path(path)
    selection = frames if isinstance(frames, FrameSelection) else FrameSelection.parse(frames)
    if channel not in CHANNELS:
        raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    report = report if report is not None else DecodeReport()
    container = _open_video(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    expected = int(stream.frames or 0)
    start, rate = stream.start_time or 0, stream.average_rate
    index = -1
    resync = False  # a packet was skipped: number the next frame by its timestamp, not by counting
    finished = False  # the demuxer ran to the end (not stopped early by the caller or the selection)
    try:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:  # the container itself ends in garbage: stop here
                report.truncated = True
                break
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                report.corrupt += 1
                resync = True
                continue
            for frame in decoded:
                # after a skipped packet the frame's timestamp says which frame of the video this is
                index = max(index + 1, _frame_number(frame, start, rate)) if resync else index + 1
                resync = False
                if selection.stop is not None and index > selection.stop:
                    return
                if index in selection:
                    report.decoded += 1
                    yield index, _video_frame_to_gray(frame, channel)
        finished = True
    finally:
        container.close()
        if finished and expected and index + 1 < expected:
            report.truncated = True
        if report.truncated or report.corrupt:
            warnings.warn(f"{path}: video is damaged — {index + 1} frames decoded"
                          + (f" of {expected} announced" if expected else "")
                          + (f", {report.corrupt} corrupt packets skipped" if report.corrupt else "")
                          + "; using the frames that could be read", MucosaWarning, stacklevel=2)


def _frame_number(frame, start: int, rate) -> int:
    """The frame's position in the video from its timestamp (-1 when the video has no usable timing)."""
    if frame.pts is None or frame.time_base is None or not rate:
        return -1
    return int(round(float((frame.pts - start) * frame.time_base * rate)))


def _video_frame_to_gray(frame, channel: str) -> np.ndarray:
    if channel in ("auto", "luminance"):
        # Y plane, converted to full range by libswscale: the gray of an R=G=B video, the luma otherwise
        return frame.to_ndarray(format="gray").astype(np.float32) / 255.0
    return to_gray(frame.to_ndarray(format="rgb24"), channel)
