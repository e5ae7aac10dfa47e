"""Synthetic CLE cohort generator for demos and tests (``mucosa synth``).

Everything written here is *synthetic*: crypt-like tissue drawn from simple geometry and noise, loosely
following the look described in Udristoiu et al. 2021 and the CLE literature on Crohn's disease.

* What separates the labels: the signs of active disease (:data:`SIGNS`), drawn in one to three patches
  (the mask): distorted, irregularly spaced and missing crypts; dilated, tortuous capillaries of uneven
  calibre; fluorescein leakage into the lamina propria and the crypt lumina; a dense cellular infiltrate.
  They appear in :data:`SIGNS_SHARE` (11 in 12, rounded) of an active patient's images; its other images, one
  run of consecutive frames from the start of a site, look like a control's. No control image shows them.
* What does not: each patient's style (gain, offset, contrast curve, shot and read noise, crypt size,
  blur, vessel width, vignetting, mild crypt irregularity, probe artefacts: dust specks and line banding).
  It is drawn the same way for every patient, stratified within each label so that even a small cohort
  holds no chance link between style and label (:func:`cohort_styles`), and recorded in ``styles.csv``.
* Frames come in sites of :data:`FRAMES_PER_SITE`: overlapping views of one place of the mucosa, as when the
  probe rests and drifts. A split that puts a patient's frames on both sides (the paper's within-patient
  split) thus tests on near-duplicates of training frames, and a model that memorises a patient gains.

It is not medical data and says nothing about real disease.
"""

from __future__ import annotations

import csv
import math
import operator
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from threadpoolctl import threadpool_limits

from mucosa.data.synth_tissue import (
    REFERENCE_SIZE,
    SIGNS,
    STYLE_RANGES,
    PatientStyle,
    draw_patient_style,
    draw_tissue,
)
from mucosa.errors import ConfigError
from mucosa.tables import write_csv

__all__ = ["REGIONS", "SIGNS", "SIGNS_SHARE", "STYLE_FIELDS", "PatientStyle", "cohort_styles",
           "draw_patient_style", "synthesize_cohort", "synthesize_frame"]

REGIONS = ("rectum", "left colon", "transverse colon", "right colon", "terminal ileum")
ACTIVE_FRACTION = 0.6  # share of patients labelled active
NORMAL_CONTROL_FRACTION = 0.2  # share of controls in group "normal" (the rest: mucosal healing)
FRAMES_PER_SITE = 3  # consecutive frames of one place of the mucosa (the probe resting and drifting)
SITE_DRIFT = 0.03  # how far the probe drifts over a site, as a share of the frame side
SIGNS_SHARE = 11 / 12  # share of an active patient's images that show the signs of active disease (rounded)
OVERLAY_SCALE = 1.25  # canvas side / frame side in overlay mode


def synthesize_frame(
    rng: np.random.Generator, size: int, style: PatientStyle, inflamed: bool, signs: tuple[str, ...] = SIGNS
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic CLE frame.

    The patches, the tissue, each sign and the acquisition draw on their own random streams (seeded from
    ``rng``), so the same ``rng`` state with fewer ``signs`` gives the same tissue with those signs left out.

    Args:
        rng: Source of randomness (the frame is a pure function of its state).
        size: Side of the square frame in pixels.
        style: Patient traits (acquisition and tissue).
        inflamed: Whether the frame shows the signs of active disease in one to three patches; otherwise
            it looks like a control's.
        signs: Which of :data:`SIGNS` an inflamed frame shows (all of them unless a test or figure asks).

    Returns:
        The image, float32 in [0, 1], (S, S), and the mask of the patches, bool (S, S) (empty unless inflamed).
    """
    tissue_rng, acquire_rng = (np.random.default_rng(int(x)) for x in rng.integers(0, 2**63, 2))
    tissue, mask = draw_tissue(tissue_rng, size, size, style, inflamed, signs)
    return _acquire(acquire_rng, tissue, style, size / REFERENCE_SIZE), mask


def _acquire(rng: np.random.Generator, img: np.ndarray, style: PatientStyle, s: float) -> np.ndarray:
    """The probe's view of tissue ``img`` (S, S): vignetting, the patient's probe artefacts (dust specks,
    line-scan banding), optical blur, contrast curve, gain and offset, shot and read noise; clipped to [0, 1]."""
    size = img.shape[0]
    yy, xx = np.ogrid[0:size, 0:size]
    r2 = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size * size / 2)
    view = 1.0 - style.vignette * r2
    view = view * (1.0 + style.banding * np.sin(2 * np.pi * yy / (style.band_period * size) + style.band_phase))
    for cy, cx, radius, depth in style.specks:
        d2 = ((yy - cy * size) ** 2 + (xx - cx * size) ** 2) / (radius * size) ** 2
        view = view * (1.0 - depth * np.exp(-d2))
    img = img * view.astype(np.float32)
    img = ndi.gaussian_filter(img, max(0.3, style.blur * s))
    img = np.clip(img, 0.0, None) ** style.gamma
    img = img * style.gain * (1 + 0.04 * rng.standard_normal()) + style.offset
    img = np.clip(img, 0.0, 1.0)
    sd = np.sqrt(img / style.photons + style.read_noise**2)  # shot noise (Gaussian approximation) + read noise
    img += sd * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


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


def _frames_with_signs(rng: np.random.Generator, per_patient: int, active: bool) -> np.ndarray:
    """(per_patient,) bool: which frames show the signs: ``SIGNS_SHARE`` of an active patient's (rounded, at
    least one), all but one run of consecutive frames that starts with a site chosen at random (the probe off
    the patches); none of a control's."""
    if not active:
        return np.zeros(per_patient, dtype=bool)
    free = per_patient - max(1, int(math.floor(SIGNS_SHARE * per_patient + 0.5)))
    start = int(rng.choice(np.arange(0, per_patient - free + 1, FRAMES_PER_SITE)))
    chosen = np.ones(per_patient, dtype=bool)
    chosen[start : start + free] = False
    return chosen


