"""``mucosa predict``, ``stream`` and ``export`` (``mucosa.inference``): their options and commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mucosa.atomic import check_writable_folder
from mucosa.choices import STRATEGIES
from mucosa.cli import checks
from mucosa.cli.options import add_device_option, add_runtime_option, open_cache

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Add ``predict``, ``stream`` and ``export`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("predict", help="predict images, folders, videos or a manifest: per frame, file and case")
    add_device_option(p)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image, video, folder or manifest CSV")
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    p.add_argument("--out", type=Path, default=Path("mucosa-predictions"), help="output folder")
    add_runtime_option(p)
    p.add_argument("--threshold", type=checks.threshold, default=0.5,
                   help="probability in [0, 1] from which a case is positive")
    p.add_argument("--cache", type=Path, default=None, help="reuse and fill this preprocessing cache")
    add_atlas_options(p)
    p.add_argument("--threads", type=checks.integer(1), default=None,
                   help="inference threads of each process (default: all cores, shared out among the processes)")
    g = p.add_argument_group("several processes, GPUs or nodes (Lightning DDP; README: clusters)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    g.add_argument("--devices", type=checks.devices, default=1,
                   help="processes (devices) per node; 1 (default): this process alone")
    g.add_argument("--num-nodes", type=checks.integer(1), default=1, help="machines (e.g. SLURM nodes)")
    g.add_argument("--strategy", choices=STRATEGIES, default="auto", help="auto means ddp")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("stream", help="run a video frame by frame: live status, timeline, annotated video")
    add_device_option(p)
    p.add_argument("video", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    add_runtime_option(p)
    p.add_argument("--realtime", action="store_true", help="pace at the video's frame rate (default: as fast "
                   "as possible)")
    p.add_argument("--window", type=checks.integer(1), default=16,
                   help="informative frames in the moving mean (default 16)")
    p.add_argument("--timeline", type=Path, help="CSV with one row per frame")
    p.add_argument("--annotate", type=Path, metavar="OUT_MP4", help="write the video with the verdict burned in")
    p.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlay in the annotated video")
    p.add_argument("--threshold", type=checks.threshold, default=0.5, help="probability in [0, 1]")
    add_atlas_options(p)
    p.add_argument("--threads", type=checks.integer(1), default=None,
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


def add_atlas_options(parser: argparse.ArgumentParser) -> None:
    """``--atlas`` and ``--no-atlas``, for the commands that give verdicts."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--atlas", type=Path, default=None, help="the atlas of confirmed cases to compare with "
                       "(default: atlas/ beside the checkpoint): unfamiliar frames, its vote, similar cases")
    group.add_argument("--no-atlas", action="store_true", help="ask no atlas (no warning that none is beside the "
                       "checkpoint)")


def _progress(done: int, total: int, path) -> None:
    """``mucosa predict``'s progress: a line drawn in place on a terminal; nothing in a log, where it would run
    into the warnings."""
    if sys.stderr.isatty():
        print(f"\rpredicting: {done}/{total} files", end="\n" if done == total else "", file=sys.stderr, flush=True)


def cmd_predict(args: argparse.Namespace) -> int:
    from mucosa.inference.batch import format_cases, predict
    from mucosa.inference.distributed import Processes

    check_writable_folder(args.out)
    cache = open_cache(args.cache) if args.cache else None
    processes = Processes(args.accelerator, args.devices, args.num_nodes, args.strategy)
    result = predict(args.checkpoint, args.paths, args.out, runtime=args.runtime, threshold=args.threshold,
                     cache=cache, threads=args.threads, progress=_progress, device=args.device, processes=processes,
                     atlas=args.atlas, use_atlas=not args.no_atlas)
    if result is None:  # one of several processes, not rank 0: rank 0 writes and reports
        return checks.EXIT_OK
    print(format_cases(result))
    print(f"per frame: {args.out / 'predictions.csv'}; per file: files.csv; per case: cases.csv"
          + ("; similar cases: similar.json" if result.atlas is not None else ""))
    if result.unreadable:
        print(f"{len(result.unreadable)} of {result.total} files unreadable (left out of the outputs; named "
              "above)", file=sys.stderr)
        return checks.EXIT_PARTIAL
    return _unfamiliar_status(len(result.unfamiliar), len(result.cases))


def _unfamiliar_status(unfamiliar: int, cases: int) -> int:
    """EXIT_UNFAMILIAR, with one line saying how many cases, when any case is unfamiliar; else EXIT_OK."""
    if not unfamiliar:
        return checks.EXIT_OK
    print(f"{unfamiliar} of {cases} case{'s' if cases > 1 else ''} unfamiliar: unlike every confirmed case in the "
          "atlas, so the model's probability says nothing about them", file=sys.stderr)
    return checks.EXIT_UNFAMILIAR


def cmd_stream(args: argparse.Namespace) -> int:
    from mucosa.inference.stream import check_outputs, run
    from mucosa.inference.verdict import UNFAMILIAR

    check_outputs(args.video, args.timeline, args.annotate)
    summary = run(args.checkpoint, args.video, runtime=args.runtime, window=args.window, realtime=args.realtime,
                  timeline=args.timeline, annotate=args.annotate, threshold=args.threshold,
                  gradcam=not args.no_gradcam, threads=args.threads, device=args.device, atlas=args.atlas,
                  use_atlas=not args.no_atlas)
    print(summary.format())
    return _unfamiliar_status(int(summary.verdict == UNFAMILIAR), 1)


def cmd_export(args: argparse.Namespace) -> None:
    from mucosa.inference.onnx import export

    cache = open_cache(args.cache) if args.manifest else None
    report = export(args.checkpoint, args.out, int8=args.int8, manifest=args.manifest, cache=cache)
    print(report.format())
