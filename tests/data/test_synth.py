"""Tests for the synthetic CLE cohort generator."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mucosa.data.synth import (
    REGIONS,
    SIGNS,
    SIGNS_SHARE,
    STYLE_FIELDS,
    PatientStyle,
    cohort_styles,
    draw_patient_style,
    synthesize_cohort,
    synthesize_frame,
)
from mucosa.errors import ConfigError

HEADER = ["path", "label", "patient", "region", "group", "mask"]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == HEADER
        return list(reader)


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L" and im.format == "PNG"
        return np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_manifest_and_progress(tmp_path: Path) -> None:
    calls = []
    manifest = synthesize_cohort(tmp_path / "out", patients=4, per_patient=3, size=64, seed=3,
                                 progress=lambda done, total: calls.append((done, total)))
    root = manifest.parent
    assert manifest == tmp_path / "out" / "manifest.csv"
    rows = _rows(manifest)
    assert len(rows) == 12
    assert calls == [(i, 12) for i in range(1, 13)]
    assert sorted({r["patient"] for r in rows}) == ["P01", "P02", "P03", "P04"]
    for r in rows:
        pid, region = r["patient"], r["region"]
        assert region in REGIONS
        m = re.fullmatch(r"images/(active|control)/(P\d\d)/(P\d\d)_([a-z-]+)_(\d{3})\.png", r["path"])
        assert m and m.group(1) == r["label"]
        assert m.group(2) == m.group(3) == pid and m.group(4) == region.replace(" ", "-")
        assert _load(root / r["path"]).shape == (64, 64)
        assert (r["label"], r["group"]) in {("active", "active CD"), ("control", "mucosal healing"),
                                            ("control", "normal")}
        if r["label"] == "active":
            assert r["mask"] == f"masks/{pid}/{Path(r['path']).name}"
            mask = _load(root / r["mask"])
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        else:
            assert r["mask"] == ""
    # each patient has one label and group; frames are numbered per patient
    for pid in {r["patient"] for r in rows}:
        mine = [r for r in rows if r["patient"] == pid]
        assert len({(r["label"], r["group"]) for r in mine}) == 1
        assert [r["path"][-7:-4] for r in mine] == ["000", "001", "002"]
    readme = (root / "README.txt").read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "seed=3" in readme and "size=64" in readme
    active = {r["patient"] for r in rows if r["label"] == "active"}
    assert {p.name for p in (root / "masks").iterdir()} == active


@pytest.mark.parametrize("patients", [2, 3, 5, 12])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_both_labels_present_with_about_sixty_percent_active(tmp_path: Path, patients: int, seed: int) -> None:
    rows = _rows(synthesize_cohort(tmp_path, patients=patients, per_patient=1, size=32, seed=seed))
    labels = {r["patient"]: r["label"] for r in rows}
    n_active = sum(v == "active" for v in labels.values())
    assert 1 <= n_active <= patients - 1
    assert abs(n_active - 0.6 * patients) <= 1
    if patients == 12:
        assert sum(r["group"] == "normal" for r in rows) == 1  # one in five of the five controls


def test_signs_in_the_stated_share_of_active_images_and_in_no_control_image(tmp_path: Path) -> None:
    manifest = synthesize_cohort(tmp_path, patients=5, per_patient=24, size=64, seed=0)
    rows = _rows(manifest)
    active = {r["patient"] for r in rows if r["label"] == "active"}
    assert len(active) == 3
    shown = int(np.floor(SIGNS_SHARE * 24 + 0.5))
    assert 0.5 < shown / 24 < 1  # some, not all
    brighter = []
    for pid in sorted({r["patient"] for r in rows}):
        mine = [r for r in rows if r["patient"] == pid]
        if pid not in active:
            assert all(r["mask"] == "" for r in mine)
            continue
        masks = [_load(tmp_path / r["mask"]) > 0 for r in mine]
        assert sum(m.any() for m in masks) == shown  # exactly the stated share of the patient's images
        for r, mask in zip(mine, masks):
            if mask.any():
                image = _load(tmp_path / r["path"]).astype(float)
                brighter.append(image[mask].mean() > image[~mask].mean())
    assert np.mean(brighter) >= 0.9  # the patches show up in the images (leakage, infiltrate, vessels)


# A style without acquisition effects (no noise, blur, vignetting or probe artefacts): tests see the tissue.
CLEAN = PatientStyle(photons=1e9, read_noise=0.0, blur=0.0, vignette=0.0, severity=0.8)


def _with_and_without(sign: str, seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same inflamed frame drawn with no sign and with ``sign`` only: (without, with, mask)."""
    without, mask = synthesize_frame(np.random.default_rng(seed), size, CLEAN, True, signs=())
    with_sign, mask2 = synthesize_frame(np.random.default_rng(seed), size, CLEAN, True, signs=(sign,))
    assert np.array_equal(mask, mask2) and 0.02 < mask.mean() < 0.6
    return without, with_sign, mask


