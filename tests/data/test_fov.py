"""Field of view, resizing and quality: synthetic frames, then the real pCLE videos of ../shared/data."""

import math
import time
from pathlib import Path

import av
import numpy as np
import pytest
from scipy import ndimage as ndi

from mucosa.data.fov import (
    FieldOfView,
    crop,
    detect_field_of_view,
    field_mask,
    fixed_field_of_view,
    resize,
    tile_boxes,
    tiles,
    to_uint8,
    whole_disc,
)
from mucosa.data.quality import (
    DEFAULT_QUALITY_THRESHOLD,
    quality_components,
    quality_score,
)
from mucosa.errors import ConfigError

# Uninformative frames of the pCLE brain videos (name: frame indices, counted from 0 in decode order).
# Found by scanning every frame of all 20 videos (13,840) at the quality code's working resolution
# for a low 99.5th percentile / standard deviation (blank) and for detail that averages away like noise
# (noise only), then checked by eye on contact sheets; the videos repeat each frame twice.
BLANK_FRAMES = {
    "gbm-01": [500, 501],
    "gbm-04": [848, 849, 850, 851],  # 848-849: black but for a smeared cap at the very top
    "men-08": [340, 341],
    "men-12": [972, 973, 974, 975],
}
NOISE_FRAMES = {
    "men-03": [0, 1, 2, 3],               # bright speckle, probe not yet on tissue
    "men-08": [0, 1, 6, 7, 12, 13],       # bright speckle with fibre-bundle pattern
    "men-12": [0, 1, 4, 5,                # dim speckle with two or three blobs;
               976, 977, 980, 981],       # at the end the probe leaves the tissue (also below)
    "men-02": [596, 597, 600, 601],
    "men-06": [478, 479, 480, 481],
    "men-10": [992, 993, 996, 997, 1000, 1001],
    "gbm-04": [856, 857, 860, 861],
}
# Videos in which (almost) every frame shows tissue; 0 to 0.4% of their frames score below the default
# threshold (4.7% at most, in men-08, among all 20 videos).
GOOD_VIDEOS = ["gbm-02", "men-04", "men-11"]
# Circle of the pCLE brain videos, read off a maximum projection of all frames of gbm-01 by eye:
# lit columns 67-395 on the middle row, rows 2-332 on the middle column.
BRAIN_CENTER, BRAIN_RADIUS = (231.0, 167.0), 165.5
# Colon video: the circle is cut by the left and right frame edges; lit rows 7-584 on the middle column.
COLON_CENTER, COLON_RADIUS = (287.5, 295.5), 289.0


# --- helpers ---------------------------------------------------------------------------------------

def _video(pcle_brain: Path, name: str) -> Path:
    folder = "glioblastoma" if name.startswith("gbm") else "meningioma"
    return pcle_brain / folder / f"{name}.mpg"


