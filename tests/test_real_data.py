"""The whole pipeline on real frames, small enough for CI: index → split → train → evaluate → report.

pCLE brain videos (a video is a case) with configs/pcle.yaml, and EGC-Z microscopy (an animal is a case)
with configs/microscopy.yaml (256-pixel tiles, brightness stretched per image); tiny input, one epoch.
Checks that every step runs on real data, the metrics are finite and no case is on both sides. The
accuracy figures are in docs/results.md (benchmarks/real_data.py).
"""

import csv
import json
import math
from dataclasses import replace

import pytest

from mucosa.cli import main
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.data.readers import FrameSelection

TINY = ["--size", "32", "--epochs", "1", "--threads", "1", "--batch-size", "8"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sides(split_csv):
    parts = {}
    for row in read_csv(split_csv):
        parts.setdefault(row["split"], set()).add(row["patient"])
    return parts


def assert_finite_report(out, n_cases, both_classes=True):
    result = json.loads((out / "metrics.json").read_text())
    for level in ("image", "file", "patient"):
        assert math.isfinite(result[level]["accuracy"]["value"]), level
    auc = result["image"]["roc_auc"]["value"]
    assert math.isfinite(auc) if both_classes else auc is None  # one animal: one class, no ROC curve
    assert result["counts"]["patients"] == n_cases
    assert (out / "report.html").stat().st_size > 10_000
    return result


@pytest.fixture(scope="module")
def brain_manifest(pcle_brain, tmp_path_factory):
    """Six real videos (3 per class), 10 frames each from their first 100."""
    root = tmp_path_factory.mktemp("brain")
    assert main(["index", str(pcle_brain), "-o", str(root / "all.csv")]) == 0
    records = load_manifest(root / "all.csv").records
    chosen = [r for r in records if r.patient in ("gbm-01", "gbm-02", "gbm-03", "men-01", "men-02", "men-03")]
    chosen = [replace(r, frames=FrameSelection.parse("0-99:10")) for r in chosen]
    write_manifest(chosen, root / "six.csv")
    return root / "six.csv"


@pytest.mark.slow
def test_pcle_videos_grouped_fold_end_to_end(brain_manifest, pcle_colon_video, tmp_path):
    colon = pcle_colon_video
    run, out, cache = tmp_path / "run", tmp_path / "eval", str(tmp_path / "cache")
    assert main(["train", "--manifest", str(brain_manifest), "--config", "configs/pcle.yaml", *TINY,
                 "--split", "kfold", "--k", "3", "--fold", "0", "--val", "0.5", "--out", str(run),
                 "--cache", cache]) == 0
    parts = sides(run / "split.csv")
    assert set(parts) == {"train", "val", "test"}
    assert not (parts["train"] & parts["test"] or parts["val"] & parts["test"] or parts["train"] & parts["val"])
    assert main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--manifest", str(run / "split.csv"),
                 "--threshold", "youden", "--bootstrap", "50", "--gallery", "1", "--out", str(out),
                 "--cache", cache]) == 0
    result = assert_finite_report(out, len(parts["test"]))
    assert result["threshold"]["chosen_on"].startswith("validation")
    assert {r["patient"] for r in read_csv(out / "predictions.csv")} == parts["test"]
    # the colorectal video through the atlas written after training (with its texture view): the case verdict
    # is the one rule's
    atlas = json.loads((run / "atlas" / "atlas.json").read_text())
    assert {"textures.npy", "texture_rows.npy"} <= set(atlas["files"]) and atlas["calibration"]["texture_scale"] > 0
    said = main(["predict", "--checkpoint", str(run / "best.ckpt"), str(colon), "--out", str(tmp_path / "colon"),
                 "--cache", cache])
    frames = [r for r in read_csv(tmp_path / "colon" / "predictions.csv") if r["used"] == "1"]
    (case,) = read_csv(tmp_path / "colon" / "cases.csv")
    unlike = float(case["unfamiliarity_ratio"]) > 1
    assert (case["verdict"] == "unfamiliar") == unlike and said == (4 if unlike else 0)
    assert float(case["unfamiliar_share"]) == pytest.approx(sum(r["unfamiliar"] == "1" for r in frames) / len(frames),
                                                            abs=1e-4)


