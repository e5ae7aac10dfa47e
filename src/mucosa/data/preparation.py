"""From an image or video file to model-ready frames: the one frame iterator of mucosa.

:func:`iter_frames` is decode → field of view → prepare (crop, brightness, resize) → quality score, for
one file. Cohort preparation (the cache behind training and ``evaluate``), ``predict``, ``stream``,
``explain`` and the service all read frames through it, so a frame is prepared the same way everywhere;
the quality gate is :meth:`Preprocessing.passes`.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> from mucosa.data.preparation import Preprocessing, iter_frames
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "frame.png"
    >>> Image.fromarray((np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8)).save(path)
    >>> [(f.index, f.image.shape) for f in iter_frames(path, Preprocessing(size=32))]
    [(0, (32, 32))]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from mucosa.data import fov as preprocess
from mucosa.data import quality
from mucosa.data.readers import CHANNELS, MAX_PIXELS, FrameSelection, array_frames, is_video, read_image
from mucosa.data.video import DecodeReport, iter_video_frames
from mucosa.errors import UnreadableFileError
from mucosa.settings import Float, Int, Settings, closest, whole_number

NORMALIZE = ("none", "stretch")
CROPS = ("auto", "disc", "none")


def _crop(value: Any) -> Any:
    """``auto``, ``disc``, ``none`` or a box ``[x0, y0, x1, y1]`` of whole pixels with x0 < x1, y0 < y1."""
    if isinstance(value, str):
        if value not in CROPS:
            guess = closest(value, list(CROPS))
            raise PydanticCustomError("mucosa", "expected auto, disc, none or a box [x0, y0, x1, y1], got {got}"
                                      + (f"; did you mean '{guess}'?" if guess else ""), {"got": repr(value)[:60]})
        return value
    try:
        box = tuple(whole_number(v) for v in value)
    except (TypeError, ValueError, PydanticCustomError):
        box = ()
    if len(box) != 4 or min(box) < 0 or box[0] >= box[2] or box[1] >= box[3]:
        raise PydanticCustomError("mucosa", "expected auto, disc, none or a box [x0, y0, x1, y1] with "
                                  "0 <= x0 < x1 and 0 <= y0 < y1, got {got}", {"got": repr(value)[:60]})
    return box


class Preprocessing(Settings):
    """How frames are turned into model input; stored in every checkpoint.

    Attributes:
        size: side of the square model input (paper: 300).
        crop: ``auto`` (detect the circular pCLE / rectangular eCLE field of view and take the largest
            square inside it), ``disc`` (the same detection, but a circular field is kept whole, black
            outside the circle; rectangles as ``auto``), ``none`` (whole
            frame) or a fixed box ``[x0, y0, x1, y1]``.
        channel: ``auto``, ``luminance``, ``red``, ``green`` or ``blue`` (see ``readers.to_gray``).
        quality_threshold: frames scoring below are dropped as uninformative (0 keeps all).
        fov_frames: frames of a video looked at together to find its field of view.
        tile: cut the field of view of a still image into tiles of this side (source pixels), each
            resized to ``size`` and treated as one frame (numbered row by row); 0 = the whole image.
            Videos are never tiled.
        normalize: ``none`` (intensities as recorded) or ``stretch``: the 1st and 99.5th intensity
            percentiles of a still image's field of view (before tiling) or of each video frame are
            mapped to black and white, evening out gain and background between animals or sessions.
            The quality gate still judges the recorded intensities.
        max_pixels: images larger than this (width × height) are refused before they are decoded (a
            60000×60000 TIFF would need 13 GiB); default 250 megapixels.
    """

    model_config = ConfigDict(frozen=True)
    SECTION: ClassVar[str] = "preprocessing"

    size: Int = Field(300, ge=8)
    crop: Annotated[str | tuple[int, int, int, int], BeforeValidator(_crop)] = "auto"
    channel: Literal[CHANNELS] = "auto"
    quality_threshold: Float = Field(quality.DEFAULT_QUALITY_THRESHOLD, ge=0.0, le=1.0)
    fov_frames: Int = Field(32, ge=1)
    tile: Int = Field(0, ge=0)
    normalize: Literal[NORMALIZE] = "none"
    max_pixels: Int = Field(MAX_PIXELS, ge=64)

    @field_validator("tile")
    @classmethod
    def _tile_side(cls, tile: int) -> int:
        if 0 < tile < 8:
            raise PydanticCustomError("mucosa", "must be 0 (whole image) or a side of at least 8 pixels, got {got}",
                                      {"got": tile})
        return tile

    def to_dict(self) -> dict:
        data = self.model_dump()
        data["crop"] = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        return data

    def passes(self, score):
        """The quality gate: whether a frame (or an array of frames) with this quality score is used."""
        return quality.passes(score, self.quality_threshold)

    def cache_key(self) -> dict:
        data = self.to_dict()
        data.pop("quality_threshold")
        data.pop("max_pixels")  # a limit on what is decoded, not a change to the frames
        if data["normalize"] == "none":
            data.pop("normalize")  # caches made before the option existed stay valid
        return data


_MIN_FIELD = 8  # a cropped field smaller than this a side holds nothing to judge


class FramePreparer:
    """Crop, resize and score frames of one source, once its field of view is known.

    Used for cohort preparation and, frame by frame, for live streams.
    """

    def __init__(self, prep: Preprocessing, still: bool = False, source: str | Path = "frame") -> None:
        self.prep, self.source = prep, source  # the source is named in errors
        self.fov: preprocess.FieldOfView | None = None
        # still images are judged on brightness, saturation and contrast only (see STILL_COMPONENTS)
        self.components = quality.STILL_COMPONENTS if still else None

    def locate(self, frames: np.ndarray) -> preprocess.FieldOfView:
        """Fix the field of view from one frame (H, W) or several (N, H, W) of the same source."""
        shape = frames.shape[-2:]
        if self.prep.crop in ("auto", "disc"):
            self.fov = preprocess.detect_field_of_view(frames)
            if self.prep.crop == "disc":
                self.fov = preprocess.whole_disc(self.fov, shape)
        elif self.prep.crop == "none":
            self.fov = preprocess.FieldOfView("full", (0, 0, shape[1], shape[0]))
        else:
            self.fov = preprocess.fixed_field_of_view(self.prep.crop, shape)
        return self.fov

    def still(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """A still image (H, W) → its model frames with quality scores: the field of view whole, or in
        tiles when ``tile`` is set (row by row)."""
        field = preprocess.crop(image, self.locate(image))
        levels = self._levels(field)  # of the whole field: tiles of one image are stretched alike
        parts = preprocess.tiles(field, self.prep.tile) if self.prep.tile else [field]
        return [self._finish(part, levels) for part in parts]

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """One frame (H, W) float → (model frame uint8 (S, S), quality score)."""
        if self.fov is None:
            self.locate(frame)
        cropped = preprocess.crop(frame, self.fov)  # (h, w)
        return self._finish(cropped, self._levels(cropped))

    def _levels(self, field: np.ndarray) -> tuple[float, float] | None:
        return preprocess.stretch_levels(field) if self.prep.normalize == "stretch" else None

    def _finish(self, cropped: np.ndarray, levels: tuple[float, float] | None) -> tuple[np.ndarray, float]:
        if min(cropped.shape) < _MIN_FIELD:
            h, w = cropped.shape
            raise UnreadableFileError(f"{self.source}: the field of view found is {w}x{h} pixels, too small to judge"
                                      f" (at least {_MIN_FIELD}x{_MIN_FIELD}); set "
                                      "preprocessing.crop to none or a box if the whole image is tissue")
        score = quality.quality_score(cropped, self.components)  # on the recorded intensities
        if levels is not None:
            cropped = preprocess.stretch(cropped, levels)
        return preprocess.to_uint8(preprocess.resize(cropped, self.prep.size)), score


class PreparedFrames:
    """Preprocessed frames of one manifest row.

    Attributes:
        indices: (N,) frame index in the source (0 for an image).
        quality: (N,) float32 quality scores in [0, 1].
        fov: the field of view used (``FieldOfView`` as a dict).
        corrupt: damaged video packets skipped while decoding.
    """

    def __init__(self, indices: np.ndarray, quality: np.ndarray, fov: dict, corrupt: int = 0,
                 frames: np.ndarray | None = None, path: Path | None = None, size: int = 0) -> None:
        self.indices, self.quality, self.fov, self.corrupt = indices, quality, fov, corrupt
        self.path, self.size, self._frames = path, size, frames

    @property
    def frames(self) -> np.ndarray:
        """(N, S, S) uint8; a read-only memory map of the cache file, opened on first use."""
        if self._frames is None:
            count = len(self.indices)
            self._frames = (np.memmap(self.path, dtype=np.uint8, mode="r", shape=(count, self.size, self.size))
                            if count else np.zeros((0, self.size, self.size), np.uint8))
        return self._frames

    def __getstate__(self) -> dict:
        # Data-loading workers reopen the memory map instead of receiving a copy of the frames.
        state = self.__dict__.copy()
        if self.path is not None:
            state["_frames"] = None
        return state

    def keep(self, threshold: float) -> np.ndarray:
        """Positions (into ``indices``/``frames``) of the frames that pass the quality gate."""
        return np.flatnonzero(quality.passes(self.quality, threshold))


_DARK_LEVEL = 0.1   # a pixel brighter than this is lit
_DARK_SHARE = 0.03  # a frame with less lit than this is dark (burned-in overlays alone are about 1%)


def is_dark(frame: np.ndarray) -> bool:
    """A frame with (almost) nothing lit: the probe is not on tissue yet."""
    return float(np.mean(frame[::4, ::4] > _DARK_LEVEL)) < _DARK_SHARE


def fov_buffer(prep: Preprocessing) -> int:
    """Frames of a video held back to locate its field of view (one when the crop is fixed)."""
    return prep.fov_frames if prep.crop in ("auto", "disc") else 1


def buffered_field_of_view(preparer: FramePreparer, items: Iterator[tuple], count: int | None = None
                           ) -> Iterator[tuple]:
    """Fix a video's field of view from its first frames, then yield every item unchanged.

    ``items`` are tuples whose second element is the frame (``(index, frame, ...)``). The first ``count``
    (default ``fov_frames``) are held back and the field is located from them; if all of them are dark, it
    is located again from the next ``count``, until a lit frame has been seen. Used by :func:`iter_frames`.
    """
    count = count or fov_buffer(preparer.prep)
    while True:
        head = []
        for item in items:
            head.append(item)
            if len(head) == count:
                break
        if not head:
            return
        preparer.locate(np.stack([item[1] for item in head]))
        yield from head
        if not all(is_dark(item[1]) for item in head):
            break
    yield from items


@dataclass(frozen=True)
class Frame:
    """One prepared frame of a file.

    Attributes:
        index: frame number in the video; for a still image 0, or the tile number (row by row).
        image: uint8 (S, S), the model's input.
        quality: quality score in [0, 1] (see :meth:`Preprocessing.passes`).
        fov: the field of view it was cropped from.
        source: the decoded frame (H, W) float in [0, 1] (a video frame, or the whole still image).
        box: a tile's (x0, y0, x1, y1) in ``source`` (``fov.tile_boxes``), of a tiled still image (the whole
            field's box when it is smaller than one tile); else None.
    """

    index: int
    image: np.ndarray
    quality: float
    fov: preprocess.FieldOfView
    source: np.ndarray
    box: tuple[int, int, int, int] | None = None


Decoded = Iterator[tuple[int, np.ndarray]]


def texture_image(source: np.ndarray, fov: preprocess.FieldOfView, prep: Preprocessing, size: int,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A decoded frame's field (``Frame.source`` and ``Frame.fov``) as the model's input is made (the same crop
    and brightness), but ``size`` pixels a side instead of ``prep.size``: uint8 (size, size). Of a tile of a
    still image (``box``, ``Frame.box``): the tile alone, brightened as the whole field is."""
    field = preprocess.crop(source, fov)
    levels = preprocess.stretch_levels(field) if prep.normalize == "stretch" else None
    if box is not None:
        x0, y0 = fov.box[:2]
        field = field[box[1] - y0:box[3] - y0, box[0] - x0:box[2] - x0]
    if levels is not None:
        field = preprocess.stretch(field, levels)
    return preprocess.to_uint8(preprocess.resize(field, size))