def _decode(path: Path, indices) -> dict[int, np.ndarray]:
    """Frames at the given indices, float32 (H, W) in [0, 1]; decodes no further than needed."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="gray").astype(np.float32) / 255.0
            if index >= max(wanted):
                break
    assert set(frames) == wanted, f"{path.name}: frames {sorted(wanted - set(frames))} not found"
    return frames


def _tissue(shape, seed: int = 0, sigma: float = 6.0) -> np.ndarray:
    """Smooth random texture in [0.1, 0.9], blobs a few percent of the frame wide."""
    texture = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return (0.1 + 0.8 * texture).astype(np.float32)


def _disc(shape, center, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2


def _overlays(shape) -> np.ndarray:
    """A Cellvizio-like logo (glyph + thin letters) bottom-left and a scale bar with label bottom-right."""
    mask = np.zeros(shape, bool)
    h, w = shape
    mask[h - 24 : h - 12, 6:18] = True                      # logo glyph, a solid block
    for x in range(22, 70, 5):                               # letters: 2-pixel strokes
        mask[h - 24 : h - 12, x : x + 2] = True
    mask[h - 24 : h - 22, 22:70] = True
    mask[h - 30 : h - 27, w - 60 : w - 20] = True            # scale bar
    for x in range(w - 58, w - 22, 6):                       # its "20 um" label
        mask[h - 22 : h - 10, x : x + 2] = True
    mask[h // 2 : h // 2 + 2, w - 70 :] = True               # a text line reaching into the field
    return mask


def _circle_frame(shape=(240, 320), center=(160.0, 112.0), radius=100.0, seed=0, overlays=True) -> np.ndarray:
    inside = _disc(shape, center, radius)
    frame = np.where(inside, _tissue(shape, seed), 0.0).astype(np.float32)
    if overlays:
        frame[_overlays(shape) & ~inside] = 1.0
    return frame


def _corners(box):
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]


def _assert_square_in_circle(fov: FieldOfView, center, radius, shape) -> None:
    x0, y0, x1, y1 = fov.box
    assert x1 - x0 == y1 - y0 > 0
    assert x0 >= 0 and y0 >= 0 and x1 <= shape[1] and y1 <= shape[0]
    for x, y in _corners(fov.box):
        assert math.hypot(x - center[0], y - center[1]) <= radius, f"corner {(x, y)} outside the circle"


# --- field of view: synthetic ----------------------------------------------------------------------

def test_circle_found_and_square_inside_it_without_overlays():
    center, radius = (160.0, 112.0), 100.0
    frame = _circle_frame(center=center, radius=radius)
    fov = detect_field_of_view(frame)
    assert fov.kind == "circle"
    assert math.dist(fov.center, center) < 1.0 and abs(fov.radius - radius) < 1.5
    _assert_square_in_circle(fov, center, radius, frame.shape)
    x0, y0, x1, y1 = fov.box
    assert x1 - x0 >= 0.93 * radius * math.sqrt(2)          # the largest square, less a small margin
    assert abs((x0 + x1) / 2 - center[0]) <= 1 and abs((y0 + y1) / 2 - center[1]) <= 1
    overlays = _overlays(frame.shape) & ~_disc(frame.shape, center, radius)
    assert not overlays[y0:y1, x0:x1].any()
    # The overlays, even one touching the field, change nothing: the same field without them.
    assert detect_field_of_view(_circle_frame(center=center, radius=radius, overlays=False)) == fov


def test_disc_keeps_the_whole_circle_and_blacks_out_the_overlays():
    center, radius = (160.0, 112.0), 100.0
    frame = _circle_frame(center=center, radius=radius)
    disc = whole_disc(detect_field_of_view(frame), frame.shape)
    x0, y0, x1, y1 = disc.box
    assert disc.kind == "disc" and x1 - x0 >= 0.95 * 2 * radius and (y0, y1) == (max(0, y0), min(240, y1))
    frame[y0 + 1: y0 + 6, x0 + 1: x0 + 6] = 1.0  # a bright overlay in the box's corner, outside the circle
    part = crop(frame, disc)
    inside = _disc(frame.shape, center, disc.radius - 1)[y0:y1, x0:x1]
    outside = ~_disc(frame.shape, center, disc.radius + 1)[y0:y1, x0:x1]
    np.testing.assert_array_equal(part[inside], frame[y0:y1, x0:x1][inside])  # the field untouched
    assert not part[outside].any() and frame[y0:y1, x0:x1][outside].any()
    rectangle = FieldOfView("rectangle", (10, 10, 50, 50))
    assert whole_disc(rectangle, frame.shape) is rectangle  # only circles are discs


def test_circle_with_tissue_dark_near_the_rim():
    center, radius = (160.0, 112.0), 100.0
    frame = _circle_frame(center=center, radius=radius)
    yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
    angle = np.degrees(np.arctan2(yy - center[1], xx - center[0]))
    frame[(angle > -20) & (angle < 100) & (np.hypot(xx - center[0], yy - center[1]) > 0.5 * radius)] = 0.005
    fov = detect_field_of_view(frame)
    assert fov.kind == "circle"
    assert math.dist(fov.center, center) < 2.0 and abs(fov.radius - radius) < 2.0
    _assert_square_in_circle(fov, center, radius, frame.shape)


def test_circle_clipped_by_the_frame_edges():
    shape, center, radius = (220, 200), (100.0, 110.0), 104.0  # cut off left and right, like the colon video
    frame = _circle_frame(shape, center, radius, overlays=False)  # no room for them outside
    fov = detect_field_of_view(frame)
    assert fov.kind == "circle"
    assert math.dist(fov.center, center) < 1.5 and abs(fov.radius - radius) < 2.0
    _assert_square_in_circle(fov, center, radius, shape)
    assert fov.box[2] - fov.box[0] >= 0.93 * radius * math.sqrt(2)


def test_rectangle_with_text_in_the_border():
    shape, (rx0, ry0, rx1, ry1) = (256, 300), (60, 30, 250, 220)  # eCLE-like: image on a border with text
    frame = np.random.default_rng(1).uniform(0, 0.02, shape).astype(np.float32)
    frame[ry0:ry1, rx0:rx1] = _tissue((ry1 - ry0, rx1 - rx0), seed=2)
    text = np.zeros(shape, bool)
    for y in (40, 60, 80, 100):                    # patient/equipment lines left of the image
        for x in range(6, 50, 4):
            text[y : y + 9, x : x + 2] = True
    text[236:238, 70:240] = True                   # and a line of text below it
    frame[text] = 0.95
    fov = detect_field_of_view(frame)
    assert fov.kind == "rectangle"
    x0, y0, x1, y1 = fov.box
    assert x1 - x0 == y1 - y0 >= 0.9 * min(rx1 - rx0, ry1 - ry0)
    assert rx0 <= x0 and ry0 <= y0 and x1 <= rx1 and y1 <= ry1
    assert abs((x0 + x1) - (rx0 + rx1)) <= 2 and abs((y0 + y1) - (ry0 + ry1)) <= 2
    assert not text[y0:y1, x0:x1].any()


@pytest.mark.parametrize("shape, box", [((200, 300), (50, 0, 250, 200)), ((128, 128), (0, 0, 128, 128))])
def test_full_frame_has_nothing_to_strip(shape, box):
    fov = detect_field_of_view(_tissue(shape, seed=3))
    assert fov.kind == "full" and fov.box == box


def test_black_frame_alone_gives_full_and_in_a_stack_changes_nothing():
    assert detect_field_of_view(np.zeros((240, 320), np.float32)).kind == "full"
    frames = np.stack([_circle_frame(seed=seed) for seed in range(4)])  # (4, H, W)
    with_black = np.concatenate([frames[:2], np.zeros((1, 240, 320), np.float32), frames[2:]])
    fov = detect_field_of_view(frames)
    assert fov.kind == "circle"
    assert detect_field_of_view(with_black) == fov


def test_uint8_frames_detect_like_float_frames():
    frame = _circle_frame()
    assert detect_field_of_view(to_uint8(frame)) == detect_field_of_view(frame)


def test_detect_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="frames"):
        detect_field_of_view(np.zeros((2, 3, 40, 40), np.float32))


# --- fixed box and crop ----------------------------------------------------------------------------

def test_fixed_box_inside_the_frame():
    fov = fixed_field_of_view([10, 20, 110, 120], (240, 320))
    assert fov == FieldOfView("box", (10, 20, 110, 120))
    frame = np.arange(240 * 320, dtype=np.float32).reshape(240, 320)
    part = crop(frame, fov)
    assert part.shape == (100, 100) and part[0, 0] == frame[20, 10] and part[-1, -1] == frame[119, 109]


@pytest.mark.parametrize("box, words", [
    ((0, 0, 330, 330), ["[0, 0, 330, 330]", "320x240"]),        # wider than the frame
    ((-5, 0, 95, 100), ["[-5, 0, 95, 100]", "320x240"]),         # negative
    ((50, 50, 40, 60), ["[50, 50, 40, 60]", "320x240"]),         # x1 before x0
    ((0, 0, 100, 120), ["[0, 0, 100, 120]", "not square"]),
    ((0, 0, 100), ["(0, 0, 100)", "four integers"]),
    ((0, 0, 100.5, 100), ["four integers"]),
])
def test_fixed_box_errors_name_the_box_and_the_frame(box, words):
    with pytest.raises(ConfigError) as error:
        fixed_field_of_view(box, (240, 320))
    for word in words:
        assert word in str(error.value)


def test_crop_refuses_a_box_from_another_frame_size():
    fov = fixed_field_of_view((0, 0, 300, 300), (336, 464))
    with pytest.raises(ConfigError, match="200x200"):
        crop(np.zeros((200, 200), np.float32), fov)


# --- resize and pixel types ------------------------------------------------------------------------

@pytest.mark.parametrize("shape, size", [((227, 227), 300), ((397, 397), 300), ((300, 300), 300),
                                         ((60, 90), 32)])
def test_resize_shape_and_dtype(shape, size):
    out = resize(_tissue(shape, seed=4).astype(np.float64), size)
    assert out.shape == (size, size) and out.dtype == np.float32
    assert out.min() >= 0.1 - 1e-4 and out.max() <= 0.9 + 1e-4


def test_resize_averages_areas_when_shrinking_and_interpolates_when_enlarging():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)  # finest possible pattern
    np.testing.assert_allclose(resize(checker, 32), 0.5, atol=1e-6)      # no aliasing
    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 1.0
    row = resize(step, 32)[0]
    assert np.all(np.diff(row) >= 0) and np.sum((row > 0.05) & (row < 0.95)) >= 2  # a ramp, not a jump


def test_field_mask_is_the_circle_of_a_disc_crop_and_all_of_a_square_inside_it():
    center, radius = (160.0, 112.0), 100.0
    frame = _circle_frame(center=center, radius=radius)
    circle = detect_field_of_view(frame)
    disc = whole_disc(circle, frame.shape)
    part = crop(frame, disc)  # black outside the circle
    mask = field_mask(disc, part.shape)  # at the crop's own size: the pixels crop keeps
    assert mask.shape == part.shape and not mask[0, 0] and not mask[-1, -1] and mask[mask.shape[0] // 2].any()
    np.testing.assert_array_equal(part[~mask], 0)
    assert abs(mask.mean() - math.pi / 4) < 0.02  # a disc in its bounding box
    small = field_mask(disc, (48, 48))  # resized like a model frame
    assert not small[:4, :4].any() and not small[-4:, -4:].any() and small[20:28, 20:28].all()
    assert field_mask(circle, (48, 48)).all()  # the square inside the circle: all tissue
    assert field_mask(FieldOfView("full", (0, 0, 10, 10)), (5, 5)).all()
    corner = tile_boxes(disc.box, 60)[0]  # a tile in the disc's top-left corner: partly outside
    assert 0 < field_mask(disc, (16, 16), corner).mean() < 1


def test_tiles_cover_a_centred_grid_row_by_row():
    field = np.arange(70 * 100, dtype=np.float32).reshape(70, 100)
    parts = tiles(field, 32)  # 2 rows x 3 columns; 6 px left over vertically, 4 horizontally
    assert len(parts) == 6 and all(t.shape == (32, 32) for t in parts)
    np.testing.assert_array_equal(parts[0], field[3:35, 2:34])
    np.testing.assert_array_equal(parts[5], field[35:67, 66:98])
    assert tiles(field, 80)[0] is field  # smaller than a tile: the field itself
    assert tile_boxes((10, 20, 110, 90), 32) == [(12, 23, 44, 55), (44, 23, 76, 55), (76, 23, 108, 55),
                                                 (12, 55, 44, 87), (44, 55, 76, 87), (76, 55, 108, 87)]
    assert tile_boxes((10, 20, 110, 90), 0) == tile_boxes((10, 20, 110, 90), 80) == [(10, 20, 110, 90)]


def test_uint8_round_trip():
    frame = np.linspace(-0.2, 1.2, 1000, dtype=np.float32).reshape(25, 40)
    u8 = to_uint8(frame)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    np.testing.assert_allclose(u8 / 255.0, np.clip(frame, 0, 1), atol=0.5 / 255 + 1e-6)


# --- quality: synthetic ----------------------------------------------------------------------------

def _rotate(frame: np.ndarray, degrees: float) -> np.ndarray:
    return ndi.rotate(frame, degrees, reshape=False, mode="reflect")


def _bad_frames(good: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """Uninformative versions of a structured frame, each with the component that must catch it."""
    rng = np.random.default_rng(5)
    return {
        "black": (np.zeros_like(good), "brightness"),
        "dim": (good * 0.06, "brightness"),
        "saturated": (np.where(good > 0.3, 1.0, good).astype(np.float32), "saturation"),
        "flat": (np.full_like(good, 0.5), "contrast"),
        "noise": (rng.uniform(0, 1, good.shape).astype(np.float32), "structure"),
        # smeared over a quarter of the frame, like the probe sliding during one frame
        "motion": (ndi.uniform_filter1d(good, 81, axis=1), "sharpness"),
        "diagonal motion": (_rotate(ndi.uniform_filter1d(_rotate(good, 45), 81, axis=1), -45), "sharpness"),
    }


def test_quality_keeps_structured_and_drops_uninformative_frames():
    good = _tissue((300, 300), seed=6)
    assert quality_score(good) >= DEFAULT_QUALITY_THRESHOLD
    assert all(value == 1.0 for value in quality_components(good).values())
    for name, (frame, component) in _bad_frames(good).items():
        components = quality_components(frame)
        assert set(components) == {"brightness", "saturation", "contrast", "structure", "sharpness"}
        assert all(0.0 <= value <= 1.0 for value in components.values())
        assert components[component] < DEFAULT_QUALITY_THRESHOLD, (name, components)
        assert quality_score(frame) == min(components.values()) < quality_score(good), name


def test_quality_is_cheap():
    frame = _tissue((300, 300), seed=7)
    quality_score(frame)
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        quality_score(frame)
        timings.append(time.perf_counter() - start)
    assert np.median(timings) < 0.02  # a few ms on one core; generous for a busy test machine


# --- real pCLE videos ------------------------------------------------------------------------------

def _static_bright(frames: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bright in every frame: burned-in overlays (tissue changes from frame to frame)."""
    return frames.min(axis=0) > 0.5