@pytest.mark.slow
def test_pcle_train_on_every_case_then_check_an_unseen_cohort(brain_manifest, tmp_path):
    """The user's flow: --split none (validation carved from the cases, grouped), then another cohort."""
    records = load_manifest(brain_manifest).records
    seen = [r for r in records if not r.patient.endswith("03")]
    write_manifest(seen, tmp_path / "seen.csv")
    write_manifest([r for r in records if r.patient.endswith("03")], tmp_path / "other.csv")
    run, out, cache = tmp_path / "run", tmp_path / "eval", str(tmp_path / "cache")
    assert main(["train", "--manifest", str(tmp_path / "seen.csv"), "--config", "configs/pcle.yaml", *TINY,
                 "--split", "none", "--val", "0.5", "--out", str(run), "--cache", cache]) == 0
    parts = sides(run / "split.csv")
    assert set(parts) == {"train", "val"} and not parts["train"] & parts["val"]
    assert main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--manifest", str(tmp_path / "other.csv"),
                 "--bootstrap", "50", "--gallery", "0", "--out", str(out), "--cache", cache]) == 0
    assert_finite_report(out, 2)
    assert {r["patient"] for r in read_csv(out / "predictions.csv")} == {"gbm-03", "men-03"}


@pytest.mark.slow
def test_microscopy_tiles_leave_one_animal_out_end_to_end(egcz, tmp_path):
    assert main(["index", str(egcz / "data_info.csv"), "--path-col", "sample_path", "--label-col", "label",
                 "--patient-col", "animal_tag", "--label-map", "0=control,1=arthritis",
                 "-o", str(tmp_path / "all.csv")]) == 0
    records = load_manifest(tmp_path / "all.csv").records
    animals = ("C_00", "C_01", "C_02", "AIA_00", "AIA_01", "AIA_02")  # validation needs 2 of each left
    chosen = [r for a in animals for r in [r for r in records if r.patient == a][:2]]  # 2 images an animal
    write_manifest(chosen, tmp_path / "eight.csv")
    run, out, cache = tmp_path / "run", tmp_path / "eval", str(tmp_path / "cache")
    assert main(["train", "--manifest", str(tmp_path / "eight.csv"), "--config", "configs/microscopy.yaml",
                 *TINY, "--split", "lopo", "--fold", "0", "--val", "0.5", "--out", str(run),
                 "--cache", cache]) == 0
    parts = sides(run / "split.csv")
    assert parts["test"] == {"AIA_00"} and not (parts["train"] | parts["val"]) & parts["test"]
    from mucosa.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(run / "best.ckpt")  # evaluate rebuilds the preprocessing from the checkpoint
    assert (loaded.preprocessing.normalize, loaded.model.config.input_norm) == ("stretch", "none")
    assert main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--manifest", str(run / "split.csv"),
                 "--bootstrap", "50", "--gallery", "1", "--out", str(out), "--cache", cache]) == 0
    result = assert_finite_report(out, 1, both_classes=False)
    files = read_csv(out / "files.csv")
    assert len(files) == 2 and all(f["n_frames"] == "12" for f in files)  # 1024x768 in 256-pixel tiles
    assert result["counts"]["frames"] == 24
    assert "File level (2 images or videos" in (out / "report.html").read_text()


