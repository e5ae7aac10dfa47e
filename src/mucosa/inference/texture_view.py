"""The atlas's second view of a recording: fine texture near the recording's own resolution.

The network sees a frame at its input size (64x64 for ``configs/pcle.yaml``); what that size has lost
cannot tell a recording of other tissue from the atlas's (on the real pCLE videos, a colorectal video's
embedding scores lie among the brain videos', ``benchmarks/atlas_views.py``). The texture view is the same
field, cropped and brightened as the model's input is, at :data:`TEXTURE_SIZE` pixels a side, described by
multi-scale LBP histograms (``models.texture.texture_vector``); handcrafted descriptors at the recording's
resolution are what the Smart Atlas of André et al. (2011) searched with.

- The atlas keeps the texture of :data:`TEXTURE_FRAMES` evenly spaced frames of each case
  (:func:`spread`).
- A query recording gives the texture of every :data:`TEXTURE_STRIDE`-th used frame of each of its files,
  from the file's first (:func:`textured`): a still image always; a video live, a frame at a time. A tile of
  a tiled still image (``preprocessing.tile``, e.g. the EGC-Z microscopy) is textured alone, as the model sees
  it: the whole image brought to 256 pixels would lose the fine texture that tiling keeps, and pCLE passed an
  EGC-Z model's atlas that way (``benchmarks/atlas_egcz_guard.py``).
- A case's texture score is the median, over those frames, of the distance to the
  ``k``-th nearest atlas texture of another patient; ``verdict.unfamiliar_case`` joins it to the
  embedding's.

Example:
    >>> [n for n in range(20) if textured(n)]
    [0, 8, 16]
    >>> spread(5, 3).tolist()
    [0, 2, 4]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mucosa.data.fov import FieldOfView
from mucosa.data.preparation import Frame, Preprocessing, iter_frames, texture_image
from mucosa.data.readers import FrameSelection
from mucosa.models.texture import SCALES, texture_vector

__all__ = ["TEXTURE_FRAMES", "TEXTURE_SIZE", "TEXTURE_STRIDE", "TEXTURE_WIDTH", "description", "field_texture",
           "file_textures", "frame_texture", "query_textures", "spread", "textured"]

TEXTURE_SIZE = 256  # pixels a side of the texture view (the pCLE videos' fields are 230-400 pixels across)
TEXTURE_FRAMES = 64  # frames of each atlas case in its texture view (as many as score a case's calibration)
TEXTURE_STRIDE = 8  # a query recording's used frames with a texture: the first, then every 8th
TEXTURE_WIDTH = sum(points + 2 for points, _ in SCALES)  # numbers in a texture vector (56)


def description() -> dict:
    """How the texture view is made, recorded in the atlas: an atlas made otherwise is refused."""
    return {"descriptor": "rotation-invariant uniform LBP histograms, square-rooted, L2-normalised",
            "lbp_scales": [list(scale) for scale in SCALES], "size": TEXTURE_SIZE, "width": TEXTURE_WIDTH,
            "atlas_frames_per_case": TEXTURE_FRAMES, "query_stride": TEXTURE_STRIDE,
            "still_tiles": "each tile of a tiled still image alone, brightened as the whole field"}


def spread(count: int, most: int = TEXTURE_FRAMES) -> np.ndarray:
    """Up to ``most`` evenly spaced positions among ``count`` (all of them when ``count <= most``)."""
    if count <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(np.int64))


def textured(position: int) -> bool:
    """Whether the ``position``-th used frame of a recording (from 0) gets a texture."""
    return position % TEXTURE_STRIDE == 0


def frame_texture(frame: Frame, prep: Preprocessing) -> np.ndarray:
    """One prepared frame's texture vector (float32 (56,)), from its decoded source (of a tile, the tile's)."""
    return field_texture(frame.source, frame.fov, prep, frame.box)


def field_texture(source: np.ndarray, fov: FieldOfView, prep: Preprocessing,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The texture vector of a decoded frame's field of view (``Frame.source``, ``Frame.fov``), or of the tile
    of it in ``box`` (``Frame.box``)."""
    return texture_vector(texture_image(source, fov, prep, TEXTURE_SIZE, box))


def file_textures(path: str | Path, prep: Preprocessing, frames: Iterable[int],
                  selection: FrameSelection | str | None = None) -> dict[int, np.ndarray]:
    """The texture vectors of some frames of one file (their frame numbers; a tiled still image's tiles are 0,
    1, ..., each with its own), decoded again; a frame number the file lacks is left out."""
    wanted = {int(n) for n in frames}
    found: dict[int, np.ndarray] = {}
    for frame in iter_frames(path, prep, selection):
        if frame.index in wanted:
            found[frame.index] = frame_texture(frame, prep)
            if len(found) == len(wanted):
                break
    return found


def query_textures(path: str | Path, prep: Preprocessing, used: Iterable[int],
                   selection: FrameSelection | str | None = None) -> np.ndarray | None:
    """A query file's texture vectors: of those of its used frames (their frame numbers, in order) that get one
    (:func:`textured`), decoded again; None when there is none."""
    used = np.asarray(list(used), np.int64)
    numbers = used[[textured(n) for n in range(len(used))]] if len(used) else used
    found = file_textures(path, prep, numbers, selection)
    return np.stack([found[int(n)] for n in numbers if int(n) in found]) if found else None