@pytest.mark.realdata
def test_brain_video_circle_excludes_logo_and_scale_bar(pcle_brain):
    frames = _decode(_video(pcle_brain, "gbm-01"), range(0, 500, 20))
    stack = np.stack(list(frames.values()))  # (25, H, W), spread over the video
    fov = detect_field_of_view(stack[:12])
    assert fov.kind == "circle"
    assert math.dist(fov.center, BRAIN_CENTER) < 2.0 and abs(fov.radius - BRAIN_RADIUS) < 2.0
    _assert_square_in_circle(fov, BRAIN_CENTER, BRAIN_RADIUS - 1.0, stack.shape[1:])
    x0, y0, x1, y1 = fov.box
    assert x1 - x0 >= 215
    assert stack.max(axis=0)[y0:y1, x0:x1].min() > 0.05  # every pixel of the crop shows tissue at times
    overlay = _static_bright(stack)
    ys, xs = np.nonzero(overlay)
    logo, bar = (xs < 120) & (ys > 280), (xs > 300) & (ys > 280)
    assert logo.sum() > 50 and bar.sum() > 50 and (logo | bar).all()  # bottom-left logo, bottom-right bar
    assert not overlay[y0:y1, x0:x1].any()
    assert np.hypot(xs - fov.center[0], ys - fov.center[1]).min() > fov.radius  # nor enlarge the circle


