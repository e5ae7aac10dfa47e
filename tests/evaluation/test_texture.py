"""mucosa texture: the LBP classifier on a run's split, alone and fused with the network's evaluation."""

import csv
import json

import numpy as np
import pytest

from mucosa.cli import main
from mucosa.data.manifest import load_manifest
from tiny_configs import TINY

pytestmark = pytest.mark.slow  # every test here trains or loads a model


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def evaluated(train_tiny, tmp_path_factory):
    """A tiny run on 10 synthetic patients and its evaluation of the test part."""
    tiny = train_tiny("texture", TINY, patients=10, per_patient=4, seed=5)
    evaluation = tmp_path_factory.mktemp("texture") / "ev"
    assert main(["evaluate", "--checkpoint", str(tiny.best), "--manifest", str(tiny.run / "split.csv"),
                 "--out", str(evaluation), "--bootstrap", "20", "--threshold", "0.5", "--gallery", "0"]) == 0
    return tiny.run / "split.csv", evaluation


def test_texture_alone_and_fused_on_the_runs_own_test_files(evaluated, tmp_path, capsys):
    """Texture is fitted on train and val, scored on every test file; fused = the mean of texture and the
    network's per-file probability from evaluate's files.csv; three methods in metrics.json, each judged alike."""
    split, evaluation = evaluated
    assert main(["texture", "--manifest", str(split), "--fuse", str(evaluation), "--out", str(tmp_path / "t"),
                 "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "texture: file ROC AUC" in printed and "fused:" in printed and "network:" in printed
    test = [r for r in load_manifest(split).records if r.split == "test"]
    rows = read_csv(tmp_path / "t" / "files.csv")
    assert sorted(r["file"] for r in rows) == sorted(str(r.path) for r in test)
    network = {r["file"]: float(r["mean_probability"]) for r in read_csv(evaluation / "files.csv")}
    for r in rows:
        assert float(r["network"]) == pytest.approx(network[r["file"]], abs=1e-4)
        assert float(r["fused"]) == pytest.approx((float(r["texture"]) + float(r["network"])) / 2, abs=2e-4)
    result = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert set(result["methods"]) == {"texture", "network", "fused"} and result["positive"] == "active"
    for method, m in result["methods"].items():
        scores = np.array([float(r[method]) for r in rows])
        truth = np.array([r["label"] == "active" for r in rows])
        assert m["files"] == len(test) and m["accuracy"]["value"] == pytest.approx(np.mean((scores >= 0.5) == truth))
    patients = read_csv(tmp_path / "t" / "patients.csv")
    assert {p["patient"] for p in patients} == {r.patient for r in test}
    assert sum(int(p["files"]) for p in patients) == len(test)


def test_texture_refuses_inputs_it_cannot_judge_in_one_line(evaluated, tmp_path, capsys):
    """No split column; an evaluation that misses test files; a folder that is no evaluation: exit 2, one
    line naming the file, nothing written."""
    split, evaluation = evaluated
    plain = split.parent / "plain.csv"  # beside split.csv: its relative paths still resolve
    with open(split, newline="") as handle, open(plain, "w", newline="") as out:
        rows = list(csv.DictReader(handle))
        writer = csv.DictWriter(out, [c for c in rows[0] if c != "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.json").write_text((evaluation / "metrics.json").read_text())
    kept = read_csv(evaluation / "files.csv")
    with open(partial / "files.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, list(kept[0]))
        writer.writeheader()
        writer.writerows(kept[1:])
    cases = [(["--manifest", str(plain)], "plain.csv: needs a split column"),
             (["--manifest", str(split), "--fuse", str(partial)], "no network probability for 1 of"),
             (["--manifest", str(split), "--fuse", str(tmp_path)], "not a readable two-class mucosa evaluate")]
    for args, message in cases:
        assert main(["texture", *args, "--out", str(tmp_path / "out"), "--bootstrap", "5"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_a_patient_with_mixed_labels_is_judged_by_the_project_rule(evaluated, tmp_path):
    """A patient's label is its files' majority, a tie active (metrics.aggregate_patients), whatever the order
    of its files: one test patient's first file active and the other three not is an inactive patient; another
    split two and two, its first file inactive, is active. patients.csv and patient_accuracy both follow it."""
    split, _ = evaluated
    with open(split, newline="") as handle:
        rows = list(csv.DictReader(handle))
    (other,) = {r["label"] for r in rows} - {"active"}
    test_patients = sorted({r["patient"] for r in rows if r["split"] == "test"})
    majority, tie = test_patients[:2]
    for patient, labels in ((majority, ["active", other, other, other]), (tie, [other, "active", other, "active"])):
        mine = [r for r in rows if r["patient"] == patient]
        assert len(mine) == 4, "each synthetic test patient has four files"
        for row, label in zip(mine, labels):
            row["label"] = label
    relabelled = split.parent / "relabelled.csv"  # beside split.csv: its relative paths still resolve
    with open(relabelled, "w", newline="") as out:
        writer = csv.DictWriter(out, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["texture", "--manifest", str(relabelled), "--out", str(tmp_path / "t"), "--bootstrap", "5"]) == 0
    patients = {p["patient"]: p for p in read_csv(tmp_path / "t" / "patients.csv")}
    assert patients[majority]["label"] == other and patients[tie]["label"] == "active"
    right = sum((float(p["texture"]) >= 0.5) == (p["label"] == "active") for p in patients.values())
    result = json.loads((tmp_path / "t" / "metrics.json").read_text())["methods"]["texture"]
    assert result["patient_accuracy"]["count"] == [right, len(patients)]


def test_pseudonymised_texture_outputs_and_console_hold_no_planted_name(evaluated, tmp_path, capsys):
    """Patient ids and paths (a folder named after the patient) become pseudonyms everywhere it writes or shows."""
    import shutil

    from mucosa.data.manifest import write_manifest

    split, _ = evaluated
    records = []
    for r in load_manifest(split).records:
        target = tmp_path / "JaneDoe-cohort" / f"JaneDoe-{r.patient}" / r.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.path, target)
        records.append(r.__class__(target, r.label, f"JaneDoe-{r.patient}", split=r.split))
    manifest = write_manifest(records, tmp_path / "JaneDoe-cohort" / "split.csv")
    assert main(["texture", "--manifest", str(manifest), "--out", str(tmp_path / "t"), "--bootstrap", "20",
                 "--pseudonymise", "--pseudonym-key", "k"]) == 0
    shown = capsys.readouterr()
    written = "".join(p.read_text() for p in (tmp_path / "t").iterdir())
    assert "JaneDoe" not in written + shown.out + shown.err
    assert all(r["patient"].startswith("ID-") and r["file"].startswith("ID-") for r in read_csv(tmp_path / "t" /
                                                                                                "files.csv"))
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["pseudonymised"] is True
