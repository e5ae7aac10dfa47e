"""A second view for the atlas's case rule: the network's embedding, fine texture at acquisition resolution, both.

At the model's 64x64 input, the colorectal pCLE video looks like the brain videos: its median embedding score
lies at 0.84-1.23 times the case threshold over the ten fold models, and LBP texture of the same 64x64
frames does not tell it at all (``benchmarks/atlas_spaces.py``). This benchmark asks whether texture at a
resolution near the recording's own (the same crop and brightness, resized to ``--size`` pixels instead of
64) adds what the model's input has lost, judged by the case rule alone (``verdict.unfamiliar_case``: a
case's median frame score against the largest of the atlas's own cases' scores, each case left out).

For every pCLE fold run of ``benchmarks/real_data.py`` (and any ``--run`` given, e.g. the issue's model
trained on all twenty videos), the atlas is the run's training and validation videos, and three case
scores are compared:

- ``embedding``: the shipped score (distance to the 10th nearest atlas frame of another video; atlas: all
  frames, as ``benchmarks/atlas_spaces.py`` computes it, ``--work`` shared with it);
- ``texture``: the same on multi-scale LBP histograms (``models.texture``, square-rooted, L2-normalised) of
  the frames prepared at ``--size``; 64 evenly spaced used frames a video, in the atlas and in the queries;
- ``both (each over its median)``: the mean of the two case scores, each divided by the median of its view's
  atlas case scores (so that neither view's scale dominates; shipped until 2026-12-06). Nothing is tuned: k,
  the frames and the threshold rule are the shipped ones, the weights equal;
- ``both (each over its edge)``: the same, each divided by its view's own case threshold (the 95th
  percentile of its atlas case scores, the largest with 20 or fewer; shipped since 2026-12-06);
- ``both, frame by frame``: each sampled frame's two scores, each over its median over the atlas's sampled
  frames, averaged; the case's score the median of its frames'.

Printed per run: the largest held-out brain video's score and the colorectal video's, each as a ratio to the
run's case threshold (above 1: ``unfamiliar``). ``benchmarks/atlas_simclr.py`` puts the SimCLR encoder's
embeddings beside these views.

    python benchmarks/atlas_views.py --runs /work/runs-real --seeds 0 1 --work /tmp/atlas-spaces \
        --run /work/donewhen/runs/pcle
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atlas_real  # noqa: E402
import atlas_spaces  # noqa: E402

from mucosa.data.cache import FrameCache  # noqa: E402
from mucosa.data.preparation import iter_frames  # noqa: E402
from mucosa.models.checkpoint import load_checkpoint  # noqa: E402
from mucosa.models.texture import texture_features  # noqa: E402

K = 10
FRAMES = 64
COLON = atlas_real.DATA / "pcle-colon" / "s01v01.mpeg"


def paths_in(manifest: Path) -> list[Path]:
    """The files of a manifest, in its order (relative paths are relative to its folder)."""
    with open(manifest, newline="") as handle:
        return [(manifest.parent / row["path"]).resolve() for row in csv.DictReader(handle)]


def sampled_textures(path: Path, prep) -> np.ndarray:
    """LBP texture of ``FRAMES`` evenly spaced used frames of one video, prepared with ``prep``."""
    used = [frame.image for frame in iter_frames(path, prep) if prep.passes(frame.quality)]
    if not used:  # a still image the quality gate drops at this size
        return np.zeros((0, 0))
    chosen = np.unique(np.linspace(0, len(used) - 1, FRAMES).round().astype(int))
    return atlas_spaces.unit(np.stack([np.sqrt(texture_features(used[i])) for i in chosen]))


def textures(videos: list[Path], prep, size: int, work: Path, name: str = "textures",
             key=lambda path: path.stem) -> dict[str, np.ndarray]:
    """:func:`sampled_textures` of each file at ``size`` pixels, by ``key(path)`` (the file's stem), kept in
    ``work/NAMESIZE.npz``."""
    target = work / f"{name}{size}.npz"
    if not target.exists():
        prep = prep.model_copy(update={"size": size})
        np.savez(target, **{key(path): sampled_textures(path, prep) for path in videos})
    found = np.load(target)
    return {name: found[name] for name in found.files}


def case_score(queries: np.ndarray, atlas: np.ndarray, owners: np.ndarray, leave: str | None = None) -> float:
    return float(np.median(atlas_spaces.kth_distance(queries, atlas, K, owners == leave if leave else None)))


def atlas_of(z, space: str = "embedding") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cohort's frames in ``space`` (``atlas_spaces.in_space``), and the atlas: its training and validation
    frames with their videos."""
    cohort = atlas_spaces.in_space({key[7:]: z[key] for key in z.files if key.startswith("cohort_")}, space)
    in_atlas = np.isin(z["sides"], ("train", "val"))
    return cohort, cohort[in_atlas], z["patients"][in_atlas]


def foreign_in_space(z, name: str, space: str = "embedding") -> np.ndarray:
    """The frames of the foreign input ``name`` (``atlas_real.foreign_sets``, spaces for dashes) in ``space``."""
    prefix = f"{name}|"
    return atlas_spaces.in_space({key[len(prefix):]: z[key] for key in z.files
                                  if key.startswith(prefix) and not key.endswith("files")}, space)


def embedding_view(z, space: str = "embedding") -> tuple[dict, dict, float]:
    """(atlas videos' left-out case scores, held-out videos' case scores, the colon video's) in ``space``."""
    sides, patients = z["sides"], z["patients"]
    cohort, atlas, owners = atlas_of(z, space)
    own = {}
    for video in np.unique(owners):
        rows = np.flatnonzero(owners == video)
        chosen = rows[np.unique(np.linspace(0, len(rows) - 1, FRAMES).round().astype(int))]
        own[video] = case_score(atlas[chosen], atlas, owners, video)
    held_out = np.unique(patients[sides == "test"])
    held = {video: case_score(cohort[patients == video], atlas, owners) for video in held_out}
    return own, held, case_score(foreign_in_space(z, "colorectal-pCLE-video", space), atlas, owners)


def texture_view(found: dict[str, np.ndarray], atlas_videos, held_videos) -> tuple[dict, dict, float]:
    atlas = np.concatenate([found[v] for v in atlas_videos])
    owners = np.concatenate([[v] * len(found[v]) for v in atlas_videos])
    own = {v: case_score(found[v], atlas, owners, v) for v in atlas_videos}
    held = {v: case_score(found[v], atlas, owners) for v in held_videos}
    return own, held, case_score(found[COLON.stem], atlas, owners)


def case_threshold(own) -> float:
    """The case threshold of the shipped rule: the 95th percentile ("higher") of the atlas's own case scores
    (a dict of them, or the scores)."""
    return float(np.quantile(list(own.values() if isinstance(own, dict) else own), 0.95, method="higher"))


def ratios(own: dict, held: dict, colon: float) -> tuple[float, float]:
    threshold = case_threshold(own)
    return max(held.values()) / threshold, colon / threshold


def sampled(rows: np.ndarray) -> np.ndarray:
    return rows[np.unique(np.linspace(0, len(rows) - 1, FRAMES).round().astype(int))]


def frame_view(z, found: dict[str, np.ndarray]) -> tuple[dict, dict, float]:
    """The two views joined frame by frame: each sampled frame's two scores, each over its median over the
    atlas's own sampled frames, averaged; a case's score the median of its frames' (as the verdict rule)."""
    sides, patients = z["sides"], z["patients"]
    cohort, atlas, owners = atlas_of(z)
    videos = sorted(np.unique(owners))
    tex = np.concatenate([found[v] for v in videos])
    tex_owners = np.concatenate([[v] * len(found[v]) for v in videos])
    colon = foreign_in_space(z, "colorectal-pCLE-video")

    def raw(embeddings, textures, leave=None):
        return (atlas_spaces.kth_distance(embeddings, atlas, K, owners == leave if leave else None),
                atlas_spaces.kth_distance(textures, tex, K, tex_owners == leave if leave else None))

    own = {v: raw(atlas[sampled(np.flatnonzero(owners == v))], found[v], v) for v in videos}
    scale_e = np.median(np.concatenate([e for e, _ in own.values()]))
    scale_t = np.median(np.concatenate([t for _, t in own.values()]))

    def case(pair):
        return float(np.median((pair[0] / scale_e + pair[1] / scale_t) / 2))

    held = {v: case(raw(cohort[sampled(np.flatnonzero(patients == v))], found[v]))
            for v in np.unique(patients[sides == "test"])}
    return ({v: case(pair) for v, pair in own.items()}, held, case(raw(colon[sampled(np.arange(len(colon)))],
                                                                     found[COLON.stem])))


def joined(one: tuple[dict, dict, float], other: tuple[dict, dict, float], scale=np.median) -> tuple[dict, dict, float]:
    """Two views' (own, held-out, colon) case scores joined as the shipped case rule joins them: the mean of the
    two, each over ``scale`` of its view's atlas case scores (``verdict.joined``)."""
    scale_1, scale_2 = scale(list(one[0].values())), scale(list(other[0].values()))

    def both(a, b):
        return (a / scale_1 + b / scale_2) / 2

    return ({v: both(one[0][v], other[0][v]) for v in one[0]}, {v: both(one[1][v], other[1][v]) for v in one[1]},
            both(one[2], other[2]))


def judge(z, found: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    emb = embedding_view(z)
    tex = texture_view(found, sorted(emb[0]), sorted(emb[1]))
    return {"embedding": ratios(*emb), "texture": ratios(*tex), "both": ratios(*joined(emb, tex)),
            "both, edge": ratios(*joined(emb, tex, case_threshold)),
            "both, frame by frame": ratios(*frame_view(z, found))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the --out of benchmarks/real_data.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--run", type=Path, nargs="*", default=[], help="more run folders (best.ckpt, split.csv)")
    parser.add_argument("--work", type=Path, required=True, help="feature folder, shared with atlas_spaces.py")
    parser.add_argument("--size", type=int, default=256, help="the texture view's side in pixels")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.runs / atlas_real.EXPERIMENT["pcle"]
    runs = [(s, p) for s in args.seeds for p in sorted((folder / f"seed{s}").glob("fold*"))
            if (p / "eval" / "metrics.json").is_file()] + [("-run", p) for p in args.run]
    cache = FrameCache(None)
    videos = paths_in(runs[0][1] / "split.csv")
    found = textures(videos + [COLON], load_checkpoint(runs[0][1] / "best.ckpt").preprocessing, args.size, args.work)
    views = ["embedding", f"texture at {args.size} px", "both (each over its median)", "both (each over its edge)",
             "both, frame by frame"]
    print("| run | " + " | ".join(f"{v}: largest held-out, colon" for v in views) + " |\n"
          + "| --- " * (len(views) + 1) + "|")
    with tempfile.TemporaryDirectory(prefix="mucosa-foreign-") as tmp:
        manifests = {name.replace(" ", "-"): path for name, path in atlas_real.foreign_sets("pcle", Path(tmp)).items()}
        for seed, run in runs:
            z = np.load(atlas_spaces.fold_features(run, cache, manifests, args.work, seed, {}))
            cells = " | ".join(f"{h:.2f}, {c:.2f}" for h, c in judge(z, found).values())
            print(f"| {'' if seed == '-run' else f'seed {seed} '}{run.name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
