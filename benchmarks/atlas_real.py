"""The atlas on real data: retrieval as the Smart Atlas measured it, and "unfamiliar" against foreign inputs.

For every fold of a cross-validation run by ``benchmarks/real_data.py`` (its run folders: ``best.ckpt`` and the
fold's ``split.csv``), the fold's own model embeds every frame of the cohort (PyTorch, fp32); its training
and validation frames make the atlas (a case is a file, a patient a video or an animal), calibrated on the
validation frames (``Atlas.calibrate``: its frame threshold their 97.5th percentile; the frame thresholds of
other calibrations are measured beside it, ``frame_rules``), and each held-out case is judged three ways:

- the network: the mean probability of its usable frames at 0.5 (the verdict rule);
- the atlas's nearest-neighbour vote (``Atlas.vote``): the class with the larger share of the query frames'
  nearest atlas frames, never of the case's own patient (leave-one-case-out within the fold's model);
- texture (LBP, ``models.texture``) nearest neighbours over all other cases' frames (no model at all).

Frame precision@5: the share of a held-out frame's 5 nearest atlas frames that carry its label.
Unfamiliar frames: the share of held-out in-domain frames flagged, against foreign inputs run through the same
preprocessing and quality gate (``--foreign``): for pCLE, the colorectal pCLE video, white noise, synthetic
patterns (sine gratings, checkerboards), natural photographs (scikit-learn's sample images, cut into
crops) and EGC-Z microscopy; for EGC-Z, pCLE frames, noise, patterns and photographs. AUROC: in-domain
held-out frames against each foreign set, by the unfamiliarity score. Unfamiliar cases, by the verdict rule
(``verdict.unfamiliar_case``: a case's median frame score, joined with its texture view's, above the atlas's
case threshold): held-out in-domain cases called unfamiliar, each held-out file judged alone as ``predict``
judges one (for EGC-Z an image, its animal left out), and foreign cases (each file: a video, or a still
image) called unfamiliar, counted over the folds; beside the shipped case threshold (the 95th percentile of
the atlas's own case scores), the same counts at a stricter one, their 99th percentile (``STRICTER``, not
shipped; the largest with 100 cases or fewer, so the same for the pCLE atlases of 16).

    python benchmarks/atlas_real.py pcle --runs /work/runs-real --seeds 0 1 --out atlas-pcle.json
    python benchmarks/atlas_real.py egcz --runs /work/runs-real --seeds 0 --out atlas-egcz.json

Prints a Markdown table per seed; ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import assemble
from mucosa.data.manifest import load_manifest
from mucosa.inference.atlas import Atlas, AtlasModel, FrameRecords, TextureView
from mucosa.inference.atlas_calibration import FRAME_QUANTILE, case_edge, left_out_scores
from mucosa.inference.pytorch import TorchPredictor
from mucosa.inference.texture_view import file_textures, spread, textured
from mucosa.inference.verdict import case_unfamiliarity, unfamiliar_case
from mucosa.models.checkpoint import load_checkpoint
from mucosa.models.texture import texture_features

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXPERIMENT = {"pcle": "pcle/disc/cnn-lstm", "egcz": "egcz/stretch/cnn-lstm"}
FOREIGN_IMAGES = 24  # stills of each synthetic or photographic foreign set


def embedded(run: Path, cache: FrameCache, batch: int = 256):
    """(checkpoint, frame table of every row of the fold's split.csv, probabilities, embeddings)."""
    loaded = load_checkpoint(run / "best.ckpt")
    table = assemble(load_manifest(run / "split.csv"), loaded.preprocessing, cache)
    predictor = TorchPredictor(loaded, batch_size=batch, threads=None)
    probs, embeddings = [], []
    for start in range(0, len(table), 2048):
        frames = np.stack([table.frame(i) for i in range(start, min(start + 2048, len(table)))])
        p, e = predictor.predict_and_embed(frames)
        probs.append(p)
        embeddings.append(e)
    return loaded, table, np.concatenate(probs), np.concatenate(embeddings)


_TEXTURES: dict[tuple[str, int], np.ndarray] = {}  # (file, frame) -> texture vector, kept between folds


def textures_of(path: Path, numbers, prep) -> np.ndarray:
    """The texture vectors (texture_view) of some frames of a file, each computed once per run."""
    wanted = [int(n) for n in numbers]
    missing = [n for n in wanted if (str(path), n) not in _TEXTURES]
    if missing:
        for n, vector in file_textures(path, prep, missing).items():
            _TEXTURES[str(path), n] = vector
    return np.stack([_TEXTURES[str(path), n] for n in wanted])


def query_textures(table, rows: np.ndarray, prep) -> np.ndarray:
    """As a query recording gives them: the texture of every ``TEXTURE_STRIDE``-th of its used frames."""
    chosen = rows[[textured(k) for k in range(len(rows))]]
    paths = np.array([str(table.record(i).path) for i in chosen])
    numbers = table.frame_index[chosen]
    for path in np.unique(paths):  # each file decoded once
        textures_of(Path(path), numbers[paths == path], prep)
    return np.stack([_TEXTURES[path, int(n)] for path, n in zip(paths, numbers)])


def fold_atlas(loaded, table, embeddings) -> tuple[Atlas, np.ndarray]:
    """The atlas of the fold's training and validation frames (with its texture view, as ``atlas_build`` makes
    it), calibrated on the validation frames."""
    sides = np.array([table.record(i).split for i in range(len(table))])
    rows = np.flatnonzero(np.isin(sides, ("train", "val")))
    numbers, of_record = table.frame_index[rows], np.asarray(table.row)[rows]
    texture_rows, vectors = [], []
    for record in np.unique(of_record):
        own = np.flatnonzero(of_record == record)[spread(int(np.sum(of_record == record)))]
        texture_rows.extend(own.tolist())
        vectors.append(textures_of(table.cohort.records[record].path, numbers[own], loaded.preprocessing))
    records = FrameRecords.of(cases=[str(table.record(i).path) for i in rows],
                              patients=table.patients[rows], labels=[table.record(i).label for i in rows],
                              frames=table.frame_index[rows], files=[table.record(i).path.name for i in rows])
    model = AtlasModel(loaded.weights_sha256, tuple(loaded.classes), embeddings.shape[1])
    atlas = Atlas(model, embeddings[rows], records, np.zeros((len(rows), 8, 8), np.uint8),
                  textures=TextureView(np.asarray(texture_rows), np.concatenate(vectors)))
    val = np.flatnonzero(sides == "val")
    atlas.calibrate(embeddings[val], table.patients[val])
    return atlas, sides


def precision_at(atlas: Atlas, embeddings: np.ndarray, label: str, patient: str, k: int = 5) -> float:
    _, rows = atlas.neighbours(embeddings, k, exclude_patient=patient)
    found = rows[rows >= 0]
    return float(np.mean(atlas.records.labels[found] == label)) if found.size else float("nan")


def foreign_sets(cohort: str, folder: Path) -> dict[str, Path]:
    """Manifests (unlabelled) of the foreign inputs for a model of ``cohort``, written under ``folder``."""
    rng = np.random.default_rng(0)
    sets: dict[str, list[Path]] = {"white noise": [], "synthetic patterns": [], "photographs": []}
    for i in range(FOREIGN_IMAGES):
        path = folder / "noise" / f"noise{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (336, 464), dtype=np.uint8)).save(path)
        sets["white noise"].append(path)
        y, x = np.mgrid[0:336, 0:464]
        period, angle = 6 + 4 * (i % 6), i * 0.4
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        pattern = wave if i % 2 else np.sign(np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))
        path = folder / "patterns" / f"pattern{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((pattern + 1) * 127.5).astype(np.uint8)).save(path)
        sets["synthetic patterns"].append(path)
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for i in range(FOREIGN_IMAGES):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 240), rng.integers(0, photo.shape[1] - 320)
        path = folder / "photos" / f"photo{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[top:top + 240, left:left + 320]).save(path)
        sets["photographs"].append(path)
    if cohort == "pcle":
        sets["colorectal pCLE video"] = [DATA / "pcle-colon" / "s01v01.mpeg"]
        sets["EGC-Z microscopy"] = sorted((DATA / "egcz-aia").rglob("*.jpg"))[::18][:FOREIGN_IMAGES]
    else:
        sets["pCLE brain videos"] = sorted((DATA / "pcle-brain").rglob("*.mpg"))[:4]
        sets["colorectal pCLE video"] = [DATA / "pcle-colon" / "s01v01.mpeg"]
    manifests = {}
    for name, paths in sets.items():
        manifest = folder / f"{name.replace(' ', '-')}.csv"
        manifest.write_text("path,patient\n" + "".join(f"{p},{name.replace(' ', '-')}\n" for p in paths))
        manifests[name] = manifest
    return manifests


