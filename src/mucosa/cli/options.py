"""Options that several ``mucosa`` commands share: the flags that set one config value (one table for ``train``
and ``pretrain``, read back by one settings function), ``--device`` and ``--runtime`` of the commands that run a
model, and the preprocessing cache."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mucosa.atomic import check_writable_folder
from mucosa.choices import LOGGERS, RUNTIMES
from mucosa.cli import checks
from mucosa.data.pseudonyms import KEY_VARIABLE
from mucosa.data.splits import MODES
from mucosa.errors import ConfigError

__all__ = ["RUNTIME_HELP", "SHORTCUTS", "Shortcut", "add_device_option", "add_pseudonym_options",
           "add_runtime_option", "add_shortcuts", "open_cache", "parts", "settings"]

RUNTIME_HELP = ("auto (default): on a CPU, ONNX Runtime with the int8 model beside the checkpoint when its card says "
                "it passed the agreement and AUC bounds, else best.onnx, else an export made in memory; PyTorch on a "
                "GPU. torch, or onnx (fp32). An .onnx file always runs on ONNX Runtime")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``, for every command that runs a model."""
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")


PSEUDONYM_KEY_ENV = KEY_VARIABLE


def add_pseudonym_options(parser: argparse.ArgumentParser, key_help: str = "default: random, not stored") -> None:
    """``--pseudonymise`` and ``--pseudonym-key``, for every command whose outputs may name patients or paths."""
    parser.add_argument("--pseudonymise", action="store_true", help="replace patient ids and paths by keyed hashes "
                        "in every output and every line shown")
    parser.add_argument("--pseudonym-key", default=os.environ.get(PSEUDONYM_KEY_ENV) or None,
                        help=f"key of the hash ({key_help}); default ${PSEUDONYM_KEY_ENV}, which keeps the key "
                        "out of the process list and the shell's history")


def add_runtime_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--runtime``, for every command that runs a model (``note`` ends its help)."""
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP + note)


def open_cache(folder: Path | None):
    """The preprocessing cache, its folder checked before the work."""
    from mucosa.data.cache import FrameCache

    cache = FrameCache(folder)
    check_writable_folder(cache.root, "cache folder")
    return cache


def parts(text: str | None) -> list[str] | None:
    """``--parts train,val`` as a list (None when not given; the library refuses names it does not know)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets one config value: ``--epochs 5`` is ``--set training.epochs=5``, checked the same way."""

    key: str  # the setting, SECTION.KEY
    type: Callable[[str], Any] | None = None  # the flag's check (an argparse type)
    help: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    # a rule of the command that the config does not hold (pretrain's batch of 2): also checks --set KEY=VALUE
    checks_set: bool = False


SHORTCUTS = {
    "--model": Shortcut("model.kind", checks.model_kind, "cnn-lstm, cnn or timm:NAME (e.g. timm:resnet18)"),
    "--size": Shortcut("model.size", checks.integer(8), "input side in pixels"),
    "--quality": Shortcut("preprocessing.quality_threshold", checks.number(0, 1),
                          "quality threshold: frames scoring below are dropped"),
    "--split": Shortcut("split.mode", choices=MODES),
    "--test": Shortcut("split.test", checks.number(0, 1)),
    "--val": Shortcut("split.val", checks.number(0, 1), "share of the training part used for validation"),
    "--k": Shortcut("split.k", checks.integer(2)),
    "--fold": Shortcut("split.fold", checks.integer(0)),
    "--split-seed": Shortcut("split.seed", checks.integer(0)),
    "--epochs": Shortcut("training.epochs", checks.integer(1)),
    "--batch-size": Shortcut("training.batch_size", checks.integer(1)),
    "--lr": Shortcut("training.lr", checks.number(0, low_open=True)),
    "--seed": Shortcut("training.seed", checks.integer(0)),
    "--threads": Shortcut("training.threads", checks.integer(0), "torch threads (0 = all cores)"),
    "--workers": Shortcut("training.workers", checks.integer(0), "data-loading processes"),
    "--class-weights": Shortcut("training.class_weights", help="weight the loss by inverse class frequency",
                                action="store_true"),
    "--early-stopping": Shortcut("training.early_stopping", checks.integer(0), "0 = off", metavar="PATIENCE"),
    "--frames-per-case": Shortcut("training.frames_per_case", checks.integer(0),
                                  "at most this many frames of a case per epoch (0 = all)"),
    "--accelerator": Shortcut("training.accelerator", help="cpu, gpu or auto"),
    "--devices": Shortcut("training.devices", checks.training_devices,
                          "device count, -1 (all), auto or ids such as 0,1"),
    "--num-nodes": Shortcut("training.num_nodes", checks.integer(1)),
    "--strategy": Shortcut("training.strategy", help="e.g. ddp"),
    "--precision": Shortcut("training.precision", help="Lightning precision, e.g. 32-true or bf16-mixed"),
    "--logger": Shortcut("training.logger", choices=LOGGERS,
                         help="experiment log besides metrics.csv in the run folder (tensorboard and mlflow are "
                         "optional extras: pip install 'mucosa[tensorboard]')"),
}


def add_shortcuts(parser, flags: Iterable[str], table: dict[str, Shortcut] = SHORTCUTS) -> None:
    """Add these flags of ``table`` to a parser (or an argument group), in this order."""
    for flag in flags:
        options = {name: value for name, value in asdict(table[flag]).items()
                   if value is not None and name not in ("key", "checks_set")}
        parser.add_argument(flag, **options, **({"default": None} if "action" in options else {}))


def settings(args: argparse.Namespace, table: dict[str, Shortcut]) -> tuple[dict, dict]:
    """Settings from the command's shortcut flags, then from every ``--set KEY=VALUE``; and the flag that gave
    each (``{"training.epochs": "--epochs"}``), to name it in an error."""
    from mucosa.models.config import parse_setting

    found, labels = {}, {}
    for flag, shortcut in table.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is not None:
            found[shortcut.key], labels[shortcut.key] = value, flag
    checked = {s.key: s.type for s in table.values() if s.checks_set}
    for text in args.set or []:
        key, value = parse_setting(text)
        if key in checked:
            try:
                checked[key](str(value))
            except argparse.ArgumentTypeError as error:
                raise ConfigError(f"--set {key}: {error}") from None
        found[key], labels[key] = value, f"--set {key}"
    return found, labels
