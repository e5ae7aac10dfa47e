"""Frame quality: a score in [0, 1] that rates a cropped CLE frame, so that blank, saturated, noise-only and
motion-smeared frames can be dropped (the quality gate, :func:`passes`).

Example:
    >>> import numpy as np
    >>> from mucosa.data.quality import quality_score
    >>> quality_score(np.zeros((64, 64), np.float32))  # a blank frame
    0.0
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

_WORK_SIDE = 128  # quality is measured on the crop shrunk to at most this side (area averaging)

# Each component rises linearly from 0 to 1 between two values of its measure; with the default
# threshold of 0.5 a frame is dropped when any measure is past the middle of its ramp. Calibrated on all
# 13,840 frames of the 20 pCLE brain videos (tests/test_preprocess.py lists the blank and noise-only
# frames found); the comments give what those and the tissue frames measure.
_BRIGHTNESS = (0.08, 0.18)   # 99.5th percentile: blank <= 0.03, the dimmest tissue about 0.2
_SATURATION = (0.6, 0.2)     # share of pixels >= 0.98: at most 0.33 (a third clipped, tissue still seen)
_CONTRAST = (0.01, 0.03)     # standard deviation: blank <= 0.01, the darkest tissue >= 0.035
_STRUCTURE = (0.35, 0.55)    # detail variance kept by 4x4 averaging: noise <= 0.41, tissue >= 0.46
_SHARPNESS = (0.05, 0.25)    # gradient direction balance: smeared 0.10-0.12, fibrous tissue >= 0.15

DEFAULT_QUALITY_THRESHOLD = 0.5
"""Frames scoring below are dropped: with ``quality_score`` being the minimum of the components, a frame
is kept when no component is past the midpoint of its ramp."""


def quality_components(frame: np.ndarray) -> dict[str, float]:
    """Scores in [0, 1] (1 = fine) of a cropped frame (h, w) for each way a frame can be uninformative.

    - ``brightness``: blank or dark frame (99.5th percentile of intensity).
    - ``saturation``: much of the frame clipped white.
    - ``contrast``: flat frame (standard deviation).
    - ``structure``: noise only — pixel noise averages away in 4x4 blocks, tissue structure does not.
    - ``sharpness``: motion smear — gradients vanish along the direction of motion but not across it
      (ratio of the eigenvalues of the gradient structure tensor; isotropic softness is not penalised,
      as smooth tissue is common and informative).
    """
    measures = _quality_measures(frame)
    ramps = {"brightness": _BRIGHTNESS, "saturation": _SATURATION, "contrast": _CONTRAST,
             "structure": _STRUCTURE, "sharpness": _SHARPNESS}
    return {name: _ramp(measures[name], *ramp) for name, ramp in ramps.items()}


STILL_COMPONENTS = ("brightness", "saturation", "contrast")
"""Components that judge a still image. ``structure`` and ``sharpness`` were calibrated on pCLE video, where
the probe streams noise-only and smeared frames; they read the fine texture of sharp eCLE crypt images
(goblet cells a few pixels wide) as noise, and a still image was chosen by the endoscopist anyway."""


def quality_score(frame: np.ndarray, components: tuple[str, ...] | None = None) -> float:
    """Quality in [0, 1] of a cropped frame (h, w): the smallest of ``quality_components``.

    The minimum, not a mean: each component detects a different failure, and any one of them makes a
    frame useless however good the others are (a noise-only frame is bright and contrasted; a mean
    would let that hide the missing structure).

    Args:
        components: the components to use (default all; ``STILL_COMPONENTS`` for still images).
    """
    scores = quality_components(frame)
    return min(scores[name] for name in (components or scores))


def _quality_measures(frame: np.ndarray) -> dict[str, float]:
    """The raw measure behind each quality component (see ``quality_components``)."""
    work = _working(frame)  # (h', w') float32, at most _WORK_SIDE a side
    std = float(work.std())
    flat = std < 1e-4  # structure and direction are undefined on a flat frame; contrast already says 0
    return {
        "brightness": float(np.percentile(work, 99.5)),
        "saturation": float(np.mean(work >= 0.98)),
        "contrast": std,
        "structure": 0.0 if flat else _fine_structure(work),
        "sharpness": 0.0 if flat else _directional_balance(work),
    }


def _working(frame: np.ndarray) -> np.ndarray:
    data = np.asarray(frame, dtype=np.float32)
    if data.ndim != 2 or min(data.shape) < 8:
        raise ValueError(f"expected a frame (H, W) of at least 8x8, got shape {data.shape}")
    data = np.nan_to_num(data)
    scale = _WORK_SIDE / max(data.shape)
    if scale >= 1:
        return data
    size = (max(8, round(data.shape[1] * scale)), max(8, round(data.shape[0] * scale)))
    image = Image.fromarray(np.ascontiguousarray(data), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BOX))


def _fine_structure(data: np.ndarray) -> float:
    """Share of the detail variance (the frame minus its 17x17 local mean) kept by 4x4 block averaging.

    Removing the local mean discards illumination and vignetting, which a noise-only frame also has.
    Pixel noise averages away in blocks (1/16 of its variance is kept if white); cells and fibres,
    several pixels wide, survive.
    """
    detail = data - ndi.uniform_filter(data, 17, mode="reflect")  # (h, w)
    height, width = detail.shape[0] // 4 * 4, detail.shape[1] // 4 * 4
    blocks = detail[:height, :width].reshape(height // 4, 4, width // 4, 4).mean(axis=(1, 3))
    return float(blocks.var() / (detail.var() + 1e-12))


def _directional_balance(data: np.ndarray) -> float:
    """Smaller over larger eigenvalue of the mean gradient structure tensor (1 = no preferred direction)."""
    gx = data[1:-1, 2:] - data[1:-1, :-2]  # (h-2, w-2)
    gy = data[2:, 1:-1] - data[:-2, 1:-1]
    jxx, jyy, jxy = float(np.mean(gx * gx)), float(np.mean(gy * gy)), float(np.mean(gx * gy))
    half_trace = (jxx + jyy) / 2
    spread = math.hypot((jxx - jyy) / 2, jxy)
    return (half_trace - spread) / (half_trace + spread + 1e-12)


def _ramp(value: float, zero: float, one: float) -> float:
    """0 at ``zero``, 1 at ``one``, linear between (``one`` may be below ``zero``)."""
    return float(np.clip((value - zero) / (one - zero), 0.0, 1.0))



def passes(quality, threshold: float):
    """The quality gate, the one rule every path applies: a frame is used when its score reaches the
    threshold. Works on a float or an array of scores."""
    return np.asarray(quality) >= threshold if np.ndim(quality) else quality >= threshold
