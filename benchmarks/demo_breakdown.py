"""Where the demo's image ROC AUC is lost: frames of active patients that show no signs.

``mucosa synth`` draws the signs of active disease in 11 of 12 of an active patient's images and records
each image's lesion mask; an empty mask is an active image without signs. For each run of a finished
``mucosa demo`` this prints the image ROC AUC with and without those images, how many the test part holds,
and where they rank among the controls (0 = below every control, 1 = above every one). A model that only
finds signs ranks them like controls (~0.5); one that recognises patients seen in training ranks them
higher on the within-patient split, the leak the demo is meant to show.

    python benchmarks/demo_breakdown.py mucosa-demo [more demo folders...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score


def without_signs(demo: Path, row: dict) -> bool:
    """Whether this active image shows no sign (its mask in ``cohort/masks/PATIENT/`` is empty or absent)."""
    mask = demo / "cohort" / "masks" / row["patient"] / Path(row["path"]).name
    return not mask.is_file() or not np.asarray(Image.open(mask)).any()


def breakdown(demo: Path) -> list[dict]:
    """One row per run of the demo folder."""
    if not (demo / "cohort" / "masks").is_dir() or not (demo / "runs").is_dir():
        raise SystemExit(f"{demo}: no cohort/masks or runs folder: not a folder written by mucosa demo")
    rows = []
    for run in sorted((demo / "runs").iterdir()):
        with open(run / "evaluation" / "predictions.csv") as handle:
            frames = list(csv.DictReader(handle))
        positive = np.array([f["label"] == "active" for f in frames])
        score = np.array([float(f["probability"]) for f in frames])
        bare = np.array([active and without_signs(demo, f) for active, f in zip(positive, frames)], dtype=bool)
        controls = score[~positive]
        rank = [float(np.mean(controls < s) + 0.5 * np.mean(controls == s)) for s in score[bare]]
        rows.append({"run": run.name, "auc": roc_auc_score(positive, score),
                     "auc_with_signs": roc_auc_score(positive[~bare], score[~bare]),
                     "without_signs": f"{int(bare.sum())}/{int(positive.sum())}",
                     "rank_among_controls": float(np.mean(rank)) if rank else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demos", type=Path, nargs="+", help="folders written by mucosa demo --out")
    args = parser.parse_args()
    tables = [(demo, breakdown(demo)) for demo in args.demos]  # every folder checked before anything is printed
    print("| demo | run | image ROC AUC | without the active images lacking signs | active images lacking signs "
          "| their rank among controls |\n|---|---|---|---|---|---|")
    for demo, rows in tables:
        for r in rows:
            print(f"| {demo.name} | {r['run']} | {r['auc']:.3f} | {r['auc_with_signs']:.3f} | {r['without_signs']} "
                  f"| {r['rank_among_controls']:.2f} |")

if __name__ == "__main__":
    main()
