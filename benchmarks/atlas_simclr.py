"""The SimCLR encoder's embeddings as the atlas's space, beside the shipped views (issue 24, point 5).

``mucosa pretrain`` (SimCLR, ``models.pretraining``) learns an encoder from unlabelled frames. For each
``--run RUN ENCODER`` (a ``mucosa train`` run folder with ``best.ckpt`` and ``split.csv``, and an
``encoder.ckpt`` that ``mucosa pretrain --parts train,val`` learnt from that very ``split.csv``: the run's
training and validation videos only, never its held-out videos nor the colon video; refused otherwise),
every frame of the cohort and of the foreign inputs (``atlas_real.foreign_sets``) gets two SimCLR
embeddings, L2-normalised:

- ``simclr``: the encoder's feature map (``forward_features``, what the projection head reads in
  pretraining) averaged over its positions;
- ``simclr-pool2``: the encoder's Pool2 map averaged before its last batch norm (where the shipped
  embedding is taken, ``models.embedding``).

Each is judged exactly as ``atlas_views.py`` judges the shipped views, beside them: ``embedding`` (the
run's network, the shipped frame space), ``texture`` (LBP at ``--size`` px, 64 frames a video), ``both``
(the shipped case rule: the two case scores, each over the median of its view's atlas case scores,
averaged), and each SimCLR space alone and joined with the texture the same way. k = 10 (the 10th nearest
atlas frame of another video), a case's score the median over its frames, the case threshold the largest
of the atlas videos' own scores (each left out). Printed per run:

1. the case rule: each held-out brain video's score and the colon video's over the case threshold (above 1:
   ``unfamiliar``), and for each set of still images (a still is a case) how many are above 1, with the
   smallest ratio;
2. the frame rule of ``Atlas.calibrate``, as ``atlas_spaces.py`` computes it: the frame threshold is the 95th
   percentile of the validation frames' scores, each frame's own video left out; the share of held-out
   brain frames past it, and for each foreign input the share of its frames past it and the AUROC of the
   frame score against the held-out brain frames; and retrieval: the share of a held-out brain frame's 5
   nearest atlas frames that have its histology.

    mucosa pretrain --manifest RUN/split.csv --parts train,val --config configs/pcle.yaml --epochs 30 \\
        --seed 0 --threads 1 --out SIMCLR
    python benchmarks/atlas_simclr.py --run RUN SIMCLR/encoder.ckpt --work /tmp/atlas-simclr --threads 1

``--work`` keeps the features (``atlas_spaces.py``'s per-run file, named by seed and fold, or ``seed-run-NAME``
for a run outside ``benchmarks/real_data.py``: give each set of runs a folder of its own).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atlas_real  # noqa: E402
import atlas_spaces  # noqa: E402
import atlas_views  # noqa: E402

from mucosa.atomic import file_sha256  # noqa: E402
from mucosa.data.cache import FrameCache  # noqa: E402
from mucosa.data.manifest import load_manifest  # noqa: E402
from mucosa.models.checkpoint import check_encoder, initialise_from, load_checkpoint  # noqa: E402
from mucosa.models.embedding import global_pool  # noqa: E402
from mucosa.models.networks import create_model  # noqa: E402

SIMCLR = ("simclr", "simclr-pool2")
COLON = "colorectal-pCLE-video"


class Features(dict):
    """Arrays by name, read as an ``np.load`` of a feature file is (its ``files``)."""

    @property
    def files(self) -> list[str]:
        return list(self)


def still_key(path: str | Path) -> str:
    """A still image's name, unique in its set (EGC-Z images of several animals share a file name)."""
    return f"{Path(path).parent.name}-{Path(path).stem}"


def encoder_model(run: Path, encoder: Path):
    """The run's network with the encoder's weights, checked to be learnt on the run's training and validation
    videos only."""
    loaded = load_checkpoint(run / "best.ckpt")
    seen = check_encoder(encoder, loaded.model_config)["frames"]
    if seen["manifest_sha256"] != file_sha256(run / "split.csv") or sorted(seen["parts"]) != ["train", "val"]:
        sys.exit(f"{encoder}: not learnt with --parts train,val from {run / 'split.csv'} (it saw {seen['parts']} "
                 "of another manifest): its frames could include held-out videos")
    model = create_model(loaded.model_config, pretrained=False)
    initialise_from(model, encoder)
    return model.eval(), loaded.preprocessing


