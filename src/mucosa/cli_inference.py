"""``mucosa predict``, ``stream`` and ``serve``: their options and commands, and the options that every command
which runs a model shares (``--device``, ``--runtime``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mucosa import cli_checks as checks
from mucosa.atomic import check_writable_folder

RUNTIME_HELP = ("auto (default): on a CPU, ONNX Runtime with the int8 model beside the checkpoint when its card says "
                "it passed the agreement and AUC bounds, else best.onnx, else an export made in memory; PyTorch on a "
                "GPU. torch, or onnx (fp32). An .onnx file always runs on ONNX Runtime")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``, for every command that runs a model."""
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")


def open_cache(folder: Path | None):
    """The preprocessing cache, its folder checked before the work."""
    from mucosa.data.cache import FrameCache

    cache = FrameCache(folder)
    check_writable_folder(cache.root, "cache folder")
    return cache


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
                     cache=cache, threads=args.threads, progress=_progress, device=args.device, processes=processes)
    if result is None:  # one of several processes, not rank 0: rank 0 writes and reports
        return checks.EXIT_OK
    print(format_cases(result))
    print(f"per frame: {args.out / 'predictions.csv'}; per file: files.csv; per case: cases.csv")
    if result.unreadable:
        print(f"{len(result.unreadable)} of {result.total} files unreadable (left out of the outputs; named "
              "above)", file=sys.stderr)
        return checks.EXIT_PARTIAL
    return checks.EXIT_OK


def cmd_stream(args: argparse.Namespace) -> None:
    from mucosa.inference.stream import check_outputs, run

    check_outputs(args.video, args.timeline, args.annotate)
    summary = run(args.checkpoint, args.video, runtime=args.runtime, window=args.window, realtime=args.realtime,
                  timeline=args.timeline, annotate=args.annotate, threshold=args.threshold,
                  gradcam=not args.no_gradcam, threads=args.threads, device=args.device)
    print(summary.format())


def cmd_serve(args: argparse.Namespace) -> None:
    from mucosa.errors import MucosaError

    try:
        from mucosa.service.server import serve
    except ImportError as error:
        raise MucosaError(f"mucosa serve needs FastAPI and uvicorn: pip install 'mucosa[serve]' ({error})") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.checkpoint, host=args.host, port=args.port, token=args.token, data_root=args.data_root,
          max_upload_mb=args.max_upload_mb, device=args.device, queue=args.queue, threshold=args.threshold,
          window=args.window, parallel=args.parallel, onnx=args.onnx)


def add_inference_parsers(sub) -> None:
    """Add ``predict``, ``stream`` and ``serve`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("predict", help="predict images, folders, videos or a manifest: per frame, file and case")
    add_device_option(p)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image, video, folder or manifest CSV")
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    p.add_argument("--out", type=Path, default=Path("mucosa-predictions"), help="output folder")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help=RUNTIME_HELP)
    p.add_argument("--threshold", type=checks.threshold, default=0.5,
                   help="probability in [0, 1] from which a case is positive")
    p.add_argument("--cache", type=Path, default=None, help="reuse and fill this preprocessing cache")
    p.add_argument("--threads", type=checks.integer(1), default=None,
                   help="inference threads of each process (default: all cores, shared out among the processes)")
    g = p.add_argument_group("several processes, GPUs or nodes (Lightning DDP; README: clusters)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    g.add_argument("--devices", type=checks.devices, default=1,
                   help="processes (devices) per node; 1 (default): this process alone")
    g.add_argument("--num-nodes", type=checks.integer(1), default=1, help="machines (e.g. SLURM nodes)")
    g.add_argument("--strategy", choices=["auto", "ddp"], default="auto", help="auto means ddp")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("stream", help="run a video frame by frame: live status, timeline, annotated video")
    add_device_option(p)
    p.add_argument("video", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint, or an .onnx model from export")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help=RUNTIME_HELP)
    p.add_argument("--realtime", action="store_true", help="pace at the video's frame rate (default: as fast "
                   "as possible)")
    p.add_argument("--window", type=checks.integer(1), default=16,
                   help="informative frames in the moving mean (default 16)")
    p.add_argument("--timeline", type=Path, help="CSV with one row per frame")
    p.add_argument("--annotate", type=Path, metavar="OUT_MP4", help="write the video with the verdict burned in")
    p.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlay in the annotated video")
    p.add_argument("--threshold", type=checks.threshold, default=0.5, help="probability in [0, 1]")
    p.add_argument("--threads", type=checks.integer(1), default=None,
                   help="inference threads (default: all cores but one, which decodes the next frames)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("serve", help="web service and viewer: REST API under /v1, viewer at /, docs at /docs")
    p.add_argument("--checkpoint", type=Path, required=True, help="a mucosa checkpoint (.ckpt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require this bearer token on the API (or set MUCOSA_TOKEN)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder whose files clients may open by path (POST /v1/cases {\"path\": ...})")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest upload accepted (default 500)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if PyTorch sees one), cpu, cuda or cuda:N")
    p.add_argument("--queue", type=int, default=8,
                   help="cases that may wait for the background worker, uploads still arriving included")
    p.add_argument("--threshold", type=float, default=0.5, help="probability from which a case is positive")
    p.add_argument("--window", type=int, default=16, help="informative frames in the smoothed probability")
    p.add_argument("--onnx", type=Path, default=None,
                   help="predict with this export of the checkpoint (mucosa export, e.g. --int8); Grad-CAM "
                   "still uses the checkpoint")
    p.add_argument("--parallel", type=int, default=None,
                   help="model calls run side by side, each on cores/N threads (default: one per CPU core)")
    p.set_defaults(func=cmd_serve)
