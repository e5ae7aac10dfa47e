"""Reading CLE images and videos as grayscale frames.

Every reader returns frames as float32 arrays in [0, 1] of shape (H, W). Colour images whose channels are
equal (pCLE videos are stored that way) are gray; otherwise one channel is chosen (``red`` for
immunofluorescence stained with a red dye) or the luminance is used. Videos are read by ``video``, frame by
frame, through :func:`to_gray`; the frame selection of a manifest row is :class:`FrameSelection`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa.errors import ConfigError, MucosaError, MucosaWarning, UnreadableFileError

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mpg", ".mpeg", ".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm"})
CHANNELS = ("auto", "luminance", "red", "green", "blue")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def path_key(path: Path) -> str:
    """One key for every spelling of a path (relative or absolute, with ``..``); links are not followed, so
    two paths to one file through a link stay two, as the user named them."""
    return os.path.normpath(Path(path).absolute())


def media_in(folder: Path) -> list[Path]:
    """The images and videos in a folder and its subfolders, sorted; hidden ones (a ``.name`` file, or in a
    ``.name`` folder such as ``.ipynb_checkpoints``) are skipped."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if (is_image(p) or is_video(p)) and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


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

MIN_SIDE = 8  # smaller images and video frames carry too little for the field of view and the model
MAX_PIXELS = 250_000_000  # default limit of an image's width x height, checked before decoding