def _beyond(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Pixels farther than ``pixels`` from the mask."""
    return ndi.distance_transform_edt(~mask) > pixels


@pytest.mark.slow
@pytest.mark.parametrize("sign", ["vessels", "leakage", "infiltrate"])
def test_each_sign_brightens_its_patches_and_nothing_else(sign: str) -> None:
    size = 128
    for seed in range(6):
        without, with_sign, mask = _with_and_without(sign, seed, size)
        diff = with_sign - without
        assert np.abs(diff[_beyond(mask, 0.1 * size)]).max() < 1e-6  # the patches' soft rim at most
        assert diff.min() > -1e-4  # dilated vessels, leaked dye and cells only add light
        inside = diff[mask]
        if sign == "vessels":  # wider capillaries in the lamina propria
            assert (inside > 0.05).mean() > 0.1
        elif sign == "leakage":  # diffuse dye in the lamina propria and the crypt lumina
            assert inside.mean() > 0.04
            assert np.percentile(with_sign[mask], 10) > np.percentile(without[mask], 10) + 0.03
        else:  # many small bright cells
            dots = (diff == ndi.maximum_filter(diff, 3)) & (diff > 0.1)
            assert dots[mask].sum() > 15 * mask.sum() / 1000


def _lumina(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 2) area and elongation (long / short axis) of the dark crypt lumina centred in ``mask``."""
    labels, _ = ndi.label(image < 0.12)
    found = []
    for i, box in enumerate(ndi.find_objects(labels), 1):
        yy, xx = np.nonzero(labels[box] == i)
        if len(yy) < 10:  # goblet cells
            continue
        if mask[int(yy.mean()) + box[0].start, int(xx.mean()) + box[1].start]:
            low, high = np.linalg.eigvalsh(np.cov(np.stack([yy, xx])))
            found.append((len(yy), np.sqrt(high / max(low, 1e-6))))
    return np.array(found).reshape(-1, 2)


def test_crypt_sign_distorts_and_drops_the_crypts_of_its_patches() -> None:
    size, spacing = 128, CLEAN.crypt_spacing * 128
    regular, distorted = [], []
    for seed in range(8):
        without, with_sign, mask = _with_and_without("crypts", seed, size)
        changed = np.abs(with_sign - without) > 0.02
        assert changed[mask].mean() > 0.3
        assert changed[_beyond(mask, 1.5 * spacing)].sum() <= 0.05 * changed.sum()  # neighbours shift a little
        regular.append(_lumina(without, mask))
        distorted.append(_lumina(with_sign, mask))
    regular, distorted = np.concatenate(regular), np.concatenate(distorted)
    # over six sets of eight frames: 0.64-0.84 times as many crypts, 1.38-1.58 times as elongated, 1.32-2.39
    # times the spread of sizes
    assert len(distorted) < 0.9 * len(regular)  # missing crypts
    assert distorted[:, 1].mean() > 1.25 * regular[:, 1].mean()  # elongated, distorted
    cv = [a[:, 0].std() / a[:, 0].mean() for a in (regular, distorted)]
    assert cv[1] > 1.2 * cv[0]  # irregular sizes


def test_unknown_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="oedema"):
        synthesize_frame(np.random.default_rng(0), 32, CLEAN, True, signs=("leakage", "oedema"))
    assert set(SIGNS) == {"crypts", "vessels", "leakage", "infiltrate"}


