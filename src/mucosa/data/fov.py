"""Field of view and resizing for CLE frames (grayscale float32 (H, W) in [0, 1]).

A CLE frame holds the tissue image inside a field of view: a circle on black for probe-based CLE
(Cellvizio), a bright rectangle on a dark border with patient/equipment text for endoscope-based CLE.
``detect_field_of_view`` finds it and gives the largest square inside it, so that no border, rim or
burned-in overlay (logo, scale bar, text) reaches the model. Frame quality is scored in ``mucosa.data.quality``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from mucosa.errors import ConfigError

# --- field of view -------------------------------------------------------------------------------

_LIT_ABOVE_FLOOR = 0.02   # a pixel belongs to the field when brighter than the darkest 1% plus this
_MIN_LIT_SHARE = 0.03     # frames with less of the image lit are dark and ignored (overlays alone are ~1%)
_MIN_FIELD_SHARE = 0.02   # a field smaller than this share of the image is not trusted
_FULL_SHARE = 0.97        # a field covering this share of the image leaves nothing to strip
_RECT_FILL = 0.95         # convex hull / bounding box of a rectangular field (a circle gives pi/4)
_CIRCLE_FILL = 0.6        # convex hull of a circular field / the disc inside the frame
_CIRCLE_TOL = 0.02        # hull points this far from the circle (share of the radius) are off it
_MAX_HULL_POINTS = 40     # circles through all triples of at most this many hull vertices are tried
_MAX_RIM_GAP = 1.2 * math.pi  # widest arc (radians) of the rim that may be unseen (dark or off-frame)
_LIT_OUTSIDE = 0.05       # share of the frame outside the field that may be lit (overlays)
_MARGIN = 0.02            # share of the radius (circle) or side (rectangle) kept away from the rim


@dataclass(frozen=True)
class FieldOfView:
    """Where the tissue image lies in a frame, and the square crop to take from it.

    Attributes:
        kind: ``circle``, ``rectangle``, ``full`` (nothing to strip), ``box`` (fixed from config) or ``disc``
            (a circular field kept whole: its bounding box, black outside the circle).
        box: (x0, y0, x1, y1), end-exclusive pixel bounds of the crop (square when detected or fixed).
        center: (x, y) of a circular field, in pixels.
        radius: of a circular field, in pixels.
    """

    kind: str
    box: tuple[int, int, int, int]
    center: tuple[float, float] | None = None
    radius: float | None = None


def detect_field_of_view(frames: np.ndarray) -> FieldOfView:
    """Find the field of view of one frame (H, W) or of several frames (N, H, W) of one source.

    Dark frames are left out. The field is what is lit in at least half of the other frames; the circle
    is fitted to the convex hull of that region, so tissue that is dark near the rim (a bite into the lit
    region) does not shrink it, and a rim clipped by the frame edge is handled. Burned-in overlays (logo,
    scale bar, text) are thin strokes apart from the field: an opening and keeping the largest lit
    region remove them. Frames may be integer (e.g. uint8) or float in [0, 1]. When nothing usable is
    lit (e.g. one black frame), or the lit region is neither a disc nor a rectangle, the result is
    ``full``: the largest centred square of the frame.
    """
    stack = _as_stack(frames)  # (N, H, W)
    height, width = stack.shape[1:]
    lit, field = _field_mask(stack)  # (H, W) bool each
    area = int(field.sum())
    if area < _MIN_FIELD_SHARE * height * width or area >= _FULL_SHARE * height * width:
        return _full(height, width)
    points = _outline(field)  # (P, 2) x, y of the field's boundary pixels
    try:
        hull = ConvexHull(points)
    except QhullError:  # all on one line
        return _full(height, width)
    ys, xs = np.nonzero(field)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    yy, xx = np.ogrid[:height, :width]
    if hull.volume >= _FULL_SHARE * (height - 1) * (width - 1):
        return _full(height, width)
    if hull.volume >= _RECT_FILL * (x1 - x0 - 1) * (y1 - y0 - 1):
        inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        return _rectangle(x0, y0, x1, y1) if _dark_outside(lit, inside) else _full(height, width)
    circle = _fit_circle(points[hull.vertices])
    if circle is None:
        return _full(height, width)
    (cx, cy), radius = circle
    # A real field fills its circle (up to bites of dark tissue) and has only overlays around it; a few
    # hull points of an irregular bright region (a nerve in widefield fluorescence) can lie on a circle too.
    distance2 = (xx - cx) ** 2 + (yy - cy) ** 2  # (H, W)
    rim = distance2 <= (radius * (1 + _CIRCLE_TOL) + 2) ** 2
    if hull.volume < _CIRCLE_FILL * np.count_nonzero(distance2 <= radius**2) or (field & ~rim).any() \
            or not _dark_outside(lit, rim):
        return _full(height, width)
    box = _square_in_circle(cx, cy, radius * (1 - _MARGIN) - 1.0, height, width)
    return FieldOfView("circle", box, (cx, cy), radius)


def fixed_field_of_view(box: tuple[int, int, int, int] | list[int], shape: tuple[int, int]) -> FieldOfView:
    """A field of view from a configured square box (x0, y0, x1, y1), checked against a frame (H, W)."""
    height, width = int(shape[0]), int(shape[1])
    values = tuple(box) if isinstance(box, (tuple, list)) else ()
    integers = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if len(values) != 4 or not integers:
        raise ConfigError(f"crop box {box!r} must be four integers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (int(v) for v in values)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(f"crop box [{x0}, {y0}, {x1}, {y1}] does not fit a frame of {width}x{height} "
                          f"(width x height); need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    if x1 - x0 != y1 - y0:
        raise ConfigError(f"crop box [{x0}, {y0}, {x1}, {y1}] is {x1 - x0}x{y1 - y0}, not square "
                          f"(frame {width}x{height}); give x1 - x0 == y1 - y0")
    return FieldOfView("box", (x0, y0, x1, y1))


def whole_disc(fov: FieldOfView, shape: tuple[int, int]) -> FieldOfView:
    """A circular field kept whole (kind ``disc``): the circle's bounding box, clipped to the frame (H, W);
    ``crop`` blacks out what lies outside the circle (overlays included). Other fields are returned as
    they are."""
    if fov.kind != "circle":
        return fov
    (cx, cy), radius = fov.center, fov.radius * (1 - _MARGIN) - 1.0
    height, width = shape
    box = (max(0, int(math.floor(cx - radius))), max(0, int(math.floor(cy - radius))),
           min(width, int(math.ceil(cx + radius))), min(height, int(math.ceil(cy + radius))))
    return FieldOfView("disc", box, fov.center, radius)


def crop(frame: np.ndarray, fov: FieldOfView) -> np.ndarray:
    """The part (h, w) of a frame (H, W) inside ``fov.box`` (a view, not a copy; for a ``disc`` a copy
    with everything outside the circle set to 0)."""
    x0, y0, x1, y1 = fov.box
    height, width = frame.shape[:2]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(f"field-of-view box [{x0}, {y0}, {x1}, {y1}] does not fit a frame of "
                          f"{width}x{height} (width x height); frames of one source must share a size")
    part = frame[y0:y1, x0:x1]
    if fov.kind == "disc":
        part = np.where(_disc_mask(tuple(fov.box), tuple(fov.center), fov.radius), part, 0).astype(frame.dtype)
    return part


@functools.lru_cache(maxsize=8)
def _disc_mask(box: tuple[int, int, int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """(h, w) bool, True inside the circle; computed once per field, not per frame (streams call crop for
    every frame)."""
    x0, y0, x1, y1 = box
    ys, xs = np.ogrid[y0:y1, x0:x1]
    mask = (xs + 0.5 - center[0]) ** 2 + (ys + 0.5 - center[1]) ** 2 <= radius * radius
    mask.flags.writeable = False
    return mask


def field_mask(fov: FieldOfView, shape: tuple[int, int], box: tuple[int, int, int, int] | None = None
               ) -> np.ndarray:
    """Which pixels of a model frame lie inside the field of view: (h, w) bool for ``shape`` (h, w).

    The model frame is ``box`` (default ``fov.box``; a tile's box for a tiled image) of the source frame,
    resized to ``shape``. A circular field (kinds ``circle`` and ``disc``) is its circle, as :func:`crop`
    draws it; the other kinds are rectangles that fill their box, so every pixel is inside. Grad-CAM is
    masked with it: the black outside a ``disc`` crop is not tissue, whatever the heat there.
    """
    height, width = int(shape[0]), int(shape[1])
    if fov.center is None or fov.radius is None:
        return np.ones((height, width), bool)
    x0, y0, x1, y1 = box or fov.box
    xs = x0 + (np.arange(width) + 0.5) * (x1 - x0) / width  # source coordinates of the pixel centres
    ys = y0 + (np.arange(height) + 0.5) * (y1 - y0) / height
    return (xs[None, :] - fov.center[0]) ** 2 + (ys[:, None] - fov.center[1]) ** 2 <= fov.radius ** 2


def tile_boxes(box: tuple[int, int, int, int], side: int) -> list[tuple[int, int, int, int]]:
    """The boxes (x0, y0, x1, y1) of the ``side``-pixel tiles :func:`tiles` cuts from the field in ``box``,
    row by row, the grid centred; the box itself when the field is smaller than ``side`` (or ``side`` is 0)."""
    x0, y0, x1, y1 = box
    rows, cols = ((y1 - y0) // side, (x1 - x0) // side) if side > 0 else (0, 0)
    if rows == 0 or cols == 0:
        return [tuple(box)]
    top, left = y0 + ((y1 - y0) - rows * side) // 2, x0 + ((x1 - x0) - cols * side) // 2
    return [(left + c * side, top + r * side, left + (c + 1) * side, top + (r + 1) * side)
            for r in range(rows) for c in range(cols)]


def tiles(field: np.ndarray, side: int) -> list[np.ndarray]:
    """Non-overlapping ``side``-pixel tiles (views) of a field (h, w), row by row, the grid centred.

    Microscopy images whose cells are small next to the frame keep their detail this way instead of
    being downsampled whole. A field smaller than ``side`` in either direction is one tile: itself.
    """
    height, width = field.shape[:2]
    boxes = tile_boxes((0, 0, width, height), side)
    if boxes == [(0, 0, width, height)]:
        return [field]
    return [field[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]


def _as_stack(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] == 0 or min(frames.shape[1:]) < 8:
        raise ValueError(f"expected one frame (H, W) or frames (N, H, W) of at least 8x8, got {frames.shape}")
    if np.issubdtype(frames.dtype, np.integer):
        return frames.astype(np.float32) / np.float32(np.iinfo(frames.dtype).max)
    return np.nan_to_num(frames.astype(np.float32, copy=False))


def _field_mask(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lit pixels (H, W) of the frames without thin strokes, and the field: their largest region, filled."""
    height, width = stack.shape[1:]
    floor = float(np.percentile(stack[:, ::4, ::4], 1))
    lit = stack > floor + _LIT_ABOVE_FLOOR  # (N, H, W)
    share = lit.mean(axis=(1, 2))
    bright = share >= _MIN_LIT_SHARE
    # Lit in at least half of the frames that are not dark: compression ringing just outside the rim
    # comes and goes with the tissue, the field itself does not.
    lit = (lit[bright] if bright.any() else lit).mean(axis=0) >= 0.5  # (H, W)
    # Text strokes and thin bars (a few pixels wide) vanish in an opening (square, separable: fast);
    # what stays apart from the largest lit region (the logo's glyph, short labels) is dropped.
    size = 2 * max(2, round(min(height, width) / 100)) + 1
    lit = ndi.maximum_filter(ndi.minimum_filter(lit, size, mode="nearest"), size, mode="constant")
    labels, count = ndi.label(lit)
    if count == 0:
        return lit, lit
    sizes = np.bincount(labels.ravel())[1:]
    return lit, ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _outline(mask: np.ndarray) -> np.ndarray:
    """(P, 2) x, y of the pixels on the boundary of a mask (the image edge counts as boundary)."""
    edge = mask & ~ndi.binary_erosion(mask, border_value=0)
    ys, xs = np.nonzero(edge)
    return np.stack([xs, ys], axis=1).astype(np.float64)


def _dark_outside(lit: np.ndarray, inside: np.ndarray) -> bool:
    """Whether little is lit outside a region: only overlays, no tissue."""
    outside = ~inside
    return not outside.any() or lit[outside].mean() <= _LIT_OUTSIDE


def _fit_circle(points: np.ndarray) -> tuple[tuple[float, float], float] | None:
    """Circle through the convex-hull vertices (P, 2) of the field, or None when they are not on one.

    Hull vertices lie on the rim even where dark tissue bites into the lit region (a bite only adds a
    chord) and where the frame edge clips the circle (the chord ends lie on the circle); a ragged dark
    edge still leaves some vertices inside the rim. So the circle is the one through three vertices
    that most others lie on and that none lies far outside of (the field is eaten into by dark tissue,
    never extended), refined by least squares on the vertices near it.
    """
    if len(points) > _MAX_HULL_POINTS:  # keep every k-th vertex, in hull order (spread along the rim)
        points = points[np.linspace(0, len(points) - 1, _MAX_HULL_POINTS).round().astype(int)]
    if len(points) < 8:
        return None
    triples = _triples(len(points))  # (T, 3)
    centers, radii = _circles_through(points[triples])  # (T, 2), (T,)
    good = np.isfinite(radii) & (radii > 4)
    centers, radii = centers[good], radii[good]
    distance = np.hypot(points[:, 0] - centers[:, :1], points[:, 1] - centers[:, 1:])  # (T, P)
    residual = distance - radii[:, None]
    tolerance = np.maximum(1.5, _CIRCLE_TOL * radii)[:, None]  # (T, 1)
    score = (np.abs(residual) <= tolerance).sum(axis=1) - 3 * (residual > 2 * tolerance).sum(axis=1)
    if len(score) == 0:
        return None
    best = int(np.argmax(score))
    keep = np.abs(residual[best]) <= tolerance[best, 0]
    for _ in range(3):
        if keep.sum() < 8:
            return None
        cx, cy, radius = _algebraic_circle(points[keep])
        distance = np.hypot(points[:, 0] - cx, points[:, 1] - cy) - radius
        keep = np.abs(distance) <= max(1.5, _CIRCLE_TOL * radius)
    if keep.sum() < 8 or not np.isfinite(radius) or radius < 4:
        return None
    # The rim must be seen over a wide arc, the rest being dark or off the frame.
    angles = np.sort(np.arctan2(points[keep, 1] - cy, points[keep, 0] - cx))
    if np.max(np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))) > _MAX_RIM_GAP:
        return None
    return (float(cx), float(cy)), float(radius)


