from collections import Counter

import numpy as np
import pytest

from media import write_video
from mucosa.cli import main
from mucosa.data.manifest import Cohort, Record, load_manifest
from mucosa.data.splits import assign, leaked_patients, patient_folds, split_cohort
from mucosa.errors import ConfigError, MucosaWarning


def units(n_patients=20, per_patient=30, seed=0):
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        count = int(rng.integers(per_patient // 2, per_patient * 2))
        labels += [("active" if p % 5 < 3 else "control")] * count
        patients += [f"P{p:02d}"] * count
    return np.array(labels), np.array(patients)


def sides_of(patients, out):
    return {p: set(out[patients == p]) for p in set(patients)}


@pytest.mark.parametrize("mode, kwargs", [("patient", {}), ("kfold", {"k": 4, "fold": 2}),
                                          ("lopo", {"fold": 3}), ("patient", {"val": 0.25}),
                                          ("kfold", {"k": 5, "fold": 0, "val": 0.2})])
def test_grouped_modes_never_put_a_patient_on_two_sides(mode, kwargs):
    labels, patients = units()
    out = assign(labels, patients, mode, seed=1, **kwargs)
    assert all(len(s) == 1 for s in sides_of(patients, out).values())
    assert {"train", "test"} <= set(out)
    for side in set(out):  # stratified: every class on every side
        assert set(labels[out == side]) == {"active", "control"} or mode == "lopo"


def test_patient_holdout_is_near_the_fraction_and_deterministic():
    labels, patients = units(n_patients=30)
    out = assign(labels, patients, "patient", test=0.2, seed=7)
    test_patients = {p for p in set(patients) if out[patients == p][0] == "test"}
    assert 4 <= len(test_patients) <= 8
    assert np.array_equal(out, assign(labels, patients, "patient", test=0.2, seed=7))
    assert not np.array_equal(out, assign(labels, patients, "patient", test=0.2, seed=8))


def test_within_patient_is_80_20_of_each_patient_and_label():
    labels, patients = units()
    out = assign(labels, patients, "within-patient", test=0.2, seed=0)
    for p in set(patients):
        share = np.mean(out[patients == p] == "test")
        assert share == pytest.approx(0.2, abs=0.05)
    assert all(s == {"train", "test"} for s in sides_of(patients, out).values())  # the paper's leak
    assert np.array_equal(out, assign(labels, patients, "within-patient", test=0.2, seed=0))
    with_val = assign(labels, patients, "within-patient", test=0.2, val=0.25, seed=0)
    assert np.mean(with_val == "val") == pytest.approx(0.8 * 0.25, abs=0.03)


def test_kfold_covers_every_patient_once():
    labels, patients = units()
    folds = patient_folds(labels, patients, 5, seed=0)
    assert set(folds) == set(range(5))
    assert all(len(set(folds[patients == p])) == 1 for p in set(patients))


def test_lopo_holds_out_exactly_one_patient():
    labels, patients = units(n_patients=6)
    out = assign(labels, patients, "lopo", fold=2)
    assert set(patients[out == "test"]) == {sorted(set(patients))[2]}


def test_bad_split_arguments():
    labels, patients = units(n_patients=4)
    with pytest.raises(ConfigError, match="k=5 folds needs"):
        assign(labels, patients, "kfold", k=5)
    with pytest.raises(ConfigError, match="fold 9"):
        assign(labels, patients, "lopo", fold=9)
    with pytest.raises(ConfigError, match="split mode 'random'"):
        assign(labels, patients, "random")
    with pytest.raises(ConfigError, match="at least 2 patients"):
        assign(labels[:3], patients[:3], "patient")


def test_within_patient_on_videos_splits_frames_and_reports_leakage(tmp_path):
    write_video(tmp_path / "a.avi", n=30)
    write_video(tmp_path / "b.avi", n=20)
    cohort = Cohort([Record((tmp_path / "a.avi").resolve(), "active", "A"),
                     Record((tmp_path / "b.avi").resolve(), "control", "B")], ["control", "active"])
    result = split_cohort(cohort, "within-patient", test=0.2, seed=0)
    frames = {side: Counter() for side in ("train", "test")}
    for r in result.cohort.records:
        frames[r.split][r.patient] += len(r.frames.indices(10**6))
    assert frames["test"] == Counter(A=6, B=4) and frames["train"] == Counter(A=24, B=16)
    assert result.leaked_patients == ["A", "B"]
    assert "leakage: 2 patient(s)" in result.report and "WARNING: within-patient" in result.report
    # every frame appears exactly once across the rewritten rows
    a_frames = sorted(i for r in result.cohort.records if r.patient == "A" for i in r.frames.indices(30))
    assert a_frames == list(range(30))


def test_cli_split_writes_column_and_reports(tmp_path, capsys):
    lines = []
    for p in range(10):
        for i in range(3):
            (tmp_path / f"P{p}_{i}.png").write_bytes(b"")  # split never opens the images
            lines.append(f"P{p}_{i}.png,{'active' if p < 6 else 'control'},P{p}")
    (tmp_path / "m.csv").write_text("path,label,patient\n" + "\n".join(lines) + "\n")
    assert main(["split", str(tmp_path / "m.csv"), "--mode", "patient", "--test", "0.3", "--seed", "3",
                 "-o", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "leakage: none" in out and "test :" in out
    cohort = load_manifest(tmp_path / "s.csv")
    assert {r.split for r in cohort.records} == {"train", "test"}
    assert leaked_patients(cohort.records) == []


# --- every class in every part, or a clear error ----------------------------------------------------------------


def cohort_units(per_class: dict[str, int], seed=0, low=2, high=12):
    """Units of patients with per_class[label] patients of each label, each with a random number of units."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for label, n in per_class.items():
        for p in range(n):
            count = int(rng.integers(low, high))
            labels += [label] * count
            patients += [f"{label}-{p}"] * count
    return np.array(labels), np.array(patients)


def test_readme_command_on_six_patients_stops_with_the_class_counts():
    labels, patients = cohort_units({"active": 4, "control": 2}, low=8, high=9)  # synth --patients 6 --per-patient 8
    with pytest.raises(ConfigError, match=r"a patient split with a test part and a validation part needs at least 3 "
                       r"patients of each class .*the cohort has 4 active, 2 control patient\(s\) \(6 in all\)"):
        assign(labels, patients, "patient", test=0.2, val=0.2)
    out = assign(labels, patients, "patient", test=0.2, val=0.0)  # without validation the cohort suffices
    assert set(labels[out == "test"]) == set(labels[out == "train"]) == {"active", "control"}


@pytest.mark.parametrize("mode, kwargs, per_class", [
    ("patient", {"test": 0.2, "val": 0.2}, {"active": 9, "control": 3}),
    ("patient", {"test": 0.3, "val": 0.25}, {"a": 3, "b": 4, "c": 12}),
    ("kfold", {"k": 3, "val": 0.2}, {"active": 14, "control": 4}),
    ("lopo", {"fold": 0, "val": 0.3}, {"active": 3, "control": 7}),
    ("none", {"val": 0.2}, {"active": 2, "control": 9})])
def test_every_part_holds_every_class_whatever_the_seed(mode, kwargs, per_class):
    for seed in range(12):
        labels, patients = cohort_units(per_class, seed=seed)
        out = assign(labels, patients, mode, seed=seed, **kwargs)
        assert all(len(s) == 1 for s in sides_of(patients, out).values())  # still grouped
        for side in set(out) - ({"test"} if mode == "lopo" else set()):
            assert set(labels[out == side]) == set(per_class), (seed, side)


def test_kfold_folds_each_hold_every_class_or_say_why():
    labels, patients = cohort_units({"active": 11, "control": 5}, seed=3)
    for seed in range(8):
        folds = patient_folds(labels, patients, 5, seed)
        assert all(set(labels[folds == f]) == {"active", "control"} for f in range(5))
    with pytest.raises(ConfigError, match=r"a 5-fold patient split needs at least 5 patients of each class.*"
                       r"11 active, 4 control.*Lower --k \(to 4 at most\)"):
        patient_folds(*cohort_units({"active": 11, "control": 4}), 5, 0)


@pytest.mark.parametrize("cases", [4, 5, 6, 7, 8])
def test_split_none_on_a_few_single_video_cases_adapts_instead_of_crashing(cases):
    labels = np.array(["gbm" if i % 2 else "men" for i in range(cases)])
    patients = np.array([f"case-{i}" for i in range(cases)])
    for seed in range(5):
        out = assign(labels, patients, "none", val=0.2, seed=seed)
        assert set(out) == {"train", "val"}
        assert set(labels[out == "val"]) == set(labels[out == "train"]) == {"gbm", "men"}


def test_split_none_with_one_case_of_a_class_names_the_counts():
    labels, patients = np.array(["gbm", "men", "men"]), np.array(["g1", "m1", "m2"])
    with pytest.raises(ConfigError, match=r"training on every case with validation cases held out needs at least 2 "
                       r"patients of each class .*the cohort has 1 gbm, 2 men patient\(s\) \(3 in all\)"):
        assign(labels, patients, "none", val=0.2)
    assert set(assign(labels, patients, "none", val=0.0)) == {"train"}


def test_two_patients_are_counted_as_two():
    labels, patients = np.array(["a"] * 3 + ["b"] * 3), np.array(["P1"] * 3 + ["P2"] * 3)
    with pytest.raises(ConfigError, match=r"the cohort has 1 a, 1 b patient\(s\) \(2 in all\)"):
        assign(labels, patients, "patient", test=0.2, val=0.2)


def test_lopo_validation_needs_two_patients_of_each_class_besides_the_left_out_one():
    labels, patients = cohort_units({"AIA": 2, "C": 2})
    with pytest.raises(ConfigError, match=r"leaving out patient 'AIA-0' needs at least 2 patients of each class.*"
                       r"the other patients are 1 AIA, 2 C patient\(s\) \(3 in all\)"):
        assign(labels, patients, "lopo", fold=0, val=0.34)


def test_manifest_split_without_a_class_in_validation_warns(tmp_path):
    rows = [("active", "train"), ("active", "val"), ("active", "test"), ("control", "train"), ("control", "test")]
    records = [Record(tmp_path / f"{i}.png", label, f"P{i}", split=side) for i, (label, side) in enumerate(rows)]
    with pytest.warns(MucosaWarning, match="the manifest's val rows hold no control rows: validation AUC"):
        split_cohort(Cohort(records, ["control", "active"]), "manifest")
