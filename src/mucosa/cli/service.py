"""``mucosa serve``: its options and command (the web service and viewer, ``mucosa.service``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Add ``serve`` to the ``mucosa`` subcommands."""
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