@pytest.mark.realdata
def test_colon_video_circle_cut_by_the_frame_edges(pcle_colon_video):
    frames = _decode(pcle_colon_video, range(0, 260, 10))
    stack = np.stack(list(frames.values()))  # (26, 592, 576)
    fov = detect_field_of_view(stack)
    assert fov.kind == "circle"
    assert math.dist(fov.center, COLON_CENTER) < 2.0 and abs(fov.radius - COLON_RADIUS) < 2.0
    assert fov.radius > stack.shape[2] / 2  # wider than the frame
    _assert_square_in_circle(fov, COLON_CENTER, COLON_RADIUS - 1.0, stack.shape[1:])
    x0, y0, x1, y1 = fov.box
    assert x1 - x0 >= 380
    overlay = _static_bright(stack)
    ys, xs = np.nonzero(overlay)
    logo, bar = (xs < 100) & (ys < 40), (xs > 480) & (ys > 540)
    assert logo.sum() > 30 and bar.sum() > 30 and (logo | bar).all()  # top-left logo, bottom-right bar
    assert not overlay[y0:y1, x0:x1].any()


@pytest.mark.realdata
def test_brain_detection_same_for_one_frame_and_many_and_a_black_frame(pcle_brain):
    frames = _decode(_video(pcle_brain, "gbm-01"), [*range(0, 480, 40), 500])
    good = np.stack([frames[i] for i in range(0, 480, 40)])  # (12, H, W)
    fov = detect_field_of_view(good)
    for index in (0, 200, 440):
        single = detect_field_of_view(frames[index])
        assert single.kind == "circle"
        assert math.dist(single.center, fov.center) < 1.0 and abs(single.radius - fov.radius) < 1.0
        assert np.abs(np.subtract(single.box, fov.box)).max() <= 2
    black = frames[500]
    assert black.mean() < 0.01
    assert detect_field_of_view(np.concatenate([good[:5], black[None], good[5:]])) == fov
    assert detect_field_of_view(black).kind == "full"  # nothing to find, and no error