def foreign_scores(loaded, atlas: Atlas, manifests: dict[str, Path], cache: FrameCache) -> dict[str, dict]:
    """For each foreign set: frames offered and kept by the quality gate, the share flagged and the scores."""
    result = {}
    predictor = TorchPredictor(loaded, batch_size=256)
    for name, manifest in manifests.items():
        cohort = load_manifest(manifest, unlabelled=True)
        offered = 0
        table = assemble(cohort, loaded.preprocessing, cache)
        offered = len(table) + sum(table.dropped.values())
        frames = np.stack([table.frame(i) for i in range(len(table))]) if len(table) else np.zeros((0, 1, 1))
        scores = atlas.unfamiliar(predictor.predict_and_embed(frames)[1]).scores if len(table) else np.zeros(0)
        files = np.array([str(table.record(i).path) for i in range(len(table))])
        calibration, called, ratios = atlas.calibration, [], []
        for f in np.unique(files):
            mine = np.flatnonzero(files == f)
            texture = atlas.texture_scores(query_textures(table, mine, loaded.preprocessing))
            called.append(unfamiliar_case(scores[mine], calibration.case_threshold, texture, calibration.scales))
            ratios.append(case_unfamiliarity(scores[mine], texture, calibration.scales) / calibration.case_threshold)
        result[name] = {"offered": offered, "kept": len(table), "scores": scores, "cases": len(called),
                        "cases_unfamiliar": int(sum(called)), "case_score_to_threshold": ratios}
    return result


