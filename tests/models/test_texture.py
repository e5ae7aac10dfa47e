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


def test_texture_model_tells_two_textures_apart_and_needs_both_classes():
    rng = np.random.default_rng(1)
    smooth = [texture_features(np.cumsum(rng.random((32, 32)), axis=1) / 32) for _ in range(8)]
    rough = [texture_features(rng.random((32, 32))) for _ in range(8)]
    model = TextureModel().fit(np.stack(smooth[:6] + rough[:6]), [0] * 6 + [1] * 6)
    p = model.probability(np.stack(smooth[6:] + rough[6:]))
    assert p.shape == (4,) and p[:2].max() < 0.5 < p[2:].min()
    with pytest.raises(ValueError, match="both classes"):
        TextureModel().fit(np.stack(rough), [1] * 8)
