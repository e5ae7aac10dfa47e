"""Pooling the held-out predictions of a sweep's folds into one row of docs/results.md (``real_data.py summary``).

Frame-level ROC AUC and PR AUC of the pooled probabilities; accuracy, sensitivity and specificity of the
per-fold thresholded calls; all with case-clustered bootstrap CIs (``mucosa.metrics.bootstrap_ci``); the
case-level (video / animal) accuracy with an exact binomial CI; the spread of the per-fold ROC AUC.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def _read_fold(evaluation: Path) -> dict:
    def rows(name: str) -> list[dict]:
        with open(evaluation / name) as handle:
            return list(csv.DictReader(handle))

    return {"frames": rows("predictions.csv"), "files": rows("files.csv"), "cases": rows("patients.csv"),
            "metrics": json.loads((evaluation / "metrics.json").read_text())}


def _with_ci(metric_fn, y: np.ndarray, score: np.ndarray, groups: np.ndarray, n_boot: int) -> dict:
    from mucosa.metrics import bootstrap_ci

    point, ci = metric_fn(y, score), bootstrap_ci(metric_fn, y, score, groups, n_boot=n_boot, seed=0)
    return {k: (float(v), tuple(float(x) for x in ci[k])) for k, v in point.items()}


def _ranking(y: np.ndarray, score: np.ndarray) -> dict:
    """ROC AUC and PR AUC (average precision), as ``mucosa.metrics.binary_metrics`` defines them."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(set(y.tolist())) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {"roc_auc": roc_auc_score(y, score), "pr_auc": average_precision_score(y, score)}


def _calls(y: np.ndarray, called: np.ndarray) -> dict:
    """Accuracy, sensitivity and specificity of 0/1 calls (nan where a class is absent)."""
    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    return {"accuracy": mean(called == y), "sensitivity": mean(called[y == 1]),
            "specificity": mean(1 - called[y == 0])}


def pooled(folds: list[dict], n_boot: int = 1000) -> dict:
    """Pooled held-out metrics with case-clustered CIs, and the per-fold spread.

    Frame ROC/PR AUC come from the pooled probabilities; accuracy, sensitivity and specificity from each
    fold's own calls (its threshold was chosen on its validation part); ``accuracy_at_0.5`` is the frame
    accuracy had the threshold been fixed at 0.5 instead (``case_correct_at_0.5`` likewise for the cases'
    mean probabilities). Files (images) and cases use each fold's verdicts.
    """
    from scipy.stats import binomtest

    positive = folds[0]["metrics"]["positive"]
    frames = [f for fold in folds for f in fold["frames"]]
    y = np.array([f["label"] == positive for f in frames], dtype=np.int64)
    score = np.array([float(f["probability"]) for f in frames])
    called = np.array([f["prediction"] == positive for f in frames], dtype=np.int64)
    cases = np.array([f["patient"] for f in frames], dtype=object)
    result = _with_ci(_ranking, y, score, cases, n_boot)
    result.update(_with_ci(_calls, y, called, cases, n_boot))
    result["accuracy_at_0.5"] = float(np.mean((score >= 0.5) == y))
    from mucosa.metrics import aggregate_patients

    case_calls = [int(r["score"] >= 0.5) == r["label"] for r in aggregate_patients(cases, score, y)]
    result["case_correct_at_0.5"] = int(np.sum(case_calls))
    owner = {f["path"]: f["patient"] for f in frames}
    files = [f for fold in folds for f in fold["files"]]
    file_correct = np.array([float(f["correct"]) for f in files])
    file_truth = {f["path"]: f["label"] == positive for f in frames}
    file_correct_at_half = sum((float(f["mean_probability"]) >= 0.5) == file_truth[f["file"]] for f in files)
    file_ci = _with_ci(lambda t, s: {"accuracy": float(np.mean(s))}, np.zeros(len(files), np.int64),
                       file_correct, np.array([owner[f["file"]] for f in files], dtype=object), n_boot)
    case_rows = [c for fold in folds for c in fold["cases"]]
    correct = sum(int(c["correct"]) for c in case_rows)
    case_ci = binomtest(correct, len(case_rows)).proportion_ci(method="exact")
    fold_auc = [a for a in (fold["metrics"]["image"]["roc_auc"]["value"] for fold in folds) if a is not None]
    return {"frames": len(y), **result, "files": len(files), "file_correct": int(file_correct.sum()),
            "file_accuracy": file_ci["accuracy"], "file_correct_at_0.5": int(file_correct_at_half),
            "cases": len(case_rows), "case_correct": correct,
            "case_accuracy": (correct / len(case_rows), (float(case_ci.low), float(case_ci.high))),
            "fold_auc": (float(np.mean(fold_auc)), float(np.std(fold_auc)), float(np.min(fold_auc)),
                         float(np.max(fold_auc))) if fold_auc else None}


POOLED_VERSION = 2  # 2: images correct at 0.5


def pooled_cached(path: Path, evaluations: list[Path]) -> dict:
    """``pooled`` of these folds, remembered in ``path`` until a fold's metrics change (bootstraps are slow)."""
    stamp = [[str(e), (e / "metrics.json").stat().st_mtime_ns] for e in evaluations]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["folds"] == stamp and cached.get("version") == POOLED_VERSION:
            return cached["result"]
    result = json.loads(json.dumps(pooled([_read_fold(e) for e in evaluations]), default=float))
    path.write_text(json.dumps({"folds": stamp, "version": POOLED_VERSION, "result": result}))
    return result


def _fmt(pair) -> str:
    value, (low, high) = pair
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def markdown(rows: list[dict]) -> str:
    """One table per cohort; a row per experiment, model and seed."""
    tables = []
    for cohort, unit in (("pcle", "videos"), ("egcz", "animals")):
        mine = [r for r in rows if r["cohort"] == cohort]
        if not mine:
            continue
        images = cohort == "egcz"
        head = (["experiment", "model", "seed", "folds", "frames", "ROC AUC", "PR AUC",
                 "accuracy", "sensitivity", "specificity", "accuracy at 0.5"]
                + (["images correct", "image accuracy", "images correct at 0.5"] if images else [])
                + [f"{unit} correct", f"{unit[:-1]} accuracy", f"{unit} correct at 0.5",
                   "per-fold ROC AUC mean ± sd (min–max)"])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mine:
            spread = "n/a (one class per fold)" if r["fold_auc"] is None else \
                "{:.3f} ± {:.3f} ({:.3f}–{:.3f})".format(*r["fold_auc"])
            cells = ([r["experiment"], r["model"], str(r["seed"]), r["folds"], str(r["frames"]), _fmt(r["roc_auc"]),
                      _fmt(r["pr_auc"]), _fmt(r["accuracy"]), _fmt(r["sensitivity"]), _fmt(r["specificity"]),
                      f"{r['accuracy_at_0.5']:.3f}"]
                     + ([f"{r['file_correct']}/{r['files']}", _fmt(r["file_accuracy"]),
                         f"{r['file_correct_at_0.5']}/{r['files']}"] if images else [])
                     + [f"{r['case_correct']}/{r['cases']}", _fmt(r["case_accuracy"]),
                        f"{r['case_correct_at_0.5']}/{r['cases']}", spread])
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
