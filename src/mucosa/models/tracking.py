"""What a run records as it trains: the experiment log and the choice of its best checkpoint.

* :class:`RunCSVLogger` is Lightning's ``CSVLogger`` writing ``metrics.csv`` straight into the run folder:
  one row per logged epoch event (``epoch`` counts from 0, as in Lightning), with ``train_loss``,
  ``val_loss``, ``val_auc``, ``val_acc`` and ``epoch_seconds``. The file is rewritten atomically after
  every epoch and continues across ``--resume``; rows of epochs that will be trained again (logged
  before a crash, after the checkpoint resumed from) are dropped, so no epoch appears twice.
  :func:`epoch_metrics` reads it back, one dict per epoch. ``training.logger: tensorboard`` or
  ``mlflow`` logs to those as well (optional extras).
* :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` that keeps its record of the best score when
  the run folder was moved or copied (Lightning forgets it when the absolute folder changes, and the
  next epoch, however poor, replaced ``best.ckpt``), and never chooses a checkpoint on an undefined
  (NaN or infinite) score.
"""

from __future__ import annotations

import csv
import importlib
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mucosa.atomic import write_text
from mucosa.errors import ConfigError

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
_EXTRAS = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def _epoch_of(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("epoch") or "nan"))
    except (TypeError, ValueError, OverflowError):
        return None


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if _epoch_of(row) is not None and None not in row]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = sorted(set().union(*rows), key=lambda k: (k not in ("epoch", "step"), k != "epoch", k))
    text = io.StringIO()
    writer = csv.DictWriter(text, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def keep_epochs(path: Path, last: int) -> None:
    """Drop the rows of epochs after ``last`` (0-based; -1 drops all) from a metrics file, atomically."""
    rows = _read_rows(path)
    kept = [row for row in rows if _epoch_of(row) <= last]
    if not kept:
        path.unlink(missing_ok=True)
    elif len(kept) != len(rows) or path.read_text().count("\n") != len(rows) + 1:
        _write_rows(path, kept)


class _MetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing the run's file instead of deleting it, writing it atomically."""

    def __init__(self, log_dir: str, keep_through_epoch: int) -> None:
        self.keep_through_epoch = keep_through_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        keep_epochs(Path(self.metrics_file_path), self.keep_through_epoch)

    def save(self) -> None:
        if self.metrics:
            path = Path(self.metrics_file_path)
            _write_rows(path, _read_rows(path) + self.metrics)
            self.metrics = []


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` into ``run/metrics.csv``, flushed at every epoch, continuing a resumed run's file.

    Args:
        keep_through_epoch: rows of later epochs (0-based) already in the file are dropped: -1 for a new
            run, the resumed checkpoint's epoch for ``--resume``.
    """

    def __init__(self, run: Path, keep_through_epoch: int = -1) -> None:
        super().__init__(save_dir=run, name="", version="", flush_logs_every_n_steps=1)
        self.run, self.keep_through_epoch = Path(run), keep_through_epoch

    @property
    def log_dir(self) -> str:
        return str(self.run)

    @property
    @rank_zero_experiment
    def experiment(self) -> _MetricsWriter:
        if self._experiment is None:
            self.run.mkdir(parents=True, exist_ok=True)
            self._experiment = _MetricsWriter(self.log_dir, self.keep_through_epoch)
        return self._experiment

    def log_hyperparams(self, params: Any = None) -> None:
        """Nothing: the run's settings are in config.yaml and in every checkpoint."""


def require_logger(name: str) -> None:
    """Raise ConfigError when the package behind ``training.logger`` is not installed."""
    for module in _EXTRAS.get(name, ()):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue
    if name in _EXTRAS:
        raise ConfigError(f"training.logger: {name} needs the optional {name} package, which is not installed: "
                          f"pip install 'mucosa[{name}]' (or use --logger csv)")


def make_loggers(name: str, run: Path, keep_through_epoch: int = -1) -> list:
    """metrics.csv in the run folder, plus TensorBoard (``run/tensorboard``) or MLflow (``run/mlruns``, or
    ``$MLFLOW_TRACKING_URI``) when ``name`` asks for it."""
    require_logger(name)
    loggers: list = [RunCSVLogger(run, keep_through_epoch)]
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=run, name="tensorboard", version="", default_hp_metric=False))
    elif name == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name="mucosa", run_name=run.name,
                                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                    save_dir=str(run / "mlruns")))
    return loggers


def epoch_metrics(run: str | Path) -> list[dict[str, float]]:
    """The run's ``metrics.csv`` as one dict per epoch (``epoch`` and ``step`` ints, ``epoch`` from 0), the
    rows of an epoch merged."""
    epochs: dict[int, dict[str, float]] = {}
    for row in _read_rows(Path(run) / METRICS):
        merged = epochs.setdefault(_epoch_of(row), {})
        merged.update({k: int(float(v)) if k in ("epoch", "step") else float(v)
                       for k, v in row.items() if v not in ("", None)})
    return [epochs[e] for e in sorted(epochs)]


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str) and value and os.path.dirname(value) == old:
        return os.path.join(new, os.path.basename(value))
    return value


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose best score survives a moved or copied run folder; it never chooses a
    checkpoint on a NaN or infinite score."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state, old = dict(state_dict), state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:  # the run folder was moved or copied
            log.info("run folder moved from %s to %s: checkpoint records follow it", old, self.dirpath)
            state = {k: _rebase(v, old, self.dirpath) for k, v in state.items()}
            state["best_k_models"] = {_rebase(k, old, self.dirpath): v
                                      for k, v in (state_dict.get("best_k_models") or {}).items()}
            state["dirpath"] = self.dirpath
        super().load_state_dict(state)

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            log.warning("%s is %s at epoch %d: undefined, so it does not choose a checkpoint",
                        self.monitor, float(current), trainer.current_epoch + 1)
            return False
        return super().check_monitor_top_k(trainer, current)


def fit_trainer(trainer, *args, **kwargs) -> None:
    """``trainer.fit(*args, **kwargs)``, where Ctrl-C ends as ``KeyboardInterrupt`` (the CLI's exit status 130).

    Lightning answers Ctrl-C with its graceful shutdown and then ``sys.exit(1)``, which would end ``mucosa
    train`` and ``mucosa pretrain`` with the status of a failed ``mucosa check``, and leaves SIGINT ignored
    for the rest of the process (a Python session calling ``mucosa.train``); both are undone here.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:  # Lightning's sys.exit(1) after a KeyboardInterrupt
            raise KeyboardInterrupt from None
        raise
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def check_nodes_started(num_nodes: int, environment) -> None:
    """Refuse several nodes where nothing starts the other machines (``environment``: Lightning's cluster
    environment): without SLURM, torchrun or Lightning's NODE_RANK and MASTER_ADDR, rank 0 would wait for nodes
    that never come (up to a day in ``mucosa predict``, half an hour in training), printing nothing.

    Raises:
        ConfigError: naming the ways to start them.
    """
    import os

    from lightning.fabric.plugins.environments import LightningEnvironment

    manual = any(os.environ.get(name) for name in ("NODE_RANK", "MASTER_ADDR"))
    if num_nodes > 1 and type(environment) is LightningEnvironment and not manual:
        raise ConfigError(f"num_nodes {num_nodes}: no SLURM job or torchrun started the other machines, and nothing "
                          "else will: run under srun or torchrun (README: Several GPUs, nodes, SLURM and torchrun), "
                          "or set NODE_RANK and MASTER_ADDR on each machine")
