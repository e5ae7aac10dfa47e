"""The ``mucosa`` command: a thin layer over the library (heavy imports happen inside each subcommand)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from mucosa import cli_checks as checks
from mucosa._version import __version__
from mucosa.atomic import OutputError, check_writable_file, check_writable_folder
from mucosa.cli_inference import RUNTIME_HELP, add_device_option, add_inference_parsers, open_cache
from mucosa.cli_pretrain import add_pretrain_parser
from mucosa.cli_texture import add_texture_parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a progress line, which is drawn again
    print(f"{clear}warning: {message}", file=sys.stderr)


def _add_prep_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--size", type=checks.integer(8), default=300, help="model input side in pixels (default 300)")
    group.add_argument("--crop", default="auto",
                       help="auto (detect the field of view, largest square inside it), disc (a circular "
                       "field kept whole, black outside), none, or a box x0,y0,x1,y1")
    group.add_argument("--channel", default="auto", help="auto, luminance, red, green or blue")
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
    from mucosa.data.preparation import Preprocessing
    from mucosa.errors import ConfigError

    crop = args.crop
    if crop not in ("auto", "disc", "none"):
        try:
            crop = tuple(int(v) for v in crop.split(","))
        except ValueError:
            raise ConfigError(f"--crop {args.crop!r} must be auto, disc, none or x0,y0,x1,y1") from None
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
    from mucosa.data.manifest import load_manifest
    from mucosa.data.table import assemble

    cache = open_cache(args.cache)
    cohort = load_manifest(args.manifest, positive=args.positive)
    prep = _prep_from_args(args)
    frames = assemble(cohort, prep, cache, progress=True)
    print(frames.summary())
    rebuilt = f" ({cache.rebuilt} damaged entries rebuilt)" if cache.rebuilt else ""
    print(f"cache {cache.root}: {cache.hits} rows reused, {cache.misses} prepared{rebuilt}")


def cmd_model_summary(args: argparse.Namespace) -> None:
    from mucosa.models.networks import ModelConfig, create_model, summarize

    config = ModelConfig(kind=args.model, size=args.size, num_classes=args.classes)
    print(f"{args.model} at {args.size}x{args.size}, {args.classes} classes")
    print(summarize(create_model(config), args.size))


# shortcut flag -> (its setting, its argparse name)
_SHORTCUTS = {"--model": ("model.kind", "model"), "--size": ("model.size", "size"),
              "--quality": ("preprocessing.quality_threshold", "quality"), "--split": ("split.mode", "split"),
              "--test": ("split.test", "test"), "--val": ("split.val", "val"), "--k": ("split.k", "k"),
              "--fold": ("split.fold", "fold"), "--split-seed": ("split.seed", "split_seed"),
              "--epochs": ("training.epochs", "epochs"), "--batch-size": ("training.batch_size", "batch_size"),
              "--lr": ("training.lr", "lr"), "--seed": ("training.seed", "seed"),
              "--threads": ("training.threads", "threads"), "--workers": ("training.workers", "workers"),
              "--accelerator": ("training.accelerator", "accelerator"), "--devices": ("training.devices", "devices"),
              "--num-nodes": ("training.num_nodes", "num_nodes"), "--strategy": ("training.strategy", "strategy"),
              "--early-stopping": ("training.early_stopping", "early_stopping"),
              "--frames-per-case": ("training.frames_per_case", "frames_per_case"),
              "--precision": ("training.precision", "precision"), "--logger": ("training.logger", "logger")}


def _cli_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """Settings from the shortcut flags, then every ``--set KEY=VALUE``; and the flag that gave each."""
    from mucosa.models.config import parse_setting

    settings, labels = {}, {}
    for flag, (key, name) in _SHORTCUTS.items():
        if getattr(args, name) is not None:
            settings[key], labels[key] = getattr(args, name), flag
    if args.class_weights:
        settings["training.class_weights"], labels["training.class_weights"] = True, "--class-weights"
    for text in args.set or []:
        key, value = parse_setting(text)
        settings[key], labels[key] = value, f"--set {key}"
    return settings, labels


def _run_config(args: argparse.Namespace):
    """The config file, then the shortcut flags, then every ``--set KEY=VALUE``, checked together."""
    from mucosa.models.config import apply_settings, load_config

    settings, labels = _cli_settings(args)
    return apply_settings(load_config(args.config), settings, "command line", labels)


def cmd_train(args: argparse.Namespace) -> None:
    from mucosa.data.ingest import parse_classes
    from mucosa.errors import ConfigError
    from mucosa.models.config import load_config
    from mucosa.models.training import resume, train

    if args.resume:
        given = list(_cli_settings(args)[1].values()) + [flag for flag, value in (
            ("--config", args.config), ("--manifest", args.manifest), ("--init-from", args.init_from),
            ("--classes", args.classes)) if value]  # the run's own split.csv, weights and classes continue
        if given:
            raise ConfigError(f"--resume continues {args.resume} with its own config.yaml; {', '.join(given)} "
                              "would not apply (edit that file to change a setting)")
    if args.print_config:
        config = load_config(args.resume / "config.yaml") if args.resume else _run_config(args)
        print(config.to_yaml(), end="")
        return
    if args.resume:
        check_writable_folder(args.resume, "run folder")
        cache = open_cache(args.cache)
        best = resume(args.resume, cache)
    else:
        if not args.manifest or not args.out:
            raise ConfigError("mucosa train needs --manifest and --out (or --resume RUN_DIR)")
        classes = parse_classes(args.classes) if args.classes else None
        check_writable_folder(args.out, "run folder")
        cache = open_cache(args.cache)
        best = train(args.manifest, _run_config(args), args.out, args.init_from, cache, args.record_samples, classes)
    if not args.no_onnx:
        from mucosa.inference.onnx_files import deploy_after_training

        deploy_after_training(best, best.parent / "split.csv", cache)
    print(f"best checkpoint: {best}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mucosa.evaluation.evaluate import evaluate
    from mucosa.evaluation.report import fmt

    check_writable_folder(args.out)
    cache = open_cache(args.cache)
    result = evaluate(args.checkpoint, args.manifest, args.out, split=args.split, threshold=args.threshold,
                      aggregation=args.aggregate, n_boot=args.bootstrap, seed=args.seed,
                      pseudonymise=args.pseudonymise, pseudonym_key=args.pseudonym_key, cache=cache,
                      gallery_size=args.gallery, device=args.device, runtime=args.runtime)
    p, i = result["patient"], result["image"]
    print(f"patients ({result['counts']['patients']}): accuracy {fmt(p['accuracy'])}"
          + (f", ROC AUC {fmt(p.get('roc_auc'))}" if "roc_auc" in p else ""))
    print(f"frames ({result['counts']['frames']}): accuracy {fmt(i['accuracy'])}, ROC AUC {fmt(i.get('roc_auc'))}")
    print(f"report: {Path(args.out) / 'report.html'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from mucosa.evaluation.compare import compare, load_evaluation, table_rows

    check_writable_folder(args.out)
    summary = compare(args.runs, args.out, n_boot=args.bootstrap, seed=args.seed)
    for row in table_rows([load_evaluation(f) for f in args.runs]):
        print("  " + " | ".join(row))
    print(f"{len(summary['paired_tests'])} paired test(s); report: {Path(args.out) / 'comparison.html'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from mucosa.demo import run_demo

    check_writable_folder(args.out, "demo folder")
    report = run_demo(args.out, quick=args.quick, config=args.config, seed=args.seed)
    print(f"demo report (synthetic data): {report}")


def cmd_export(args: argparse.Namespace) -> None:
    from mucosa.inference.onnx import export

    cache = open_cache(args.cache) if args.manifest else None
    report = export(args.checkpoint, args.out, int8=args.int8, manifest=args.manifest, cache=cache)
    print(report.format())


def cmd_explain(args: argparse.Namespace) -> None:
    from mucosa.evaluation.explain import explain_paths

    check_writable_folder(args.out)
    results = explain_paths(args.checkpoint, args.inputs, args.out, frames=args.frames, top=args.top,
                            device=args.device, runtime=args.runtime)
    for r in results:
        where = str(r.input) + ("" if r.frame is None else f" frame {r.frame}")
        print(f"{where}: {r.predicted} ({len(r.files)} figures)")
    print(f"explained {len(results)} frame(s); index: {Path(args.out) / 'explain.csv'}")



def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="cohort manifest CSV")
    p.add_argument("--no-onnx", action="store_true", help="do not write best.onnx and best.int8.onnx beside "
                   "best.ckpt (written by default, checked, and recorded in the checkpoint's model card)")
    p.add_argument("--config", type=Path, help="YAML config, e.g. configs/paper.yaml or configs/cpu-quick.yaml")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--init-from", type=Path, help="start from a checkpoint's or pretrain's encoder.ckpt weights")
    p.add_argument("--classes", help="train on these labels only, in this order, e.g. control,active (the last of "
                   "two is the positive class); also accepts classes that look like typos or are nearly empty")
    p.add_argument("--model", type=checks.model_kind, help="cnn-lstm, cnn or timm:NAME (e.g. timm:resnet18)")
    p.add_argument("--size", type=checks.integer(8), help="input side in pixels")
    p.add_argument("--quality", type=checks.number(0, 1), help="quality threshold: frames scoring below are dropped")
    g = p.add_argument_group("split (overrides the config's split section)")
    g.add_argument("--split", choices=["within-patient", "patient", "kfold", "lopo", "none", "manifest"])
    g.add_argument("--test", type=checks.number(0, 1))
    g.add_argument("--val", type=checks.number(0, 1), help="share of the training part used for validation")
    g.add_argument("--k", type=checks.integer(2))
    g.add_argument("--fold", type=checks.integer(0))
    g.add_argument("--split-seed", type=checks.integer(0))
    g = p.add_argument_group("training (overrides the config's training section)")
    g.add_argument("--epochs", type=checks.integer(1))
    g.add_argument("--batch-size", type=checks.integer(1))
    g.add_argument("--lr", type=checks.number(0, low_open=True))
    g.add_argument("--seed", type=checks.integer(0))
    g.add_argument("--threads", type=checks.integer(0), help="torch threads (0 = all cores)")
    g.add_argument("--workers", type=checks.integer(0), help="data-loading processes")
    g.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    g.add_argument("--early-stopping", type=checks.integer(0), metavar="PATIENCE", help="0 = off")
    g.add_argument("--frames-per-case", type=checks.integer(0),
                   help="at most this many frames of a case per epoch (0 = all)")
    g.add_argument("--accelerator", help="cpu, gpu or auto")
    g.add_argument("--devices", type=checks.devices, help="device count, -1 (all), auto or ids such as 0,1")
    g.add_argument("--num-nodes", type=checks.integer(1))
    g.add_argument("--strategy", help="e.g. ddp")
    g.add_argument("--precision", help="Lightning precision, e.g. 32-true or bf16-mixed")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.add_argument("--record-samples", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--logger", choices=["csv", "tensorboard", "mlflow"],
                   help="experiment log besides metrics.csv in the run folder (tensorboard and mlflow are optional "
                   "extras: pip install 'mucosa[tensorboard]')")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="set any config value, e.g. --set training.lr=3e-4 (repeatable; the value is read as YAML)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file, flags and --set) and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mucosa", description="Computer-aided confirmation of mucosal healing from confocal laser "
        "endomicroscopy (CLE).")
    parser.add_argument("--version", action="version", version=f"mucosa {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (also MUCOSA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--mode", default="patient",
                   choices=["within-patient", "patient", "kfold", "lopo", "none", "manifest"])
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

    p = sub.add_parser("model-summary", help="print a model's layer table with shapes and parameter counts")
    p.add_argument("--model", type=checks.model_kind, default="cnn-lstm", help="cnn-lstm, cnn or timm:NAME")
    p.add_argument("--size", type=checks.integer(8), default=300)
    p.add_argument("--classes", type=checks.integer(2), default=2)
    p.set_defaults(func=cmd_model_summary)

    p = sub.add_parser("evaluate", help="metrics with patient-bootstrap CIs, patient verdicts, report")
    add_device_option(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="auto", choices=["auto", "test", "val", "all"],
                   help="auto: the manifest's test rows, else the checkpoint's test patients, else all rows")
    p.add_argument("--threshold", default="0.5", type=checks.threshold_rule,
                   help="a number in [0, 1], youden, sensitivity=0.95 or specificity=0.9 (rules use the validation "
                   "part)")
    p.add_argument("--aggregate", default="mean", choices=["mean", "share"],
                   help="patient score: mean frame probability, or share of frames called inflamed")
    p.add_argument("--bootstrap", type=checks.integer(1), default=1000, help="bootstrap replicates for the CIs")
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.add_argument("--pseudonymise", action="store_true", help="replace patient ids and paths by keyed hashes")
    p.add_argument("--pseudonym-key", default=None, help="key of the hash (default: random, not stored)")
    p.add_argument("--gallery", type=checks.integer(0), default=3,
                   help="Grad-CAM examples per group (true/false positives/negatives) in the report; 0 = none")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help=RUNTIME_HELP)
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="Table III and Fig. 4 for evaluated runs, with paired AUC tests")
    p.add_argument("runs", nargs="+", type=Path, help="evaluation folders (or run folders with evaluation/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap", type=checks.integer(1), default=2000)
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="synthetic cohort -> 4 trainings -> evaluation -> comparison report")
    p.add_argument("--out", type=Path, default=Path("mucosa-demo"))
    p.add_argument("--quick", action="store_true", help="a seconds-long variant (tests)")
    p.add_argument("--config", type=Path, default=Path("configs/cpu-quick.yaml"))
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.set_defaults(func=cmd_demo)

    add_inference_parsers(sub)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (parity-checked; int8 optional)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, default=None, help="default: the checkpoint's name with .onnx")
    p.add_argument("--int8", action="store_true", help="static int8 quantization calibrated on --manifest")
    p.add_argument("--manifest", type=Path, help="frames for int8 calibration, agreement and AUC change")
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="feature maps (the paper's Fig. 3) and Grad-CAM for images, video frames "
                       "or folders of them")
    add_device_option(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_VIDEO_OR_FOLDER")  # str: an empty one is refused
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and explain.csv")
    p.add_argument("--frames", default=None,
                   help="video frames to explain: every:K, A-B, A-B:K or K (default: the --top most confident)")
    p.add_argument("--top", type=checks.integer(1), default=None,
                   help="per video, explain the N most confident (of the --frames) frames (default 4 without --frames)")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help=RUNTIME_HELP + "; feature maps and Grad-CAM always run PyTorch (they need gradients)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("train", help="train a model on a cohort (PyTorch Lightning)")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
    add_pretrain_parser(sub)
    add_texture_parser(sub)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


class _Console(logging.StreamHandler):
    """The library's INFO messages (``logging``) on the current standard output, as plain lines."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stdout)
        super().emit(record)


def main(argv: list[str] | None = None) -> int:
    """Run ``mucosa`` with ``argv``; returns the exit status (``cli_checks`` lists them), never raises."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed by argparse
        return stop.code if isinstance(stop.code, int) else checks.EXIT_REFUSED
    debug = args.debug or os.environ.get("MUCOSA_DEBUG") == "1"
    warnings.showwarning = _show_warning
    console, library = _Console(), logging.getLogger("mucosa")
    console.setFormatter(logging.Formatter("%(message)s"))
    library.addHandler(console)
    library.setLevel(logging.INFO)
    try:
        return checks.run(lambda: args.func(args), debug)
    finally:
        library.removeHandler(console)


if __name__ == "__main__":
    sys.exit(main())
