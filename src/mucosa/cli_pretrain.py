"""``mucosa pretrain``: its options and command (self-supervised encoder, ``mucosa.models.pretraining``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mucosa import cli_checks as checks
from mucosa.atomic import check_writable_folder
from mucosa.cli_inference import open_cache

# flag -> (its setting, its argparse name)
_SHORTCUTS = {"--model": ("model.kind", "model"), "--size": ("model.size", "size"),
              "--quality": ("preprocessing.quality_threshold", "quality"),
              "--epochs": ("training.epochs", "epochs"), "--batch-size": ("training.batch_size", "batch_size"),
              "--lr": ("training.lr", "lr"), "--seed": ("training.seed", "seed"),
              "--threads": ("training.threads", "threads"), "--workers": ("training.workers", "workers"),
              "--frames-per-case": ("training.frames_per_case", "frames_per_case"),
              "--accelerator": ("training.accelerator", "accelerator"), "--devices": ("training.devices", "devices"),
              "--precision": ("training.precision", "precision")}


def add_pretrain_parser(sub) -> None:
    """Add ``pretrain`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("pretrain", help="learn an encoder from unlabelled frames (SimCLR); fine-tune it with "
                       "train --init-from OUT/encoder.ckpt")
    p.add_argument("--manifest", type=Path, help="manifest CSV: only its path column is needed, labels are never read")
    p.add_argument("--out", type=Path, help="folder to create: encoder.ckpt, metrics.csv (the loss per epoch), "
                   "last.ckpt, config.yaml, pretrain.json")
    p.add_argument("--resume", type=Path, metavar="OUT", help="continue an interrupted pretraining run")
    p.add_argument("--config", type=Path, help="YAML config (model, preprocessing, training, augmentation sections)")
    p.add_argument("--parts", help="use only the rows whose split column is one of these, e.g. train or train,val "
                   "(default: every row)")
    p.add_argument("--temperature", type=checks.number(0, 10, low_open=True), default=0.2,
                   help="NT-Xent temperature (default 0.2)")
    p.add_argument("--projection-dim", type=checks.integer(1), default=128, help="projection head width")
    p.add_argument("--model", type=checks.model_kind, help="cnn-lstm, cnn or timm:NAME")
    p.add_argument("--size", type=checks.integer(8), help="input side in pixels")
    p.add_argument("--quality", type=checks.number(0, 1), help="quality threshold: frames scoring below are dropped")
    p.add_argument("--epochs", type=checks.integer(1))
    p.add_argument("--batch-size", type=checks.integer(2))
    p.add_argument("--lr", type=checks.number(0, low_open=True))
    p.add_argument("--seed", type=checks.integer(0))
    p.add_argument("--threads", type=checks.integer(0), help="torch threads (0 = all cores)")
    p.add_argument("--workers", type=checks.integer(0), help="data-loading processes")
    p.add_argument("--frames-per-case", type=checks.integer(0),
                   help="at most this many frames of a video or patient per epoch (0 = all)")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--devices", type=checks.devices, help="device count, -1 (all), auto or ids such as 0,1")
    p.add_argument("--precision", help="Lightning precision, e.g. 32-true or bf16-mixed")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="set any config value (repeatable)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.set_defaults(func=cmd_pretrain)


def _settings(args: argparse.Namespace) -> tuple[dict, dict]:
    from mucosa.models.config import parse_setting

    settings, labels = {}, {}
    for flag, (key, name) in _SHORTCUTS.items():
        if getattr(args, name) is not None:
            settings[key], labels[key] = getattr(args, name), flag
    for text in args.set or []:
        key, value = parse_setting(text)
        settings[key], labels[key] = value, f"--set {key}"
    return settings, labels


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mucosa.errors import ConfigError
    from mucosa.models.config import apply_settings, load_config
    from mucosa.models.pretraining import pretrain, resume_pretraining

    settings, labels = _settings(args)
    if args.resume:
        given = list(labels.values()) + ["--config"] * bool(args.config) + ["--manifest"] * bool(args.manifest)
        if given:
            raise ConfigError(f"--resume continues {args.resume} with its own settings; {', '.join(given)} would not "
                              "apply")
        check_writable_folder(args.resume, "pretraining folder")
        cache = open_cache(args.cache)
        encoder = resume_pretraining(args.resume, cache)
    else:
        if not args.manifest or not args.out:
            raise ConfigError("mucosa pretrain needs --manifest and --out (or --resume OUT)")
        config = apply_settings(load_config(args.config), settings, "command line", labels)
        parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
        check_writable_folder(args.out, "pretraining folder")
        cache = open_cache(args.cache)
        encoder = pretrain(args.manifest, config, args.out, cache, parts, args.temperature, args.projection_dim)
    print(f"encoder: {encoder} (fine-tune it: mucosa train --init-from {encoder} ...)")