def benchmark(name: str):
    """A module of benchmarks/ (they are scripts, not part of the package)."""
    import importlib.util
    import sys
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if str(source.parent) not in sys.path:  # as when run as a script: its folder's modules import
        sys.path.insert(0, str(source.parent))
    spec = importlib.util.spec_from_file_location(name, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmark_pools_held_out_folds_like_scikit_learn():
    """benchmarks/pooling.py (real_data.py summary) pools the folds' predictions: AUC of the pooled
    probabilities, accuracy of each fold's own calls, case accuracy over every held-out case."""
    import numpy as np
    from sklearn.metrics import accuracy_score, roc_auc_score

    pooling = benchmark("pooling")
    rng = np.random.default_rng(0)
    folds, truth, scores, calls, file_truth, file_means = [], [], [], [], [], []
    for k, threshold in enumerate((0.3, 0.7)):
        frames, files = [], []
        for case in range(4):
            label = case % 2
            p = np.clip(rng.normal(0.35 + 0.3 * label, 0.2, 10), 0, 1)
            name = f"f{k}c{case}"
            frames += [{"path": name, "patient": name, "label": ["no", "yes"][label], "probability": str(v),
                        "prediction": ["no", "yes"][int(v >= threshold)]} for v in p]
            files.append({"file": name, "correct": str(int((p.mean() >= threshold) == label)),
                          "mean_probability": str(p.mean())})
            file_truth.append(label)
            file_means.append(p.mean())
            truth += [label] * 10
            scores += p.tolist()
            calls += (p >= threshold).astype(int).tolist()
        metrics = {"positive": "yes", "image": {"roc_auc": {"value": 0.5}}}
        folds.append({"frames": frames, "files": files, "cases": [{"correct": f["correct"]} for f in files],
                      "metrics": metrics})
    result = pooling.pooled(folds, n_boot=50)
    assert result["roc_auc"][0] == pytest.approx(roc_auc_score(truth, scores))
    assert result["accuracy"][0] == pytest.approx(accuracy_score(truth, calls))
    assert result["accuracy_at_0.5"] == pytest.approx(accuracy_score(truth, np.array(scores) >= 0.5))
    assert result["roc_auc"][1][0] <= result["roc_auc"][0] <= result["roc_auc"][1][1]
    correct = sum(int(f["correct"]) for fold in folds for f in fold["files"])
    assert (result["cases"], result["case_correct"], result["file_correct"]) == (8, correct, correct)
    assert result["file_correct_at_0.5"] == accuracy_score(file_truth, np.array(file_means) >= 0.5, normalize=False)


def test_benchmark_starts_no_run_that_would_outlast_its_deadline(tmp_path):
    """benchmarks/real_data.py --deadline (the lent GPU's minutes): a run starts only while the longest
    run so far still fits before the deadline; a finished run is never redone; no deadline, no limit."""
    import time

    real_data = benchmark("real_data")
    exp = real_data.EXPERIMENTS[0]
    late = real_data.Sweep(deadline=time.time() + 60, longest=120)
    assert not late.has_time() and real_data.Sweep(deadline=time.time() + 60, longest=30).has_time()
    assert real_data.Sweep(deadline=0, longest=1e9).has_time()
    assert real_data.run_one(exp, "cnn", 0, 0, tmp_path / "c.csv", tmp_path, late) is None
    assert not (tmp_path / exp.cohort).exists()  # nothing claimed, nothing trained
    done = tmp_path / exp.cohort / exp.name / "cnn" / "seed0" / "fold0" / "eval"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    assert real_data.run_one(exp, "cnn", 0, 0, tmp_path / "c.csv", tmp_path, late) == done


def test_benchmark_runs_each_experiment_first_seed_first(tmp_path, monkeypatch):
    """benchmarks/real_data.py run: main experiments at the first seed, then at the others; then the rest at
    the first seed, then at the others, so that a sweep cut short by its deadline holds the first seeds."""
    real_data = benchmark("real_data")
    done = []
    monkeypatch.setattr(real_data, "manifest", lambda *a: tmp_path / "c.csv")
    monkeypatch.setattr(real_data, "run_one", lambda exp, model, seed, fold, *a: done.append((exp.name, seed)))
    real_data.run("pcle", tmp_path, [0, 1], ["grouped", "ssl-fold", "no-crop", "disc"], real_data.Sweep(),
                  ["cnn-lstm"])
    order = list(dict.fromkeys(done))
    assert order == [("grouped", 0), ("grouped", 1), ("no-crop", 0), ("disc", 0), ("ssl-fold", 0), ("disc", 1),
                     ("ssl-fold", 1)]


def test_benchmark_pretraining_never_shows_a_fold_its_test_cases(tmp_path, monkeypatch):
    """benchmarks/real_data.py, runs from a self-supervised encoder: "fold" writes the fold's split first (the
    very split ``mucosa train --split kfold`` draws) and pretrains on its train and val rows only, then trains
    on it; "cohort" and "videos" learn one encoder per model and seed that every fold starts from, learnt
    again when its settings change."""
    from dataclasses import replace
    from pathlib import Path

    from mucosa.data.splits import split_cohort
    from mucosa.data.synth import synthesize_cohort
    from mucosa.models.config import load_config

    real_data = benchmark("real_data")
    calls = []

    def fake_mucosa(*args, log):
        calls.append(args)
        if args[0] == "split":  # the real command
            assert main(list(args)) == 0
        if args[0] == "pretrain":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "encoder.ckpt").write_text("")

    monkeypatch.setattr(real_data, "mucosa", fake_mucosa)
    by_name = {(e.cohort, e.name): e for e in real_data.EXPERIMENTS}
    sweep = real_data.Sweep(threads=1, data=tmp_path / "data")
    cohort = synthesize_cohort(tmp_path / "cohort", patients=14, per_patient=2, size=32, seed=1)
    exp = by_name["pcle", "ssl-fold"]
    (tmp_path / "pcle").mkdir()
    manifest, split, init = real_data.pretrained(exp, "cnn-lstm", 1, 3, cohort, tmp_path, sweep, tmp_path / "log")
    (split_call, pretrain_call) = calls
    assert pretrain_call[pretrain_call.index("--manifest") + 1] == str(manifest)
    assert pretrain_call[pretrain_call.index("--parts") + 1] == "train,val"
    assert split == ["--split", "manifest", "--fold", "3"] and init == ["--init-from", str(
        Path(pretrain_call[pretrain_call.index("--out") + 1]) / "encoder.ckpt")]
    s = load_config(real_data.ROOT / exp.config).split  # what mucosa train --split kfold --k 5 --fold 3 draws
    drawn = split_cohort(load_manifest(cohort), "kfold", test=s.test, val=s.val, k=5, fold=3, seed=1).cohort
    written = load_manifest(manifest)
    assert [(r.path, r.split) for r in written.records] == [(r.path, r.split) for r in drawn.records]
    assert {r.split for r in written.records} == {"train", "val", "test"}
    with pytest.raises(SystemExit, match="split options"):  # they would change training's split, not this one
        real_data.pretrained(exp, "cnn-lstm", 1, 3, cohort, tmp_path, replace(sweep, train_args=["--val", "0.3"]),
                             tmp_path / "log")
    calls.clear()
    egcz = tmp_path / "egcz.csv"
    egcz.write_text("path\n")
    for fold in range(3):
        manifest, split, init = real_data.pretrained(by_name["egcz", "ssl-cohort"], "cnn", 0, fold, egcz, tmp_path,
                                                     sweep, tmp_path / "log")
        assert manifest == egcz and split == ["--split", "lopo", "--fold", str(fold)]
    assert [c[0] for c in calls] == ["pretrain"] and calls[0][calls[0].index("--manifest") + 1] == str(egcz)
    longer = replace(by_name["egcz", "ssl-cohort"], pretrain_args=["--epochs", "99"])
    real_data.pretrained(longer, "cnn", 0, 0, egcz, tmp_path, sweep, tmp_path / "log")
    assert len(calls) == 2 and "99" in calls[-1]  # other settings: not the stale encoder
    real_data.pretrained(by_name["egcz", "ssl-videos"], "cnn", 0, 0, egcz, tmp_path, sweep, tmp_path / "log")
    videos = Path(calls[-1][calls[-1].index("--manifest") + 1])
    assert videos != egcz and "pcle-colon" in videos.read_text()


