"""Self-supervised pretraining of a model's encoder on unlabelled CLE frames (``mucosa pretrain``): SimCLR.

SimCLR (Chen et al. 2020): every frame is augmented twice; each view goes through the encoder, a global
average pool and a projection head (Linear-ReLU-Linear), and the NT-Xent loss (:func:`nt_xent`) pulls the
two views of a frame together and pushes the other frames of the batch away. The encoder is the model's
``forward_features``: for the paper's CNN-LSTM and CNN the conv stack (Conv1..Pool2 with its batch norms),
for a timm backbone everything before its head. Its weights go to ``OUT/encoder.ckpt``, which
``mucosa train --init-from`` fine-tunes (the head starts fresh).

The labels are never read: the manifest is read with ``load_manifest(unlabelled=True)``, which needs only
a ``path`` column and gives every row the same placeholder label. Frames come from the training pipeline
(``assemble`` and its cache, ``FrameDataset``, the MONAI augmentation of ``augmentation`` in the config, to
which each view adds a random crop, contrast, blur and noise); the loop is training's Lightning loop
(:mod:`mucosa.models.trainer`: its trainer, ``metrics.csv`` with ``train_loss`` per epoch, atomic
``last.ckpt`` for ``--resume``, the progress bar, divergence stop).

Why not the ``lightly`` library: lightly 1.6 imports torchvision, which cannot be imported beside the
PyTorch build this project is developed on, and the loss it would provide is the few lines of
:func:`nt_xent` (the same definition as lightly's ``NTXentLoss`` without a memory bank). lightly is not a
dependency.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mucosa import atomic
from mucosa._version import __version__
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import assemble
from mucosa.data.manifest import check_parts, load_manifest
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import ENCODER_FORMAT, CheckpointFileError
from mucosa.models.config import RunConfig, load_config
from mucosa.models.dataset import FrameDataset, case_sampler, frame_loader, make_augmentation
from mucosa.models.networks import create_model
from mucosa.models.tracking import fit_trainer
from mucosa.models.trainer import (
    RunModule,
    RunPlan,
    check_hardware_settings,
    check_resumable_folder,
    make_trainer,
    prepare_fit,
    resumable_checkpoint,
)

log = logging.getLogger(__name__)

ENCODER = "encoder.ckpt"
METHOD_KEYS = ("name", "loss", "temperature", "projection_dim", "projection_hidden")  # what a resume must keep
SETTINGS = "pretrain.json"
ENCODER_FORMAT_VERSION = 1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent loss of two batches of projections (B, D) whose rows ``i`` are views of the same frame.

    Each of the 2B views must pick its partner among the 2B - 1 others by cosine similarity / temperature.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature  # (2B, 2B)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def encoder_keys(model: nn.Module) -> tuple[list[str], int]:
    """State-dict keys of the layers ``forward_features`` uses, and its number of output channels.

    Found from one backward pass on a dummy batch in eval mode (nothing of the model changes): a layer is
    part of the encoder when a gradient reaches one of its parameters; its buffers (batch-norm statistics)
    go with it.
    """
    config = model.config
    param = next(model.parameters())
    x = torch.rand(2, config.in_channels, config.size, config.size, dtype=param.dtype, device=param.device)
    params = dict(model.named_parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            features = model.forward_features(x)
            grads = torch.autograd.grad(features.sum(), list(params.values()), allow_unused=True)
    finally:
        model.train(was_training)
    layers = {name.rpartition(".")[0] for name, grad in zip(params, grads) if grad is not None}
    return [k for k in model.state_dict() if k.rpartition(".")[0] in layers], int(features.shape[1])


def view_augmentation(config, size: int, seed: int = 0):
    """One SimCLR view: the training augmentation (``augmentation`` settings), then a random crop of 50-100%
    of each side resized back, contrast (gamma), blur and noise."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleCrop,
        Resize,
    )

    transform = Compose([make_augmentation(config, size, seed),
                         RandScaleCrop(0.5, max_roi_scale=1.0, random_size=True), Resize((size, size)),
                         RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
                         RandGaussianSmooth(prob=0.3, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5)),
                         RandGaussianNoise(prob=0.5, std=0.03)])
    transform.set_random_state(seed=seed)
    return transform


class TwoViews:
    """Frames as ``(view 1, view 2, table position)``; the label the frame dataset carries is dropped."""

    def __init__(self, frames: FrameDataset, augment) -> None:
        self.frames, self.augment = frames, augment

    def __len__(self) -> int:
        return len(self.frames)

    def _view(self, image: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.augment(image)).float().clamp_(0.0, 1.0)

    def __getitem__(self, i: int):
        image, _, position = self.frames[i]
        return self._view(image), self._view(image), position


