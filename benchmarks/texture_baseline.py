"""Handcrafted texture on EGC-Z AIA, leave one animal out: what a non-deep baseline reaches (docs/results.md).

The published 89.30% on this set combines texture descriptors (LBP) with CNN features. This script
measures the texture half on its own, with the same protocol and the same kind of figures as
``real_data.py``: rotation-invariant uniform LBP histograms of the red channel at native resolution
(4 radii), a logistic regression and an RBF SVM (scikit-learn), every animal held out once. An image is
called by its probability against 0.5; an animal by its images' mean probability.

    python benchmarks/texture_baseline.py [--data ../shared/data] [--out runs/real/texture]
        [--fuse runs/real/egcz/lopo/cnn-lstm/seed0 ...]

``--fuse`` adds late fusion, as the published method does: each image's texture probability averaged
with its held-out probability from a finished ``real_data.py`` EGC-Z run (the mean over its tiles, from
every fold's ``eval/files.csv``).

Features are cached in ``OUT/features.npz`` (a few minutes to compute on one core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mucosa.models.texture import texture_features  # LBP at 4 radii, as mucosa texture

ROOT = Path(__file__).resolve().parents[1]
def load_features(data: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Features, labels (1 = arthritis), animals and paths of every EGC-Z image; cached in ``cache``."""
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return saved["X"], saved["y"], saved["animal"], saved["path"].tolist()
    from real_data import (
        manifest,  # the cohort manifest of the CNN runs, made with ``mucosa index``
    )

    from mucosa.data.manifest import load_manifest
    from mucosa.data.readers import read_image

    records = load_manifest(manifest("egcz", cache.parent.parent, data)).records
    X = np.stack([texture_features(read_image(r.path, "red")) for r in records])
    y = np.array([r.label == "arthritis" for r in records], dtype=np.int64)
    animal = np.array([r.patient for r in records])
    paths = [str(r.path) for r in records]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, X=X, y=y, animal=animal, path=np.array(paths))
    return X, y, animal, paths


def classifiers() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {"lbp + logistic regression": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)),
            "lbp + rbf svm": make_pipeline(StandardScaler(), SVC(C=1.0, random_state=0))}


def leave_one_animal_out(clf, X: np.ndarray, y: np.ndarray, animal: np.ndarray) -> np.ndarray:
    """Held-out score of every image, each animal predicted by a model fitted on the 11 others."""
    from sklearn.base import clone

    score = np.zeros(len(y))
    for held_out in np.unique(animal):
        test = animal == held_out
        model = clone(clf).fit(X[~test], y[~test])
        score[test] = (model.predict_proba(X[test])[:, 1] if hasattr(model, "predict_proba")
                       else 1 / (1 + np.exp(-model.decision_function(X[test]))))
    return score


def cnn_probabilities(run: Path, paths: list[str]) -> np.ndarray:
    """Held-out image probabilities of a leave-one-animal-out CNN run (all folds), in ``paths`` order."""
    import csv

    found = {}
    for files in sorted(run.glob("fold*/eval/files.csv")):
        with open(files, newline="") as handle:
            found.update({Path(r["file"]).resolve(): float(r["mean_probability"]) for r in csv.DictReader(handle)})
    missing = [p for p in paths if Path(p).resolve() not in found]
    if missing:
        raise SystemExit(f"{run}: no held-out probability for {len(missing)} images (e.g. {missing[0]}); "
                         "is every fold finished?")
    return np.array([found[Path(p).resolve()] for p in paths])


def summarize(y: np.ndarray, score: np.ndarray, animal: np.ndarray, n_boot: int = 1000) -> dict:
    """Image ROC AUC and accuracy at 0.5 with animal-clustered bootstrap CIs; animal verdicts by mean score."""
    from scipy.stats import binomtest
    from sklearn.metrics import roc_auc_score

    from mucosa.metrics import aggregate_patients, bootstrap_ci

    def image_metrics(t, s):
        return {"roc_auc": roc_auc_score(t, s) if len(set(t.tolist())) == 2 else float("nan"),
                "accuracy": float(np.mean((s >= 0.5) == t))}

    point = image_metrics(y, score)
    ci = bootstrap_ci(image_metrics, y, score, animal, n_boot=n_boot, seed=0)
    rows = aggregate_patients(animal, score, y)  # the project's rule: mean at 0.5, label the majority (tie positive)
    animals = [r["patient"] for r in rows]
    correct = {r["patient"]: int(r["score"] >= 0.5) == r["label"] for r in rows}
    n_right = sum(correct.values())
    low, high = binomtest(n_right, len(animals)).proportion_ci(method="exact")
    per_animal = {a: round(float(np.mean((score[animal == a] >= 0.5) == y[animal == a])), 3) for a in animals}
    return {"images": len(y), **{k: (float(v), [float(x) for x in ci[k]]) for k, v in point.items()},
            "animals_correct": n_right, "animals": len(animals), "animal_accuracy_ci": [low, high],
            "image_accuracy_per_animal": per_animal, "wrong_animals": [a for a in animals if not correct[a]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "real" / "texture")
    parser.add_argument("--fuse", type=Path, nargs="*", default=[], help="CNN run folders (model/seedN)")
    args = parser.parse_args()
    X, y, animal, paths = load_features(args.data, args.out / "features.npz")
    texture = {name: leave_one_animal_out(clf, X, y, animal) for name, clf in classifiers().items()}
    scores = dict(texture)
    for run in args.fuse:
        cnn = scores[str(run)] = cnn_probabilities(run, paths)
        scores.update({f"{name} + {run}": (score + cnn) / 2 for name, score in texture.items()})
    results = {name: summarize(y, score, animal) for name, score in scores.items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        print(f"{name}: image ROC AUC {r['roc_auc'][0]:.3f} ({r['roc_auc'][1][0]:.3f}-{r['roc_auc'][1][1]:.3f}), "
              f"image accuracy {r['accuracy'][0]:.3f} ({r['accuracy'][1][0]:.3f}-{r['accuracy'][1][1]:.3f}), "
              f"animals {r['animals_correct']}/{r['animals']}, wrong: {', '.join(r['wrong_animals'])}")
        print("  image accuracy per animal:", r["image_accuracy_per_animal"])


if __name__ == "__main__":
    main()
