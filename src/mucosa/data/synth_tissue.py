"""Synthetic mucosa for ``mucosa synth``: crypts, capillaries, cells and the signs of active Crohn's disease.

Normal colonic mucosa on CLE (Udristoiu et al. 2021, Fig. 1 and Discussion): round crypts at about equal
distances, dark goblet cells, capillaries of uniform calibre. The signs of active disease (:data:`SIGNS`),
drawn in patches: distorted, irregularly spaced and missing crypts; dilated, tortuous capillaries of uneven
calibre; fluorescein leakage into the lamina propria and the crypt lumina; a dense cellular infiltrate.
Geometry and noise only: not medical data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from mucosa.errors import ConfigError

SIGNS = ("crypts", "vessels", "leakage", "infiltrate")
REFERENCE_SIZE = 300.0  # pixel-valued style fields are given for frames of this size


@dataclass(frozen=True)
class PatientStyle:
    """Acquisition and tissue traits shared by all frames of one synthetic patient.

    None of them depends on the patient's label: they are drawn the same way for every patient, so they
    identify a patient (a model can memorise them) without telling active disease from healing.
    Pixel-valued fields (``blur``, ``vessel_width``) are for a 300 px frame and scale with the size.
    """

    gain: float = 1.0  # multiplies the intensity
    offset: float = 0.0  # dark level added after the gain
    gamma: float = 1.0  # contrast curve exponent (< 1 brightens mid-tones)
    photons: float = 80.0  # photon count at intensity 1 (shot noise; fewer = noisier)
    read_noise: float = 0.015  # std of additive Gaussian noise
    crypt_spacing: float = 0.15  # distance between crypt centres, as a fraction of the frame side
    blur: float = 1.0  # optical blur sigma, pixels
    vessel_width: float = 1.0  # capillary blur sigma, pixels
    vignette: float = 0.2  # brightness fall-off towards the corners
    irregularity: float = 0.0  # mild crypt distortion everywhere (anatomy, not disease)
    banding: float = 0.0  # probe artefact: amplitude of the line-scan gain ripple across rows
    band_period: float = 0.05  # its period, as a fraction of the frame side
    band_phase: float = 0.0
    specks: tuple[tuple[float, float, float, float], ...] = ()  # probe artefact: dust on the window,
    #   (y, x, radius, depth) as fractions of the side; the same place in every frame of the patient
    severity: float = 0.8  # how marked the signs are in the frames that show them, 0..1


# the style's random traits, each drawn from one uniform number in [0, 1): (name, low, high, log scale)
STYLE_RANGES = (
    ("gain", 0.7, 1.4, True), ("offset", -0.02, 0.06, False), ("gamma", 0.75, 1.35, False),
    ("photons", 300.0, 2000.0, True), ("read_noise", 0.003, 0.012, False), ("crypt_spacing", 0.12, 0.19, False),
    ("blur", 0.6, 1.8, False), ("vessel_width", 0.8, 1.4, False), ("vignette", 0.0, 0.4, False),
    ("irregularity", 0.0, 0.15, False), ("banding", 0.0, 0.12, False), ("band_period", 0.03, 0.12, False),
    ("band_phase", 0.0, 2 * np.pi, False), ("severity", 0.7, 1.0, False), ("specks", 1.0, 5.0, False),
)


def draw_patient_style(rng: np.random.Generator, u: np.ndarray | None = None) -> PatientStyle:
    """Draw a patient style, the same way for every patient whatever the label or group.

    ``u``: one uniform number in [0, 1) per trait of :data:`STYLE_RANGES` (drawn from ``rng`` if not given;
    the cohort passes numbers stratified within each label, see ``synth.cohort_styles``); the dust specks'
    places and depths come from ``rng``.
    """
    u = rng.uniform(0.0, 1.0, len(STYLE_RANGES)) if u is None else np.asarray(u, dtype=np.float64)
    values = {}
    for x, (name, low, high, log) in zip(u, STYLE_RANGES):
        values[name] = float(np.exp(np.log(low) + x * np.log(high / low)) if log else low + x * (high - low))
    specks = tuple(
        (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.03, 0.07)),
         float(rng.uniform(0.5, 0.85)))
        for _ in range(int(values.pop("specks")))
    )
    return PatientStyle(**values, specks=specks)


@lru_cache(maxsize=16)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(S, cells + 4) smooth interpolation weights with unit sum of squares per row."""
    knots = np.arange(cells + 4, dtype=np.float64)
    pos = (np.arange(size) + 0.5) / size * cells + 2.0
    w = np.exp(-0.5 * ((pos[:, None] - knots[None, :]) / 0.7) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def _smooth_noise(rng: np.random.Generator, size: int, cells: float, count: int) -> np.ndarray:
    """(count, S, S) smooth Gaussian fields of unit variance with about ``cells`` bumps per side."""
    m = _interp_matrix(size, max(1, int(round(cells))))
    z = rng.standard_normal((count, m.shape[1], m.shape[1]), dtype=np.float32)
    return m @ z @ m.T


def _lesion_mask(rng: np.random.Generator, field: int, severity: float, frame: int, centres: tuple[float, float]
                 ) -> np.ndarray:
    """(F, F) bool union of one to three star-shaped blobs sized for a ``frame`` px frame, centred between
    ``centres`` (pixels) in both directions."""
    size = field
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))):
        cy, cx = rng.uniform(*centres, 2)
        radius = frame * rng.uniform(0.17, 0.25) * (0.6 + 0.5 * severity)
        amps, phases = rng.uniform(0.0, 0.14, 3), rng.uniform(0, 2 * np.pi, 3)
        reach = radius * (1 + amps.sum())
        y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
        dy, dx = np.ogrid[y0:y1, x0:x1]
        dy, dx = np.broadcast_arrays((dy - cy).astype(np.float32), (dx - cx).astype(np.float32))
        phi = np.arctan2(dy, dx)
        edge = 1.0 + sum(amp * np.cos(m * phi + ph) for m, amp, ph in zip((2, 3, 5), amps, phases))
        mask[y0:y1, x0:x1] |= dx * dx + dy * dy < (radius * edge) ** 2
    return mask


