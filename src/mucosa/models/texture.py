"""A handcrafted texture classifier: multi-scale LBP histograms and a logistic regression.

The non-deep half of the published EGC-Z recipe (texture descriptors fused with CNN features): each frame
becomes its rotation-invariant uniform local binary pattern histograms at four radii (Ojala et al. 2002),
a file the mean of its frames' histograms, and a standardised logistic regression (scikit-learn) gives
the probability of the positive class. ``mucosa texture`` (``evaluation.texture``) fits it on a run's
training part and fuses it with the network's probabilities.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noise = [rng.random((32, 32)) for _ in range(6)]
    >>> stripes = [np.tile(np.sin(np.arange(32) / (1.5 + k / 10)), (32, 1)) for k in range(6)]
    >>> model = TextureModel().fit(np.stack([texture_features(f) for f in noise + stripes]), [0] * 6 + [1] * 6)
    >>> bool(model.probability(texture_features(np.tile(np.sin(np.arange(32) / 1.7), (32, 1)))[None])[0] > 0.5)
    True
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCALES", "TextureModel", "lbp_histogram", "texture_features", "texture_vector"]

SCALES = ((8, 1), (8, 2), (16, 3), (16, 5))  # (neighbours P, radius R) of each histogram


def lbp_histogram(frame: np.ndarray, points: int, radius: int) -> np.ndarray:
    """Rotation-invariant uniform LBP histogram (``points + 2`` bins, summing to 1) of a gray frame (H, W).

    Codes 0..P count the neighbours at least as bright as the centre for "uniform" patterns (at most two
    0/1 transitions around the circle); code P + 1 collects all others. Neighbours off the pixel grid are
    interpolated bilinearly; the border of width ``radius`` has no code.
    """
    if points < 1 or radius < 1:
        raise ValueError(f"LBP needs at least 1 neighbour at a radius of at least 1, got {points} at {radius}")
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim != 2:
        raise ValueError(f"LBP needs a gray frame (H, W), got an array of shape {frame.shape}")
    h, w = frame.shape
    if min(h, w) <= 2 * radius:
        raise ValueError(f"a {h}x{w} frame is too small for LBP radius {radius}")
    centre = frame[radius:h - radius, radius:w - radius]
    exact = frame.astype(np.float64)
    bits = []
    for k in range(points):
        angle = 2 * np.pi * k / points  # neighbour k at (-R sin, R cos): counter-clockwise from the right
        offset = round(-radius * np.sin(angle), 9), round(radius * np.cos(angle), 9)
        bits.append(_neighbours(exact, offset, radius).astype(np.float32) >= centre)
    bits = np.stack(bits).astype(np.int8)                                   # (P, H', W')
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(0)
    codes = np.where(transitions <= 2, bits.sum(0), points + 1)             # (H', W')
    return np.bincount(codes.ravel(), minlength=points + 2) / codes.size


def _neighbours(frame: np.ndarray, offset: tuple[float, float], border: int) -> np.ndarray:
    """The frame at (i + dy, j + dx) for every pixel (i, j) off the border, bilinearly (H', W').

    Four shifted views of the frame, blended in float64 by linear steps; rounded to float32 afterwards, a
    neighbour that lies exactly as bright as the centre (on the pixel grid, in a flat patch or on an even
    ramp) compares equal to it, as it should.
    """
    h, w = frame.shape
    (y, fy), (x, fx) = ((int(np.floor(d)), d - np.floor(d)) for d in offset)

    def view(dy: int, dx: int) -> np.ndarray:
        return frame[border + dy:h - border + dy, border + dx:w - border + dx]

    top = view(y, x) if not fx else view(y, x) + (view(y, x + 1) - view(y, x)) * fx
    if not fy:
        return top
    bottom = view(y + 1, x) if not fx else view(y + 1, x) + (view(y + 1, x + 1) - view(y + 1, x)) * fx
    return top + (bottom - top) * fy


def texture_features(frame: np.ndarray) -> np.ndarray:
    """Every scale's LBP histogram side by side: (sum of P + 2 over :data:`SCALES`,) = (56,)."""
    return np.concatenate([lbp_histogram(frame, p, r) for p, r in SCALES])


def texture_vector(frame: np.ndarray) -> np.ndarray:
    """:func:`texture_features` as a point for nearest-neighbour search: square-rooted (the Hellinger
    distance between histograms becomes a Euclidean one) and L2-normalised, float32 (56,)."""
    vector = np.sqrt(texture_features(frame))
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


class TextureModel:
    """Standardised features → logistic regression (C = 0.1), as ``benchmarks/texture_baseline.py`` measured.

    ``fit(features, labels)`` takes (N, F) features and N labels in {0, 1} (1: the positive class);
    ``probability(features)`` gives the (N,) positive-class probabilities.
    """

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))

    def fit(self, features: np.ndarray, labels) -> TextureModel:
        labels = np.asarray(labels, dtype=np.int64)
        if set(labels.tolist()) != {0, 1}:
            raise ValueError("the texture model needs training files of both classes")
        self.pipeline.fit(np.asarray(features, dtype=np.float64), labels)
        return self

    def probability(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(np.asarray(features, dtype=np.float64))[:, 1]
