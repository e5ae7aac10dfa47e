"""Tests for the synthetic CLE cohort generator."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mucosa.data.synth import (
    REGIONS,
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


def test_masks_non_empty_for_most_active_images(tmp_path: Path) -> None:
    manifest = synthesize_cohort(tmp_path, patients=3, per_patient=12, size=64, seed=0)
    rows = [r for r in _rows(manifest) if r["label"] == "active"]
    assert len(rows) == 24
    filled = [_load(tmp_path / r["mask"]).any() for r in rows]
    assert 0.6 <= np.mean(filled) < 1.0  # about 20% lesion-free frames (label noise)


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
    style = draw_patient_style(np.random.default_rng(0), "active CD")
    img, mask = synthesize_frame(np.random.default_rng(1), 64, style, True)
    img2, mask2 = synthesize_frame(np.random.default_rng(1), 64, style, True)
    assert img.dtype == np.float32 and img.shape == (64, 64) and 0.0 <= img.min() <= img.max() <= 1.0
    assert mask.dtype == bool and mask.shape == (64, 64) and mask.any()
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    _, normal_mask = synthesize_frame(np.random.default_rng(1), 64, style, False)
    assert not normal_mask.any()


def test_patients_differ_in_style_more_than_frames_within_a_patient(tmp_path: Path) -> None:
    rows = _rows(synthesize_cohort(tmp_path, patients=6, per_patient=6, size=64, seed=2))
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r["patient"], []).append(float(_load(tmp_path / r["path"]).mean()))
    per_patient = np.array(list(means.values()))  # (patients, frames)
    between = per_patient.mean(axis=1).var(ddof=1)
    within = per_patient.var(axis=1, ddof=1).mean()
    assert between > 4 * within


def test_lesion_pixels_brighter_than_the_rest() -> None:
    rng = np.random.default_rng(11)
    diffs = []
    for group in ["active CD"] * 8:
        style = draw_patient_style(rng, group)
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