def _crypt_params(
    rng: np.random.Generator, size: int, spacing: float, style: PatientStyle, lesion: np.ndarray
) -> np.ndarray:
    """Crypts on a jittered hexagonal lattice, distorted where ``lesion`` (S, S) weight in [0, 1] is high.

    Returns (N, 16) rows of cy, cx, a, b, cos, sin, A2, p2, A3, p3, lumen ratio, goblet keep probability
    (centre, elliptic semi-axes and orientation, 2nd/3rd harmonic border distortion and its phase), then the
    crypt's own random numbers for rendering (border wobble offset y, x; goblet phase; goblet seed), so that
    a crypt away from the lesion is drawn the same whatever happens inside it.
    """
    n = int(math.ceil(0.75 * size / spacing)) + 2
    j, i = np.mgrid[-n : n + 1, -n : n + 1].astype(np.float64)
    lat = np.stack([j * spacing * np.sqrt(3) / 2, (i + 0.5 * (j % 2)) * spacing], -1).reshape(-1, 2)
    lat += rng.uniform(0, spacing, 2)
    t = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    centres = lat @ rot.T + size / 2
    inside = np.all((centres > -spacing) & (centres < size + spacing), axis=1)
    c = centres[inside]
    k = len(c)
    iy = np.clip(c[:, 0].astype(int), 0, size - 1)
    ix = np.clip(c[:, 1].astype(int), 0, size - 1)
    les = lesion[iy, ix]
    dist = np.maximum(les * (0.5 + 0.5 * style.severity), style.irregularity * rng.uniform(0, 1, k))
    c = c + rng.normal(0, 1, (k, 2)) * spacing * (0.05 + 0.1 * style.irregularity + 0.22 * les)[:, None]
    radius = 0.36 * spacing * np.exp(rng.normal(0, 0.06, k)) * (1 + dist * rng.uniform(-0.4, 0.5, k))
    elong = 1.0 + 0.06 * rng.uniform(0, 1, k) + dist * rng.uniform(0, 1.2, k)
    theta = rng.uniform(0, np.pi, k)
    rows = np.stack(
        [
            c[:, 0],
            c[:, 1],
            radius * np.sqrt(elong),
            radius / np.sqrt(elong),
            np.cos(theta),
            np.sin(theta),
            0.02 + dist * rng.uniform(0, 0.22, k),
            rng.uniform(0, 2 * np.pi, k),
            0.01 + dist * rng.uniform(0, 0.18, k),
            rng.uniform(0, 2 * np.pi, k),
            np.clip(0.42 + rng.normal(0, 0.04, k) + dist * rng.uniform(0, 0.2, k), 0.25, 0.75),
            0.92 - 0.6 * les,
            *rng.integers(0, size, (2, k)),
            rng.uniform(0, 1, k),
            rng.uniform(0, 1000, k),
        ],
        axis=1,
    )
    missing = rng.uniform(0, 1, k) < 0.02 + 0.25 * les
    missing[0] = False  # never an empty field
    return rows[~missing]


