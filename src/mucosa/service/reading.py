"""A case's files as the engine reads them (part of the engine's door to mucosa): what they are, and their frames.

- :func:`inspect_case`: what an uploaded file or set of files is (one video, or images), with the frames it
  announces; raises :class:`UnsupportedMedia` (a type mucosa does not read) or :class:`UnreadableMedia` (a file
  that does not decode, or a mix the service does not take).
- :func:`read_still`: a still image's model frames (its tiles, for a tiled checkpoint), each with its quality
  and its box in the image, and the image's field of view.
- :func:`case_frames`: a case's frames one by one, a video's lazily, with a damaged video's findings.

Every frame comes from mucosa's one frame iterator (``data.preparation.iter_frames``: decode → field of view →
prepare → quality), with the checkpoint's preprocessing; a reader's error becomes :class:`UnreadableMedia`, one
line naming the file by its name only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mucosa.data.fov import FieldOfView
from mucosa.data.preparation import Preprocessing, iter_frames
from mucosa.data.readers import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_image, is_video, read_image
from mucosa.data.video import DecodeReport, video_info
from mucosa.errors import MucosaError, UnreadableFileError
from mucosa.service.media import public

__all__ = ["UnreadableMedia", "UnsupportedMedia", "case_frames", "inspect_case", "read_still"]


class UnsupportedMedia(MucosaError):
    """Not an image or video type the model reads (HTTP 415)."""


class UnreadableMedia(MucosaError):
    """A known type that cannot be decoded, or not what the route takes (HTTP 422)."""


def _reason(error: Exception, path: Path) -> str:
    """A reader's error message naming the file by its name only (libraries such as PyAV repeat the whole
    path, and an error number, inside their messages)."""
    return f"{path.name}: {public(str(error).split(': ', 1)[-1], [path.parent])}"


def _count(number: int, thing: str) -> str:
    """``1 video``, ``2 videos``."""
    return f"{number} {thing}{'' if number == 1 else 's'}"


def inspect_case(paths: list[Path], prep: Preprocessing) -> dict:
    """``{"kind": "video" | "images", "frames": estimated count, "fps": float | None}`` for a case.

    Raises:
        UnsupportedMedia: a type mucosa does not read. UnreadableMedia: a file that does not decode, or
        a mix the service does not take (several videos, a video with images, nothing).
    """
    if not paths:
        raise UnreadableMedia("no image or video was given")
    for path in paths:
        if not (is_image(path) or is_video(path)):
            raise UnsupportedMedia(f"{path.name}: not an image or video type mucosa reads (images: "
                                   f"{', '.join(sorted(IMAGE_SUFFIXES))}; videos: "
                                   f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    videos = [p for p in paths if is_video(p)]
    if videos and len(paths) > 1:
        kinds = " and ".join(_count(n, kind) for n, kind in ((len(videos), "video"),
                                                             (len(paths) - len(videos), "image")) if n)
        raise UnreadableMedia(f"{kinds} given together: a case is one video, or several images; send each "
                              "video as a case of its own")
    try:
        if videos:
            info = video_info(videos[0])
            if info.frames < 1:
                raise UnreadableMedia(f"{videos[0].name}: the video holds no frames")
            return {"kind": "video", "frames": info.frames, "fps": info.fps or None}
        for path in paths:
            read_image(path, prep.channel)
    except UnreadableFileError as error:
        raise UnreadableMedia(_reason(error, path)) from None
    return {"kind": "images", "frames": len(paths), "fps": None}  # tiled images give more, counted as they come


def read_still(path: Path, prep: Preprocessing
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, float]], list[tuple], FieldOfView]:
    """A still image → (image, [(model frame, quality)], [box of each model frame], its field of view)."""
    try:
        frames = list(iter_frames(path, prep))
    except UnreadableFileError as error:
        raise UnreadableMedia(_reason(error, path)) from None
    parts = [(f.image, f.quality) for f in frames]
    fov = frames[0].fov
    return frames[0].source, parts, [f.box or tuple(fov.box) for f in frames], fov


def case_frames(sources: list[Path], prep: Preprocessing, warnings: list[str] | None = None) -> Iterator[tuple]:
    """A case's frames, one tuple each: ``(number, seconds, source frame, model frame, quality, box, field of view,
    source)``: the video frame index, or the position among the images' model frames; seconds from the start (a
    video's; None for images); the decoded frame and the model's input cut from it at ``box``; the quality score
    (NaN as 0); the field of view found in it; the image's position in ``sources`` (None for a video).

    One video (``sources`` of one video file) is read lazily; once it is read to its end, what was found in a damaged
    one (frames decoded of those announced, decode errors, gaps, an early end) is appended to ``warnings``.

    Raises:
        UnreadableMedia: a file that does not decode.
    """
    if len(sources) == 1 and is_video(sources[0]):
        return _video_frames(sources[0], prep, warnings)
    return _image_frames(sources, prep)


def _video_frames(path: Path, prep: Preprocessing, warnings: list[str] | None) -> Iterator[tuple]:
    fps = video_info(path).fps
    report = DecodeReport()
    try:
        for frame in iter_frames(path, prep, report=report):
            yield (frame.index, round(frame.index / fps, 4) if fps else None, frame.source, frame.image,
                   float(np.nan_to_num(frame.quality)), tuple(frame.fov.box), frame.fov, None)
    except UnreadableFileError as error:
        raise UnreadableMedia(_reason(error, path)) from None
    if report.damaged and warnings is not None:
        first, *damage = report.findings()
        warnings += [f"video is damaged: {first}", *damage]


def _image_frames(paths: list[Path], prep: Preprocessing) -> Iterator[tuple]:
    number = 0
    for position, path in enumerate(paths):
        image, parts, boxes, fov = read_still(path, prep)
        for (model_frame, quality), box in zip(parts, boxes):
            yield number, None, image, model_frame, float(np.nan_to_num(quality)), box, fov, position
            number += 1