def test_benchmark_claims_are_shared_and_recovered(tmp_path):
    """real_data.py's claim files: one process holds a run; a claim whose process is gone, or that holds no
    process id after a minute (killed while writing it), is taken over."""
    import os

    real_data = benchmark("real_data")
    claim = tmp_path / "fold0.claim"
    assert real_data._claim(claim) and not real_data._claim(claim)  # held by this (live) process
    claim.write_text("")
    assert not real_data._claim(claim)  # being written
    os.utime(claim, (0, 0))
    assert real_data._claim(claim)  # an empty claim a minute old: stale


def test_demo_breakdown_separates_active_images_without_signs(tmp_path):
    """benchmarks/demo_breakdown.py: the AUC without the active images whose lesion mask is empty, how many
    there are, and their rank among the controls; a folder that is no demo's is one clear line."""
    import numpy as np
    from PIL import Image

    breakdown = benchmark("demo_breakdown")
    with pytest.raises(SystemExit, match="not a folder written by mucosa demo"):
        breakdown.breakdown(tmp_path)
    frames = [("a1", "active", 0.9, True), ("a2", "active", 0.3, False), ("a3", "active", 0.8, True),
              ("c1", "control", 0.2, False), ("c2", "control", 0.4, False)]
    run = tmp_path / "runs" / "cnn_patient" / "evaluation"
    run.mkdir(parents=True)
    (tmp_path / "cohort" / "masks" / "P1").mkdir(parents=True)
    with open(run / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient", "label", "probability"])
        for name, label, p, signs in frames:
            writer.writerow([f"/x/{name}.png", "P1", label, p])
            mask = np.zeros((4, 4), np.uint8)
            mask[1, 1] = 255 if signs else 0
            Image.fromarray(mask).save(tmp_path / "cohort" / "masks" / "P1" / f"{name}.png")
    [row] = breakdown.breakdown(tmp_path)
    assert row["auc"] == pytest.approx(5 / 6)  # a2 (0.3) ranks above c1 only
    assert row["auc_with_signs"] == 1.0 and row["without_signs"] == "1/3"
    assert row["rank_among_controls"] == pytest.approx(0.5)


def test_gpu_train_step_reports_a_rate_per_model_and_batch(capsys):
    """benchmarks/gpu_train_step.py (used by gpu_check.sh and gpu_pcle300.sh), here on the CPU and tiny."""
    step = benchmark("gpu_train_step")
    step.main(["--device", "cpu", "--size", "32", "--batches", "2", "3", "--steps", "1", "--warmup", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"bare fp32 training step, {kind}, 32x32, batch {b}"
                                                      for kind in ("cnn-lstm", "cnn") for b in (2, 3)]
    assert all(float(line.split(": ")[1].split()[0]) > 0 for line in lines)
