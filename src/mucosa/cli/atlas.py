"""``mucosa atlas build``, ``add`` and ``search`` (``mucosa.inference.atlas_build``, ``atlas_search``): the atlas
of confirmed cases a model compares each recording with."""

from __future__ import annotations

import argparse
from pathlib import Path

from mucosa.atomic import check_writable_file, check_writable_folder
from mucosa.cli import checks
from mucosa.cli.options import add_device_option, add_runtime_option, open_cache, parts

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Add ``atlas`` (``build``, ``add``, ``search``) to the ``mucosa`` subcommands."""
    p = sub.add_parser("atlas", help="the atlas of confirmed cases: build it, grow it, search it for similar cases")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("build", help="embed a manifest's frames with a checkpoint, calibrate the unfamiliarity "
                           "threshold on its validation rows, and record the atlas in the model card")
    a.add_argument("--checkpoint", type=Path, required=True)
    a.add_argument("--manifest", type=Path, required=True, help="confirmed cases: path, label, patient (and split)")
    a.add_argument("--out", type=Path, required=True, help="atlas folder to write (atlas/ beside the checkpoint is "
                   "the one predict, stream and the Python API use by default)")
    a.add_argument("--parts", help="only the rows whose split column is one of these, e.g. train,val (default: "
                   "every row); the rows whose split is val calibrate the threshold in any case")
    _common(a)
    a.set_defaults(func=cmd_build)

    a = actions.add_parser("add", help="grow an atlas by a manifest's new cases, and calibrate it again")
    a.add_argument("atlas", type=Path, metavar="ATLAS")
    a.add_argument("--manifest", type=Path, required=True)
    a.add_argument("--checkpoint", type=Path, help="default: the checkpoint the atlas was built for, beside it")
    a.add_argument("--parts", help="only the rows whose split column is one of these (default: every row)")
    _common(a)
    a.set_defaults(func=cmd_add)

    a = actions.add_parser("search", help="the confirmed cases most like each recording, with the atlas's vote")
    a.add_argument("atlas", type=Path, metavar="ATLAS")
    a.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image, video, folder or manifest CSV")
    a.add_argument("-k", type=checks.integer(1), default=5, help="similar cases per recording (default 5)")
    a.add_argument("--checkpoint", type=Path, help="default: the checkpoint the atlas was built for, beside it")
    a.add_argument("--out", type=Path, help="write similar.csv, similar.json and the closest frames' thumbnails "
                   "(similar/*.png) here")
    _common(a)
    a.set_defaults(func=cmd_search)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=None, help="reuse and fill this preprocessing cache")
    add_runtime_option(parser)
    add_device_option(parser)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def cmd_build(args: argparse.Namespace) -> None:
    from mucosa.inference.atlas_build import build_atlas

    check_writable_folder(args.out, "atlas folder")
    check_writable_file(args.checkpoint, "checkpoint (its model card records the atlas)")
    cache = open_cache(args.cache)
    report = build_atlas(args.checkpoint, args.manifest, args.out, cache, parts(args.parts), args.runtime,
                         args.device)
    print(report.format())


def cmd_add(args: argparse.Namespace) -> None:
    from mucosa.inference.atlas_build import add_to_atlas

    check_writable_folder(args.atlas, "atlas folder")
    if args.checkpoint is not None:
        check_writable_file(args.checkpoint, "checkpoint (its model card records the atlas)")
    report = add_to_atlas(args.atlas, args.manifest, args.checkpoint, open_cache(args.cache), parts(args.parts),
                          args.runtime, args.device)
    print(f"{report.added} frames added; {report.format()}")


def cmd_search(args: argparse.Namespace) -> None:
    from mucosa.inference.atlas_search import format_search, search_atlas, write_search

    if args.out is not None:
        check_writable_folder(args.out)
    cache = open_cache(args.cache) if args.cache else None
    result = search_atlas(args.atlas, args.paths, args.k, args.checkpoint, cache, args.runtime, args.device)
    print(format_search(result))
    if args.out is not None:
        write_search(result, args.out)
        print(f"similar cases: {args.out / 'similar.csv'}, similar.json; closest frames: similar/*.png")
