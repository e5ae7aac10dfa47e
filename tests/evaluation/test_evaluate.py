import base64
import csv
import html
import json
import re

import numpy as np
import pytest
import yaml

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError
from mucosa.evaluation.compare import compare
from mucosa.evaluation.evaluate import evaluate
from mucosa.evaluation.report import fmt, interval_kind, md_escape
from mucosa.models.config import config_from_dict
from mucosa.models.training import train
from tiny_configs import TINY

pytestmark = pytest.mark.slow  # every test here trains or loads a model


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The session's tiny CNN-LSTM, trained on 10 synthetic patients; returns (run folder, cache)."""
    return tiny_run.run, tiny_run.cache


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_every_output_and_uses_the_recorded_test_patients(trained, tmp_path):
    run, cache = trained
    result = evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "ev", n_boot=100, cache=cache)
    split = load_manifest(run / "split.csv")
    test_patients = {r.patient for r in split.records if r.split == "test"}
    predictions = read_csv(tmp_path / "ev" / "predictions.csv")
    assert {r["patient"] for r in predictions} == test_patients
    assert len(predictions) == sum(1 for r in split.records if r.split == "test")
    patients = read_csv(tmp_path / "ev" / "patients.csv")
    assert {p["patient"] for p in patients} == test_patients
    for p in patients:  # the patient score is the mean of its frames' probabilities
        mine = [float(r["probability"]) for r in predictions if r["patient"] == p["patient"]]
        assert float(p["score"]) == pytest.approx(np.mean(mine), abs=1e-4)
        assert p["verdict"] in ("active inflammation", "mucosal healing")
    stored = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(result.metrics))
    assert set(stored) >= {"image", "patient", "threshold", "calibration"}
    assert list(stored)[:8].index("patient") < list(stored)[:8].index("image")  # the clinical question first
    for level in ("image", "patient"):
        assert {"accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc"} <= set(stored[level])
    accuracy = np.mean([r["prediction"] == r["label"] for r in predictions])
    assert stored["image"]["accuracy"]["value"] == pytest.approx(accuracy)
    for name in ("roc.png", "pr.png", "confusion.png", "reliability.png", "patients.png", "regions.csv"):
        assert (tmp_path / "ev" / name).is_file(), name
    files = read_csv(tmp_path / "ev" / "files.csv")  # one row per image, its frames' mean probability
    assert sorted(f["file"] for f in files) == sorted({r["path"] for r in predictions})
    for f in files:
        mine = [float(r["probability"]) for r in predictions if r["path"] == f["file"]]
        assert (int(f["n_frames"]), float(f["score"])) == (len(mine), pytest.approx(np.mean(mine), abs=1e-4))
    assert stored["counts"]["files"] == len(files)
    file_accuracy = np.mean([f["correct"] == "1" for f in files])
    assert stored["file"]["accuracy"]["value"] == pytest.approx(file_accuracy)


def test_report_embeds_every_figure_and_matches_metrics_json(trained, tmp_path):
    run, cache = trained
    evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "ev", n_boot=50, cache=cache)
    page = (tmp_path / "ev" / "report.html").read_text()
    stored = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    gallery = sorted((tmp_path / "ev" / "gallery").glob("*.png"))
    assert gallery and "Gallery" in page  # Grad-CAM of true/false positives/negatives
    for figure in sorted((tmp_path / "ev").rglob("*.png")):
        encoded = base64.b64encode(figure.read_bytes()).decode()
        assert encoded in page, figure.name
    markdown = (tmp_path / "ev" / "report.md").read_text()
    for level in ("patient", "image"):
        for entry in stored[level].values():  # each figure with the kind of its interval, or why it has none
            assert fmt(entry) in page and fmt(entry) in markdown
            kind = interval_kind(entry)
            assert html.escape(kind, quote=False) in page and md_escape(kind) in markdown
            assert kind.startswith("n/a: ") == (entry["ci"] is None)
    assert page.index("Patient-level verdict") < page.index("Image level")