def iter_frames(source: str | Path | np.ndarray, prep: Preprocessing, selection: FrameSelection | str | None = None,
                report: DecodeReport | None = None, wrap: Callable[[Decoded], Iterator[tuple]] | None = None
                ) -> Iterator[Frame]:
    """Decode, locate the field of view, prepare and score every selected frame of one source.

    Args:
        source: an image file (one frame, or one per tile with ``prep.tile``), a video file, or an array:
            (H, W) or (H, W, C) is a still image, (N, H, W) the frames of one video (see
            ``readers.array_frames``).
        prep: how frames are prepared (a checkpoint's, or a config's).
        selection: video frames to read (``every:K``, ``A-B``...); default all.
        report: filled with the video's decoding problems (damaged packets, missing frames).
        wrap: applied to a video's decoded ``(index, frame, ...)`` items before preparation (``stream``
            paces and times them); extra tuple members are ignored here.

    Raises:
        UnreadableFileError: the file cannot be decoded.
    """
    if isinstance(source, np.ndarray):
        still, frames = array_frames(source, prep.channel, prep.max_pixels)
        if still:
            yield from _still_frames(frames[0], prep, "array")
            return
        chosen = selection if isinstance(selection, FrameSelection) else FrameSelection.parse(selection)
        decoded: Decoded = ((i, f) for i, f in enumerate(frames) if i in chosen)
    elif not is_video(source := Path(source)):
        yield from _still_frames(read_image(source, prep.channel, prep.max_pixels), prep, source)
        return
    else:
        decoded = iter_video_frames(source, selection, prep.channel, report)
    preparer = FramePreparer(prep, source=source if isinstance(source, Path) else "array")
    for item in buffered_field_of_view(preparer, wrap(decoded) if wrap else decoded):
        model_frame, score = preparer(item[1])
        yield Frame(item[0], model_frame, score, preparer.fov, item[1])


