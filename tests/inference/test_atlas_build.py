"""Atlases built from a checkpoint and a manifest, grown, calibrated and recorded in the model card; the CLI's
``mucosa atlas build``, ``add`` and ``search``."""

import csv
import hashlib
import json
import logging

import numpy as np
import pytest
from PIL import Image

from mucosa.cli import main
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.errors import MucosaWarning
from mucosa.inference import atlas_build, atlas_search
from mucosa.inference.atlas import Atlas, AtlasError, AtlasFileError, AtlasModel, FrameRecords, load
from mucosa.inference.atlas_build import atlas_after_training, find_atlas, open_atlas
from mucosa.models.checkpoint import load_checkpoint


def rows_of(run, *splits):
    return [r for r in load_manifest(run / "split.csv").records if r.split in splits]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_add_and_search_round_trip(atlas_copy, tmp_path, capsys):
    run = atlas_copy
    folder = run / "atlas-train"
    # build from the training rows alone: the validation rows, outside the atlas, still calibrate it
    assert main(["atlas", "build", "--checkpoint", str(run / "best.ckpt"), "--manifest", str(run / "split.csv"),
                 "--out", str(folder), "--parts", "train"]) == 0
    assert "96 frames of 96 cases" in capsys.readouterr().out  # 6 training patients of 16 images
    atlas = load(folder)
    assert atlas.calibration.frames == 48 and atlas.calibration.patients == 3
    assert atlas.origin["checkpoint"] == "best.ckpt" and atlas.origin["manifests"][0]["parts"] == ["train"]
    card = load_checkpoint(run / "best.ckpt").info["atlas"]
    assert card["folder"] == "atlas-train" and card["atlas_json_sha256"] == sha256(folder / "atlas.json")
    assert (card["threshold"], card["k"], card["quantile"], card["case_quantile"], card["frames"]) == (
        atlas.calibration.threshold, atlas.calibration.k, 0.975, 0.95, 96)
    assert (card["case_threshold"], card["calibration_cases"]) == (atlas.calibration.case_threshold, 96)

    # grow it by the validation and test rows (its checkpoint: the one beside it); it is calibrated again
    grown = tmp_path / "more.csv"
    write_manifest(rows_of(run, "val", "test"), grown)
    assert main(["atlas", "add", str(folder), "--manifest", str(grown)]) == 0
    assert "96 frames added; atlas" in capsys.readouterr().out
    atlas = load(folder, load_checkpoint(run / "best.ckpt").weights_sha256)
    assert len(atlas) == 192 and atlas.calibration.atlas_frames == 192 and atlas.calibration.frames == 48
    assert atlas.calibration.cases == 192  # the case threshold is set again on the grown atlas's cases
    assert len(atlas.origin["validation_cases"]) == 48 and len(atlas.origin["manifests"]) == 2
    assert load_checkpoint(run / "best.ckpt").info["atlas"]["atlas_json_sha256"] == sha256(folder / "atlas.json")
    before = sha256(folder / "atlas.json")
    assert main(["atlas", "add", str(folder), "--manifest", str(grown)]) == 2  # the same cases again
    assert "already in the atlas" in capsys.readouterr().err and sha256(folder / "atlas.json") == before

    # search: a test patient's folder (its images are atlas cases now: known by their content, its patient is
    # left out though no patient is named: inference.leave_out) ...
    test_patient = rows_of(run, "test")[0]
    out = tmp_path / "found"
    assert main(["atlas", "search", str(folder), str(test_patient.path.parent), "-k", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  1. " in printed and "patient " + test_patient.patient not in printed
    rows = read_csv(out / "similar.csv")
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and test_patient.patient not in {r["patient"] for r in rows}
    found = json.loads((out / "similar.json").read_text())
    thumbnail = out / found["cases"][0]["similar"][0]["closest"][0]["thumbnail"]
    assert Image.open(thumbnail).size == (48, 48)
    # ... and the manifest naming that patient: its own frames are never returned
    one = tmp_path / "one.csv"
    write_manifest([r for r in rows_of(run, "test") if r.patient == test_patient.patient], one)
    assert main(["atlas", "search", str(folder), str(one), "--out", str(out)]) == 0
    rows = read_csv(out / "similar.csv")
    assert len(rows) == 5 and test_patient.patient not in {r["patient"] for r in rows}


def test_add_and_search_refuse_another_models_atlas(atlas_copy, deployed, tmp_path, capsys):
    other = deployed[0] / "best.ckpt"  # another tiny model, same input size
    folder, image = atlas_copy / "atlas", rows_of(atlas_copy, "test")[0].path
    for argv in (["atlas", "add", str(folder), "--manifest", str(atlas_copy / "split.csv"), "--checkpoint", str(other)],
                 ["atlas", "search", str(folder), str(image), "--checkpoint", str(other)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "an atlas of another model" in err and len(err.strip().splitlines()) == 1


def test_an_atlas_moved_from_its_checkpoint_asks_for_it(atlas_copy, tmp_path, capsys):
    moved = tmp_path / "moved"
    (atlas_copy / "atlas").rename(moved)
    assert main(["atlas", "search", str(moved), str(rows_of(atlas_copy, "test")[0].path)]) == 2
    assert "the checkpoint it was built for (best.ckpt) is not beside it; name it with --checkpoint" in \
        capsys.readouterr().err
    assert main(["atlas", "search", str(moved), str(rows_of(atlas_copy, "test")[0].path), "--checkpoint",
                 str(atlas_copy / "best.ckpt")]) == 0


def test_too_few_validation_frames_leave_the_atlas_uncalibrated(atlas_copy, tmp_path):
    manifest = tmp_path / "few.csv"
    rows = rows_of(atlas_copy, "train") + rows_of(atlas_copy, "val")[:10]  # 10 validation images
    write_manifest(rows, manifest)
    with pytest.warns(MucosaWarning, match="10 validation frames .* is not calibrated"):
        report = atlas_build.build_atlas(atlas_copy / "best.ckpt", manifest, tmp_path / "atlas")
    assert report.atlas.calibration is None and "not calibrated" in report.format()
    assert load_checkpoint(atlas_copy / "best.ckpt").info["atlas"]["threshold"] is None
    with pytest.warns(MucosaWarning, match="not calibrated: it shows similar cases"):
        open_atlas(tmp_path / "atlas", report.atlas.model.weights_sha256)


def test_an_atlas_of_one_patient_is_left_uncalibrated_with_a_warning(atlas_copy, tmp_path):
    """Rows of one patient only cannot set a threshold (no other patient to compare a frame with): the atlas
    is built, uncalibrated, and says it cannot tell, instead of thresholds that would let nothing be
    unfamiliar."""
    import dataclasses

    rows = rows_of(atlas_copy, "train", "val")
    one = sorted({r.patient for r in rows})[:6]  # 96 images, 48 of them validation frames
    manifest = tmp_path / "one.csv"
    write_manifest([dataclasses.replace(r, patient="only", split="val" if i % 2 else "train")
                    for i, r in enumerate(r for r in rows if r.patient in one)], manifest)
    with pytest.warns(MucosaWarning, match="too few frames of other patients .* at least two patients\\); the atlas "
                                           "is not calibrated"):
        report = atlas_build.build_atlas(atlas_copy / "best.ckpt", manifest, tmp_path / "atlas")
    assert report.atlas.calibration is None and set(report.atlas.records.patients.tolist()) == {"only"}
    with pytest.warns(MucosaWarning, match="not calibrated: it shows similar cases, but cannot tell"):
        atlas_search.search_atlas(tmp_path / "atlas", [rows_of(atlas_copy, "test")[0].path], k=2,
                                  checkpoint=atlas_copy / "best.ckpt")
    assert load_checkpoint(atlas_copy / "best.ckpt").info["atlas"]["threshold"] is None
    with pytest.warns(MucosaWarning, match="not calibrated.*a manifest of several patients"):  # not 'validation rows'
        open_atlas(tmp_path / "atlas", report.atlas.model.weights_sha256)


def test_a_failed_atlas_after_training_is_a_warning(tmp_path, monkeypatch, caplog):
    def fails(*args, **kwargs):
        raise AtlasError("no frame")

    monkeypatch.setattr(atlas_build, "build_atlas", fails)
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        assert atlas_after_training(tmp_path / "best.ckpt", tmp_path / "split.csv") is None
    assert "best.ckpt: atlas not written (AtlasError: no frame); the checkpoint is fine" in caplog.text


def test_finding_the_atlas_beside_a_model(tmp_path, recwarn):
    assert find_atlas(tmp_path / "best.ckpt", use=False) is None and not recwarn.list
    with pytest.warns(MucosaWarning, match="best.ckpt has no atlas beside it: mucosa cannot tell whether these "
                                           "recordings are unlike its training data"):
        assert find_atlas(tmp_path / "best.ckpt") is None
    (tmp_path / "atlas").mkdir()
    assert find_atlas(tmp_path / "best.ckpt") == tmp_path / "atlas"
    assert find_atlas(tmp_path / "best.ckpt", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    vectors = np.eye(2, dtype=np.float32)
    records = FrameRecords.of(["a", "b"], ["p", "q"], ["x", "y"], [0, 0], ["a.png", "b.png"])
    Atlas(AtlasModel("a" * 64, ("x", "y"), 2), vectors, records, np.zeros((2, 4, 4), np.uint8)).save(tmp_path / "a")
    with pytest.raises(AtlasError, match="does not record the SHA-256 of its weights"):
        open_atlas(tmp_path / "a", None)
    with pytest.raises(AtlasFileError, match="an atlas of another model"):
        open_atlas(tmp_path / "a", "b" * 64)


def test_growing_a_one_patient_atlas_by_a_second_patient_calibrates_it(atlas_copy, tmp_path):
    """An atlas of one patient (its validation rows included) cannot calibrate; growing it by a second
    patient's training rows can: the first patient's validation frames, kept in the atlas, calibrate it."""
    import dataclasses

    rows = rows_of(atlas_copy, "train", "val")
    patients = sorted({r.patient for r in rows})
    first = tmp_path / "first.csv"
    write_manifest([dataclasses.replace(r, patient="only", split="val" if i % 2 else "train")
                    for i, r in enumerate(r for r in rows if r.patient in patients[:6])], first)  # 48 val
    with pytest.warns(MucosaWarning, match="at least two patients\\); the atlas is not calibrated"):
        atlas_build.build_atlas(atlas_copy / "best.ckpt", first, atlas_copy / "atlas-one")
    second = tmp_path / "second.csv"
    write_manifest([dataclasses.replace(r, split="train") for r in rows if r.patient in patients[6:8]], second)
    report = atlas_build.add_to_atlas(atlas_copy / "atlas-one", second)
    assert report.atlas.calibration is not None and report.atlas.calibration.frames == 48