def test_threshold_is_chosen_on_validation_only(trained, tmp_path):
    run, cache = trained
    first = evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "a", threshold="youden", n_boot=20,
                     cache=cache)
    assert first["threshold"]["rule"] == "youden" and "validation" in first["threshold"]["chosen_on"]
    # shuffle the labels of the test rows: the chosen threshold must not move
    cohort = load_manifest(run / "split.csv")
    rng = np.random.default_rng(0)
    test_rows = [i for i, r in enumerate(cohort.records) if r.split == "test"]
    labels = [cohort.records[i].label for i in test_rows]
    from dataclasses import replace

    records = list(cohort.records)
    for i, label in zip(test_rows, rng.permutation(labels)):
        records[i] = replace(records[i], label=str(label))
    shuffled = write_manifest(records, tmp_path / "shuffled.csv")
    second = evaluate(run / "best.ckpt", shuffled, tmp_path / "b", threshold="youden", n_boot=20, cache=cache)
    assert second["threshold"]["value"] == first["threshold"]["value"]
    with pytest.raises(ConfigError, match="needs .*validation|validation part"):
        evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "c", split="all", threshold="youden",
                 n_boot=20, cache=cache)


def test_bootstrap_is_reproducible_and_contains_the_estimate(trained, tmp_path):
    run, cache = trained
    a = evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "a", n_boot=80, seed=3, cache=cache)
    b = evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "b", n_boot=80, seed=3, cache=cache)
    assert a["image"] == b["image"]
    for level in ("patient", "file", "image"):
        for entry in a[level].values():
            if entry["ci"] is not None:
                assert entry["ci"][0] - 1e-9 <= entry["value"] <= entry["ci"][1] + 1e-9
                assert entry["ci"][0] < entry["ci"][1]  # never a zero-width interval
            else:
                assert entry["ci_note"]


def test_pseudonymised_outputs_hold_no_patient_id(trained, tmp_path):
    run, cache = trained
    evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "ev", n_boot=20, pseudonymise=True,
             pseudonym_key="k", cache=cache)
    text = "".join(p.read_text(errors="ignore") for p in (tmp_path / "ev").iterdir()
                   if p.suffix in (".csv", ".md", ".html"))
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)  # embedded figures are not text
    assert "P0" in "".join(r.patient for r in load_manifest(run / "split.csv").records)  # ids look like P01
    assert not re.search(r"\bP\d\d\b", text)
    ids = {r["patient"] for r in read_csv(tmp_path / "ev" / "patients.csv")}
    assert all(i.startswith("ID-") for i in ids)
    evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "ev2", n_boot=20, pseudonymise=True,
             pseudonym_key="k", cache=cache)
    assert ids == {r["patient"] for r in read_csv(tmp_path / "ev2" / "patients.csv")}  # keyed: stable


def test_three_classes_end_to_end(tmp_path):
    manifest = synthesize_cohort(tmp_path / "c", patients=9, per_patient=4, size=40, seed=2)
    cohort = load_manifest(manifest)
    from dataclasses import replace

    three = [replace(r, label={"active CD": "active", "mucosal healing": "healing", "normal": "normal"}[r.group])
             for r in cohort.records]
    if len({r.label for r in three}) < 3:
        pytest.skip("seed gave fewer than three groups")
    path = write_manifest(three, tmp_path / "three.csv")
    config = config_from_dict({**TINY, "split": {"mode": "none", "val": 0.0},
                               "training": {"epochs": 1, "batch_size": 8}})
    best = train(path, config, tmp_path / "run", cache=FrameCache(tmp_path / "cache"),
                 classes=["active", "healing", "normal"])  # "normal" has a few rows: named, so accepted
    result = evaluate(best, path, tmp_path / "ev", split="all", n_boot=20, cache=FrameCache(tmp_path / "cache"))
    assert result["classes"] == ["active", "healing", "normal"] and result["threshold"]["rule"] == "argmax"
    assert {"accuracy", "roc_auc", "roc_auc[0]", "roc_auc[2]"} <= set(result["image"])
    header = read_csv(tmp_path / "ev" / "predictions.csv")[0].keys()
    assert {"probability_active", "probability_healing", "probability_normal"} <= set(header)
    assert (tmp_path / "ev" / "report.html").is_file()