def _still_frames(image: np.ndarray, prep: Preprocessing, source: str | Path) -> Iterator[Frame]:
    preparer = FramePreparer(prep, still=True, source=source)
    parts = preparer.still(image)
    boxes = preprocess.tile_boxes(preparer.fov.box, prep.tile) if prep.tile else [None]
    for index, ((model_frame, score), box) in enumerate(zip(parts, boxes, strict=True)):
        yield Frame(index, model_frame, score, preparer.fov, image, box)


def prepare_file(path: str | Path, prep: Preprocessing, selection: FrameSelection | str | None = None,
                 sink: BinaryIO | None = None) -> PreparedFrames:
    """All frames of one file, prepared; frames are written to ``sink`` (a binary file) when given."""
    report = DecodeReport()
    indices, scores, kept, fov = [], [], [], None
    for frame in iter_frames(path, prep, selection, report):
        indices.append(frame.index)
        scores.append(frame.quality)
        fov = frame.fov
        if sink is not None:
            sink.write(frame.image.tobytes())
        else:
            kept.append(frame.image)
    frames = np.stack(kept) if kept else np.zeros((0, prep.size, prep.size), np.uint8)
    return PreparedFrames(np.asarray(indices, np.int64), np.asarray(scores, np.float32),
                          asdict(fov) if fov is not None else {}, report.corrupt, frames=frames, size=prep.size)
