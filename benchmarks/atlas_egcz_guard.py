"""Why the EGC-Z models' atlases let pCLE through: each view of the case rule, per fold, per image.

``benchmarks/atlas_real.py egcz`` found the EGC-Z fold models' atlases calling only 10 of 96 pCLE brain videos
and 2 of 24 colon videos ``unfamiliar``. For the given EGC-Z fold runs this builds the fold's atlas as
``atlas_real.py`` does (training and validation images, calibrated as ``mucosa train`` calibrates it) and
gives, in units of the calibration's scales (a view's score over its median over the atlas's cases), the
embedding median and the texture median of

- the atlas's own cases (images), each with its animal left out: what sets the case threshold;
- each held-out image of the fold's held-out animal (a case is a file, as for the foreign inputs; ``atlas_real``
  scores the held-out animal as one case);
- the four pCLE brain videos and the colorectal video of ``atlas_real``'s foreign sets,

and how many of each the case rule calls ``unfamiliar``. Two texture views are compared: the whole still
image brought to 256 pixels a side, its tiles sharing that texture (shipped until 2026-12-06), and each tile's
own texture (``texture_view`` since then; an EGC-Z tile is 256 source pixels a side; the module's own rule,
"fine texture near the recording's own resolution", and ``fov.tiles``'s reason for tiling). Videos are
never tiled, so a pCLE video's textures are the same in both. The tables in docs/results.md were made at
commit 8f5093f, when the scales were the views' medians over the atlas's cases; today they are each view's
own case threshold (``Atlas.calibrate``).

    python benchmarks/atlas_egcz_guard.py /work/runs-real/egcz/stretch/cnn-lstm/seed0/fold0 \\
        /work/runs-real/egcz/stretch/cnn-lstm/seed0/fold4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atlas_real  # noqa: E402

from mucosa.data.cache import FrameCache  # noqa: E402
from mucosa.data.frame_table import assemble  # noqa: E402
from mucosa.data.manifest import load_manifest  # noqa: E402
from mucosa.data.preparation import iter_frames  # noqa: E402
from mucosa.inference.pytorch import TorchPredictor  # noqa: E402
from mucosa.inference.texture_view import field_texture  # noqa: E402

WHOLE, TILES = "whole image at 256 (until 2026-12-06)", "each tile alone (shipped)"
_WHOLE: dict[str, np.ndarray] = {}  # image -> the texture vector of its whole field


def whole_textures(path: Path, numbers, prep) -> np.ndarray:
    """The texture view shipped until 2026-12-06: every tile of a still image given the texture of the whole
    field, brought to 256 pixels a side."""
    if str(path) not in _WHOLE:
        frame = next(iter_frames(path, prep))
        _WHOLE[str(path)] = field_texture(frame.source, frame.fov, prep)
    return np.stack([_WHOLE[str(path)] for _ in numbers])


def use_view(view: str) -> None:
    """Make ``atlas_real``'s atlas and queries use one texture view for still images."""
    shipped = atlas_real.__dict__.setdefault("_shipped_textures_of", atlas_real.textures_of)

    def textures_of(path, numbers, prep):
        still = view == WHOLE and Path(path).suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")
        return whole_textures(Path(path), numbers, prep) if still else shipped(path, numbers, prep)

    def query_textures(table, rows, prep):  # every TEXTURE_STRIDE-th used frame, as atlas_real's
        chosen = rows[[atlas_real.textured(k) for k in range(len(rows))]]
        return np.concatenate([textures_of(table.record(i).path, [table.frame_index[i]], prep) for i in chosen])

    atlas_real.textures_of, atlas_real.query_textures = textures_of, query_textures


def case_rows(atlas, table, rows_of: dict[str, np.ndarray], embeddings, prep, leave_out: bool) -> np.ndarray:
    """(embedding median, texture median) of each case (file), its patient left out when ``leave_out``."""
    out = []
    for rows in rows_of.values():
        patient = table.patients[rows[0]] if leave_out else None
        e = atlas.scores(embeddings[rows], exclude_patient=patient)
        t = atlas.texture_scores(atlas_real.query_textures(table, rows, prep), exclude_patient=patient)
        out.append((np.median(e), np.median(t)))
    return np.asarray(out)


def by_file(table, rows: np.ndarray) -> dict[str, np.ndarray]:
    files = np.array([str(table.record(i).path) for i in rows])
    return {f: rows[files == f] for f in np.unique(files)}


def fold_report(run: Path, cache: FrameCache, manifests: dict[str, Path]) -> list[str]:
    loaded, table, _, embeddings = atlas_real.embedded(run, cache)
    predictor = TorchPredictor(loaded, batch_size=256)
    foreign = {}
    for name in ("pCLE brain videos", "colorectal pCLE video"):
        frames_of = assemble(load_manifest(manifests[name], unlabelled=True), loaded.preprocessing, cache)
        frames = np.stack([frames_of.frame(i) for i in range(len(frames_of))])
        foreign[name] = (frames_of, predictor.predict_and_embed(frames)[1])
    lines = []
    for view in (WHOLE, TILES):
        use_view(view)
        atlas, sides = atlas_real.fold_atlas(loaded, table, embeddings)
        scales, threshold = atlas.calibration.scales, atlas.calibration.case_threshold
        own = np.column_stack(atlas.case_medians(atlas.calibration.k)) / scales
        groups = {"atlas cases (own animal left out)": own,
                  "held-out images": case_rows(atlas, table, by_file(table, np.flatnonzero(sides == "test")),
                                               embeddings, loaded.preprocessing, True) / scales}
        for name, (frames_of, found) in foreign.items():
            groups[name] = case_rows(atlas, frames_of, by_file(frames_of, np.arange(len(frames_of))), found,
                                     loaded.preprocessing, False) / scales
        for name, views in groups.items():
            joined = views.mean(1) / threshold
            lines.append(f"| {run.parent.name}/{run.name} | {view} | {threshold:.2f} | {name} | {_spread(views[:, 0])} "
                         f"| {_spread(views[:, 1])} | {_spread(joined)} | {int(np.sum(joined > 1))}/{len(joined)} |")
    return lines


def _spread(values: np.ndarray) -> str:
    """median (95th percentile, largest), or the value alone for one case."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.median(values):.2f} ({np.quantile(values, 0.95):.2f}, {values.max():.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="EGC-Z fold runs of benchmarks/real_data.py")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    cache = FrameCache(args.cache)
    print("| fold | texture view of a still | case threshold | cases | embedding median / scale: median (95th "
          "percentile, largest) | texture median / scale | case score / threshold | `unfamiliar` |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="mucosa-foreign-") as tmp:
        manifests = atlas_real.foreign_sets("egcz", Path(tmp))
        for run in args.runs:
            print("\n".join(fold_report(run, cache, manifests)), flush=True)


if __name__ == "__main__":
    main()
