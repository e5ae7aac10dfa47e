"""Synthetic CLE cohort generator for demos and tests.

Everything written here is *synthetic*: crypt-like tissue drawn from simple geometry and noise, loosely
following the look described in Udristoiu et al. 2021 (normal mucosa: round, evenly spaced crypts with
dark goblet cells and thin vessels of uniform calibre; inflamed mucosa: irregular crypts, dilated
tortuous vessels, fluorescein leakage and infiltrating cells, here in blob-shaped lesion patches).
It is not medical data and says nothing about real disease.
"""

from __future__ import annotations

import csv
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from threadpoolctl import threadpool_limits

from mucosa.errors import ConfigError

REGIONS = ("rectum", "left colon", "transverse colon", "right colon", "terminal ileum")
ACTIVE_FRACTION = 0.6  # share of patients labelled active
NORMAL_CONTROL_FRACTION = 0.2  # share of controls in group "normal" (the rest: mucosal healing)
LESION_FREE_FRACTION = 0.2  # share of an active patient's frames with no lesion (label noise)
OVERLAY_SCALE = 1.25  # canvas side / frame side in overlay mode
_REFERENCE_SIZE = 300.0  # pixel-valued style fields are given for frames of this size


@dataclass(frozen=True)
class PatientStyle:
    """Acquisition and tissue traits shared by all frames of one synthetic patient.

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
    irregularity: float = 0.0  # crypt distortion outside lesions (healed mucosa keeps some)
    severity: float = 0.8  # size and strength of lesions in inflamed frames, 0..1


def draw_patient_style(rng: np.random.Generator, group: str) -> PatientStyle:
    """Draw a random patient style; ``group`` ("active CD", "mucosal healing", "normal") sets the
    baseline crypt irregularity outside lesions (healed mucosa keeps some architectural distortion)."""
    irregular = {"normal": (0.0, 0.08), "mucosal healing": (0.12, 0.35)}.get(group, (0.05, 0.25))
    return PatientStyle(
        gain=float(np.exp(rng.uniform(np.log(0.6), np.log(1.45)))),
        offset=float(rng.uniform(-0.04, 0.08)),
        gamma=float(rng.uniform(0.75, 1.35)),
        photons=float(np.exp(rng.uniform(np.log(150.0), np.log(1500.0)))),
        read_noise=float(rng.uniform(0.003, 0.02)),
        crypt_spacing=float(rng.uniform(0.12, 0.19)),
        blur=float(rng.uniform(0.6, 1.8)),
        vessel_width=float(rng.uniform(0.8, 1.4)),
        vignette=float(rng.uniform(0.0, 0.4)),
        irregularity=float(rng.uniform(*irregular)),
        severity=float(rng.uniform(0.55, 1.0)),
    )


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


def _lesion_mask(rng: np.random.Generator, size: int, severity: float) -> np.ndarray:
    """(S, S) bool union of one to three star-shaped blobs, each centred inside the frame."""
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        radius = size * rng.uniform(0.11, 0.22) * (0.6 + 0.5 * severity)
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

    Returns (N, 12) rows of cy, cx, a, b, cos, sin, A2, p2, A3, p3, lumen ratio, goblet keep probability
    (centre, elliptic semi-axes and orientation, 2nd/3rd harmonic border distortion and its phase).
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
    shifts = rng.integers(0, size, (len(crypts), 2))
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
        kept = rng.uniform(0, 1, (len(crypts), int(n_crypt.max()))) < crypts[:, 11:12]
        n_g = n_crypt.astype(np.float32)[owner]
        t = (angle / (2 * np.pi) + 0.5) * n_g + rng.uniform(0, 1, len(crypts)).astype(np.float32)[owner]
        slot = np.floor(t)
        arc = (t - slot - 0.5) * (2 * np.pi) * rn * mean_r / n_g
        rad = (rn - ring) * mean_r
        spot = np.exp(-(arc * arc + rad * rad) / (2 * gsig * gsig))
        spot *= kept[owner, slot.astype(int) % n_g.astype(int)]
        np.maximum(goblet, spot, out=goblet)
    goblet[label < 0] = 0.0
    lumen[label < 0] = 0.0
    return rn, lumen, goblet, label


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


def synthesize_frame(
    rng: np.random.Generator, size: int, style: PatientStyle, inflamed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic CLE frame.

    Args:
        rng: Source of randomness (the frame is a pure function of its state).
        size: Side of the square frame in pixels.
        style: Patient traits (acquisition and tissue).
        inflamed: Whether to draw one to three lesion patches; otherwise the frame looks normal.

    Returns:
        The image, float32 in [0, 1], (S, S), and the lesion mask, bool (S, S) (empty unless inflamed).
    """
    s = size / _REFERENCE_SIZE
    spacing = style.crypt_spacing * size
    mask = _lesion_mask(rng, size, style.severity) if inflamed else np.zeros((size, size), dtype=bool)
    soft = mask.astype(np.float32)  # (S, S) lesion weight with a soft rim
    if inflamed:
        box = int(0.07 * size) | 1
        soft = ndi.uniform_filter(ndi.uniform_filter(soft, box), box)

    # smooth fields: gentle warp everywhere, stronger and finer warp inside lesions (tortuosity)
    coarse = _smooth_noise(rng, size, size / spacing / 1.5, 5)  # (5, S, S)
    fine = _smooth_noise(rng, size, 1.3 * size / spacing, 3)  # (3, S, S)
    base_amp = spacing * (0.06 + 0.08 * style.irregularity)
    les_amp = spacing * 0.14 * style.severity
    wy = np.repeat(np.arange(size, dtype=np.float32)[:, None], size, axis=1)  # (S, S) warped coordinates
    wx = wy.T.copy()
    wy += base_amp * coarse[0] + les_amp * soft * fine[0]
    wx += base_amp * coarse[1] + les_amp * soft * fine[1]

    crypts = _crypt_params(rng, size, spacing, style, soft)
    near = ndi.maximum_filter(soft, size=int(1.6 * spacing) | 1) if inflamed else soft  # (S, S)
    iy, ix = (np.clip(crypts[:, i].astype(int), 0, size - 1) for i in (0, 1))
    reach = 2.5 * (base_amp + les_amp * near[iy, ix])  # (N,) bound on the warp near each crypt
    rn, lumen_r, goblet, label = _render_crypts(rng, wy, wx, crypts, spacing, reach)
    lum = (rn < lumen_r).astype(np.float32)
    lp = (rn >= 1.0).astype(np.float32)
    epi = 1.0 - lum - lp

    # capillaries along the borders between crypt territories; dilated and uneven inside lesions
    border = np.zeros((size, size), dtype=np.float32)
    border[:, 1:] += label[:, 1:] != label[:, :-1]
    border[1:, :] += label[1:, :] != label[:-1, :]
    border = np.minimum(border, 1.0)
    sig_thin = max(0.5, style.vessel_width * s)
    sig_wide = sig_thin * (2.2 + 0.8 * style.severity)
    thin = np.minimum(ndi.gaussian_filter(border, sig_thin) * (2.5066 * sig_thin), 1.0)
    vessel = thin
    if inflamed:
        wide = np.minimum(ndi.gaussian_filter(border, sig_wide) * (2.5066 * sig_wide), 1.0)
        calibre = np.clip(0.55 + 0.35 * fine[2], 0.2, 1.0)
        vessel = (1 - soft) * thin + soft * np.maximum(thin, wide * calibre)
    vessel *= np.clip(rn - 0.9, 0.0, 0.1) * 10.0 * np.clip(0.8 + 0.4 * coarse[4], 0.2, 1.0)  # lamina propria

    texture = coarse[2] * 0.5 + fine[2] * 0.5
    img = (
        lum * 0.06
        + epi * (0.55 + 0.05 * texture) * (1.0 - 0.85 * goblet)
        + lp * (0.17 + 0.04 * texture)
    )
    img += 0.5 * vessel
    # scattered cells in the lamina propria: sparse normally, dense infiltrate in lesions
    cell_sigma = max(0.5, 1.1 * s)
    n_cells = int(size * size / (12.0 * 12.0 * s * s) * 0.25)
    if inflamed:
        n_cells += int(size * size / (12.0 * 12.0 * s * s) * 3.0 * style.severity)
    img += 0.6 * _dots(rng, lp * (0.06 + 0.94 * soft), n_cells, cell_sigma)
    if inflamed:  # diffuse fluorescein leakage into lamina propria and crypt lumina
        leak = soft * style.severity * rng.uniform(0.35, 1.1) * np.clip(0.75 + 0.3 * coarse[3], 0.3, 1.2)
        img += leak * (0.3 * lp + 0.36 * lum + 0.1 * epi)

    # acquisition: vignetting, optics, contrast, gain, shot and read noise
    yy, xx = np.ogrid[0:size, 0:size]
    r2 = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size * size / 2)
    img *= (1.0 - style.vignette * r2).astype(np.float32)
    img = ndi.gaussian_filter(img, max(0.3, style.blur * s))
    img = np.clip(img, 0.0, None) ** style.gamma
    img = img * style.gain * (1 + 0.04 * rng.standard_normal()) + style.offset
    img = np.clip(img, 0.0, 1.0)
    sd = np.sqrt(img / style.photons + style.read_noise**2)  # shot noise (Gaussian approximation) + read noise
    img += sd * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


