"""``mucosa model-summary``, ``train`` and ``pretrain`` (``mucosa.models``): their options and commands."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mucosa.atomic import check_writable_folder
from mucosa.cli import checks
from mucosa.cli.options import (
    SHORTCUTS,
    Shortcut,
    add_pseudonym_options,
    add_shortcuts,
    open_cache,
    parts,
    settings,
)

__all__ = ["add_parser"]

TRAIN_SPLIT = ("--split", "--test", "--val", "--k", "--fold", "--split-seed")
TRAIN_TRAINING = ("--epochs", "--batch-size", "--lr", "--seed", "--threads", "--workers", "--class-weights",
                  "--early-stopping", "--frames-per-case", "--accelerator", "--devices", "--num-nodes", "--strategy",
                  "--precision")
TRAIN = {flag: SHORTCUTS[flag] for flag in ("--model", "--size", "--quality", *TRAIN_SPLIT, *TRAIN_TRAINING,
                                            "--logger")}

# a contrastive batch compares its frames with each other: at least 2, from --batch-size or --set
PRETRAIN_BATCH = replace(SHORTCUTS["--batch-size"], type=checks.integer(2), checks_set=True)
PRETRAIN: dict[str, Shortcut] = {flag: PRETRAIN_BATCH if flag == "--batch-size" else SHORTCUTS[flag] for flag in (
    "--model", "--size", "--quality", "--epochs", "--batch-size", "--lr", "--seed", "--threads", "--workers",
    "--frames-per-case", "--accelerator", "--devices", "--precision")}


def add_parser(sub) -> None:
    """Add ``model-summary``, ``pretrain`` and ``train`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("model-summary", help="print a model's layer table with shapes and parameter counts")
    p.add_argument("--model", type=checks.model_kind, default="cnn-lstm", help="cnn-lstm, cnn or timm:NAME")
    p.add_argument("--size", type=checks.integer(8), default=300)
    p.add_argument("--classes", type=checks.integer(2), default=2)
    p.set_defaults(func=cmd_model_summary)
    _add_pretrain_parser(sub)
    _add_train_parser(sub)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a cohort (PyTorch Lightning)")
    p.add_argument("--manifest", type=Path, help="cohort manifest CSV")
    p.add_argument("--no-onnx", action="store_true", help="do not write best.onnx and best.int8.onnx beside "
                   "best.ckpt (written by default, checked, and recorded in the checkpoint's model card)")
    p.add_argument("--no-atlas", action="store_true", help="do not write atlas/ beside best.ckpt (the atlas of the "
                   "training and validation frames, calibrated on the validation frames: it tells unfamiliar "
                   "recordings and finds similar cases)")
    p.add_argument("--config", type=Path, help="YAML config, e.g. configs/paper.yaml or configs/cpu-quick.yaml")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--init-from", type=Path, help="start from a checkpoint's or pretrain's encoder.ckpt weights "
                   "(refused when no weight fits, or less than half of the feature layers' weights)")
    p.add_argument("--allow-partial-init", action="store_true",
                   help="fine-tune --init-from also when less than half of the feature layers' weights fit")
    p.add_argument("--classes", help="train on these labels only, in this order, e.g. control,active (the last of "
                   "two is the positive class); also accepts classes that look like typos or are nearly empty")
    add_shortcuts(p, ("--model", "--size", "--quality"))
    add_shortcuts(p.add_argument_group("split (overrides the config's split section)"), TRAIN_SPLIT)
    add_shortcuts(p.add_argument_group("training (overrides the config's training section)"), TRAIN_TRAINING)
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.add_argument("--record-samples", action="store_true", help=argparse.SUPPRESS)
    add_shortcuts(p, ("--logger",))
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="set any config value, e.g. --set training.lr=3e-4 (repeatable; the value is read as YAML)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file, flags and --set) and exit")
    add_pseudonym_options(p, "required with --pseudonymise and never stored: --resume and evaluate's check of "
                          "the patients who trained the model need it, with the original --manifest")
    p.set_defaults(func=cmd_train)


def _add_pretrain_parser(sub) -> None:
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
    add_shortcuts(p, PRETRAIN, PRETRAIN)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="set any config value (repeatable)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.set_defaults(func=cmd_pretrain)


def cmd_model_summary(args: argparse.Namespace) -> None:
    from mucosa.models.networks import ModelConfig, create_model, summarize

    config = ModelConfig(kind=args.model, size=args.size, num_classes=args.classes)
    print(f"{args.model} at {args.size}x{args.size}, {args.classes} classes")
    print(summarize(create_model(config), args.size))


def _run_config(args: argparse.Namespace, table: dict[str, Shortcut]):
    """The config file, then the shortcut flags, then every ``--set KEY=VALUE``, checked together."""
    from mucosa.models.config import apply_settings, load_config

    found, labels = settings(args, table)
    return apply_settings(load_config(args.config), found, "command line", labels)


def cmd_train(args: argparse.Namespace) -> None:
    from mucosa.data.ingest import parse_classes
    from mucosa.errors import ConfigError
    from mucosa.evaluation.privacy import shown
    from mucosa.models.config import load_config
    from mucosa.models.training import resume, train

    if args.pseudonymise and not args.pseudonym_key:
        raise ConfigError("train --pseudonymise needs --pseudonym-key KEY: resuming the run and telling which "
                          "evaluated patients trained it need the same key (keep it out of the run folder)")
    if args.resume:  # the run's own split.csv, weights and classes continue
        _refuse_beside_resume(args, TRAIN, {"--config": args.config,
                                            "--manifest": args.manifest and not args.pseudonymise,
                                            "--init-from": args.init_from, "--classes": args.classes,
                                            "--allow-partial-init": args.allow_partial_init},
                              "config.yaml", " (edit that file to change a setting)")
    if args.print_config:
        config = load_config(args.resume / "config.yaml") if args.resume else _run_config(args, TRAIN)
        print(config.to_yaml(), end="")
        return
    if not args.resume and (not args.manifest or not args.out):
        raise ConfigError("mucosa train needs --manifest and --out (or --resume RUN_DIR)")
    key = args.pseudonym_key if args.pseudonymise else None
    cache = _open_folder(args.resume or args.out, "run folder", args.cache)
    with shown(_redactor(args.manifest, key)):
        if args.resume:
            best = resume(args.resume, cache, args.manifest, key)
        else:
            classes = parse_classes(args.classes) if args.classes else None
            best = train(args.manifest, _run_config(args, TRAIN), args.out, args.init_from, cache,
                         args.record_samples, classes, allow_partial_init=args.allow_partial_init, pseudonym_key=key)
        _deploy(args, best, cache, key)
    print(f"best checkpoint: {best}")


def _redactor(manifest: Path | None, key: str | None):
    """The redactor of a pseudonymised run (None otherwise), knowing the manifest's patients and paths."""
    from mucosa.data.manifest import load_manifest
    from mucosa.evaluation.privacy import redactor

    redact = redactor(key is not None, key)
    if redact is not None and manifest is not None:
        redact.learn_paths(manifest)
        with redact.console():  # a manifest that cannot be read is refused without naming what it holds
            cohort = load_manifest(manifest, check_files=False)
        redact.learn(*(r.patient for r in cohort.records), *(r.group for r in cohort.records))
        redact.learn_paths(*(r.path for r in cohort.records))
    return redact


def _deploy(args: argparse.Namespace, best: Path, cache, key: str | None) -> None:
    """The ONNX files and the atlas beside ``best``, made from the run's split (found again in the manifest
    with the key of a pseudonymised run, in a temporary file outside the run)."""
    import tempfile

    from mucosa.data.manifest import Cohort
    from mucosa.models.training import run_split

    if args.no_onnx and args.no_atlas:
        return
    split, pseudonym = run_split(best.parent, args.manifest, key)
    with tempfile.TemporaryDirectory(prefix="mucosa-split-") as scratch:
        if isinstance(split, Cohort):
            split = split.to_csv(Path(scratch) / "split.csv")
        if not args.no_onnx:
            from mucosa.inference.onnx_files import deploy_after_training

            deploy_after_training(best, split, cache)
        if not args.no_atlas:  # after the ONNX files: its frames are embedded as predict runs the model
            from mucosa.inference.atlas_build import atlas_after_training

            atlas_after_training(best, split, cache, pseudonym)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mucosa.errors import ConfigError
    from mucosa.models.pretraining import pretrain, resume_pretraining

    if args.resume:
        _refuse_beside_resume(args, PRETRAIN, {"--config": args.config, "--manifest": args.manifest}, "settings")
        encoder = resume_pretraining(args.resume, _open_folder(args.resume, "pretraining folder", args.cache))
    else:
        if not args.manifest or not args.out:
            raise ConfigError("mucosa pretrain needs --manifest and --out (or --resume OUT)")
        config = _run_config(args, PRETRAIN)
        cache = _open_folder(args.out, "pretraining folder", args.cache)
        encoder = pretrain(args.manifest, config, args.out, cache, parts(args.parts), args.temperature,
                           args.projection_dim)
    print(f"encoder: {encoder} (fine-tune it: mucosa train --init-from {encoder} ...)")


def _refuse_beside_resume(args: argparse.Namespace, table: dict[str, Shortcut], inputs: dict[str, object],
                          kept: str, hint: str = "") -> None:
    """``--resume`` continues a run with what it recorded: a setting or input given beside it would not apply."""
    from mucosa.errors import ConfigError

    given = list(settings(args, table)[1].values()) + [flag for flag, value in inputs.items() if value]
    if given:
        raise ConfigError(f"--resume continues {args.resume} with its own {kept}; {', '.join(given)} would not "
                          f"apply{hint}")


def _open_folder(folder: Path, what: str, cache: Path | None):
    """The preprocessing cache, once the run's folder and the cache's are found writable (before any work)."""
    check_writable_folder(folder, what)
    return open_cache(cache)