@pytest.mark.realdata
def test_brain_single_frames_dark_at_the_rim_or_noise_only(pcle_brain):
    frames = _decode(_video(pcle_brain, "men-03"), [0, 4, 6])  # 0: noise only; 4, 6: tissue on one side
    shape = frames[4].shape
    rim = _disc(shape, BRAIN_CENTER, BRAIN_RADIUS - 3) & ~_disc(shape, BRAIN_CENTER, BRAIN_RADIUS - 12)
    for index, frame in frames.items():
        if index:
            assert (frame[rim] < 0.03).mean() > 0.3  # the frames are what this test is about
        fov = detect_field_of_view(frame)
        assert fov.kind == "circle"
        _assert_square_in_circle(fov, BRAIN_CENTER, BRAIN_RADIUS - 1.0, frame.shape)


@pytest.fixture(scope="module")
def brain_fov(pcle_brain) -> FieldOfView:
    """Field of view of gbm-01; all 20 brain videos share it (same probe and recorder, within 1 pixel)."""
    frames = _decode(_video(pcle_brain, "gbm-01"), range(0, 480, 40))
    return detect_field_of_view(np.stack(list(frames.values())))


def _brain_crops(pcle_brain: Path, fov: FieldOfView, frames: dict[str, list[int]]) -> dict[str, np.ndarray]:
    return {f"{name}:{index}": crop(frame, fov)
            for name, indices in frames.items()
            for index, frame in _decode(_video(pcle_brain, name), indices).items()}