def texture_votes(table, k: int = 10) -> dict[str, str]:
    """Each case's call by its frames' k nearest frames of other cases in LBP texture space (majority of frames)."""
    features = np.stack([texture_features(table.frame(i)) for i in range(len(table))]).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    patients, labels = table.patients, np.array([table.record(i).label for i in range(len(table))])
    calls = {}
    for patient in np.unique(patients):
        own = patients == patient
        similarity = features[own] @ features[~own].T
        nearest = np.argsort(-similarity, axis=1)[:, :k]
        votes = labels[~own][nearest]
        classes, counts = np.unique(votes, return_counts=True)
        calls[str(patient)] = str(classes[np.argmax(counts)])
    return calls


def fold_rows(run: Path, cache: FrameCache, manifests: dict[str, Path]) -> tuple[list[dict], dict]:
    loaded, table, probs, embeddings = embedded(run, cache)
    atlas, sides = fold_atlas(loaded, table, embeddings)
    positive = loaded.classes[-1]
    rows, in_domain = [], []
    for patient in sorted({p for p, s in zip(table.patients, sides) if s == "test"}):
        mine = np.flatnonzero((table.patients == patient) & (sides == "test"))
        label = table.record(mine[0]).label
        vote = atlas.vote(embeddings[mine], exclude_patient=patient)
        familiarity = atlas.unfamiliar(embeddings[mine], exclude_patient=patient)
        texture = atlas.texture_scores(query_textures(table, mine, loaded.preprocessing), exclude_patient=patient)
        calibration = atlas.calibration
        in_domain.append(familiarity.scores)
        rows.append({"case": str(patient), "label": label, "frames": len(mine),
                     "network": positive if probs[mine].mean() >= 0.5 else loaded.classes[0],
                     "atlas": loaded.classes[int(np.argmax(vote.shares))],
                     "precision_at_5": precision_at(atlas, embeddings[mine], label, patient),
                     "unfamiliar_share": float(np.mean(familiarity.flags)),
                     "median_score": float(np.median(familiarity.scores)),
                     "unfamiliar_case": unfamiliar_case(familiarity.scores, familiarity.case_threshold, texture,
                                                        calibration.scales),
                     "case_score_to_threshold": case_unfamiliarity(familiarity.scores, texture, calibration.scales)
                     / calibration.case_threshold,
                     "files": file_ratios(atlas, table, mine, familiarity.scores, patient, loaded.preprocessing)})
    foreign = foreign_scores(loaded, atlas, manifests, cache)
    stricter = case_edge(atlas.case_scores(), STRICTER) / atlas.calibration.case_threshold
    for row in rows:
        row["stricter"] = stricter
    return rows, {"in_domain": np.concatenate(in_domain), "foreign": foreign, "stricter": stricter,
                  "threshold": atlas.calibration.threshold, "case_threshold": atlas.calibration.case_threshold,
                  "frame_rules": frame_rules(atlas, embeddings, table.patients, sides)}