def _patient_frames(
    seed: int, index: int, per_patient: int, size: int, active: bool, style: PatientStyle
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(region, image float (S, S), mask bool (S, S)) of each frame of patient ``index``.

    Frames come in sites of ``FRAMES_PER_SITE``: the probe rests on one place of the mucosa (one region) and
    drifts, so a site's frames are overlapping views of the same tissue with their own noise. Everything but
    the signs is drawn the same way, from the same random streams, whether the patient is active or not.
    """
    rng = np.random.default_rng([seed, index])
    region_p = rng.dirichlet(np.full(len(REGIONS), 1.5))
    showing = _frames_with_signs(np.random.default_rng([seed, index, 1]), per_patient, active)
    field = size + int(round(SITE_DRIFT * size))
    for n in range(per_patient):
        if n % FRAMES_PER_SITE == 0:  # a new site: its region and its patch of mucosa
            region = REGIONS[int(rng.choice(len(REGIONS), p=region_p))]
            site_seed, views = int(rng.integers(0, 2**63)), {}
        oy, ox = (int(v) for v in rng.integers(0, field - size + 1, 2))
        acquire = np.random.default_rng(int(rng.integers(0, 2**63)))
        inflamed = bool(showing[n])
        if inflamed not in views:  # the site without signs is the same tissue
            views[inflamed] = draw_tissue(np.random.default_rng(site_seed), size, field, style, inflamed, SIGNS)
        tissue, mask = (a[oy : oy + size, ox : ox + size] for a in views[inflamed])
        yield region, _acquire(acquire, tissue, style, size / REFERENCE_SIZE), mask


def cohort_styles(seed: int, labels: list[str]) -> list[PatientStyle]:
    """Each patient's style, drawn so that it cannot tell the labels apart, not even by chance.

    Every trait is drawn the same way for every patient; within each label its uniform numbers are
    stratified (a Latin hypercube: label ``l`` with ``n`` patients gets one number from each of ``[k/n,
    (k+1)/n)``, in a random order per trait), so each label spans every trait's range evenly and a small
    cohort holds no chance link between, say, brightness and label. ``synthesize_cohort`` records the
    styles in ``styles.csv``.
    """
    rng = np.random.default_rng([seed, len(labels), 0x571E])
    u = np.zeros((len(labels), len(STYLE_RANGES)))
    for label in sorted(set(labels)):
        rows = np.flatnonzero(np.array(labels) == label)
        for k in range(len(STYLE_RANGES)):
            u[rows, k] = (rng.permutation(len(rows)) + rng.uniform(0.0, 1.0, len(rows))) / len(rows)
    return [draw_patient_style(np.random.default_rng([seed, i, 2]), u[i]) for i in range(len(labels))]


STYLE_FIELDS = tuple(name for name, *_ in STYLE_RANGES if name != "specks")  # styles.csv, then "specks"


def _write_styles(path: Path, styles: list[tuple[str, str, str, PatientStyle]]) -> None:
    """styles.csv: each patient's label, group and style (``specks``: the number of dust specks)."""
    header = ["patient", "label", "group", *STYLE_FIELDS, "specks"]
    rows = [[pid, label, group, *(f"{getattr(st, f):.6g}" for f in STYLE_FIELDS), len(st.specks)]
            for pid, label, group, st in styles]
    write_csv(path, header, rows)


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
    styles = [(f"P{i + 1:0{width}d}", label, group, style)
              for i, ((label, group), style) in enumerate(zip(groups, cohort_styles(seed, [g[0] for g in groups])))]
    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrix products: extra BLAS threads only spin
        for i, (label, group) in enumerate(groups):
            pid = f"P{i + 1:0{width}d}"
            frames = _patient_frames(seed, i, per_patient, size, label == "active", styles[i][3])
            for n, (region, image, lesion) in enumerate(frames):
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
    _write_styles(out / "styles.csv", styles)
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
with dark goblet-cell dots) and thin capillaries of uniform calibre between them. {SIGNS_SHARE:.0%} (11 in
12, rounded) of an active patient's frames show the signs of active Crohn's disease in one to three patches (the
mask): distorted, irregularly spaced and missing crypts, dilated tortuous vessels, fluorescein leakage and
a dense cellular infiltrate; its other frames (one run of consecutive frames) look like a control's
(labels are per patient). Frames come in sites of {FRAMES_PER_SITE} overlapping views of one place. Each
patient has its own gain, contrast, noise, crypt scale, blur and probe artefacts (dust specks, line
banding), drawn the same way whatever the label and stratified within each label, so that style does not
predict the label (styles.csv records them). Regions are metadata only.

Layout: images/<label>/<patient>/<patient>_<region>_<NNN>.png, masks/<patient>/<same name>.png (lesion mask,
0/255, active patients only), manifest.csv (path,label,patient,region,group,mask; paths relative to it),
styles.csv (each patient's label, group and style).
"""
    (out / "README.txt").write_text(text, encoding="utf-8")
