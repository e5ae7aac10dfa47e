"""The LBP texture features and classifier (mucosa.models.texture)."""

import numpy as np
import pytest

from mucosa.models.texture import SCALES, TextureModel, lbp_histogram, texture_features


def test_lbp_codes_of_flat_and_rotated_frames():
    """A flat frame is code P everywhere (every neighbour as bright as the centre); a quarter turn keeps the
    histogram of the 8-neighbour, radius-1 pattern (its neighbours map onto each other); bins sum to 1."""
    flat = lbp_histogram(np.full((12, 12), 0.4), 8, 1)
    assert flat.shape == (10,) and flat[8] == 1.0
    spot = np.zeros((9, 9))
    spot[4, 4] = 1.0  # the one centre brighter than all its neighbours: code 0, once in 7 x 7 codes
    assert lbp_histogram(spot, 8, 1)[0] == 1 / 49
    frame = np.random.default_rng(0).random((24, 24))
    assert np.allclose(lbp_histogram(frame, 8, 1), lbp_histogram(np.rot90(frame), 8, 1))
    assert not np.allclose(lbp_histogram(frame, 8, 1), flat)
    features = texture_features(frame)
    assert features.shape == (sum(p + 2 for p, _ in SCALES),)
    assert np.allclose([h.sum() for h in np.split(features, np.cumsum([p + 2 for p, _ in SCALES])[:-1])], 1.0)
    with pytest.raises(ValueError, match="too small"):
        lbp_histogram(np.zeros((8, 8)), 16, 5)
    for shape in ((32, 32, 3), (32,), ()):
        with pytest.raises(ValueError, match=r"gray frame \(H, W\), got an array of shape"):
            lbp_histogram(np.zeros(shape), 8, 1)
    for points, radius in ((0, 1), (8, 0), (8, -1)):
        with pytest.raises(ValueError, match="at least 1"):
            lbp_histogram(frame, points, radius)


def reference_lbp(frame, points, radius):
    """LBP of each pixel from its neighbours sampled one by one (scipy's linear map_coordinates)."""
    from scipy import ndimage

    h, w = frame.shape
    rows, cols = np.mgrid[radius:h - radius, radius:w - radius]
    centre = frame[radius:h - radius, radius:w - radius]
    bits = np.stack([ndimage.map_coordinates(frame.astype(np.float64), [rows - radius * np.sin(a),
                                                                        cols + radius * np.cos(a)], order=1) >= centre
                     for a in 2 * np.pi * np.arange(points) / points]).astype(int)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(0)
    codes = np.where(transitions <= 2, bits.sum(0), points + 1)
    return np.bincount(codes.ravel(), minlength=points + 2) / codes.size


@pytest.mark.parametrize("points, radius", SCALES)
def test_lbp_samples_its_neighbours_bilinearly_and_keeps_ties(points, radius):
    frame = np.random.default_rng(2).random((30, 41)).astype(np.float32)
    assert np.array_equal(lbp_histogram(frame, points, radius), reference_lbp(frame, points, radius))
    flat = lbp_histogram(np.full((2 * radius + 5, 2 * radius + 7), 0.37, dtype=np.float32), points, radius)
    assert flat[points] == 1.0  # interpolating a flat patch gives the centre's own value: every neighbour ties
    # an 8-bit diagonal ramp: the neighbours on the centre's own diagonal (2 of P, off the pixel grid where
    # P = 16) are exactly as bright as the centre and count as brighter, with the P / 2 - 1 uphill ones
    ramp = np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8).astype(np.float32) / 255
    assert lbp_histogram(ramp, points, radius)[points // 2 + 1] == 1.0


def test_texture_model_tells_two_textures_apart_and_needs_both_classes():
    rng = np.random.default_rng(1)
    smooth = [texture_features(np.cumsum(rng.random((32, 32)), axis=1) / 32) for _ in range(8)]
    rough = [texture_features(rng.random((32, 32))) for _ in range(8)]
    model = TextureModel().fit(np.stack(smooth[:6] + rough[:6]), [0] * 6 + [1] * 6)
    p = model.probability(np.stack(smooth[6:] + rough[6:]))
    assert p.shape == (4,) and p[:2].max() < 0.5 < p[2:].min()
    with pytest.raises(ValueError, match="both classes"):
        TextureModel().fit(np.stack(rough), [1] * 8)
