"""The ``mucosa`` command: a thin layer over the library (heavy imports happen inside each subcommand)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from mucosa import __version__
from mucosa.errors import MucosaError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _add_prep_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--size", type=int, default=300, help="model input side in pixels (default 300)")
    group.add_argument("--crop", default="auto",
                       help="auto (detect the field of view, largest square inside it), disc (a circular "
                       "field kept whole, black outside), none, or a box x0,y0,x1,y1")
    group.add_argument("--channel", default="auto", help="auto, luminance, red, green or blue")
    group.add_argument("--tile", type=int, default=0,
                       help="cut still images into tiles of this side (source pixels); 0 = whole image")
    group.add_argument("--normalize", default="none",
                       help="none, or stretch (map each image's or frame's 1st-99.5th intensity percentiles "
                       "to black-white)")
    group.add_argument("--quality", type=float, default=None,
                       help="drop frames whose quality score is below this (0 keeps all)")
    group.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder "
                       "(default $MUCOSA_CACHE or ~/.cache/mucosa)")


def _prep_from_args(args: argparse.Namespace):
    from mucosa.errors import ConfigError
    from mucosa.prepare import Preprocessing

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
    from mucosa.synth import synthesize_cohort

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            print(f"\rsynthesising images: {done}/{total}", end="\n" if done == total else "", flush=True)

    manifest = synthesize_cohort(args.out, patients=args.patients, per_patient=args.per_patient,
                                 size=args.size, seed=args.seed, overlay=args.overlay, progress=progress)
    print(f"synthetic cohort (not real patients) written; manifest: {manifest}")


def cmd_index(args: argparse.Namespace) -> None:
    from mucosa.ingest import index_csv, index_directory, parse_label_map
    from mucosa.manifest import write_manifest

    source = Path(args.source)
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
    from mucosa.ingest import check_cohort
    from mucosa.manifest import load_manifest

    cohort = load_manifest(args.manifest, positive=args.positive)
    summary = check_cohort(cohort)
    print(summary.format(cohort))
    return 1 if summary.unreadable else 0


def cmd_split(args: argparse.Namespace) -> None:
    from mucosa.manifest import load_manifest
    from mucosa.splits import split_cohort

    cohort = load_manifest(args.manifest, positive=args.positive)
    result = split_cohort(cohort, args.mode, test=args.test, val=args.val, k=args.k, fold=args.fold,
                          seed=args.seed)
    print(result.report)
    out = result.cohort.to_csv(args.output)
    print(f"manifest with split column -> {out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from mucosa.data import assemble
    from mucosa.manifest import load_manifest
    from mucosa.prepare import FrameCache

    cohort = load_manifest(args.manifest, positive=args.positive)
    prep = _prep_from_args(args)
    cache = FrameCache(args.cache)
    frames = assemble(cohort, prep, cache, progress=True)
    print(frames.summary())
    print(f"cache {cache.root}: {cache.hits} rows reused, {cache.misses} prepared")


def cmd_model_summary(args: argparse.Namespace) -> None:
    from mucosa.model import ModelConfig, create_model, summarize

    config = ModelConfig(kind=args.model, size=args.size, num_classes=args.classes)
    print(f"{args.model} at {args.size}x{args.size}, {args.classes} classes")
    print(summarize(create_model(config), args.size))


def _run_config(args: argparse.Namespace):
    from mucosa.config import load_config, override

    config = load_config(args.config)
    config = override(config, "model", kind=args.model, size=args.size)
    config = override(config, "preprocessing", quality_threshold=args.quality)
    config = override(config, "split", mode=args.split, test=args.test, val=args.val, k=args.k, fold=args.fold,
                      seed=args.split_seed)
    config = override(config, "training", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, threads=args.threads, workers=args.workers, accelerator=args.accelerator,
                      devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
                      early_stopping=args.early_stopping, frames_per_case=args.frames_per_case,
                      precision=args.precision,
                      class_weights=True if args.class_weights else None)
    return config


def cmd_train(args: argparse.Namespace) -> None:
    from mucosa.errors import ConfigError
    from mucosa.prepare import FrameCache
    from mucosa.train import resume, train

    cache = FrameCache(args.cache)
    if args.resume:
        best = resume(args.resume, cache)
    else:
        if not args.manifest or not args.out:
            raise ConfigError("mucosa train needs --manifest and --out (or --resume RUN_DIR)")
        best = train(args.manifest, _run_config(args), args.out, args.init_from, cache, args.record_samples)
    print(f"best checkpoint: {best}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mucosa.evaluate import evaluate
    from mucosa.prepare import FrameCache
    from mucosa.report import fmt

    result = evaluate(args.checkpoint, args.manifest, args.out, split=args.split, threshold=args.threshold,
                      aggregation=args.aggregate, n_boot=args.bootstrap, seed=args.seed,
                      pseudonymise=args.pseudonymise, pseudonym_key=args.pseudonym_key, cache=FrameCache(args.cache),
                      gallery_size=args.gallery)
    p, i = result["patient"], result["image"]
    print(f"patients ({result['counts']['patients']}): accuracy {fmt(p['accuracy'])}"
          + (f", ROC AUC {fmt(p.get('roc_auc'))}" if "roc_auc" in p else ""))
    print(f"frames ({result['counts']['frames']}): accuracy {fmt(i['accuracy'])}, ROC AUC {fmt(i.get('roc_auc'))}")
    print(f"report: {Path(args.out) / 'report.html'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from mucosa.compare import compare, table_rows, load_evaluation

    summary = compare(args.runs, args.out, n_boot=args.bootstrap, seed=args.seed)
    for row in table_rows([load_evaluation(f) for f in args.runs]):
        print("  " + " | ".join(row))
    print(f"{len(summary['paired_tests'])} paired test(s); report: {Path(args.out) / 'comparison.html'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from mucosa.demo import run_demo

    report = run_demo(args.out, quick=args.quick, config=args.config, seed=args.seed)
    print(f"demo report (synthetic data): {report}")


def cmd_predict(args: argparse.Namespace) -> None:
    from mucosa.predict import format_cases, predict
    from mucosa.prepare import FrameCache

    def progress(done: int, total: int, path) -> None:
        print(f"\rpredicting: {done}/{total} files", end="\n" if done == total else "", file=sys.stderr, flush=True)

    result = predict(args.checkpoint, args.paths, args.out, runtime=args.runtime, threshold=args.threshold,
                     cache=FrameCache(args.cache) if args.cache else None, threads=args.threads, progress=progress)
    print(format_cases(result))
    print(f"per frame: {args.out / 'predictions.csv'}; per file: files.csv; per case: cases.csv")


def cmd_stream(args: argparse.Namespace) -> None:
    from mucosa.stream import run

    summary = run(args.checkpoint, args.video, runtime=args.runtime, window=args.window, realtime=args.realtime,
                  timeline=args.timeline, annotate=args.annotate, threshold=args.threshold,
                  gradcam=not args.no_gradcam, threads=args.threads)
    print(summary.format())


def cmd_export(args: argparse.Namespace) -> None:
    from mucosa.export import export
    from mucosa.prepare import FrameCache

    report = export(args.checkpoint, args.out, int8=args.int8, manifest=args.manifest, cache=FrameCache(args.cache))
    print(report.format())


def cmd_explain(args: argparse.Namespace) -> None:
    from mucosa.explain import explain_paths

    results = explain_paths(args.checkpoint, args.inputs, args.out, frames=args.frames, top=args.top)
    for r in results:
        where = str(r.input) + ("" if r.frame is None else f" frame {r.frame}")
        print(f"{where}: {r.predicted} ({len(r.files)} figures)")
    print(f"explained {len(results)} frame(s); index: {Path(args.out) / 'explain.csv'}")


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    try:
        from mucosa.service.server import serve
    except ImportError as error:
        raise MucosaError(f"mucosa serve needs FastAPI and uvicorn: pip install 'mucosa[serve]' ({error})") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.checkpoint, host=args.host, port=args.port, token=args.token, data_root=args.data_root,
          max_upload_mb=args.max_upload_mb, device=args.device, queue=args.queue, threshold=args.threshold,
          window=args.window, parallel=args.parallel, onnx=args.onnx)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="cohort manifest CSV")
    p.add_argument("--config", type=Path, help="YAML config, e.g. configs/paper.yaml or configs/cpu-quick.yaml")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--init-from", type=Path, help="start from another checkpoint's weights (fine-tuning)")
    p.add_argument("--model", choices=["cnn-lstm", "cnn"])
    p.add_argument("--size", type=int, help="input side in pixels")
    p.add_argument("--quality", type=float, help="quality threshold: frames scoring below are dropped")
    g = p.add_argument_group("split (overrides the config's split section)")
    g.add_argument("--split", choices=["within-patient", "patient", "kfold", "lopo", "none", "manifest"])
    g.add_argument("--test", type=float)
    g.add_argument("--val", type=float, help="share of the training part used for validation")
    g.add_argument("--k", type=int)
    g.add_argument("--fold", type=int)
    g.add_argument("--split-seed", type=int)
    g = p.add_argument_group("training (overrides the config's training section)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--threads", type=int, help="torch threads (0 = all cores)")
    g.add_argument("--workers", type=int, help="data-loading processes")
    g.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    g.add_argument("--frames-per-case", type=int, help="at most this many frames of a case per epoch")
    g.add_argument("--accelerator", help="cpu, gpu or auto")
    g.add_argument("--devices", type=lambda v: v if v == "auto" else int(v))
    g.add_argument("--num-nodes", type=int)
    g.add_argument("--strategy", help="e.g. ddp")
    g.add_argument("--precision", help="Lightning precision, e.g. 32-true or bf16-mixed")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.add_argument("--record-samples", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mucosa", description="Computer-aided confirmation of mucosal healing from confocal laser "
        "endomicroscopy (CLE).")
    parser.add_argument("--version", action="version", version=f"mucosa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic CLE cohort (for demos and tests)")
    p.add_argument("out", type=Path)
    p.add_argument("--patients", type=int, default=12)
    p.add_argument("--per-patient", type=int, default=40)
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlay", action="store_true",
                   help="put each image in a circular pCLE-like field with a logo and scale bar")
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
    p.add_argument("--test", type=float, default=0.2, help="test fraction (patient, within-patient)")
    p.add_argument("--val", type=float, default=0.0, help="fraction of training carved out for validation")
    p.add_argument("--k", type=int, default=5, help="folds for kfold")
    p.add_argument("--fold", type=int, default=0, help="test fold (kfold) or patient index (lopo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positive", default=None)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("prepare", help="decode, crop, resize and quality-score a cohort into the cache")
    p.add_argument("manifest", type=Path)
    p.add_argument("--positive", default=None)
    _add_prep_options(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("model-summary", help="print a model's layer table with shapes and parameter counts")
    p.add_argument("--model", choices=["cnn-lstm", "cnn"], default="cnn-lstm")
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--classes", type=int, default=2)
    p.set_defaults(func=cmd_model_summary)

    p = sub.add_parser("evaluate", help="metrics with patient-bootstrap CIs, patient verdicts, report")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="auto", choices=["auto", "test", "val", "all"],
                   help="auto: the manifest's test rows, else the checkpoint's test patients, else all rows")
    p.add_argument("--threshold", default="0.5",
                   help="a number, youden, sensitivity=0.95 or specificity=0.9 (rules use the validation part)")
    p.add_argument("--aggregate", default="mean", choices=["mean", "share"],
                   help="patient score: mean frame probability, or share of frames called inflamed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pseudonymise", action="store_true", help="replace patient ids and paths by keyed hashes")
    p.add_argument("--pseudonym-key", default=None, help="key of the hash (default: random, not stored)")
    p.add_argument("--gallery", type=int, default=3,
                   help="Grad-CAM examples per group (true/false positives/negatives) in the report; 0 = none")
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="Table III and Fig. 4 for evaluated runs, with paired AUC tests")
    p.add_argument("runs", nargs="+", type=Path, help="evaluation folders (or run folders with evaluation/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="synthetic cohort -> 4 trainings -> evaluation -> comparison report")
    p.add_argument("--out", type=Path, default=Path("mucosa-demo"))
    p.add_argument("--quick", action="store_true", help="a seconds-long variant (tests)")
    p.add_argument("--config", type=Path, default=Path("configs/cpu-quick.yaml"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("predict", help="predict images, folders, videos or a manifest: per frame, file and case")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image, video, folder or manifest CSV")
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    p.add_argument("--out", type=Path, default=Path("mucosa-predictions"), help="output folder")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx with a checkpoint exports it on the fly (an .onnx file always uses onnx)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability from which a case is positive")
    p.add_argument("--cache", type=Path, default=None, help="reuse and fill this preprocessing cache")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("stream", help="run a video frame by frame: live status, timeline, annotated video")
    p.add_argument("video", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--realtime", action="store_true", help="pace at the video's frame rate (default: as fast "
                   "as possible)")
    p.add_argument("--window", type=int, default=16, help="informative frames in the moving mean (default 16)")
    p.add_argument("--timeline", type=Path, help="CSV with one row per frame")
    p.add_argument("--annotate", type=Path, metavar="OUT_MP4", help="write the video with the verdict burned in")
    p.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlay in the annotated video")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: all cores but one, which decodes the next frames)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (parity-checked; int8 optional)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, default=None, help="default: the checkpoint's name with .onnx")
    p.add_argument("--int8", action="store_true", help="static int8 quantization calibrated on --manifest")
    p.add_argument("--manifest", type=Path, help="frames for int8 calibration, agreement and AUC change")
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="feature maps (the paper's Fig. 3) and Grad-CAM for images or video frames")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_VIDEO")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and explain.csv")
    p.add_argument("--frames", default=None,
                   help="video frames to explain: every:K, A-B, A-B:K or K (default: the --top most confident)")
    p.add_argument("--top", type=int, default=None,
                   help="per video, explain the N most confident (of the --frames) frames (default 4 without --frames)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="web service and viewer: REST API under /v1, viewer at /, docs at /docs")
    p.add_argument("--checkpoint", type=Path, required=True, help="a mucosa checkpoint (.ckpt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require this bearer token on the API (or set MUCOSA_TOKEN)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder whose files clients may open by path (POST /v1/cases {\"path\": ...})")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest upload accepted (default 500)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if PyTorch sees one), cpu, cuda or cuda:N")
    p.add_argument("--queue", type=int, default=8, help="cases that may wait for the background worker")
    p.add_argument("--threshold", type=float, default=0.5, help="probability from which a case is positive")
    p.add_argument("--window", type=int, default=16, help="informative frames in the smoothed probability")
    p.add_argument("--onnx", type=Path, default=None,
                   help="predict with this export of the checkpoint (mucosa export, e.g. --int8); Grad-CAM "
                   "still uses the checkpoint")
    p.add_argument("--parallel", type=int, default=None,
                   help="model calls run side by side, each on cores/N threads (default: one per CPU core)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model on a cohort (PyTorch Lightning)")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except MucosaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
