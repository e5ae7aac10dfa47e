"""Training on PyTorch Lightning: the flow is :func:`train` → ``plan_run`` → ``fit``.

A run folder holds ``config.yaml`` (the resolved configuration), ``split.csv`` (the manifest with the
split used), ``run.json`` (inputs), ``metrics.csv`` (Lightning's CSV logger: training and validation
metrics per epoch, see :mod:`mucosa.models.tracking`), ``best.ckpt`` (best ``training.monitor``: validation
ROC AUC, or loss) and
``last.ckpt`` (end of the latest finished epoch, for ``--resume``). ``mucosa train`` and ``mucosa.train``
then add ``best.onnx`` and ``best.int8.onnx`` (:mod:`mucosa.inference.onnx_files`, a layer above this one),
recorded in ``best.ckpt``'s model card.

Training refuses what cannot give a trustworthy model: a validation part without every class (its ROC
AUC, which chooses ``best.ckpt``, is undefined) is refused before any frame is prepared, and a loss or
weight that stops being finite stops training with :class:`TrainingDivergedError` before a checkpoint of
that epoch is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from mucosa import atomic
from mucosa.allocator import mallopt
from mucosa.data.cache import FrameCache
from mucosa.data.ingest import refuse_suspicious_classes, restrict_classes
from mucosa.data.manifest import Cohort, load_manifest
from mucosa.data.splits import split_cohort
from mucosa.data.table import FrameTable, assemble
from mucosa.errors import ConfigError, MucosaError
from mucosa.models.checkpoint import (
    CheckpointFileError,
    check_encoder,
    describe,
    initialise_from,
    model_weights,
    non_finite_weights,
    read_checkpoint_file,
    refuse_non_finite,
    trained_classes,
)
from mucosa.models.config import RunConfig, load_config, override
from mucosa.models.dataset import (
    CaseSampler,
    FrameDataset,
    make_augmentation,
    worker_init,
)
from mucosa.models.networks import create_model
from mucosa.models.tracking import RunCheckpoint, check_nodes_started, fit_trainer, make_loggers, require_logger


class TrainingDivergedError(MucosaError):
    """The loss or the weights stopped being finite: the model diverged and training was stopped."""

log = logging.getLogger(__name__)


class Classifier(L.LightningModule):
    """The model, its loss and validation metrics (ROC AUC, accuracy, loss)."""

    def __init__(self, config: RunConfig, classes: list[str], class_counts: list[int], description: dict,
                 record_samples: bool = False, pretrained: bool | None = None) -> None:
        super().__init__()
        import torchmetrics

        self.config, self.classes, self.description = config, classes, description
        self.model = create_model(config.model, pretrained)
        if config.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        weights = counts.sum() / (len(counts) * counts) if config.training.class_weights else torch.ones_like(counts)
        self.register_buffer("class_weights", weights, persistent=False)
        binary = len(classes) == 2
        task = {"task": "binary"} if binary else {"task": "multiclass", "num_classes": len(classes)}
        self.val_auc = torchmetrics.AUROC(**task)
        self.val_acc = torchmetrics.Accuracy(**task, **({} if binary else {"average": "micro"}))
        self.record_samples, self.seen = record_samples, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.training.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(self.classes) == 2:  # one logit: BCE, with the positive class weighted against the negative
            pos_weight = self.class_weights[1] / self.class_weights[0]
            return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=pos_weight)
        return F.cross_entropy(logits, y, weight=self.class_weights)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) positive-class probability for two classes, (B, K) softmax otherwise."""
        return torch.sigmoid(logits[:, 0]) if len(self.classes) == 2 else logits.softmax(-1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, position = batch
        loss = self.loss(self(x), y)
        self._check_loss(loss, "training loss", batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        if self.record_samples:
            self.seen += position.tolist()
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self._check_loss(loss, "validation loss", batch_idx)
        probs = self.probabilities(logits)
        self.val_auc.update(probs, y)
        self.val_acc.update(probs, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val_auc", self.val_auc.compute(), prog_bar=True, sync_dist=False)
        self.log("val_acc", self.val_acc.compute(), prog_bar=True, sync_dist=False)
        self.val_auc.reset()
        self.val_acc.reset()

    def _stop_if(self, bad: bool, problem: str, batch_idx: int | None = None, sync: bool = True) -> None:
        """Raise TrainingDivergedError on every process when any process found ``bad``.

        ``sync``: ask the other processes (a collective call: only at points every process reaches in the same
        order, such as each step; not at epoch ends, where rank 0 alone syncs metrics for its progress bar).
        """
        if sync and self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        if bad:
            where = f"epoch {self.current_epoch + 1}" + ("" if batch_idx is None else f", batch {batch_idx + 1}")
            raise TrainingDivergedError(
                f"training stopped at {where}: {problem}: the model diverged (training.lr = "
                f"{self.config.training.lr:g}; try a lower one). No checkpoint of this epoch was written")

    def _check_loss(self, loss: torch.Tensor, what: str, batch_idx: int) -> None:
        value = float(loss.detach())
        self._stop_if(not math.isfinite(value), f"the {what} is {value}", batch_idx)

    def on_train_epoch_start(self) -> None:
        self.epoch_start = time.time()

    def on_train_epoch_end(self) -> None:
        """Runs before this epoch's checkpoints are written: the weights must still be finite (they are the
        same on every process, so each decides alone)."""
        bad = non_finite_weights(self.model.state_dict())
        self._stop_if(bool(bad), f"the weights of {', '.join(bad[:3])} hold NaN or infinite values", sync=False)
        if hasattr(self, "epoch_start"):
            self.log("epoch_seconds", time.time() - self.epoch_start, sync_dist=False)

    def configure_optimizers(self):
        t = self.config.training
        return torch.optim.Adam(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":
            self._keep_freed_memory(True)

    def on_fit_end(self) -> None:
        if self.device.type == "cpu":
            self._keep_freed_memory(False)

    @staticmethod
    def _keep_freed_memory(keep: bool) -> bool:
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

    def on_train_end(self) -> None:
        if self.record_samples:
            out = Path(self.trainer.default_root_dir) / f"samples-rank{self.global_rank}.json"
            out.write_text(json.dumps(self.seen))


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O: atomic local writes (``atomic.write_torch``), ``weights_only=True`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        hint = "the previous checkpoint is unchanged: free space, then continue with --resume"
        try:
            atomic.write_torch(checkpoint, path)
        except atomic.WriteError as error:
            raise atomic.WriteError(f"{error}; {hint}") from None
        except OSError as error:
            raise atomic.WriteError(f"cannot write {path}: {error.strerror or error}; {hint}") from None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint_file(path, map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


@dataclass
class RunPlan:
    """Everything a run needs, checked before any training work starts."""

    config: RunConfig
    cohort: Cohort  # with the split column
    table: FrameTable
    parts: dict[str, np.ndarray]  # "train"/"val" → table positions
    out: Path


def _counts(classes: list[str], labels: list[str] | np.ndarray) -> str:
    found = list(labels)
    return ", ".join(f"{c}: {found.count(c)}" for c in classes)


def _check_validation(classes: list[str], labels: list[str], unit: str) -> None:
    """A validation part must hold every class: with fewer, its ROC AUC (which chooses best.ckpt) is undefined."""
    if labels and set(classes) - set(labels):
        raise ConfigError(f"the validation part holds {unit} of {len(set(labels))} of the {len(classes)} classes "
                          f"({_counts(classes, labels)}): its ROC AUC, which chooses best.ckpt, would be undefined; "
                          "choose a split whose validation patients cover every class (another split.seed, a larger "
                          "split.val, more patients) or train without validation (split.val: 0)")


def _check_parts(cohort: Cohort, val: bool) -> None:
    """Before any frame is prepared: a training part with every class, a validation part with every class
    (``val``: one is asked for)."""
    for side in ("train", "val"):
        labels = [r.label for r in cohort.records if r.split == side]
        if not labels and (side == "train" or val):
            raise ConfigError(f"the {side} part of the split is empty: check the split settings "
                              f"(mode, test, val) against the cohort's {len(cohort.patients)} patients")
        missing = [c for c in cohort.classes if c not in labels]
        if side == "train" and missing:
            raise ConfigError(f"class(es) {', '.join(missing)} have no images in the training part; every class "
                              "needs training patients (use a stratified split or add patients)")
        if side == "val":
            _check_validation(cohort.classes, labels, "images or videos")


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
    import logging

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


def plan_run(manifest: str | Path, config: RunConfig, out: Path, cache: FrameCache | None = None,
             presplit: bool = False, classes: list[str] | None = None, progress: bool = True) -> RunPlan:
    """Validate inputs, split the cohort and prepare frames; raises a clear error before any training.

    Args:
        presplit: take the manifest's split column as it is (a resumed run's ``split.csv``).
        classes: train on these classes only, in this order (the last of two is the positive class);
            without them, labels that look like typos or near-empty classes are a ConfigError.
    """
    create_model(config.model, pretrained=False)  # size and kind problems surface here, naming the minimum size
    require_logger(config.training.logger)
    check_hardware_settings(config)
    cohort = load_manifest(manifest)
    if classes:
        cohort = restrict_classes(cohort, classes)
    elif not presplit:
        refuse_suspicious_classes(cohort)
    if len(cohort.classes) < 2:
        raise ConfigError(f"{manifest}: training needs at least two labels; found {cohort.classes}")
    config = override(config, "model", num_classes=len(cohort.classes))  # 3+ labels: a softmax head
    s = config.split
    mode = "manifest" if presplit else s.mode
    result = split_cohort(cohort, mode, test=s.test, val=s.val, k=s.k, fold=s.fold, seed=s.seed)
    log.info(result.report)
    split = result.cohort
    _check_parts(split, s.val > 0)
    table = assemble(Cohort([r for r in split.records if r.split in ("train", "val")], split.classes,
                            split.source), config.preprocessing, cache, progress=progress)
    log.info(table.summary())
    sides = np.array([table.cohort.records[r].split for r in table.row])
    parts = {side: np.flatnonzero(sides == side) for side in ("train", "val")}
    train_labels = set(table.labels[parts["train"]].tolist())
    if len(train_labels) < len(split.classes):
        raise ConfigError("after the quality gate a class has no training frames; lower quality_threshold")
    _check_validation(split.classes, [split.classes[i] for i in table.labels[parts["val"]]],
                      "frames (after the quality gate)")
    return RunPlan(config, split, table, parts, out)


def _loaders(plan: RunPlan) -> tuple[DataLoader, DataLoader | None]:
    t, table = plan.config.training, plan.table
    augment = make_augmentation(plan.config.augmentation, plan.config.model.size, t.seed)
    train_set = FrameDataset(table, plan.parts["train"], augment)
    sampler = None
    if t.frames_per_case > 0:
        cases = np.array([str(table.cohort.records[r].path) + table.cohort.records[r].patient
                          for r in table.row[plan.parts["train"]]])
        sampler = CaseSampler(cases, t.frames_per_case, t.seed)
    common = {"batch_size": t.batch_size, "num_workers": t.workers, "persistent_workers": t.workers > 0,
              "worker_init_fn": worker_init if t.workers else None}
    train = DataLoader(train_set, shuffle=sampler is None, sampler=sampler, **common)
    val = (DataLoader(FrameDataset(table, plan.parts["val"]), shuffle=False, **common)
           if len(plan.parts["val"]) else None)
    return train, val


def _description(plan: RunPlan) -> dict:
    patients = {side: sorted({r.patient for r in plan.cohort.records if r.split == side})
                for side in ("train", "val", "test")}
    s = plan.config.split
    split = {"mode": s.mode, "seed": s.seed, "test": s.test, "val": s.val, "k": s.k, "fold": s.fold,
             "manifest": str(plan.cohort.source), "patients": patients}
    return describe(plan.config.model, plan.cohort.classes, plan.config.preprocessing, plan.config.to_dict(),
                    split)


def _trainer(plan: RunPlan, has_val: bool, keep_through_epoch: int = -1, progress: bool = True) -> L.Trainer:
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
                     logger=make_loggers(t.logger, plan.out, keep_through_epoch), plugins=[AtomicCheckpointIO()],
                     enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                     enable_progress_bar=progress)


def _quiet_lightning() -> None:
    """Hide Lightning's advertising tips and warnings that say nothing about the user's run."""
    import logging
    import warnings

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def fit(plan: RunPlan, resume: Path | None = None, init_from: Path | None = None,
        record_samples: bool = False, resumed_epoch: int = -1, progress: bool = True) -> Path:
    """Train (or continue from ``resume``, a last.ckpt of epoch ``resumed_epoch``) and return the path of the
    best checkpoint.

    Raises:
        TrainingDivergedError: a loss or weight stopped being finite (nothing of that epoch is saved).
    """
    t = plan.config.training
    _quiet_lightning()
    L.seed_everything(t.seed, workers=True, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    train_loader, val_loader = _loaders(plan)
    counts = np.bincount(plan.table.labels[plan.parts["train"]], minlength=len(plan.cohort.classes))
    module = Classifier(plan.config, plan.cohort.classes, counts.tolist(), _description(plan), record_samples,
                        pretrained=False if resume or init_from else None)  # those weights replace ImageNet's
    if init_from is not None:
        initialise_from(module.model, init_from)
    trainer = _trainer(plan, val_loader is not None, keep_through_epoch=resumed_epoch if resume else -1,
                       progress=progress)
    fit_trainer(trainer, module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    best = plan.out / "best.ckpt"
    if val_loader is None and trainer.is_global_zero:
        import shutil

        shutil.copyfile(plan.out / "last.ckpt", plan.out / ".best.ckpt.tmp")
        os.replace(plan.out / ".best.ckpt.tmp", best)
    if trainer.is_global_zero and not best.is_file():
        raise TrainingDivergedError(f"{plan.out}: no epoch had a defined {plan.config.training.monitor}, so no "
                                    "best.ckpt was chosen; see metrics.csv")
    return best


def train(manifest: str | Path, config: RunConfig, out: str | Path, init_from: str | Path | None = None,
          cache: FrameCache | None = None, record_samples: bool = False, classes: list[str] | None = None,
          progress: bool = True) -> Path:
    """Split, prepare and train (``classes``: the classes to use, in order; ``progress``: show progress
    bars); returns the best checkpoint's path."""
    out = Path(out)
    if (out / "last.ckpt").exists():
        raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if init_from is not None:
        model_weights(init_from)  # a damaged or diverged checkpoint is refused before any work
        check_encoder(init_from, config.model)  # an encoder of another model kind or size too
    plan = plan_run(manifest, config, out, cache, classes=classes, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    plan.config.save(out / "config.yaml")
    plan.cohort.to_csv(out / "split.csv")
    (out / "run.json").write_text(json.dumps({"manifest": str(Path(manifest).resolve()),
                                              "init_from": str(init_from) if init_from else None}, indent=1))
    return fit(plan, init_from=Path(init_from) if init_from else None, record_samples=record_samples,
               progress=progress)


def _refuse_other_monitor(state: dict, config: RunConfig, last: Path) -> None:
    """A ``config.yaml`` whose ``training.monitor`` was edited after ``last.ckpt`` was written would make
    Lightning drop the best score and the patience silently (its callback states are keyed by the monitor)."""
    monitors = {s.get("monitor") for s in (state.get("callbacks") or {}).values() if isinstance(s, dict)} - {None}
    if monitors and config.training.monitor not in monitors:
        raise ConfigError(f"{last}: trained with training.monitor {', '.join(sorted(map(str, monitors)))}, but "
                          f"config.yaml now says {config.training.monitor}; restore it, or start a new run")


def resume(run: str | Path, cache: FrameCache | None = None) -> Path:
    """Continue an interrupted run from its ``last.ckpt`` (the split is read back from ``split.csv``)."""
    run = Path(run)
    last = run / "last.ckpt"
    if not (run / "config.yaml").is_file() or not last.is_file():
        raise ConfigError(f"{run}: nothing to resume (needs config.yaml and last.ckpt from a run that finished "
                          "at least one epoch)")
    config = load_config(run / "config.yaml")
    state = read_checkpoint_file(last)
    refuse_non_finite(state["state_dict"], last)
    _refuse_other_monitor(state, config, last)
    # the classes in the order the run learnt them (--classes may have set another than the manifest's)
    classes = trained_classes(state, last)
    plan = plan_run(run / "split.csv", config, run, cache, presplit=True, classes=classes)
    epoch = state.get("epoch")
    del state
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointFileError(f"{last}: not a checkpoint written at the end of an epoch (epoch {epoch!r:.40})")
    log.info(f"resuming {run} after epoch {epoch + 1} of {config.training.epochs}")
    return fit(plan, resume=last, resumed_epoch=epoch)