@functools.cache
def _triples(count: int) -> np.ndarray:
    return np.array(list(itertools.combinations(range(count), 3)))


def _circles_through(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (T, 2) and radii (T,) of the circles through triangles (T, 3, 2); inf when collinear."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    ab, ac = b - a, c - a
    det = 2 * (ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])
    ab2, ac2 = (ab**2).sum(axis=1), (ac**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (ac[:, 1] * ab2 - ab[:, 1] * ac2) / det
        uy = (ab[:, 0] * ac2 - ac[:, 0] * ab2) / det
    radii = np.hypot(ux, uy)
    radii[~np.isfinite(radii)] = np.inf
    return a + np.stack([ux, uy], axis=1), radii


def _algebraic_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle (Kasa): x^2 + y^2 + D x + E y + F = 0."""
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    (d, e, f), *_ = np.linalg.lstsq(design, -(x * x + y * y), rcond=None)
    cx, cy = -d / 2, -e / 2
    return cx, cy, math.sqrt(max(cx * cx + cy * cy - f, 0.0))


def _square_in_circle(cx: float, cy: float, radius: float, height: int, width: int
                      ) -> tuple[int, int, int, int]:
    """Largest square with integer bounds inside both the circle and the frame, as near its centre as fits."""
    side = min(int(radius * math.sqrt(2)), height, width)
    while side > 1:
        x0 = int(round(min(max(cx - side / 2, 0), width - side)))
        y0 = int(round(min(max(cy - side / 2, 0), height - side)))
        # Farthest pixel corner of the square from the centre must stay within the radius.
        dx = max(abs(x0 - cx), abs(x0 + side - cx))
        dy = max(abs(y0 - cy), abs(y0 + side - cy))
        if dx * dx + dy * dy <= radius * radius:
            return x0, y0, x0 + side, y0 + side
        side -= 1
    x0 = min(max(int(cx), 0), width - 1)
    y0 = min(max(int(cy), 0), height - 1)
    return x0, y0, x0 + 1, y0 + 1


def _rectangle(x0: int, y0: int, x1: int, y1: int) -> FieldOfView:
    margin = max(1, round(_MARGIN * min(x1 - x0, y1 - y0)))
    x0, y0, x1, y1 = x0 + margin, y0 + margin, x1 - margin, y1 - margin
    side = min(x1 - x0, y1 - y0)
    bx = x0 + (x1 - x0 - side) // 2
    by = y0 + (y1 - y0 - side) // 2
    return FieldOfView("rectangle", (bx, by, bx + side, by + side))


def _full(height: int, width: int) -> FieldOfView:
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return FieldOfView("full", (x0, y0, x0 + side, y0 + side))


# --- resizing and pixel types ---------------------------------------------------------------------

def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Frame (h, w) → float32 (size, size): area averaging when shrinking, bilinear when enlarging.

    A frame that is not square is stretched; crop to a square first to keep the aspect ratio.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    data = np.asarray(frame, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"expected a frame (H, W), got shape {data.shape}")
    height, width = data.shape
    if (height, width) == (size, size):
        return data.copy()
    shrink = height >= size and width >= size
    image = Image.fromarray(np.ascontiguousarray(data), mode="F")
    out = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


_STRETCH = (1.0, 99.5)  # percentiles mapped to 0 and 1 by ``stretch_levels``
_MIN_RANGE = 0.02      # a field with less contrast than this is left as it is (blank, not tissue)


def stretch_levels(field: np.ndarray) -> tuple[float, float]:
    """Intensity levels (low, high) that ``stretch`` maps to 0 and 1: the 1st and 99.5th percentiles.

    Evens out gain, exposure and background differences between animals, stains and sessions; a
    field without contrast (blank) gets (0, 1), which leaves it unchanged.
    """
    low, high = (float(v) for v in np.percentile(np.asarray(field)[::2, ::2], _STRETCH))
    return (low, high) if high - low >= _MIN_RANGE else (0.0, 1.0)


def stretch(frame: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    """Frame (h, w) in [0, 1] → float32 with ``levels`` mapped to 0 and 1, clipped to [0, 1]."""
    low, high = levels
    return np.clip((np.asarray(frame, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """Float frame in [0, 1] → uint8 in [0, 255] (rounded, values outside [0, 1] clipped)."""
    return np.round(np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)