@pytest.mark.slow
@pytest.mark.parametrize(("patients", "seed"), [(24, 0), (24, 1), (24, 2), (80, 0)])
def test_recorded_styles_are_the_patients_and_do_not_predict_the_label(tmp_path: Path, patients: int,
                                                                        seed: int) -> None:
    # the generator's own record of each patient's style (styles.csv); 24 patients: the demo's cohorts
    synthesize_cohort(tmp_path, patients=patients, per_patient=1, size=32, seed=seed)
    with (tmp_path / "styles.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient"] for r in rows] == [f"P{i:02d}" for i in range(1, patients + 1)]
    for r, style in zip(rows, cohort_styles(seed, [r["label"] for r in rows])):
        assert float(r["gain"]) == pytest.approx(style.gain, rel=1e-5) and int(r["specks"]) == len(style.specks)
    y = np.array([r["label"] == "active" for r in rows])
    x = np.array([[float(r[f]) for f in (*STYLE_FIELDS, "specks")] for r in rows])
    assert 0.5 < y.mean() < 0.7
    # patients differ in every trait, but no trait tells active patients from controls: stratified within
    # each label, the two labels' values are spread alike (two-sided Mann-Whitney U: p > 0.5 for every trait,
    # where independent draws would give p < 0.5 for half of them and p < 0.01 for one trait in a hundred)
    for k in range(x.shape[1]):
        assert x[:, k].std() > 0
        assert mannwhitneyu(x[y, k], x[~y, k]).pvalue > 0.5, (patients, seed, k)
    if patients >= 80:  # nor do they all together: a cross-validated logistic regression scores at chance
        model = make_pipeline(StandardScaler(), LogisticRegression())
        scores = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
        assert roc_auc_score(y, scores) < 0.7


def _style_statistics(image: np.ndarray) -> tuple[float, float]:
    """Mean brightness and noise level (median absolute 4-neighbour Laplacian) of an image."""
    lap = np.abs(4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2] - image[1:-1, 2:])
    return float(image.mean()), float(np.median(lap))


@pytest.mark.slow
def test_image_brightness_and_noise_do_not_predict_the_label(tmp_path: Path) -> None:
    # 8 images a patient: an active patient's shows the signs in 7 (SIGNS_SHARE of 8, rounded), so every
    # patient has an image without signs; its brightness and noise are measured on the first such image
    rows = _rows(synthesize_cohort(tmp_path, patients=60, per_patient=8, size=40, seed=0))
    per_patient: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["patient"] not in per_patient and not (r["mask"] and _load(tmp_path / r["mask"]).any()):
            per_patient[r["patient"]] = _style_statistics(_load(tmp_path / r["path"]) / 255.0)
    label = {r["patient"]: r["label"] for r in rows}
    active = np.array([v for p, v in per_patient.items() if label[p] == "active"])
    control = np.array([v for p, v in per_patient.items() if label[p] == "control"])
    assert len(active) == 36 and len(control) == 24
    # patients differ a lot in both (gain, contrast, noise)...
    both = np.concatenate([active, control])
    assert both[:, 0].max() > 1.5 * both[:, 0].min() and both[:, 1].max() > 1.5 * both[:, 1].min()
    # ...but neither tells active patients from controls (two-sided Mann-Whitney U at the 1% level)
    for k in range(2):
        assert mannwhitneyu(active[:, k], control[:, k]).pvalue > 0.01


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    args = dict(patients=3, per_patient=2, size=48)
    synthesize_cohort(tmp_path / "a", seed=5, **args)
    synthesize_cohort(tmp_path / "b", seed=5, **args)
    synthesize_cohort(tmp_path / "c", seed=6, **args)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    images_a = {k: v for k, v in a.items() if k.startswith("images/")}
    images_c = {k: v for k, v in c.items() if k.startswith("images/")}
    assert images_a.values() and set(images_a.values()).isdisjoint(images_c.values())