class Contrastive(RunModule):
    """The model's encoder, a projection head and the NT-Xent loss."""

    activity = "pretraining"

    def __init__(self, config: RunConfig, method: dict[str, Any], description: dict,
                 pretrained: bool | None = None) -> None:
        super().__init__(config, description, pretrained)
        self.method = method
        self.encoder_keys, width = encoder_keys(self.model)
        hidden, out = method["projection_hidden"], method["projection_dim"]
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.model.forward_features(self.model_input(x)).mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x1, x2, _ = batch
        loss = nt_xent(self.embed(x1), self.embed(x2), self.method["temperature"])
        self.check_loss(loss, "loss", batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x1), sync_dist=True)
        return loss

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights, as ``model.KEY`` (the names ``train --init-from`` reads)."""
        state = self.model.state_dict()
        return {f"model.{k}": state[k].detach().cpu().contiguous() for k in self.encoder_keys}


def plan_pretraining(manifest: str | Path, config: RunConfig, out: Path, cache: FrameCache | None = None,
                     parts: list[str] | None = None, progress: bool = True) -> RunPlan:
    """Read the manifest without its labels, keep the rows of ``parts`` (its split column; all rows when
    None), and prepare the frames; raises a clear error before any training."""
    create_model(config.model, pretrained=False)
    check_hardware_settings(config)
    if config.training.batch_size < 2:  # a contrastive batch compares its frames with each other
        raise ConfigError(f"training.batch_size {config.training.batch_size}: contrastive pretraining needs at "
                          "least 2 frames a batch (with 1 the loss is 0 and nothing is learnt)")
    check_parts(parts)  # before reading the manifest
    cohort = load_manifest(manifest, unlabelled=True).parts(parts)
    table = assemble(cohort, config.preprocessing, cache, progress=progress)
    if len(table) < 2:
        raise ConfigError(f"{manifest}: {len(table)} frame(s) after the quality gate; contrastive pretraining needs "
                          "at least 2 (a batch compares frames with each other)")
    log.info(f"pretraining on {len(table)} frames of {len(cohort.records)} files (labels not read)")
    return RunPlan(config, cohort, table, {"train": np.arange(len(table)), "val": np.zeros(0, np.int64)}, out)


def _loader(plan: RunPlan) -> DataLoader:
    t, table = plan.config.training, plan.table
    views = TwoViews(FrameDataset(table, plan.parts["train"]),
                     view_augmentation(plan.config.augmentation, plan.config.model.size, t.seed))
    sampler = case_sampler(table, plan.parts["train"], t.frames_per_case, t.seed)
    count = len(sampler) if sampler is not None else len(views)
    return frame_loader(views, t, sampler, shuffle=True, drop_last=count >= max(t.batch_size, 2))


def _frames_seen(plan: RunPlan, manifest: Path, parts: list[str] | None) -> dict[str, Any]:
    """What the encoder saw: frame and file counts and the manifest's hash (never a patient id or a path)."""
    records = plan.cohort.records
    videos = sum(r.is_video for r in records)
    per_case = plan.config.training.frames_per_case
    per_epoch = len(_loader(plan).sampler) if per_case else len(plan.table)
    return {"frames": len(plan.table), "frames_per_epoch": per_epoch, "files": len(records), "videos": videos,
            "images": len(records) - videos, "manifest_sha256": atomic.file_sha256(manifest),
            "parts": parts or "all rows", "labels_read": False}


def _description(plan: RunPlan, method: dict, frames: dict) -> dict[str, Any]:
    return {"format": ENCODER_FORMAT, "format_version": ENCODER_FORMAT_VERSION, "mucosa_version": __version__,
            "model": plan.config.model.to_dict(), "preprocessing": plan.config.preprocessing.to_dict(),
            "config": plan.config.to_dict(), "method": method, "frames": frames}


