"""Which space the atlas should search: the shipped embedding against other frame features, on real data.

For every fold of the pCLE ``disc`` runs of ``benchmarks/real_data.py`` (as ``benchmarks/atlas_real.py``), the
fold's model gives each frame of the cohort and of the foreign inputs several features (PyTorch, fp32):

- ``embedding``: the shipped one, Pool2's map pooled before BN2 (``FrameModel.embed``);
- ``pool1``: Pool1's map pooled (32 channels, before BN1): earlier, lower-level features;
- ``pool1+embedding``: both, each L2-normalised, side by side (multi-layer features);
- ``pool1+embedding+std``: and both maps' standard deviations over the map (second-order statistics);
- ``texture``: multi-scale LBP histograms (``models.texture``, no network), Hellinger-normalised;
- ``embedding+texture``: the embedding and the texture side by side.

Each space is judged by the rules the atlas ships (``Atlas.calibrate``, ``verdict.unfamiliar_case``): the
score is the cosine distance to the ``k``-th nearest atlas frame (training and validation frames) of another
video; the frame threshold is the 95th percentile of validation frames' scores; the case threshold the 95th
percentile ("higher") of the atlas videos' median scores, each video left out. Printed per space and k: held-out
in-domain frames flagged, held-out videos called unfamiliar, and for each foreign input the frames flagged,
the AUROC against the held-out frames and the cases (files) called unfamiliar, over the folds.

    python benchmarks/atlas_spaces.py --runs /work/runs-real --seeds 0 --work /tmp/atlas-spaces

``--work`` keeps each fold's features (``seedS-foldF.npz``), so a second call only judges.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atlas_real  # noqa: E402  (the foreign inputs and the runs, as the atlas benchmark makes them)

from mucosa.data.cache import FrameCache  # noqa: E402
from mucosa.data.frame_table import assemble  # noqa: E402
from mucosa.data.manifest import load_manifest  # noqa: E402
from mucosa.inference.atlas import CASE_CALIBRATION_FRAMES  # noqa: E402
from mucosa.inference.pytorch import probabilities  # noqa: E402
from mucosa.models.checkpoint import load_checkpoint  # noqa: E402
from mucosa.models.texture import texture_features  # noqa: E402

SPACES = ("embedding", "pool1", "pool1+embedding", "pool1+embedding+std", "texture", "embedding+texture")
QUANTILE = 0.95


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)


def frame_batches(frames: np.ndarray, batch: int = 256):
    """The prepared frames (N, S, S) as the networks take them: batches (B, 1, S, S) of floats in [0, 1]."""
    for start in range(0, len(frames), batch):
        yield torch.from_numpy(np.ascontiguousarray(frames[start:start + batch], np.float32) / 255.0)[:, None]


@torch.inference_mode()
def network_features(model, frames: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Each frame's shipped embedding and pooled Pool1/Pool2 statistics (the paper's networks)."""
    model.eval()
    maps = {}
    hooks = [model.pool1.register_forward_hook(lambda m, i, o: maps.__setitem__("pool1", o)),
             model.pool2.register_forward_hook(lambda m, i, o: maps.__setitem__("pool2", o))]
    out: dict[str, list] = {"probability": [], "embedding": [], "pool1": [], "pool1_std": [], "pool2_std": []}
    try:
        for x in frame_batches(frames, batch):
            logits, embedding = model.forward_and_embed(x)
            out["probability"].append(probabilities(logits).numpy())
            out["embedding"].append(embedding.numpy())
            out["pool1"].append(maps["pool1"].mean((2, 3)).numpy())
            out["pool1_std"].append(maps["pool1"].std((2, 3)).numpy())
            out["pool2_std"].append(maps["pool2"].std((2, 3)).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def all_features(model, frames: np.ndarray, texture: np.ndarray) -> dict[str, np.ndarray]:
    found = network_features(model, frames)
    found["texture"] = texture
    return found


def in_space(f: dict[str, np.ndarray], name: str) -> np.ndarray:
    parts = {"embedding": ["embedding"], "pool1": ["pool1"], "pool1+embedding": ["pool1", "embedding"],
             "pool1+embedding+std": ["pool1", "embedding", "pool1_std", "pool2_std"], "texture": ["texture"],
             "embedding+texture": ["embedding", "texture"]}.get(name, [name])  # else one feature of that name
    return unit(np.hstack([unit(np.sqrt(f[p]) if p == "texture" else f[p]) for p in parts]))


def prepared_frames(manifest: Path, prep, cache: FrameCache, unlabelled: bool = False):
    """The manifest's frame table, its used frames (N, S, S) in table order, and each frame's file."""
    table = assemble(load_manifest(manifest, unlabelled=unlabelled), prep, cache)
    frames = np.stack([table.frame(i) for i in range(len(table))])
    return table, frames, np.array([str(table.record(i).path) for i in range(len(table))])


def fold_features(run: Path, cache: FrameCache, manifests: dict[str, Path], work: Path, seed: int,
                  shared: dict) -> Path:
    """The fold's features, cached in ``work``; ``shared`` keeps the frames and textures between folds."""
    target = work / f"seed{seed}-{run.name}.npz"
    if target.exists():
        return target
    loaded = load_checkpoint(run / "best.ckpt")
    table, frames, _ = prepared_frames(run / "split.csv", loaded.preprocessing, cache)
    if "cohort" not in shared:
        shared["cohort"] = frames, np.stack([texture_features(f) for f in frames])
        for name, manifest in manifests.items():
            _, frames, files = prepared_frames(manifest, loaded.preprocessing, cache, unlabelled=True)
            shared[name] = frames, np.stack([texture_features(f) for f in frames]), files
    arrays = {f"cohort_{k}": v for k, v in all_features(loaded.model, *shared["cohort"]).items()}
    for name in manifests:
        frames, texture, files = shared[name]
        arrays.update({f"{name}|{k}": v for k, v in all_features(loaded.model, frames, texture).items()})
        arrays[f"{name}|files"] = files
    np.savez(target, sides=np.array([table.record(i).split for i in range(len(table))]),
             patients=np.asarray(table.patients).astype(str), **arrays)
    return target


def kth_distance(queries: np.ndarray, atlas: np.ndarray, k: int, leave_out: np.ndarray | None = None) -> np.ndarray:
    distances = 1.0 - queries @ atlas.T
    if leave_out is not None:
        distances[:, leave_out] = np.inf
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def scores_leaving_out(queries, patients, atlas, atlas_patients, k) -> np.ndarray:
    """Each query frame's score, its own patient's atlas frames left out."""
    scores = np.empty(len(queries))
    for patient in np.unique(patients):
        own = patients == patient
        scores[own] = kth_distance(queries[own], atlas, k, atlas_patients == patient)
    return scores


def judge_fold(z, name: str, k: int, foreign_names: list[str]) -> dict:
    sides, patients = z["sides"], z["patients"]
    cohort = in_space({key[7:]: z[key] for key in z.files if key.startswith("cohort_")}, name)
    in_atlas = np.isin(sides, ("train", "val"))
    atlas, atlas_patients = cohort[in_atlas], patients[in_atlas]
    val, test = sides == "val", sides == "test"
    threshold = np.quantile(scores_leaving_out(cohort[val], patients[val], atlas, atlas_patients, k), QUANTILE)
    medians = []
    for patient in np.unique(atlas_patients):  # as Atlas.case_scores: a video is a case and a patient here
        own = np.flatnonzero(atlas_patients == patient)
        chosen = own[np.unique(np.linspace(0, len(own) - 1, CASE_CALIBRATION_FRAMES).round().astype(int))]
        medians.append(np.median(kth_distance(atlas[chosen], atlas, k, atlas_patients == patient)))
    case_threshold = np.quantile(medians, QUANTILE, method="higher")
    held = scores_leaving_out(cohort[test], patients[test], atlas, atlas_patients, k)
    result = {"held_flagged": float(np.mean(held > threshold)), "held_cases": 0, "held_unfamiliar": 0,
              "foreign": {}}
    for p in np.unique(patients[test]):
        result["held_cases"] += 1
        result["held_unfamiliar"] += int(np.median(held[patients[test] == p]) > case_threshold)
    for foreign in foreign_names:
        features = {key.split("|", 1)[1]: z[key] for key in z.files if key.startswith(foreign + "|")}
        files = features.pop("files")
        scores = kth_distance(in_space(features, name), atlas, k)
        called = [np.median(scores[files == f]) > case_threshold for f in np.unique(files)]
        truth = np.r_[np.zeros(len(held)), np.ones(len(scores))]
        result["foreign"][foreign] = {"flagged": float(np.mean(scores > threshold)), "cases": len(called),
                                      "unfamiliar": int(sum(called)),
                                      "auroc": float(roc_auc_score(truth, np.r_[held, scores]))}
    return result


def table(folds: list[dict], name: str, k: int, seed: int, foreign_names: list[str]) -> str:
    held = sum(f["held_unfamiliar"] for f in folds), sum(f["held_cases"] for f in folds)
    cells = [f"{100 * np.mean([f['held_flagged'] for f in folds]):.1f}%", f"{held[0]}/{held[1]}"]
    for foreign in foreign_names:
        parts = [f["foreign"][foreign] for f in folds]
        cells.append(f"{100 * np.mean([p['flagged'] for p in parts]):.0f}%, "
                     f"{np.mean([p['auroc'] for p in parts]):.3f}, "
                     f"{sum(p['unfamiliar'] for p in parts)}/{sum(p['cases'] for p in parts)}")
    return f"| {seed} | {name} | {k} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the --out of benchmarks/real_data.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, required=True, help="folder keeping each fold's features")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = FrameCache(args.cache)
    with tempfile.TemporaryDirectory(prefix="mucosa-foreign-") as tmp:
        manifests = {name.replace(" ", "-"): path for name, path in atlas_real.foreign_sets("pcle", Path(tmp)).items()}
        paths = {}
        for seed in args.seeds:
            folder = args.runs / atlas_real.EXPERIMENT["pcle"] / f"seed{seed}"
            runs = sorted(p for p in folder.glob("fold*") if (p / "eval" / "metrics.json").is_file())
            shared: dict = {}
            paths[seed] = [fold_features(run, cache, manifests, args.work, seed, shared) for run in runs]
    names = list(manifests)
    print("| seed | space | k | held-out frames flagged | held-out videos unfamiliar | "
          + " | ".join(f"{n}: frames flagged, AUROC, cases unfamiliar" for n in names) + " |")
    print("| --- " * (5 + len(names)) + "|")
    for seed, files in paths.items():
        folds = [np.load(path) for path in files]
        for name in args.spaces:
            for k in args.k:
                print(table([judge_fold(z, name, k, names) for z in folds], name, k, seed, names), flush=True)


if __name__ == "__main__":
    main()