@pytest.mark.realdata
def test_quality_drops_the_blank_real_frames(pcle_brain, brain_fov):
    for key, frame in _brain_crops(pcle_brain, brain_fov, BLANK_FRAMES).items():
        components = quality_components(frame)
        assert quality_score(frame) < DEFAULT_QUALITY_THRESHOLD, key
        assert components["brightness"] < DEFAULT_QUALITY_THRESHOLD, (key, components)


@pytest.mark.realdata
def test_quality_drops_the_noise_only_real_frames(pcle_brain, brain_fov):
    for key, frame in _brain_crops(pcle_brain, brain_fov, NOISE_FRAMES).items():
        components = quality_components(frame)
        assert quality_score(frame) < DEFAULT_QUALITY_THRESHOLD, key
        assert components["structure"] < DEFAULT_QUALITY_THRESHOLD, (key, components)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", GOOD_VIDEOS)
def test_quality_keeps_the_tissue_frames_of_good_videos(pcle_brain, brain_fov, name):
    scores = []
    with av.open(str(_video(pcle_brain, name))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 3 == 0:
                gray = frame.to_ndarray(format="gray").astype(np.float32) / 255.0
                scores.append(quality_score(crop(gray, brain_fov)))
    scores = np.array(scores)
    assert len(scores) > 90
    assert (scores >= DEFAULT_QUALITY_THRESHOLD).mean() >= 0.95, f"{name}: {np.sort(scores)[:10]}"