def _fit(plan: RunPlan, settings: dict, resume: Path | None = None, resumed_epoch: int = -1,
         progress: bool = True) -> Path:
    prepare_fit(plan.config)
    description = _description(plan, settings["method"], settings["frames"])
    module = Contrastive(plan.config, settings["method"], description, pretrained=False if resume else None)
    trainer = make_trainer(plan, False, keep_through_epoch=resumed_epoch if resume else -1, progress=progress)
    fit_trainer(trainer, module, _loader(plan), ckpt_path=resume, weights_only=True)
    encoder = plan.out / ENCODER
    if trainer.is_global_zero:
        description["method"] = {**settings["method"], "epochs_done": trainer.current_epoch}
        atomic.write_torch({"state_dict": module.encoder_state(), "mucosa": description}, encoder)
        log.info(f"encoder of {len(module.encoder_keys)} tensors -> {encoder}")
    return encoder


def pretrain(manifest: str | Path, config: RunConfig, out: str | Path, cache: FrameCache | None = None,
             parts: list[str] | None = None, temperature: float = 0.2, projection_dim: int = 128,
             progress: bool = True) -> Path:
    """Learn an encoder from the manifest's frames (labels never read); returns ``OUT/encoder.ckpt``.

    Args:
        parts: only the rows whose split column is one of these (e.g. the training folds); None: all rows.
        temperature: of the NT-Xent loss.
        projection_dim: output width of the projection head (its hidden layer is twice as wide).
    """
    out = Path(out)
    if (out / "last.ckpt").exists():
        raise ConfigError(f"{out} already holds a pretraining run; continue it with --resume {out} or choose "
                          "another --out")
    if not 0 < temperature <= 10:
        raise ConfigError(f"--temperature {temperature:g} must be in (0, 10]")
    plan = plan_pretraining(manifest, config, out, cache, parts, progress)
    method = {"name": "simclr", "loss": "nt-xent", "temperature": float(temperature),
              "projection_dim": int(projection_dim), "projection_hidden": 2 * int(projection_dim)}
    settings = {"manifest": str(Path(manifest).resolve()), "parts": parts, "method": method,
                "frames": _frames_seen(plan, Path(manifest), parts)}
    out.mkdir(parents=True, exist_ok=True)
    plan.config.save(out / "config.yaml")
    atomic.write_text(out / SETTINGS, json.dumps(settings, indent=1))
    return _fit(plan, settings, progress=progress)


def _check_resumable(recorded: Any, config: RunConfig, settings: dict, run: Path) -> None:
    """Refuse, in one line, a ``last.ckpt`` that is not this run's: not a pretraining checkpoint, or trained
    with another model or method than ``config.yaml`` and ``pretrain.json`` now say (edited, or copied over)."""
    last = run / "last.ckpt"
    if not isinstance(recorded, dict) or recorded.get("format") != ENCODER_FORMAT:
        raise CheckpointFileError(f"{last}: not a checkpoint of mucosa pretrain (a classifier's, or another "
                                  "program's); start a new run instead of --resume")
    method = settings.get("method") if isinstance(settings.get("method"), dict) else {}
    then = recorded.get("method") if isinstance(recorded.get("method"), dict) else {}
    changed = [f"{name} ({where})" for name, where, now, before in (
        ("model", "config.yaml", config.model.to_dict(), recorded.get("model")),
        ("method", SETTINGS, {k: method.get(k) for k in METHOD_KEYS}, {k: then.get(k) for k in METHOD_KEYS}))
        if now != before]
    if changed:
        raise ConfigError(f"{run}: the {' and '.join(changed)} settings differ from those {last.name} was trained "
                          "with; restore them, or start a new run instead of --resume")


def resume_pretraining(run: str | Path, cache: FrameCache | None = None, progress: bool = True) -> Path:
    """Continue an interrupted ``mucosa pretrain`` run from its ``last.ckpt``."""
    run = Path(run)
    last = run / "last.ckpt"
    check_resumable_folder(run, ["config.yaml", SETTINGS, "last.ckpt"], "pretraining run")
    config = load_config(run / "config.yaml")
    try:
        settings = json.loads((run / SETTINGS).read_text())
        manifest, parts = Path(settings["manifest"]), settings["parts"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{run / SETTINGS}: damaged (not the settings mucosa pretrain wrote)") from None
    state, epoch = resumable_checkpoint(last)
    _check_resumable(state.get("mucosa"), config, settings, run)
    del state
    if not manifest.is_file() or atomic.file_sha256(manifest) != settings["frames"]["manifest_sha256"]:
        raise ConfigError(f"{manifest}: missing or changed since pretraining started; start a new run instead of "
                          "--resume")
    plan = plan_pretraining(manifest, config, run, cache, parts, progress)
    log.info(f"resuming {run} after epoch {epoch + 1} of {config.training.epochs}")
    return _fit(plan, settings, resume=last, resumed_epoch=epoch, progress=progress)
