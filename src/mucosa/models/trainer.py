"""The Lightning machinery that supervised training (:mod:`mucosa.models.training`) and SimCLR pretraining
(:mod:`mucosa.models.pretraining`) both run on.

* :class:`RunPlan`: everything a run needs, checked before any training work starts.
* :func:`check_hardware_settings`: refuses, before any work, settings Lightning cannot run with here.
* :func:`prepare_fit`: Lightning's needless messages hidden (:func:`quiet_lightning`), the seed and the
  number of CPU threads set.
* :func:`make_trainer`: the Lightning trainer of a run folder: ``best.ckpt`` and ``last.ckpt``, early
  stopping, the loggers (``metrics.csv``, :mod:`mucosa.models.tracking`) and atomic checkpoint writes
  (:class:`AtomicCheckpointIO`).
* :class:`RunModule`: the LightningModule both modules build on: the model, Adam, the stop on a loss that
  is not finite (:class:`TrainingDivergedError`), glibc's allocator kept from page-faulting on every CPU step
  (:meth:`RunModule.keep_freed_memory`) and the model card written into every checkpoint.
* :func:`resumable_checkpoint`: the ``last.ckpt`` a ``--resume`` continues from, checked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mucosa import atomic
from mucosa.allocator import mallopt
from mucosa.data.frame_table import FrameTable
from mucosa.data.manifest import Cohort
from mucosa.errors import ConfigError, MucosaError
from mucosa.models.checkpoint import CheckpointFileError, read_checkpoint_file, refuse_non_finite
from mucosa.models.config import RunConfig
from mucosa.models.networks import create_model
from mucosa.models.tracking import METRICS, RunCheckpoint, check_nodes_started, keep_epochs, make_loggers

__all__ = ["AtomicCheckpointIO", "RunModule", "RunPlan", "TrainingDivergedError", "check_hardware_settings",
           "check_resumable_folder", "make_trainer", "prepare_fit", "quiet_lightning", "resumable_checkpoint"]

log = logging.getLogger(__name__)


class TrainingDivergedError(MucosaError):
    """The loss or the weights stopped being finite: the model diverged and training was stopped."""


@dataclass
class RunPlan:
    """Everything a run needs, checked before any training work starts."""

    config: RunConfig
    cohort: Cohort  # with the split column
    table: FrameTable
    parts: dict[str, np.ndarray]  # "train"/"val" → table positions
    out: Path


class RunModule(L.LightningModule):
    """What a training and a pretraining module share: the model (``config.model``, in channels-last layout
    where ``training.channels_last``), Adam, the divergence stop, the allocator setting on CPU and
    ``description`` (the model card) in every checkpoint.

    ``activity`` names the run in the message of :class:`TrainingDivergedError`.
    """

    activity = "training"

    def __init__(self, config: RunConfig, description: dict, pretrained: bool | None = None) -> None:
        super().__init__()
        self.config, self.description = config, description
        self.model = create_model(config.model, pretrained)
        if config.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout of the model (channels last where ``training.channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.config.training.channels_last else x

    def stop_if(self, bad: bool, problem: str, batch_idx: int | None = None, sync: bool = True) -> None:
        """Raise TrainingDivergedError on every process when any process found ``bad``.

        ``sync``: ask the other processes (a collective call: only at points every process reaches in the same
        order, such as each step; not at epoch ends, where rank 0 alone syncs metrics for its progress bar).
        """
        if sync and self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        if bad:
            where = f"epoch {self.current_epoch + 1}" + ("" if batch_idx is None else f", batch {batch_idx + 1}")
            raise TrainingDivergedError(
                f"{self.activity} stopped at {where}: {problem}: the model diverged (training.lr = "
                f"{self.config.training.lr:g}; try a lower one). No checkpoint of this epoch was written")

    def check_loss(self, loss: torch.Tensor, what: str, batch_idx: int) -> None:
        """Stop (:meth:`stop_if`) when ``loss`` (named ``what``) is not finite."""
        value = float(loss.detach())
        self.stop_if(not math.isfinite(value), f"the {what} is {value}", batch_idx)

    def configure_optimizers(self):
        t = self.config.training
        return torch.optim.Adam(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":
            self.keep_freed_memory(True)

    def on_fit_end(self) -> None:
        if self.device.type == "cpu":
            self.keep_freed_memory(False)

    @staticmethod
    def keep_freed_memory(keep: bool) -> bool:
        """Make glibc's malloc keep and reuse freed memory (``keep``), or go back to its default limits.

        By default glibc serves every block over 128 KiB with a fresh ``mmap`` and unmaps it on free, so each
        training step page-faults its ~2 GB of activations back in: over a third of a 300x300 fp32 step on
        the 2-core VM (5.5 -> 8.7 images/s, docs/performance.md). Keeping them in the heap (no mmap, trim
        only above 2 GiB) costs peak memory (1.6 -> 2.0-2.5 GB there). Returns whether the settings took
        (glibc on Linux only).
        """
        if keep:
            return mallopt(mmap_max=0, trim_threshold=2**31 - 1)
        return mallopt(mmap_max=65536, trim_threshold=128 * 1024)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mucosa"] = self.description


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O: atomic local writes (``atomic.write_torch``), ``weights_only=True`` loading.

    A checkpoint that cannot be written (a full disk) leaves the run as its last saved epoch: ``metrics.csv``
    keeps no row of an epoch whose model was never saved, and the error's advice fits what is left (continue
    with ``--resume``, or, where no epoch was saved, start again).
    """

    def __init__(self, saved_epoch: int = -1) -> None:
        self.saved_epoch = saved_epoch  # the epoch of the run's last.ckpt (-1: none yet)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        try:
            atomic.write_torch(checkpoint, path)
        except (atomic.WriteError, OSError) as error:
            try:  # no row of an epoch whose model was never saved (the file shrinks: it fits where it was)
                keep_epochs(path.parent / METRICS, self.saved_epoch)
            except (atomic.WriteError, OSError) as trim:
                log.warning("%s: rows of unsaved epochs could not be dropped (%s)", METRICS, trim)
            hint = ("the previous checkpoint is unchanged: free space, then continue with --resume"
                    if self.saved_epoch >= 0 else "no epoch of this run was saved: free space, then start it again")
            why = error if isinstance(error, atomic.WriteError) else f"cannot write {path}: {error.strerror or error}"
            raise atomic.WriteError(f"{why}; {hint}") from None
        if path.name == "last.ckpt" and isinstance(checkpoint.get("epoch"), int):
            self.saved_epoch = checkpoint["epoch"]

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint_file(path, map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


def _trainer_error(error: Exception, config: RunConfig) -> ConfigError:
    t = config.training
    lines = str(error).strip().splitlines()
    return ConfigError(f"training settings accelerator {t.accelerator}, devices {t.devices}, num_nodes {t.num_nodes}, "
                       f"strategy {t.strategy}, precision {t.precision}: Lightning cannot use them here "
                       f"({lines[0][:300] if lines else type(error).__name__})")


_TRAINER_ERRORS = (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError)


def check_hardware_settings(config: RunConfig) -> None:
    """Raise ConfigError, before any work, when Lightning cannot run with these accelerator, devices,
    strategy and precision settings on this machine (no GPU, strategy package missing...)."""
    t = config.training
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                            precision=t.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
    except _TRAINER_ERRORS as error:
        raise _trainer_error(error, config) from None
    finally:
        quiet.setLevel(level)
    check_nodes_started(t.num_nodes, getattr(trainer.strategy, "cluster_environment", None))


def quiet_lightning() -> None:
    """Hide Lightning's advertising tips and warnings that say nothing about the user's run."""
    import warnings

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def prepare_fit(config: RunConfig) -> None:
    """Before a run builds its module: Lightning quiet, every random generator seeded with ``training.seed``
    (data-loading workers too), and ``training.threads`` CPU threads where set."""
    t = config.training
    quiet_lightning()
    L.seed_everything(t.seed, workers=True, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)


def make_trainer(plan: RunPlan, has_val: bool, keep_through_epoch: int = -1, progress: bool = True) -> L.Trainer:
    """The Lightning trainer of a run; ``keep_through_epoch``: the resumed checkpoint's epoch (-1: new run)."""
    from lightning.pytorch.callbacks import EarlyStopping

    t = plan.config.training
    # Two checkpoints: "best" by training.monitor (validation AUC or loss) and "last" after every epoch (for
    # --resume). Lightning's own save_last only writes when the best one changed, which would lose epochs on
    # a kill. "best" comes first, so that last.ckpt records this epoch's best score. Without validation data
    # "best" is the last epoch's checkpoint, copied when training ends.
    callbacks = [RunCheckpoint(dirpath=plan.out, filename="last", save_top_k=1, enable_version_counter=False)]
    mode = "max" if t.monitor == "val_auc" else "min"
    if has_val:
        callbacks.insert(0, RunCheckpoint(dirpath=plan.out, filename="best", save_top_k=1, monitor=t.monitor,
                                          mode=mode, enable_version_counter=False))
    if t.early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=mode, patience=t.early_stopping))
    return L.Trainer(default_root_dir=plan.out, max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices,
                     num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision, callbacks=callbacks,
                     logger=make_loggers(t.logger, plan.out, keep_through_epoch),
                     plugins=[AtomicCheckpointIO(keep_through_epoch)],
                     enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                     enable_progress_bar=progress)


def check_resumable_folder(run: Path, names: list[str], what: str = "run") -> None:
    """Raise ConfigError when the run folder lacks one of the files ``names`` a resume needs (``what``: the
    kind of run that writes them)."""
    if not all((run / name).is_file() for name in names):
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        raise ConfigError(f"{run}: nothing to resume (needs {listed} from a {what} that finished at least one epoch)")


def resumable_checkpoint(last: Path) -> tuple[dict[str, Any], int]:
    """The state of a run's ``last.ckpt`` and the epoch it ended (counting from 0).

    Raises:
        CheckpointFileError: damaged, with weights that are not finite, or not written at the end of an epoch.
    """
    state = read_checkpoint_file(last)
    refuse_non_finite(state["state_dict"], last)
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointFileError(f"{last}: not a checkpoint written at the end of an epoch (epoch {epoch!r:.40})")
    return state, epoch