def frame_rules(atlas: Atlas, embeddings: np.ndarray, patients: np.ndarray, sides: np.ndarray) -> dict[str, float]:
    """The frame threshold as the shipped calibration sets it (``FRAME_QUANTILE`` of the validation frames),
    beside other calibrations, measured and not shipped: the validation frames' 95th percentile (shipped
    until 2026-12-06); the largest of the validation patients' own 95th percentiles (no validation patient
    past 5%); the 95th percentile of every atlas frame's score (training frames too); each frame with its
    patient left out."""
    val = np.flatnonzero(sides == "val")
    scores = left_out_scores(atlas, embeddings[val], patients[val])
    known = np.flatnonzero(np.isin(sides, ("train", "val")))
    return {f"validation frames, {100 * FRAME_QUANTILE:g}th (shipped)": atlas.calibration.threshold,
            "validation frames, 95th": float(np.quantile(scores, 0.95)),
            "each validation patient's 95th, largest": max(float(np.quantile(scores[patients[val] == p], 0.95))
                                                           for p in np.unique(patients[val])),
            "atlas frames, 95th": float(np.quantile(left_out_scores(atlas, embeddings[known], patients[known]), 0.95))}


def _past(ratios, edge: float) -> int:
    return int(np.sum(np.asarray(ratios) > edge))


STRICTER = 0.99  # a stricter case threshold, measured beside the shipped one (not shipped)


def file_ratios(atlas: Atlas, table, mine: np.ndarray, scores: np.ndarray, patient: str, prep) -> list[float]:
    """Each file of a held-out case judged alone, as ``mucosa predict`` judges one file (its patient left out):
    its case score over the case threshold (above 1: ``unfamiliar``). For pCLE a case is one video, so the same;
    for EGC-Z a case is an animal, and each of its images is a recording a user would give."""
    files = np.array([str(table.record(i).path) for i in mine])
    calibration, ratios = atlas.calibration, []
    for f in np.unique(files):
        own = files == f
        texture = atlas.texture_scores(query_textures(table, mine[own], prep), exclude_patient=patient)
        ratios.append(case_unfamiliarity(scores[own], texture, calibration.scales) / calibration.case_threshold)
    return ratios


def summarise(rows: list[dict], scores: list[dict], texture: dict[str, str]) -> dict:
    def right(key):
        return sum(r[key] == r["label"] for r in rows)

    in_domain = np.concatenate([s["in_domain"] for s in scores])
    thresholds = [s["threshold"] for s in scores]
    foreign = {}
    for name in scores[0]["foreign"]:
        parts = [s["foreign"][name] for s in scores]
        flagged = [np.mean(p["scores"] > s["threshold"]) for p, s in zip(parts, scores) if p["kept"]]
        pooled = np.concatenate([p["scores"] for p in parts])
        labels = np.r_[np.zeros(len(in_domain)), np.ones(len(pooled))]
        foreign[name] = {"offered": sum(p["offered"] for p in parts), "kept": sum(p["kept"] for p in parts),
                         "flagged_share": float(np.mean(flagged)) if flagged else None,
                         "cases": sum(p["cases"] for p in parts),
                         "cases_unfamiliar": sum(p["cases_unfamiliar"] for p in parts),
                         "case_score_to_threshold": [r for p in parts for r in p.get("case_score_to_threshold", [])],
                         "cases_unfamiliar_stricter": sum(_past(p["case_score_to_threshold"], s["stricter"])
                                                          for p, s in zip(parts, scores)),
                         "auroc": float(roc_auc_score(labels, np.r_[in_domain, pooled])) if len(pooled) else None}
    rules = {}
    for rule in scores[0]["frame_rules"]:
        edges = [s["frame_rules"][rule] for s in scores]
        rules[rule] = {"in_domain": float(np.mean([np.mean(s["in_domain"] > t) for s, t in zip(scores, edges)])),
                       **{name: float(np.mean([np.mean(s["foreign"][name]["scores"] > t) for s, t in
                                               zip(scores, edges) if s["foreign"][name]["kept"]] or [np.nan]))
                          for name in scores[0]["foreign"]}}
    return {"cases": len(rows), "network_right": right("network"), "atlas_right": right("atlas"),
            "frame_rules": rules,
            "texture_right": sum(texture.get(r["case"]) == r["label"] for r in rows),
            "precision_at_5": float(np.nanmean([r["precision_at_5"] for r in rows])),
            "in_domain_flagged": float(np.mean([np.mean(s["in_domain"] > s["threshold"]) for s in scores])),
            "held_out_cases_unfamiliar": sum(r["unfamiliar_case"] for r in rows),
            "held_out_cases_most_frames_unfamiliar": sum(r["unfamiliar_share"] > 0.5 for r in rows),
            "held_out_max_frames_unfamiliar": max(r["unfamiliar_share"] for r in rows),
            "held_out_largest_case_score_to_threshold": max(r["case_score_to_threshold"] for r in rows),
            "held_out_files": sum(len(r["files"]) for r in rows),
            "held_out_files_unfamiliar": sum(_past(r["files"], 1.0) for r in rows),
            "held_out_largest_file_score_to_threshold": max(max(r["files"]) for r in rows),
            "held_out_files_unfamiliar_stricter": sum(_past(r["files"], r["stricter"]) for r in rows),
            "stricter_over_threshold": [s["stricter"] for s in scores],
            "thresholds": thresholds, "case_thresholds": [s["case_threshold"] for s in scores],
            "foreign": foreign, "rows": rows}


