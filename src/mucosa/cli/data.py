"""``mucosa synth``, ``index``, ``check``, ``split`` and ``prepare`` (``mucosa.data``): their options and
commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mucosa.atomic import OutputError, check_writable_file, check_writable_folder
from mucosa.cli import checks
from mucosa.cli.options import open_cache
from mucosa.data.readers import CHANNELS
from mucosa.data.splits import MODES

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Add ``synth``, ``index``, ``check``, ``split`` and ``prepare`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("synth", help="write a synthetic CLE cohort (for demos and tests)")
    p.add_argument("out", type=Path)
    p.add_argument("--patients", type=checks.integer(2), default=12)
    p.add_argument("--per-patient", type=checks.integer(1), default=40)
    p.add_argument("--size", type=checks.integer(32), default=300)
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.add_argument("--overlay", action="store_true",
                   help="put each image in a circular pCLE-like field with a logo and scale bar")
    p.add_argument("--force", action="store_true", help="overwrite a cohort already in OUT (its manifest.csv)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("index", help="build a manifest from a folder layout or an existing CSV")
    p.add_argument("source", help="DIR/<label>/<patient>/<images>, DIR/<label>/<videos>, or a CSV")
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest CSV to write")
    p.add_argument("--path-col", default="path")
    p.add_argument("--label-col", default="label")
    p.add_argument("--patient-col", default="patient")
    p.add_argument("--region-col", default=None)
    p.add_argument("--root", type=Path, default=None, help="folder the CSV's paths are relative to")
    p.add_argument("--label-map", default=None, help="rename labels, e.g. 0=control,1=active")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("check", help="validate a manifest and print a cohort summary")
    p.add_argument("manifest", type=Path)
    p.add_argument("--positive", default=None, help="the positive (inflammation) class")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("split", help="write a train/val/test split column")
    p.add_argument("manifest", type=Path)
    p.add_argument("--mode", default="patient", choices=MODES)
    p.add_argument("--test", type=checks.number(0, 1), default=0.2, help="test fraction (patient, within-patient)")
    p.add_argument("--val", type=checks.number(0, 1), default=0.0,
                   help="fraction of training carved out for validation")
    p.add_argument("--k", type=checks.integer(2), default=5, help="folds for kfold")
    p.add_argument("--fold", type=checks.integer(0), default=0, help="test fold (kfold) or patient index (lopo)")
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.add_argument("--positive", default=None)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("prepare", help="decode, crop, resize and quality-score a cohort into the cache")
    p.add_argument("manifest", type=Path)
    p.add_argument("--positive", default=None)
    _add_prep_options(p)
    p.set_defaults(func=cmd_prepare)


def _add_prep_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--size", type=checks.integer(8), default=300, help="model input side in pixels (default 300)")
    group.add_argument("--crop", default="auto",
                       help="auto (detect the field of view, largest square inside it), disc (a circular "
                       "field kept whole, black outside), none, or a box x0,y0,x1,y1")
    group.add_argument("--channel", default="auto", help=f"{', '.join(CHANNELS[:-1])} or {CHANNELS[-1]}")
    group.add_argument("--tile", type=checks.integer(0), default=0,
                       help="cut still images into tiles of this side (source pixels); 0 = whole image")
    group.add_argument("--normalize", default="none",
                       help="none, or stretch (map each image's or frame's 1st-99.5th intensity percentiles "
                       "to black-white)")
    group.add_argument("--quality", type=checks.number(0, 1), default=None,
                       help="drop frames whose quality score is below this (0 keeps all)")
    group.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder "
                       "(default $MUCOSA_CACHE or ~/.cache/mucosa)")


def _prep_from_args(args: argparse.Namespace):
    from mucosa.data.preparation import CROPS, Preprocessing
    from mucosa.errors import ConfigError

    crop = args.crop
    if crop not in CROPS:
        try:
            crop = tuple(int(v) for v in crop.split(","))
        except ValueError:
            raise ConfigError(f"--crop {args.crop!r} must be {', '.join(CROPS)} or x0,y0,x1,y1") from None
    extra = {} if args.quality is None else {"quality_threshold": args.quality}
    return Preprocessing(size=args.size, crop=crop, channel=args.channel, tile=args.tile,
                         normalize=args.normalize, **extra)


def cmd_synth(args: argparse.Namespace) -> None:
    from mucosa.data.synth import synthesize_cohort

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            print(f"\rsynthesising images: {done}/{total}", end="\n" if done == total else "", flush=True)

    check_writable_folder(args.out, "cohort folder")
    manifest = synthesize_cohort(args.out, patients=args.patients, per_patient=args.per_patient,
                                 size=args.size, seed=args.seed, overlay=args.overlay, progress=progress,
                                 overwrite=args.force)
    print(f"synthetic cohort (not real patients) written; manifest: {manifest}")


def cmd_index(args: argparse.Namespace) -> None:
    from mucosa.data.ingest import index_csv, index_directory, parse_label_map
    from mucosa.data.manifest import write_manifest

    source = Path(args.source)
    check_writable_file(args.output, "manifest")
    if source.is_file() and source.resolve() == args.output.resolve():
        raise OutputError(f"-o {args.output} would overwrite the table being indexed; choose another file")
    if source.is_file():
        records = index_csv(source, args.path_col, args.label_col, args.patient_col, args.region_col,
                            args.root, parse_label_map(args.label_map))
    else:
        records = index_directory(source)
        mapping = parse_label_map(args.label_map)
        if mapping:
            from dataclasses import replace

            records = [replace(r, label=mapping.get(r.label, r.label)) for r in records]
    out = write_manifest(records, args.output)
    labels = sorted({r.label for r in records})
    print(f"indexed {len(records)} files of {len({r.patient for r in records})} patients, labels "
          f"{', '.join(labels)} -> {out}")


def cmd_check(args: argparse.Namespace) -> int:
    from mucosa.data.ingest import check_cohort
    from mucosa.data.manifest import load_manifest

    cohort = load_manifest(args.manifest, positive=args.positive)
    summary = check_cohort(cohort)
    print(summary.format(cohort))
    return 0 if summary.ok else 1


def cmd_split(args: argparse.Namespace) -> None:
    from mucosa.data.manifest import load_manifest
    from mucosa.data.splits import split_cohort

    check_writable_file(args.output, "manifest")
    cohort = load_manifest(args.manifest, positive=args.positive)
    result = split_cohort(cohort, args.mode, test=args.test, val=args.val, k=args.k, fold=args.fold,
                          seed=args.seed)
    print(result.report)
    out = result.cohort.to_csv(args.output)
    print(f"manifest with split column -> {out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from mucosa.data.frame_table import assemble
    from mucosa.data.manifest import load_manifest

    cache = open_cache(args.cache)
    cohort = load_manifest(args.manifest, positive=args.positive)
    prep = _prep_from_args(args)
    frames = assemble(cohort, prep, cache, progress=True)
    print(frames.summary())
    rebuilt = f" ({cache.rebuilt} damaged entries rebuilt)" if cache.rebuilt else ""
    print(f"cache {cache.root}: {cache.hits} rows reused, {cache.misses} prepared{rebuilt}")