def _overlay(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Put uint8 (S, S) image and mask in a black canvas as a circular field of view, with a bright
    "logo" block bottom-left and a scale bar bottom-right outside the circle (image only)."""
    size = image.shape[0]
    side = int(round(size * OVERLAY_SCALE))
    pad = (side - size) // 2
    yy, xx = np.ogrid[0:side, 0:side]
    centre = pad + (size - 1) / 2
    circle = (yy - centre) ** 2 + (xx - centre) ** 2 <= (size / 2) ** 2  # (C, C)

    def place(a: np.ndarray) -> np.ndarray:
        canvas = np.zeros((side, side), dtype=np.uint8)
        canvas[pad : pad + size, pad : pad + size] = a
        canvas[~circle] = 0
        return canvas

    canvas = place(image)
    margin = max(1, round(0.02 * side))
    height = max(3, round(0.035 * side))
    glyph = max(1, round(0.012 * side))
    # logo: a square mark then a row of letter-like bars
    y0, x0 = side - margin - height, margin
    canvas[y0 : y0 + height, x0 : x0 + height] = 255
    bars = x0 + height + glyph + np.arange(round(0.12 * side))
    canvas[y0 : y0 + height, bars[(bars - bars[0]) // glyph % 3 != 2]] = 255
    # scale bar with a "20 um" label block under it
    bar_w, bar_h = round(0.1 * side), max(1, round(0.006 * side))
    x1 = side - margin - bar_w
    canvas[y0 - 2 * bar_h : y0 - bar_h, x1 : x1 + bar_w] = 255
    label_x = x1 + np.arange(bar_w)
    canvas[y0 : y0 + height, label_x[(label_x - x1) // glyph % 3 != 2]] = 255
    return canvas, None if mask is None else place(mask)


def _index(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or ConfigError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{name} must be an integer (got {value!r})") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum} (got {number})")
    return number


def _assign_groups(patients: int, seed: int) -> list[tuple[str, str]]:
    """(label, group) per patient: ~60% active, the rest controls (~1 in 5 of them 'normal')."""
    rng = np.random.default_rng([seed, patients, 0x5EED])
    n_active = min(max(int(math.floor(ACTIVE_FRACTION * patients + 0.5)), 1), patients - 1)
    n_control = patients - n_active
    n_normal = int(math.floor(NORMAL_CONTROL_FRACTION * n_control + 0.5))
    order = rng.permutation(patients)
    out = [("active", "active CD")] * patients
    for rank, p in enumerate(order[n_active:]):
        out[p] = ("control", "normal" if rank < n_normal else "mucosal healing")
    return out


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG")  # 8-bit "L"


def synthesize_cohort(
    out: Path,
    patients: int = 12,
    per_patient: int = 40,
    size: int = 300,
    seed: int = 0,
    overlay: bool = False,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic cohort to `out` and return the path of its manifest CSV.

    Args:
        out: Output folder (created). A folder that already holds a cohort (``manifest.csv``) is refused
            unless ``overwrite``.
        patients: Number of patients, P01..PNN (at least 2).
        per_patient: Images per patient (at least 1).
        size: Side of each frame in pixels (at least 32).
        seed: Non-negative seed; the same arguments give byte-identical files.
        overlay: Put each frame in a 1.25x black canvas as a circular field of view with a burned-in
            logo and scale bar, like a Cellvizio export (masks get the same geometry).
        progress: Called as ``progress(done, total)`` after each image.
        overwrite: Write into a folder that already holds a cohort, replacing files of the same names.

    Raises:
        ConfigError: An argument is out of range, `out` is an existing file, or it holds a cohort already
            (without ``overwrite``).
    """
    patients = _index(patients, "patients", 2)
    per_patient = _index(per_patient, "per_patient", 1)
    size = _index(size, "size", 32)
    seed = _index(seed, "seed", 0)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} exists and is not a folder")
    if (out / "manifest.csv").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a cohort ({out / 'manifest.csv'}); choose another folder, or "
                          "overwrite it with --force")
    out.mkdir(parents=True, exist_ok=True)

    groups = _assign_groups(patients, seed)
    width = max(2, len(str(patients)))
    total = patients * per_patient
    rows: list[dict[str, str]] = []
    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrix products: extra BLAS threads only spin
        for i, (label, group) in enumerate(groups):
            pid = f"P{i + 1:0{width}d}"
            rng = np.random.default_rng([seed, i])
            style = draw_patient_style(rng, group)
            region_p = rng.dirichlet(np.full(len(REGIONS), 1.5))
            for n in range(per_patient):
                region = REGIONS[int(rng.choice(len(REGIONS), p=region_p))]
                inflamed = label == "active" and rng.uniform() >= LESION_FREE_FRACTION
                image, lesion = synthesize_frame(rng, size, style, inflamed)
                img8 = np.round(image * 255.0).astype(np.uint8)
                mask8 = lesion.astype(np.uint8) * 255 if label == "active" else None
                if overlay:
                    img8, mask8 = _overlay(img8, mask8)
                name = f"{pid}_{region.replace(' ', '-')}_{n:03d}.png"
                # images/<label>/<patient>/...: the layout `mucosa index` reads
                _save_png(out / "images" / label / pid / name, img8)
                mask_rel = ""
                if mask8 is not None:
                    mask_rel = f"masks/{pid}/{name}"
                    _save_png(out / mask_rel, mask8)
                row = {"path": f"images/{label}/{pid}/{name}", "label": label, "patient": pid, "region": region}
                rows.append(row | {"group": group, "mask": mask_rel})
                if progress is not None:
                    progress(len(rows), total)

    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient", "region", "group", "mask"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _write_readme(out, patients, per_patient, size, seed, overlay, groups)
    return manifest


