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
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mucosa.atomic import write_text
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import assemble
from mucosa.data.ingest import refuse_suspicious_classes, restrict_classes
from mucosa.data.manifest import Cohort, load_manifest
from mucosa.data.pseudonyms import Pseudonym, key_check, pseudonymise_cohort, pseudonymiser, restore_split
from mucosa.data.splits import split_cohort
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import (
    check_encoder,
    describe,
    non_finite_weights,
    trained_classes,
    transferable_weights,
)
from mucosa.models.config import RunConfig, load_config, override
from mucosa.models.dataset import FrameDataset, case_sampler, frame_loader, make_augmentation
from mucosa.models.networks import create_model
from mucosa.models.tracking import fit_trainer, require_logger
from mucosa.models.trainer import (
    RunModule,
    RunPlan,
    TrainingDivergedError,
    check_hardware_settings,
    check_resumable_folder,
    make_trainer,
    prepare_fit,
    resumable_checkpoint,
)

log = logging.getLogger(__name__)


class FrameClassifierModule(RunModule):
    """The LightningModule that trains a frame classifier: the model, its loss and validation metrics (ROC
    AUC, accuracy, loss). Not the :class:`mucosa.Classifier` that a trained checkpoint is loaded into."""

    def __init__(self, config: RunConfig, classes: list[str], class_counts: list[int], description: dict,
                 record_samples: bool = False, pretrained: bool | None = None) -> None:
        import torchmetrics

        super().__init__(config, description, pretrained)
        self.classes = classes
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        weights = counts.sum() / (len(counts) * counts) if config.training.class_weights else torch.ones_like(counts)
        self.register_buffer("class_weights", weights, persistent=False)
        binary = len(classes) == 2
        task = {"task": "binary"} if binary else {"task": "multiclass", "num_classes": len(classes)}
        self.val_auc = torchmetrics.AUROC(**task)
        self.val_acc = torchmetrics.Accuracy(**task, **({} if binary else {"average": "micro"}))
        self.record_samples, self.seen = record_samples, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.model_input(x))

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
        self.check_loss(loss, "training loss", batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        if self.record_samples:
            self.seen += position.tolist()
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.check_loss(loss, "validation loss", batch_idx)
        probs = self.probabilities(logits)
        self.val_auc.update(probs, y)
        self.val_acc.update(probs, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val_auc", self.val_auc.compute(), prog_bar=True, sync_dist=False)
        self.log("val_acc", self.val_acc.compute(), prog_bar=True, sync_dist=False)
        self.val_auc.reset()
        self.val_acc.reset()

    def on_train_epoch_start(self) -> None:
        self.epoch_start = time.time()

    def on_train_epoch_end(self) -> None:
        """Runs before this epoch's checkpoints are written: the weights must still be finite (they are the
        same on every process, so each decides alone)."""
        bad = non_finite_weights(self.model.state_dict())
        self.stop_if(bool(bad), f"the weights of {', '.join(bad[:3])} hold NaN or infinite values", sync=False)
        if hasattr(self, "epoch_start"):
            self.log("epoch_seconds", time.time() - self.epoch_start, sync_dist=False)

    def on_train_end(self) -> None:
        if self.record_samples:
            out = Path(self.trainer.default_root_dir) / f"samples-rank{self.global_rank}.json"
            out.write_text(json.dumps(self.seen))


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


def plan_run(manifest: str | Path | Cohort, config: RunConfig, out: Path, cache: FrameCache | None = None,
             presplit: bool = False, classes: list[str] | None = None, progress: bool = True) -> RunPlan:
    """Validate inputs, split the cohort and prepare frames; raises a clear error before any training.

    Args:
        manifest: the manifest CSV, or a cohort already read.
        presplit: take the manifest's split column as it is (a resumed run's ``split.csv``).
        classes: train on these classes only, in this order (the last of two is the positive class);
            without them, labels that look like typos or near-empty classes are a ConfigError.
    """
    create_model(config.model, pretrained=False)  # size and kind problems surface here, naming the minimum size
    require_logger(config.training.logger)
    check_hardware_settings(config)
    cohort = manifest if isinstance(manifest, Cohort) else load_manifest(manifest)
    if classes:
        cohort = restrict_classes(cohort, classes)
    elif not presplit:
        refuse_suspicious_classes(cohort)
    if len(cohort.classes) < 2:
        raise ConfigError(f"{cohort.source}: training needs at least two labels; found {cohort.classes}")
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


def make_loaders(plan: RunPlan) -> tuple[DataLoader, DataLoader | None]:
    t, table = plan.config.training, plan.table
    augment = make_augmentation(plan.config.augmentation, plan.config.model.size, t.seed)
    train_set = FrameDataset(table, plan.parts["train"], augment)
    sampler = case_sampler(table, plan.parts["train"], t.frames_per_case, t.seed)
    train = frame_loader(train_set, t, sampler, shuffle=True)
    val = frame_loader(FrameDataset(table, plan.parts["val"]), t) if len(plan.parts["val"]) else None
    return train, val


def _description(plan: RunPlan, pseudonym: Pseudonym | None) -> dict:
    """The model card; ``pseudonym``: its patients and manifest as pseudonyms, with the key's check."""
    name = pseudonym or str
    patients = {side: sorted({name(r.patient) for r in plan.cohort.records if r.split == side})
                for side in ("train", "val", "test")}
    s = plan.config.split
    split = {"mode": s.mode, "seed": s.seed, "test": s.test, "val": s.val, "k": s.k, "fold": s.fold,
             "manifest": name(str(plan.cohort.source)), "patients": patients}
    if pseudonym is not None:
        split["pseudonym_key_check"] = key_check(pseudonym)
    return describe(plan.config.model, plan.cohort.classes, plan.config.preprocessing, plan.config.to_dict(),
                    split)


def fit(plan: RunPlan, resume: Path | None = None, initial: tuple[dict, dict] | None = None,
        record_samples: bool = False, resumed_epoch: int = -1, progress: bool = True,
        pseudonym: Pseudonym | None = None) -> Path:
    """Train (or continue from ``resume``, a last.ckpt of epoch ``resumed_epoch``) and return the path of the
    best checkpoint (``pseudonym``: the model card names patients by these pseudonyms).

    Raises:
        TrainingDivergedError: a loss or weight stopped being finite (nothing of that epoch is saved).
    """
    prepare_fit(plan.config)
    train_loader, val_loader = make_loaders(plan)
    counts = np.bincount(plan.table.labels[plan.parts["train"]], minlength=len(plan.cohort.classes))
    pretrained = False if resume or initial else None  # the weights resumed or initialised from replace ImageNet's
    module = FrameClassifierModule(plan.config, plan.cohort.classes, counts.tolist(), _description(plan, pseudonym),
                                   record_samples, pretrained)
    if initial is not None:  # weights from --init-from (the rest keeps this run's seeded initialisation)
        module.model.load_state_dict({**module.model.state_dict(), **initial[0]})
        module.description["init_from"] = initial[1]  # the model card records what was transferred
    trainer = make_trainer(plan, val_loader is not None, keep_through_epoch=resumed_epoch if resume else -1,
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
          progress: bool = True, allow_partial_init: bool = False, pseudonym_key: str | None = None) -> Path:
    """Split, prepare and train (``classes``: the classes to use, in order; ``progress``: show progress
    bars); returns the best checkpoint's path. ``init_from``: a checkpoint or pretrained encoder whose
    matching weights start the model (``checkpoint.initialise_from``; ``allow_partial_init``: also when less
    than half of the feature layers' weights fit). ``pseudonym_key``: the run's files (split.csv, run.json,
    the model card) name patients, files and paths by keyed pseudonyms (``data.pseudonyms``); resume and
    :func:`run_split` need the original manifest and the same key."""
    out = Path(out)
    if (out / "last.ckpt").exists():
        raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    initial = None
    if init_from is not None:  # a damaged, diverged or unfitting checkpoint is refused before any work
        check_encoder(init_from, config.model)
        initial = transferable_weights(create_model(config.model, pretrained=False), Path(init_from),
                                       allow_partial_init)
    plan = plan_run(manifest, config, out, cache, classes=classes, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    plan.config.save(out / "config.yaml")
    # run_folder: where split.csv's relative paths were written from, so that a run moved alone still finds
    # its data (data.manifest.load_manifest tries there after the CSV's own folder)
    about = {"manifest": str(Path(manifest).resolve()), "run_folder": str(out.resolve()),
             "init_from": str(init_from) if init_from else None}
    pseudonym = pseudonymiser(pseudonym_key) if pseudonym_key else None
    if pseudonym is None:
        plan.cohort.to_csv(out / "split.csv")
    else:  # no patient id, file or path in the run's files: the key finds them again in the manifest
        pseudonymise_cohort(plan.cohort, pseudonym, Path(manifest).parent, out).to_csv(out / "split.csv")
        about = {**{k: v and pseudonym(v) for k, v in about.items()}, "run_folder": None,
                 "pseudonym_key_check": key_check(pseudonym)}
        if initial is not None:
            initial[1]["source"] = pseudonym(initial[1]["source"])
    write_text(out / "run.json", json.dumps(about, indent=1))
    return fit(plan, initial=initial, record_samples=record_samples, progress=progress, pseudonym=pseudonym)


def run_split(run: str | Path, manifest: str | Path | None = None, pseudonym_key: str | None = None
              ) -> tuple[Path | Cohort, Pseudonym | None]:
    """A run's split, to read its frames: its ``split.csv``, or for a run trained with a pseudonym key, the
    rows of the original ``manifest`` found again with that key (then the key's pseudonymiser too).

    Raises:
        ConfigError: a pseudonymised run without the manifest or the key, or with another key or manifest.
    """
    run = Path(run)
    try:
        about = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        about = {}
    check = about.get("pseudonym_key_check") if isinstance(about, dict) else None
    if not check:
        if pseudonym_key:
            raise ConfigError(f"{run} was not trained with --pseudonymise: resume it without --pseudonymise")
        return run / "split.csv", None
    if manifest is None or not pseudonym_key:
        raise ConfigError(f"{run} was trained with --pseudonymise: give the manifest it was trained on (--manifest) "
                          "and its --pseudonym-key, to find its patients again")
    pseudonym = pseudonymiser(pseudonym_key)
    if key_check(pseudonym) != check:
        raise ConfigError(f"{run}: --pseudonym-key is not the key this run was trained with")
    split = load_manifest(run / "split.csv", check_files=False)
    return restore_split(split, load_manifest(manifest), pseudonym, str(run / "split.csv")), pseudonym


def _refuse_other_monitor(state: dict, config: RunConfig, last: Path) -> None:
    """A ``config.yaml`` whose ``training.monitor`` was edited after ``last.ckpt`` was written would make
    Lightning drop the best score and the patience silently (its callback states are keyed by the monitor)."""
    monitors = {s.get("monitor") for s in (state.get("callbacks") or {}).values() if isinstance(s, dict)} - {None}
    if monitors and config.training.monitor not in monitors:
        raise ConfigError(f"{last}: trained with training.monitor {', '.join(sorted(map(str, monitors)))}, but "
                          f"config.yaml now says {config.training.monitor}; restore it, or start a new run")


FIXED_SECTIONS = ("model", "preprocessing", "split")  # what a resumed run cannot change: the model and its data


def _refuse_changed_settings(state: dict, config: RunConfig, last: Path) -> None:
    """A ``config.yaml`` edited after ``last.ckpt`` was written in a setting the run cannot change (the model,
    its preprocessing or its split): one line naming the setting, both values and what to do."""
    recorded = (state.get("mucosa") or {}).get("config")
    if not isinstance(recorded, dict):
        return
    now = config.to_dict()
    for section in FIXED_SECTIONS:
        before, after = recorded.get(section) or {}, now.get(section) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                raise ConfigError(f"{last.parent / 'config.yaml'}: {section}.{key} is {after.get(key)!r} but the run "
                                  f"was trained with {before.get(key)!r}, and a resumed run cannot change its "
                                  f"{section}: restore it, or start a new run with --out")


def resume(run: str | Path, cache: FrameCache | None = None, manifest: str | Path | None = None,
           pseudonym_key: str | None = None) -> Path:
    """Continue an interrupted run from its ``last.ckpt`` (the split is read back from ``split.csv``; for a run
    trained with a pseudonym key, found again in the original ``manifest`` with that key: :func:`run_split`)."""
    run = Path(run)
    last = run / "last.ckpt"
    check_resumable_folder(run, ["config.yaml", "last.ckpt"])
    split, pseudonym = run_split(run, manifest, pseudonym_key)
    config = load_config(run / "config.yaml")
    state, epoch = resumable_checkpoint(last)
    _refuse_other_monitor(state, config, last)
    _refuse_changed_settings(state, config, last)
    # the classes in the order the run learnt them (--classes may have set another than the manifest's)
    classes = trained_classes(state, last)
    del state
    plan = plan_run(split, config, run, cache, presplit=True, classes=classes)
    log.info(f"resuming {run} after epoch {epoch + 1} of {config.training.epochs}")
    return fit(plan, resume=last, resumed_epoch=epoch, pseudonym=pseudonym)