def markdown(cohort: str, seed: int, s: dict) -> str:
    n = s["cases"]
    lines = [f"### {cohort}, seed {seed} ({n} held-out cases over the folds)", "",
             "| judged by | cases right |", "| --- | --- |",
             f"| network (mean probability at 0.5) | {s['network_right']}/{n} |",
             f"| atlas nearest-neighbour vote (fold's model embeddings) | {s['atlas_right']}/{n} |",
             f"| texture (LBP) nearest neighbours | {s['texture_right']}/{n} |", "",
             f"Frame precision@5 (atlas): {s['precision_at_5']:.3f}. Held-out in-domain frames flagged unfamiliar: "
             f"{100 * s['in_domain_flagged']:.1f}% (goal ≤ 5%; at most "
             f"{100 * s['held_out_max_frames_unfamiliar']:.0f}% of a case's); held-out cases called unfamiliar: "
             f"{s['held_out_cases_unfamiliar']}/{n} (with most of "
             f"their frames unfamiliar: {s['held_out_cases_most_frames_unfamiliar']}/{n}); held-out files, each "
             f"judged alone, called unfamiliar: {s['held_out_files_unfamiliar']}/{s['held_out_files']} (the largest "
             f"at {s['held_out_largest_file_score_to_threshold']:.2f} times the threshold; at a stricter case "
             f"threshold, the {100 * STRICTER:.0f}th percentile of the atlas's cases, not shipped: "
             f"{s['held_out_files_unfamiliar_stricter']}/{s['held_out_files']}).", "",
             "| foreign input | frames offered | kept by the quality gate | kept frames flagged unfamiliar | AUROC "
             f"| cases called unfamiliar | at the {100 * STRICTER:.0f}th percentile |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in s["foreign"].items():
        flagged = "n/a" if f["flagged_share"] is None else f"{100 * f['flagged_share']:.1f}%"
        auroc = "n/a" if f["auroc"] is None else f"{f['auroc']:.3f}"
        lines.append(f"| {name} | {f['offered']} | {f['kept']} | {flagged} | {auroc} | "
                     f"{f['cases_unfamiliar']}/{f['cases']} | {f['cases_unfamiliar_stricter']}/{f['cases']} |")
    names = list(s["foreign"])
    lines += ["", "Frame threshold by other calibrations (frames flagged; the shipped one first):", "",
              "| frame threshold | held-out in-domain | " + " | ".join(names) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for rule, shares in s["frame_rules"].items():
        lines.append(f"| {rule} | {100 * shares['in_domain']:.1f}% | "
                     + " | ".join(f"{100 * shares[n]:.1f}%" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", choices=sorted(EXPERIMENT))
    parser.add_argument("--runs", type=Path, required=True, help="the --out of benchmarks/real_data.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    cache = FrameCache(args.cache)
    report = {}
    with tempfile.TemporaryDirectory(prefix="mucosa-foreign-") as tmp:
        manifests = foreign_sets(args.cohort, Path(tmp))
        for seed in args.seeds:
            folder = args.runs / EXPERIMENT[args.cohort] / f"seed{seed}"
            runs = sorted(p for p in folder.glob("fold*") if (p / "eval" / "metrics.json").is_file())  # finished
            if not runs:
                sys.exit(f"{folder}: no finished fold (run benchmarks/real_data.py first)")
            rows, scores = [], []
            for run in runs:
                fold, score = fold_rows(run, cache, manifests)
                rows += fold
                scores.append(score)
                print(f"seed {seed} {run.name}: {sum(r['atlas'] == r['label'] for r in fold)}/{len(fold)} by the "
                      f"atlas, {sum(r['network'] == r['label'] for r in fold)}/{len(fold)} by the network",
                      flush=True)
            loaded = load_checkpoint(runs[0] / "best.ckpt")
            everything = assemble(load_manifest(runs[0] / "split.csv"), loaded.preprocessing, cache)
            report[seed] = summarise(rows, scores, texture_votes(everything))
            report[seed]["folds"] = len(runs)
            print(markdown(args.cohort, seed, report[seed]) + "\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
