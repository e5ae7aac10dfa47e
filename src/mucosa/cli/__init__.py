"""The ``mucosa`` command: a thin layer over the library (heavy imports happen inside each subcommand).

One module per group of commands, each adding its subcommands with ``add_parser``: :mod:`~mucosa.cli.data`,
:mod:`~mucosa.cli.training`, :mod:`~mucosa.cli.evaluation`, :mod:`~mucosa.cli.inference`,
:mod:`~mucosa.cli.atlas`, :mod:`~mucosa.cli.service` and :mod:`~mucosa.cli.store`; :mod:`~mucosa.cli.options`
holds the options several commands share and :mod:`~mucosa.cli.checks` the option types and exit statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from mucosa import __version__
from mucosa.cli import atlas, checks, data, evaluation, inference, service, store, training

__all__ = ["build_parser", "main"]

GROUPS = (data, training, evaluation, inference, atlas, service, store)  # in the order of the work


def build_parser() -> argparse.ArgumentParser:
    """The ``mucosa`` parser: every group's subcommands; ``--debug`` is also taken after a command's name."""
    parser = argparse.ArgumentParser(
        prog="mucosa", description="Computer-aided confirmation of mucosal healing from confocal laser "
        "endomicroscopy (CLE).")
    parser.add_argument("--version", action="version", version=f"mucosa {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (also MUCOSA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a progress line, which is drawn again
    print(f"{clear}warning: {message}", file=sys.stderr)


class _Console(logging.StreamHandler):
    """The library's INFO messages (``logging``) on the current standard output, as plain lines."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stdout)
        super().emit(record)


def main(argv: list[str] | None = None) -> int:
    """Run ``mucosa`` with ``argv``; returns the exit status (:mod:`mucosa.cli.checks` lists them), never raises."""
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