def test_frame_is_pure_function_of_rng_and_has_expected_types() -> None:
    style = draw_patient_style(np.random.default_rng(0))
    img, mask = synthesize_frame(np.random.default_rng(1), 64, style, True)
    img2, mask2 = synthesize_frame(np.random.default_rng(1), 64, style, True)
    assert img.dtype == np.float32 and img.shape == (64, 64) and 0.0 <= img.min() <= img.max() <= 1.0
    assert mask.dtype == bool and mask.shape == (64, 64) and mask.any()
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    _, normal_mask = synthesize_frame(np.random.default_rng(1), 64, style, False)
    assert not normal_mask.any()


def test_patients_differ_in_style_more_than_frames_within_a_patient(tmp_path: Path) -> None:
    rows = _rows(synthesize_cohort(tmp_path, patients=6, per_patient=12, size=48, seed=2))
    means: dict[str, list[float]] = {}
    for r in rows:
        if not (r["mask"] and _load(tmp_path / r["mask"]).any()):  # style, not signs
            means.setdefault(r["patient"], []).append(float(_load(tmp_path / r["path"]).mean()))
    between = np.var([np.mean(v) for v in means.values()], ddof=1)
    within = np.mean([np.var(v, ddof=1) for v in means.values() if len(v) > 1])
    assert len(means) == 6 and between > 4 * within


def test_lesion_pixels_brighter_than_the_rest() -> None:
    rng = np.random.default_rng(11)
    diffs = []
    for _ in range(8):
        style = draw_patient_style(rng)
        img, mask = synthesize_frame(rng, 128, style, True)
        assert 0 < mask.mean() < 0.9  # patches, not everywhere
        diffs.append(img[mask].mean() - img[~mask].mean())
    assert sum(d > 0 for d in diffs) >= 7
    assert np.mean(diffs) > 0.05


def test_overlay_black_outside_circle_with_logo_and_scale_bar(tmp_path: Path) -> None:
    size = 64
    rows = _rows(synthesize_cohort(tmp_path, patients=2, per_patient=3, size=size, seed=0, overlay=True))
    side = round(1.25 * size)
    yy, xx = np.mgrid[0:side, 0:side]
    centre = (side - 1) / 2
    dist = np.hypot(yy - centre, xx - centre)
    outside = dist > size / 2 + 1
    bottom = yy >= int(0.85 * side)
    for r in rows:
        img = _load(tmp_path / r["path"])
        assert img.shape == (side, side)
        assert not img[outside & ~bottom].any()  # black field outside the circle, overlay only at the bottom
        assert img[dist < size / 2 - 2].mean() > 5  # tissue inside
        left, right = outside & bottom & (xx < side // 3), outside & bottom & (xx > 2 * side // 3)
        assert (img[left] == 255).sum() >= 6 and (img[right] == 255).sum() >= 4  # logo, scale bar
        if r["mask"]:
            mask = _load(tmp_path / r["mask"])
            assert mask.shape == (side, side) and not mask[outside].any()
    # mask geometry matches the image: the lesion lies where the image is brighter
    masked = [r for r in rows if r["mask"] and _load(tmp_path / r["mask"]).any()]
    assert masked
    for r in masked:
        img, mask = _load(tmp_path / r["path"]), _load(tmp_path / r["mask"]) > 0
        inside = (dist < size / 2) & ~mask
        assert img[mask].mean() > img[inside].mean()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"patients": 1}, "patients"),
        ({"per_patient": 0}, "per_patient"),
        ({"size": 31}, "size"),
        ({"seed": -1}, "seed"),
        ({"patients": 2.5}, "patients"),
        ({"size": "64"}, "size"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{name}\b"):
        synthesize_cohort(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(ConfigError, match="taken"):
        synthesize_cohort(target, patients=2, per_patient=1, size=32)