def test_compare_builds_table_iii_and_paired_test(trained, tmp_path, capsys):
    run, cache = trained
    evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "a", n_boot=20, cache=cache)
    evaluate(run / "best.ckpt", run / "split.csv", tmp_path / "b", n_boot=20, threshold="0.3", cache=cache)
    summary = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", n_boot=50)
    test = summary["paired_tests"][0]
    assert test["paired"] and test["diff"] == pytest.approx(0.0)  # same model on the same frames
    rows = read_csv(tmp_path / "cmp" / "table.csv")
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0]["ROC AUC"] == rows[1]["ROC AUC"] and rows[0]["Accuracy"] != "n/a"
    from sklearn.metrics import roc_auc_score

    from mucosa.evaluation.compare import load_evaluation

    loaded = load_evaluation(tmp_path / "a")  # predictions.csv keeps the probabilities exactly
    stored = json.loads((tmp_path / "a" / "metrics.json").read_text())["image"]["roc_auc"]["value"]
    assert roc_auc_score(loaded.y_true, loaded.y_score) == pytest.approx(stored, abs=1e-12)
    for name in ("compare_roc.png", "compare_pr.png", "comparison.html", "comparison.md"):
        assert (tmp_path / "cmp" / name).is_file()


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "comparison.html" in out
    rows = read_csv(tmp_path / "demo" / "report" / "table.csv")
    assert [r["run"] for r in rows] == ["cnn-lstm_within-patient", "cnn_within-patient", "cnn-lstm_patient",
                                        "cnn_patient"]
    assert "synthetic" in (tmp_path / "demo" / "report" / "comparison.md").read_text().lower()
    # the seed reaches the cohort and the training; patients are called by the share of their frames called
    # active, and the within-patient split tests on every patient, the patient split on unseen ones
    assert "seed=3" in (tmp_path / "demo" / "cohort" / "README.txt").read_text()
    assert (tmp_path / "demo" / "cohort" / "styles.csv").is_file()
    for run in ("cnn_within-patient", "cnn_patient"):
        metrics = json.loads((tmp_path / "demo" / "runs" / run / "evaluation" / "metrics.json").read_text())
        assert metrics["aggregation"] == "share"
        assert yaml.safe_load((tmp_path / "demo" / "runs" / run / "config.yaml").read_text())["training"]["seed"] == 3
    split = {run: read_csv(tmp_path / "demo" / "runs" / run / "split.csv") for run in ("cnn_within-patient",
                                                                                     "cnn_patient")}
    test_patients = {run: {r["patient"] for r in rows if r["split"] == "test"} for run, rows in split.items()}
    train_patients = {run: {r["patient"] for r in rows if r["split"] == "train"} for run, rows in split.items()}
    assert test_patients["cnn_within-patient"] == train_patients["cnn_within-patient"]
    assert not test_patients["cnn_patient"] & train_patients["cnn_patient"]
    # benchmarks/demo_breakdown.py: the runs' image AUC as evaluate reports it, and the active test images
    # without signs (empty lesion masks) counted
    import importlib.util
    from pathlib import Path

    from PIL import Image

    spec = importlib.util.spec_from_file_location("demo_breakdown", Path(__file__).resolve().parents[2] / "benchmarks"
                                                  / "demo_breakdown.py")
    breakdown = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(breakdown)
    demo = tmp_path / "demo"
    for row in breakdown.breakdown(demo):
        metrics = json.loads((demo / "runs" / row["run"] / "evaluation" / "metrics.json").read_text())
        assert row["auc"] == pytest.approx(metrics["image"]["roc_auc"]["value"])
        frames = read_csv(demo / "runs" / row["run"] / "evaluation" / "predictions.csv")
        active = [f for f in frames if f["label"] == "active"]
        bare = sum(not np.asarray(Image.open(demo / "cohort" / "masks" / f["patient"] / Path(f["path"]).name)).any()
                   for f in active)
        assert row["without_signs"] == f"{bare}/{len(active)}"