def check_frame_size(source: str | Path, width: int, height: int, max_pixels: int | None = None,
                     what: str = "image") -> None:
    """Refuse an image (or video frame) size that is too small to use or too large to decode safely.

    Raises:
        UnreadableFileError: naming the file and its size.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UnreadableFileError(f"{source}: {what} is {width}x{height} pixels; mucosa needs at least "
                                  f"{MIN_SIDE}x{MIN_SIDE}")
    if width * height > limit:
        raise UnreadableFileError(
            f"{source}: {what} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
            f"limit of {limit / 1e6:g} megapixels; not decoded (raise preprocessing.max_pixels if the file is "
            "genuine)")


def to_gray(array: np.ndarray, channel: str = "auto", source: str | Path = "image") -> np.ndarray:
    """Convert an image array of any integer or float dtype to gray float32 (H, W) in [0, 1].

    Integers are divided by their type's maximum; floats by their largest finite value when it exceeds 1.
    NaN and infinite pixels count as missing: they become 0 (black) and a ``MucosaWarning`` names the file.
    The channel is chosen before the conversion to float, so a colour image is never held as float RGB.

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha is dropped).
        channel: ``auto`` (gray if the colour channels are equal, else luminance), ``luminance``,
            ``red``, ``green`` or ``blue``.
        source: named in error messages and warnings.
    """
    if channel not in CHANNELS:
        raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        divisor = _divisor(array, source)
        if array.shape[2] == 1:
            return _scaled(array[..., 0], divisor)
        rgb = array[..., :3]
        if channel in ("red", "green", "blue"):
            return _scaled(rgb[..., ("red", "green", "blue").index(channel)], divisor)
        if channel == "auto" and _channels_equal(rgb, divisor):
            return _scaled(rgb[..., 0], divisor)
        gray = sum(_finite(rgb[..., i]) * float(weight) for i, weight in enumerate(_LUMA))
        return np.clip(gray / divisor, 0.0, 1.0).astype(np.float32)
    if array.ndim != 2:
        raise UnreadableFileError(
            f"{source}: image has shape {array.shape}; expected one 2-D gray or RGB image "
            "(multi-page stacks are not supported: write one image per file)")
    return _scaled(array, _divisor(array, source))


def array_frames(array: np.ndarray, channel: str = "auto", max_pixels: int | None = None
                 ) -> tuple[bool, list[np.ndarray]]:
    """An in-memory image or stack of frames, of any integer or float dtype, as gray float32 frames.

    Args:
        array: (H, W) or (H, W, 1|3|4): one still image; (N, H, W): N frames of one video or case,
            scaled together (one intensity range for the stack).
        max_pixels: refuse frames with more pixels, before anything is converted (default :data:`MAX_PIXELS`),
            as for a file (:func:`check_frame_size`).

    Returns:
        ``(still, frames)``: whether it is one still image, and the (H, W) frames in [0, 1].
    """
    array = np.asarray(array)
    still = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    side = array.shape[:2] if still else array.shape[1:]
    if array.ndim not in (2, 3) or array.size == 0 or min(side) < MIN_SIDE:
        raise UnreadableFileError(f"array: shape {array.shape}; expected a non-empty (H, W) or (H, W, C) image, "
                                  f"or (N, H, W) frames, at least {MIN_SIDE}x{MIN_SIDE} pixels")
    check_frame_size("array", side[1], side[0], max_pixels, "frame")
    if still:
        return True, [to_gray(array, channel, "array")]
    stack = _scaled(array, _divisor(array, "array"))
    return False, [np.ascontiguousarray(frame) for frame in stack]


def _divisor(array: np.ndarray, source: str | Path) -> float:
    """What maps the array's values to [0, 1]: the type's maximum, or the peak finite value of a float image.

    Warns (once per call) when a float image holds NaN or infinite values.
    """
    if array.dtype == bool:
        return 1.0
    if np.issubdtype(array.dtype, np.integer):
        return float(np.iinfo(array.dtype).max)
    if not np.issubdtype(array.dtype, np.floating):
        raise UnreadableFileError(f"{source}: unsupported pixel type {array.dtype}")
    finite = np.isfinite(array)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == finite.size:
        raise UnreadableFileError(f"{source}: no pixel has a finite value (all NaN or infinite)")
    if bad:
        warnings.warn(f"{source}: {bad} pixel value(s) are NaN or infinite; treated as missing (black), the image "
                      "is scaled on its finite values", MucosaWarning, stacklevel=4)
    return max(1.0, float(np.max(array, where=finite, initial=-np.inf)))


def _finite(array: np.ndarray) -> np.ndarray:
    """float32 copy with NaN and infinities set to 0."""
    out = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        out[~np.isfinite(out)] = 0.0
    return out


def _scaled(array: np.ndarray, divisor: float) -> np.ndarray:
    out = _finite(array)
    if divisor != 1.0:
        out /= divisor
    return np.ascontiguousarray(out.clip(0.0, 1.0))


def _channels_equal(rgb: np.ndarray, divisor: float = 1.0, tolerance: float = 2.5 / 255) -> bool:
    sample = _finite(rgb[::4, ::4])
    return bool(np.abs(sample - sample[..., :1]).max() <= tolerance * divisor)


def read_image(path: str | Path, channel: str = "auto", max_pixels: int | None = None) -> np.ndarray:
    """Read PNG, TIFF (8/16-bit or float), JPEG or BMP as gray float32 (H, W) in [0, 1].

    The size is checked from the file's header before any pixel is decoded (see :func:`check_frame_size`).
    A TIFF must hold one image: reduced-resolution pages (thumbnails, pyramid levels) are ignored, but a file
    with several full-resolution pages (a stack, or pages of different sizes) is refused with an
    UnreadableFileError naming the page count, rather than silently reading page 1.

    Args:
        max_pixels: refuse images with more pixels (default :data:`MAX_PIXELS`).

    Raises:
        UnreadableFileError: missing, undecodable, too small, too large or multi-page, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path, max_pixels)
        else:
            array = _read_with_pillow(path, max_pixels)
    except MucosaError:
        raise
    except Exception as error:  # Pillow and tifffile raise many types for a broken file
        raise UnreadableFileError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    return to_gray(array, channel, path)


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [page for page in tif.pages if not getattr(page, "is_reduced", False)]
        if not pages:
            raise UnreadableFileError(f"{path}: the TIFF holds no image")
        if len(pages) > 1:
            sizes = sorted({f"{p.imagewidth}x{p.imagelength}" for p in pages})
            raise UnreadableFileError(
                f"{path}: multi-page TIFF ({len(pages)} pages, {', '.join(sizes[:4])}"
                f"{', ...' if len(sizes) > 4 else ''}); mucosa reads one image per file: save each page as its "
                "own file")
        page = pages[0]
        check_frame_size(path, page.imagewidth, page.imagelength, max_pixels)
        array = page.asarray()
        if page.axes.startswith("S") and array.ndim == 3:  # planar RGB: channels first
            array = np.moveaxis(array, 0, -1)
        return array


def _read_with_pillow(path: Path, max_pixels: int | None) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
        try:
            opened = Image.open(path)  # reads the header only
        except Image.DecompressionBombError as error:
            raise UnreadableFileError(f"{path}: image too large to decode safely ({error})") from None
        with opened as image:
            check_frame_size(path, *image.size, max_pixels)
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            elif image.mode == "LA":
                image = image.convert("L")
            return np.asarray(image)