def _write_readme(
    out: Path, patients: int, per_patient: int, size: int, seed: int, overlay: bool, groups: list[tuple[str, str]]
) -> None:
    n_active = sum(label == "active" for label, _ in groups)
    n_normal = sum(group == "normal" for _, group in groups)
    frame = f"{round(size * OVERLAY_SCALE)} px canvas with a circular field of view" if overlay else f"{size} px"
    text = f"""SYNTHETIC DATA - not images of real tissue, not medical data.

Made by mucosa.synth.synthesize_cohort(patients={patients}, per_patient={per_patient}, size={size},
seed={seed}, overlay={overlay}). The same arguments reproduce these files byte for byte.

Patients: {patients} ({n_active} active CD, {patients - n_active - n_normal} mucosal healing, {n_normal} normal);
{per_patient} grayscale PNG frames each ({frame}). Labels are per patient (active / control).

How the frames are drawn: a jittered hexagonal lattice of round crypts (dark lumen, bright epithelium
with dark goblet-cell dots) and thin capillaries of uniform calibre between them. Frames of active
patients get one to three blob-shaped lesion patches with distorted, missing or elongated crypts,
dilated tortuous vessels, diffuse bright fluorescein leakage and small bright infiltrating cells; about
{LESION_FREE_FRACTION:.0%} of their frames have no lesion (empty mask) to mimic per-patient labels. Each
patient has its own gain, contrast, noise, crypt scale and blur. Regions are metadata only.

Layout: images/<label>/<patient>/<patient>_<region>_<NNN>.png, masks/<patient>/<same name>.png (lesion mask,
0/255, active patients only), manifest.csv (path,label,patient,region,group,mask; paths relative to it).
"""
    (out / "README.txt").write_text(text, encoding="utf-8")
