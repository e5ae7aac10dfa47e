"""``mucosa texture``: its options and command (LBP texture on a run's split, fused with the network;
``mucosa.evaluation.texture``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mucosa import cli_checks as checks
from mucosa.atomic import check_writable_folder


def add_texture_parser(sub) -> None:
    """Add ``texture`` to the ``mucosa`` subcommands."""
    from mucosa.data.readers import CHANNELS

    p = sub.add_parser("texture", help="LBP texture classifier on a run's split, alone and fused with the network "
                       "(the published recipe)")
    p.add_argument("--manifest", type=Path, required=True,
                   help="a manifest with a split column, e.g. a run's split.csv: fitted on train and val, "
                   "scored on test")
    p.add_argument("--fuse", type=Path, metavar="EVALUATION",
                   help="the network's mucosa evaluate folder for the same test part: each file's probability "
                   "averaged with the texture's")
    p.add_argument("--out", type=Path, required=True, help="folder for files.csv, patients.csv, metrics.json")
    p.add_argument("--channel", choices=CHANNELS, default="auto",
                   help="which channel of a colour image (e.g. red for a red stain; default auto)")
    p.add_argument("--bootstrap", type=checks.integer(1), default=1000,
                   help="bootstrap replicates (over patients) for the intervals")
    p.add_argument("--seed", type=checks.integer(0), default=0, help="seed of the bootstrap")
    p.set_defaults(func=cmd_texture)


def cmd_texture(args: argparse.Namespace) -> None:
    from mucosa.evaluation.texture import texture

    check_writable_folder(args.out)
    result = texture(args.manifest, args.out, args.fuse, args.channel, args.bootstrap, args.seed)
    for name, m in result.methods.items():
        auc = "n/a" if m["roc_auc"]["value"] is None else f"{m['roc_auc']['value']:.3f}"
        right, total = m["patient_accuracy"]["count"]
        print(f"  {name}: file ROC AUC {auc}, files right at 0.5 {m['accuracy']['value']:.3f}, "
              f"patients right {right}/{total}")
    print(f"{result.methods['texture']['files']} test files; {result.out / 'metrics.json'}")
