"""``mucosa serve``: its options and command (the web service and viewer, ``mucosa.service``).

Its settings are :class:`mucosa.service.settings.ServeSettings`: a ``--config`` file's ``serve`` section, then
the flags below (each sets one, ``--port 8080`` is ``--set serve.port=8080``), then every ``--set``. The flags
have no defaults of their own: ``--help`` shows the settings' own.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mucosa.cli.options import Shortcut, add_shortcuts, settings

__all__ = ["SERVE", "add_parser"]

SERVE = {
    "--checkpoint": Shortcut("serve.checkpoint", help="a mucosa checkpoint (.ckpt)"),
    "--host": Shortcut("serve.host", help="address to listen on (0.0.0.0: every network this machine is on; the "
                       "default serves this machine only)"),
    "--port": Shortcut("serve.port", help="port to listen on (0: any free one)"),
    "--token": Shortcut("serve.token", help="a bearer token (16 to 200 characters) of one admin user that only "
                        "this server, while it runs with it, accepts: a laptop's access (default: the MUCOSA_TOKEN "
                        "environment variable, else none; named users come from mucosa users add)"),
    "--data-root": Shortcut("serve.data_root", help="folder whose files clients may open by path "
                            "(POST /v1/cases {\"path\": ...})"),
    "--max-upload-mb": Shortcut("serve.max_upload_mb", help="largest upload accepted, in MB"),
    "--device": Shortcut("serve.device", help="auto (a CUDA GPU if PyTorch sees one), cpu, cuda or cuda:N"),
    "--queue": Shortcut("serve.queue_size", help="cases that may wait for the background worker, uploads still "
                        "arriving included"),
    "--threshold": Shortcut("serve.threshold", help="probability from which a case is positive"),
    "--window": Shortcut("serve.window", help="informative frames in the smoothed probability"),
    "--onnx": Shortcut("serve.onnx", help="predict with this export of the checkpoint (mucosa export, e.g. --int8); "
                       "Grad-CAM still uses the checkpoint"),
    "--parallel": Shortcut("serve.parallel", help="model calls run side by side, each on cores/N threads (unset: one "
                           "per CPU core)"),
    "--store": Shortcut("serve.store", help="the case store: a folder (SQLite) or a postgresql+psycopg://USER@HOST/DB "
                        "URL (unset: $MUCOSA_STORE, else $XDG_DATA_HOME/mucosa/store, ~/.local/share/mucosa/store "
                        "without it)"),
    "--media": Shortcut("serve.media", help="the media folder the servers of a PostgreSQL store share"),
    "--workers": Shortcut("serve.workers", help="case worker threads of this server"),
    "--pseudonymise": Shortcut("serve.pseudonymise", action="store_true", help="every report, timeline.csv and "
                               "similar-cases answer names patients, cases and files by keyed pseudonyms (the viewer "
                               "still shows what was typed)"),
    "--pseudonym-key": Shortcut("serve.pseudonym_key", help="key of the pseudonyms (default: the MUCOSA_PSEUDONYM_KEY "
                                "environment variable, else a random key for the server's life); never printed"),
}


class _Help(argparse.HelpFormatter):
    """Adds each setting's default to its flag's help, read from the settings when the help is printed (so that
    building the parser imports nothing more)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        shortcut = SERVE.get(action.option_strings[0]) if action.option_strings else None
        if shortcut is None or action.help is None:
            return action.help
        from mucosa.service.settings import ServeSettings

        default = ServeSettings.model_fields[shortcut.key.partition(".")[2]].default
        return action.help if default is None else f"{action.help} (default {default})"


def add_parser(sub) -> None:
    """Add ``serve`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("serve", formatter_class=_Help,
                       help="web service and viewer: REST API under /v1, viewer at /, docs at /docs")
    add_shortcuts(p, SERVE, SERVE)
    p.add_argument("--config", type=Path, help="YAML file with a serve section, e.g. 'serve: {port: 8080, "
                   "queue_size: 4}' (the flags and --set override it)")
    p.add_argument("--set", action="append", metavar="serve.KEY=VALUE",
                   help="set any serve setting, e.g. --set serve.queue_size=4 (repeatable; the value is read as YAML)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings (file, flags and --set; the token only as set or unset) and exit")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from mucosa.errors import MucosaError
    from mucosa.service.settings import load_serve_settings

    found, labels = settings(args, SERVE)
    config = load_serve_settings(args.config, found, labels)
    if args.print_config:
        print(config.to_yaml(), end="")
        return
    try:
        import fastapi  # noqa: F401 - the serve extra, imported lazily further in
        import uvicorn  # noqa: F401

        from mucosa.service.server import serve
    except ImportError as error:
        raise MucosaError(f"mucosa serve needs its extra (FastAPI, uvicorn, ReportLab, fastapi-offline): pip install "
                          f"'mucosa[serve]' ({error})") from None
    timestamped = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger("mucosa").handlers:  # the command's one console handler: no second copy
        handler.setFormatter(timestamped)
    serve(config)