@torch.inference_mode()
def simclr_features(model, frames: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list] = {name: [] for name in SIMCLR}
    for x in atlas_spaces.frame_batches(frames):
        features, pool2 = model.features_and_source(x)
        out["simclr"].append(global_pool(features, features.shape[1]).numpy())
        out["simclr-pool2"].append(global_pool(pool2, pool2.shape[1]).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def with_simclr(z, run: Path, encoder: Path, cache: FrameCache, manifests: dict[str, Path], work: Path,
                tag: str) -> Features:
    """The run's features (``z``) with both SimCLR embeddings of the same frames added (kept in ``work``)."""
    target = work / f"simclr-{tag}.npz"
    stamp = f"{file_sha256(run / 'best.ckpt')} {file_sha256(encoder)}"
    if not target.exists() or str(np.load(target)["stamp"]) != stamp:
        model, prep = encoder_model(run, encoder)
        table, frames, _ = atlas_spaces.prepared_frames(run / "split.csv", prep, cache)
        if not np.array_equal(np.asarray(table.patients).astype(str), z["patients"]):
            sys.exit(f"{run}: the frames differ from those of {tag}'s features in {work}")
        arrays = {f"cohort_{k}": v for k, v in simclr_features(model, frames).items()}
        for name, manifest in manifests.items():
            _, frames, _ = atlas_spaces.prepared_frames(manifest, prep, cache, unlabelled=True)
            arrays.update({f"{name}|{k}": v for k, v in simclr_features(model, frames).items()})
        np.savez(target, stamp=np.array(stamp), **arrays)
    found = np.load(target)
    return Features({**{key: z[key] for key in z.files}, **{key: found[key] for key in found.files if key != "stamp"}})


def still_cases(z, space: str, stills: dict[str, list[str]]) -> dict[str, float]:
    """Each still image's case score (``SET|NAME``, :func:`still_key`) in ``space``."""
    _, atlas, owners = atlas_views.atlas_of(z, space)
    scores = {}
    for name, keys in stills.items():
        features, files = atlas_views.foreign_in_space(z, name, space), z[f"{name}|files"]
        for file in np.unique(files):
            if still_key(file) in keys:
                scores[f"{name}|{still_key(file)}"] = atlas_views.case_score(features[files == file], atlas, owners)
    return scores


def case_views(z, found: dict[str, np.ndarray], stills: dict[str, list[str]]) -> dict[str, tuple]:
    """Each view's (atlas cases' own scores, query cases' scores: held-out videos and ``SET|NAME`` stills, the
    colon video's), the joined views as the shipped case rule joins its two."""
    views = {}
    for space in ("embedding", *SIMCLR):
        own, held, colon = atlas_views.embedding_view(z, space)
        views[space] = own, {**held, **still_cases(z, space, stills)}, colon
    own = views["embedding"][0]
    queries = list(views["embedding"][1])
    views["texture"] = atlas_views.texture_view(found, sorted(own), queries)
    views["both"] = atlas_views.joined(views["embedding"], views["texture"])
    for space in SIMCLR:
        views[f"{space}+texture"] = atlas_views.joined(views[space], views["texture"])
    order = ("embedding", "texture", "both", "simclr", "simclr+texture", "simclr-pool2", "simclr-pool2+texture")
    return {name: views[name] for name in order}


def case_table(views: dict[str, tuple], held_out: list[str], stills: dict[str, list[str]]) -> str:
    lines = ["| view | " + " | ".join(held_out) + " | colon | "
             + " | ".join(f"{name}: above 1 (smallest)" for name in stills) + " |",
             "| --- " * (2 + len(held_out) + len(stills)) + "|"]
    for name, (own, queries, colon) in views.items():
        threshold = atlas_views.case_threshold(own)
        cells = [f"{queries[v] / threshold:.3f}" for v in held_out] + [f"{colon / threshold:.3f}"]
        for still in stills:
            ratios = np.array([s / threshold for key, s in queries.items() if key.startswith(still + "|")])
            cells.append(f"{int(np.sum(ratios > 1))}/{len(ratios)} ({ratios.min():.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def precision_at_5(z, space: str, labels: dict[str, str]) -> float:
    """The share of each held-out frame's 5 nearest atlas frames that have its label (retrieval, as
    ``atlas_real.py`` measures it for the shipped embedding)."""
    cohort, atlas, owners = atlas_views.atlas_of(z, space)
    held = z["sides"] == "test"
    nearest = np.argpartition(1.0 - cohort[held] @ atlas.T, 5, axis=1)[:, :5]
    label = np.vectorize(labels.get)
    return float(np.mean(label(owners)[nearest] == label(z["patients"][held])[:, None]))


def frame_table(z, names: list[str], labels: dict[str, str]) -> str:
    lines = ["| space | held-out brain frames: precision@5 | held-out brain frames flagged | "
             + " | ".join(f"{name}: frames flagged, AUROC" for name in names) + " |",
             "| --- " * (3 + len(names)) + "|"]
    for space in ("embedding", *SIMCLR):
        result = atlas_spaces.judge_fold(z, space, atlas_views.K, names)
        cells = [f"{precision_at_5(z, space, labels):.3f}", f"{100 * result['held_flagged']:.1f}%"] + [
            f"{100 * result['foreign'][n]['flagged']:.1f}%, {result['foreign'][n]['auroc']:.3f}" for n in names]
        lines.append(f"| {space} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def texture_cases(run: Path, manifests: dict[str, Path], size: int, work: Path) -> tuple[dict, dict[str, list[str]]]:
    """The texture view's sampled textures of the run's videos, the colon video and the stills (``SET|NAME``),
    and the stills of each set that have one (the quality gate keeps them at ``size``)."""
    prep = load_checkpoint(run / "best.ckpt").preprocessing
    found = atlas_views.textures(atlas_views.paths_in(run / "split.csv") + [atlas_views.COLON], prep, size, work)
    still_files = {name: atlas_views.paths_in(manifest) for name, manifest in manifests.items() if name != COLON}
    still_textures = atlas_views.textures([p for paths in still_files.values() for p in paths], prep, size, work,
                                          "still-textures", still_key)
    stills = {name: [still_key(p) for p in paths if still_textures[still_key(p)].size]
              for name, paths in still_files.items()}
    found.update({f"{name}|{key}": still_textures[key] for name, keys in stills.items() for key in keys})
    return found, stills


def judge_run(run: Path, encoder: Path, cache: FrameCache, manifests: dict[str, Path], work: Path, size: int) -> None:
    seed = run.parent.name.removeprefix("seed") if run.parent.name.startswith("seed") else "-run"
    z = np.load(atlas_spaces.fold_features(run, cache, manifests, work, seed, {}))
    z = with_simclr(z, run, encoder, cache, manifests, work, f"seed{seed}-{run.name}")
    found, stills = texture_cases(run, manifests, size, work)
    held_out = sorted(np.unique(z["patients"][z["sides"] == "test"]))
    print(f"\n{run} with {encoder}: the case rule, each case's score over the case threshold\n")
    print(case_table(case_views(z, found, stills), held_out, stills))
    print("\nthe frame rule (the validation frames' 95th percentile)\n")
    labels = {row.patient: row.label for row in load_manifest(run / "split.csv").records}
    print(frame_table(z, list(manifests), labels), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=2, type=Path, action="append", required=True, metavar=("RUN", "ENCODER"),
                        help="a run folder (best.ckpt, split.csv) and the encoder.ckpt learnt on its train,val")
    parser.add_argument("--work", type=Path, required=True, help="feature folder (see above)")
    parser.add_argument("--size", type=int, default=256, help="the texture view's side in pixels")
    parser.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: its default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = FrameCache(args.cache)
    with tempfile.TemporaryDirectory(prefix="mucosa-foreign-") as tmp:
        manifests = {name.replace(" ", "-"): path for name, path in atlas_real.foreign_sets("pcle", Path(tmp)).items()}
        for run, encoder in args.run:
            judge_run(run, encoder, cache, manifests, args.work, args.size)


if __name__ == "__main__":
    main()