def _render_crypts(
    rng: np.random.Generator, wy: np.ndarray, wx: np.ndarray, crypts: np.ndarray, spacing: float, reach: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise crypts in warped coordinates (``reach``: per-crypt bound on the warp, px).

    Returns the owning crypt's normalised radius (1 at its border), its lumen ratio, goblet-cell darkness
    in [0, 1], and the owner label (-1 where no crypt reaches), each (S, S).
    """
    size = wy.shape[0]
    best = np.full((size, size), np.inf, dtype=np.float32)  # distance outside the owner's border, px
    rn = np.full((size, size), 9.0, dtype=np.float32)
    angle = np.zeros((size, size), dtype=np.float32)
    label = np.full((size, size), -1, dtype=np.int32)
    # crypt-specific wobble of the territory borders, so capillaries meander instead of running straight
    wobble = 0.16 * spacing * _smooth_noise(rng, 2 * size, 2 * size / (0.7 * spacing), 1)[0]  # (2S, 2S)
    shifts = crypts[:, 12:14].astype(int)
    # pass 1: each pixel belongs to the crypt whose (distorted elliptic) border is nearest
    for idx, (cy, cx, a, b, co, si, a2, p2, a3, p3) in enumerate(crypts[:, :10].tolist()):
        half = max(0.72 * spacing, 1.2 * a * (1 + a2 + a3)) + float(reach[idx])
        y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 1)
        x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = wy[y0:y1, x0:x1] - cy, wx[y0:y1, x0:x1] - cx
        u, v = (dy * co + dx * si) / a, (dx * co - dy * si) / b
        phi = np.arctan2(v, u)
        r = np.sqrt(u * u + v * v) / (1 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3))
        edge = (r - 1.0) * math.sqrt(a * b)
        oy, ox = shifts[idx]
        outer = np.maximum(edge, 0.0)  # wobble grows away from the crypt border
        edge += outer / (0.08 * spacing + outer) * wobble[oy + y0 : oy + y1, ox + x0 : ox + x1]
        own = edge < best[y0:y1, x0:x1]
        np.copyto(best[y0:y1, x0:x1], edge, where=own)
        np.copyto(rn[y0:y1, x0:x1], r, where=own)
        np.copyto(angle[y0:y1, x0:x1], phi, where=own)
        label[y0:y1, x0:x1][own] = idx

    # pass 2: goblet cells, two rings of dots in each crypt's epithelium, some dropped at random
    owner = np.maximum(label, 0)
    lumen = crypts[:, 10].astype(np.float32)[owner]
    mean_r = np.sqrt(crypts[:, 2] * crypts[:, 3]).astype(np.float32)[owner]
    gsig = max(0.45, 0.04 * spacing)  # goblet-cell radius scale, px
    goblet = np.zeros((size, size), dtype=np.float32)
    for frac in (0.33, 0.75):
        ring = lumen + frac * (1 - lumen)
        n_crypt = np.maximum(3, (2 * np.pi * (crypts[:, 10] + frac * (1 - crypts[:, 10]))
                                 * np.sqrt(crypts[:, 2] * crypts[:, 3]) / (4.6 * gsig)).astype(int))
        n_g = n_crypt.astype(np.float32)[owner]
        t = (angle / (2 * np.pi) + 0.5) * n_g + (crypts[:, 14] + frac).astype(np.float32)[owner]
        slot = np.floor(t)
        arc = (t - slot - 0.5) * (2 * np.pi) * rn * mean_r / n_g
        rad = (rn - ring) * mean_r
        spot = np.exp(-(arc * arc + rad * rad) / (2 * gsig * gsig))
        slot = slot % n_g + frac * 1000.0 + crypts[:, 15].astype(np.float32)[owner]
        spot *= _hash01(slot) < crypts[:, 11].astype(np.float32)[owner]  # goblet cells kept at random
        np.maximum(goblet, spot, out=goblet)
    goblet[label < 0] = 0.0
    lumen[label < 0] = 0.0
    return rn, lumen, goblet, label


def _hash01(x: np.ndarray) -> np.ndarray:
    """Pseudo-random numbers in [0, 1) that depend on ``x`` alone (the same x, the same number)."""
    return np.modf(np.abs(np.sin(x.astype(np.float64) * 12.9898) * 43758.5453))[0]


def _dots(rng: np.random.Generator, weight: np.ndarray, count: int, sigma: float) -> np.ndarray:
    """(S, S) small Gaussian spots of peak about 1, placed with probability proportional to ``weight``."""
    size = weight.shape[0]
    out = np.zeros_like(weight)
    if count <= 0:
        return out
    yx = rng.integers(0, size, (count, 2))
    accept = rng.uniform(0, 1, count) < weight[yx[:, 0], yx[:, 1]]
    yx = yx[accept]
    np.add.at(out, (yx[:, 0], yx[:, 1]), rng.uniform(0.6, 1.0, len(yx)).astype(np.float32))
    return ndi.gaussian_filter(out, sigma) * (2 * np.pi * sigma * sigma)


def draw_tissue(
    rng: np.random.Generator, size: int, field: int, style: PatientStyle, inflamed: bool, signs: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fluorescence (F, F), before acquisition, of a ``field`` px patch of mucosa at the scale of a
    ``size`` px frame, and the mask of the sign patches (bool (F, F), centred so that every ``size`` px crop
    holds them; empty unless ``inflamed``). ``signs``: which of :data:`SIGNS` an inflamed patch shows.

    The patches, the tissue and each sign draw on their own random streams (seeded from ``rng``), so the
    same ``rng`` state with fewer signs, or not inflamed, gives the same tissue with those signs left out."""
    unknown = sorted(set(signs) - set(SIGNS))
    if unknown:
        raise ConfigError(f"unknown sign(s) {', '.join(unknown)}; known: {', '.join(SIGNS)}")
    names = ("mask", "tissue", "crypts", "render", "cells", "infiltrate", "leakage")
    r = dict(zip(names, (np.random.default_rng(int(x)) for x in rng.integers(0, 2**63, len(names)))))
    on = set(signs) if inflamed else set()
    s = size / REFERENCE_SIZE
    spacing = style.crypt_spacing * size
    centres = (field - 0.85 * size, 0.85 * size)
    mask = _lesion_mask(r["mask"], field, style.severity, size, centres) if inflamed else \
        np.zeros((field, field), dtype=bool)
    soft = mask.astype(np.float32)  # (F, F) lesion weight with a soft rim
    if inflamed:
        box = int(0.07 * size) | 1
        soft = ndi.uniform_filter(ndi.uniform_filter(soft, box), box)
    coarse = _smooth_noise(r["tissue"], field, field / spacing / 1.5, 5)  # (5, F, F) smooth fields
    fine = _smooth_noise(r["tissue"], field, 1.3 * field / spacing, 3)  # (3, F, F)
    distort = soft if "crypts" in on else np.zeros_like(soft)
    rn, lumen_r, goblet, label = _crypts(r["crypts"], r["render"], spacing, style, distort, coarse, fine)
    lum = (rn < lumen_r).astype(np.float32)
    lp = (rn >= 1.0).astype(np.float32)
    epi = 1.0 - lum - lp

    texture = coarse[2] * 0.5 + fine[2] * 0.5
    img = lum * 0.06 + epi * (0.55 + 0.05 * texture) * (1.0 - 0.85 * goblet) + lp * (0.17 + 0.04 * texture)
    dilate = soft if "vessels" in on else None
    img += 0.5 * _vessels(label, rn, max(0.5, style.vessel_width * s), style.severity, dilate, coarse, fine)
    # scattered cells in the lamina propria: sparse everywhere, a dense infiltrate in the patches
    cell_sigma, per_cell = max(0.8, 2.0 * s), field * field / (12.0 * 12.0 * s * s)
    img += 0.6 * _dots(r["cells"], lp * 0.06, int(per_cell * 0.25), cell_sigma)
    if "infiltrate" in on:
        img += 0.6 * _dots(r["infiltrate"], lp * soft, int(per_cell * 3.0 * style.severity), cell_sigma)
    if "leakage" in on:  # diffuse fluorescein leakage into lamina propria and crypt lumina
        leak = soft * style.severity * r["leakage"].uniform(0.6, 1.1) * np.clip(0.75 + 0.3 * coarse[3], 0.3, 1.2)
        img += leak * (0.3 * lp + 0.36 * lum + 0.1 * epi)
    return img, mask


def _crypts(
    rng: np.random.Generator, render: np.random.Generator, spacing: float, style: PatientStyle,
    distort: np.ndarray, coarse: np.ndarray, fine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The crypt layer of ``_render_crypts``, with a gentle warp everywhere and, where ``distort`` (S, S) is
    high, distorted, irregularly spaced and missing crypts and a stronger, finer warp (tortuosity)."""
    size = distort.shape[0]
    base_amp = spacing * (0.06 + 0.08 * style.irregularity)
    les_amp = spacing * 0.14 * style.severity
    wy = np.repeat(np.arange(size, dtype=np.float32)[:, None], size, axis=1)  # (S, S) warped coordinates
    wx = wy.T.copy()
    wy += base_amp * coarse[0] + les_amp * distort * fine[0]
    wx += base_amp * coarse[1] + les_amp * distort * fine[1]
    crypts = _crypt_params(rng, size, spacing, style, distort)
    near = ndi.maximum_filter(distort, size=int(1.6 * spacing) | 1)  # (S, S)
    iy, ix = (np.clip(crypts[:, i].astype(int), 0, size - 1) for i in (0, 1))
    reach = 2.5 * (base_amp + les_amp * near[iy, ix])  # (N,) bound on the warp near each crypt
    return _render_crypts(render, wy, wx, crypts, spacing, reach)


def _vessels(label: np.ndarray, rn: np.ndarray, sig_thin: float, severity: float, dilate: np.ndarray | None,
             coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """(S, S) capillaries of uniform calibre along the borders between crypt territories (``label``), in the
    lamina propria; where ``dilate`` (S, S) is high, dilated to an uneven calibre."""
    border = np.zeros(label.shape, dtype=np.float32)
    border[:, 1:] += label[:, 1:] != label[:, :-1]
    border[1:, :] += label[1:, :] != label[:-1, :]
    border = np.minimum(border, 1.0)
    vessel = np.minimum(ndi.gaussian_filter(border, sig_thin) * (2.5066 * sig_thin), 1.0)
    if dilate is not None:
        sig_wide = sig_thin * (3.0 + 1.5 * severity)
        wide = np.minimum(ndi.gaussian_filter(border, sig_wide) * (2.5066 * sig_wide), 1.0)
        calibre = np.clip(0.75 + 0.3 * fine[2], 0.4, 1.0)
        vessel = (1 - dilate) * vessel + dilate * np.maximum(vessel, wide * calibre)
    return vessel * np.clip(rn - 0.9, 0.0, 0.1) * 10.0 * np.clip(0.8 + 0.4 * coarse[4], 0.2, 1.0)
