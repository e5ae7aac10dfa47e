"""Self-describing checkpoints: weights + model config + classes + preprocessing + split, in one file.

Training writes Lightning checkpoints with an extra ``"mucosa"`` entry of plain types (see
:func:`describe`), so every later step (evaluate, predict, stream, export) rebuilds the model and its
preprocessing from that one file. Files are written atomically and read with ``weights_only=True``:
nothing a user hands us is ever unpickled.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mucosa import atomic
from mucosa._version import __version__
from mucosa.data.preparation import Preprocessing
from mucosa.errors import ConfigError, MucosaError, first_line
from mucosa.formats import check_version, split_format
from mucosa.models.networks import ModelConfig, create_model

log = logging.getLogger(__name__)

FORMAT = "mucosa-checkpoint"
FORMAT_VERSION = 1
ENCODER_FORMAT = "mucosa-encoder"  # the output of mucosa pretrain (mucosa.models.pretraining)


FORMAT_VERSIONS = (0, 1)  # 0: written before checkpoints recorded their format version
ENCODER_FORMAT_VERSIONS = (1,)


class CheckpointFileError(MucosaError):
    """A file is not a mucosa checkpoint, or one this version cannot read."""


def _versioned(info, family: str, what: str, known: tuple[int, ...], path, default: int | None = None) -> int | None:
    """The format version of a description of ``family`` (``mucosa-checkpoint``, ``mucosa-encoder``), None for a
    description of another format; a version suffix (``mucosa-encoder-99``) or ``format_version`` this mucosa
    does not know is a CheckpointFileError naming the version found and those known."""
    found = split_format(info.get("format") if isinstance(info, dict) else None, family)
    if found is None:
        return None
    version = found[1] if found[1] is not None else info.get("format_version", default)
    return check_version(path, what, version, known, CheckpointFileError)


def encoder_description(info, path) -> dict | None:
    """``info`` when it describes a pretrained encoder (``mucosa pretrain``) of a known format version, None
    when it describes something else; CheckpointFileError for an encoder format this mucosa does not know."""
    if _versioned(info, ENCODER_FORMAT, "encoder", ENCODER_FORMAT_VERSIONS, path) is None:
        return None
    return info


def describe(model_config: ModelConfig, classes: list[str], prep: Preprocessing, run_config: dict,
             split: dict) -> dict[str, Any]:
    """The ``"mucosa"`` entry of a checkpoint: everything needed to rebuild model and preprocessing."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mucosa_version": __version__,
            "model": model_config.to_dict(), "classes": list(classes), "preprocessing": prep.to_dict(),
            "config": run_config, "split": split}


def read_checkpoint_file(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointFileError(f"{path}: a folder, not a checkpoint file (a run folder holds best.ckpt, a "
                                  "pretraining folder encoder.ckpt)")
    if not path.is_file():
        raise CheckpointFileError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: the checkpoint file is empty (0 bytes)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointFileError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged), or it holds "
                                  f"objects that are not plain data and were refused for safety "
                                  f"({first_line(error)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointFileError(f"{path}: not a training checkpoint (no state_dict)")
    return data


def non_finite_weights(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or infinite values."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def refuse_non_finite(state: dict[str, Any], path: Path) -> None:
    """Raise CheckpointFileError when any weight of ``state`` is NaN or infinite (a diverged model)."""
    bad = non_finite_weights(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointFileError(f"{path}: the weights hold NaN or infinite values ({shown}): the model diverged "
                                  "in training and cannot give verdicts; retrain it (lower training.lr)")


def weights_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a model's weights: every tensor's name, dtype, shape and bytes, in name order.

    It ties a file derived from a checkpoint (an ONNX export) to the weights it came from: the rest of the
    checkpoint (optimizer state, the model card) may change without changing it.
    """
    digest = hashlib.sha256()
    for name in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)):
        value = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with what describes it."""

    model: torch.nn.Module
    model_config: ModelConfig
    classes: list[str]
    preprocessing: Preprocessing
    info: dict[str, Any]
    path: Path
    weights_sha256: str = ""  # weights_digest of the model's weights ("" when not computed)

    @property
    def positive(self) -> str | None:
        return self.classes[-1] if len(self.classes) == 2 else None


def _settings_from(cls, info: dict, key: str, path: Path):
    """``cls`` from the checkpoint's description ``info[key]`` (keys this version does not know are left out)."""
    values = info.get(key)
    if not isinstance(values, dict):
        raise CheckpointFileError(f"{path}: the checkpoint's description has no {key} settings")
    try:
        return cls(**{k: v for k, v in values.items() if k in cls.model_fields})
    except ConfigError as error:
        raise CheckpointFileError(f"{path}: invalid {key} settings in the checkpoint: "
                                  + "; ".join(str(error).splitlines())) from None


def trained_classes(state: dict, path: Path) -> list[str]:
    """The classes, in order, of a training checkpoint ``state`` read from ``path`` (its ``"mucosa"`` entry)."""
    info = state.get("mucosa")
    return _classes_from(info if isinstance(info, dict) else {}, path)


def _classes_from(info: dict, path: Path) -> list[str]:
    classes = info.get("classes")
    if (not isinstance(classes, (list, tuple)) or len(classes) < 2 or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)):
        raise CheckpointFileError(f"{path}: the checkpoint does not name its classes (needs two or more distinct "
                                  f"class names, found {classes!r:.80}); it cannot give verdicts")
    return list(classes)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (in eval mode) and its preprocessing from one checkpoint file.

    Raises:
        CheckpointFileError: not a checkpoint (empty, truncated), not a mucosa checkpoint, from an incompatible
            version, without class names, or with NaN or infinite weights.
    """
    path = Path(path)
    data = read_checkpoint_file(path, map_location)
    info = data.get("mucosa")
    if encoder_description(info, path) is not None:
        raise CheckpointFileError(f"{path}: a pretrained encoder (mucosa pretrain), not a classifier: fine-tune it "
                                  "first with mucosa train --init-from")
    if _versioned(info, FORMAT, "checkpoint", FORMAT_VERSIONS, path, default=0) is None:
        raise CheckpointFileError(f"{path}: not a mucosa checkpoint (no 'mucosa' description inside)")
    classes = _classes_from(info, path)
    model_config = _settings_from(ModelConfig, info, "model", path)
    if model_config.num_classes != len(classes):
        raise CheckpointFileError(f"{path}: the model has {model_config.num_classes} classes but the checkpoint "
                                  f"names {len(classes)} ({', '.join(classes)})")
    prep = _settings_from(Preprocessing, info, "preprocessing", path)
    try:
        model = create_model(model_config, pretrained=False)  # the checkpoint's weights: nothing to download
    except MucosaError as error:  # e.g. a timm:NAME model where timm cannot be imported
        raise CheckpointFileError(f"{path}: its {model_config.kind} model cannot be built here: {error}") from None
    state = {k.removeprefix("model."): v for k, v in data["state_dict"].items()
             if isinstance(k, str) and k.startswith("model.")}
    refuse_non_finite(state, path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointFileError(f"{path}: weights do not fit the described model ({str(error)[:300]})") from None
    model.eval()
    return LoadedCheckpoint(model, model_config, classes, prep, info, path, weights_digest(state))


def record_in_card(path: str | Path, key: str, value: Any) -> None:
    """Set ``key`` of the checkpoint's description (its model card) to plain data ``value``, rewriting the
    file atomically; the weights, and so their ``weights_digest``, are unchanged.

    Raises:
        CheckpointFileError: not a mucosa checkpoint. WriteError: the file cannot be rewritten (it is unchanged).
    """
    path = Path(path)
    data = read_checkpoint_file(path)
    if not isinstance(data.get("mucosa"), dict):
        raise CheckpointFileError(f"{path}: not a mucosa checkpoint (no 'mucosa' description inside)")
    data["mucosa"][key] = value
    atomic.write_torch(data, path)


def check_encoder(path: str | Path, model_config: ModelConfig) -> dict[str, Any] | None:
    """The description of a pretrained encoder (``mucosa pretrain``) at ``path``, None for other checkpoints;
    refused with one line when it was pretrained for another model kind, input size or channel count."""
    info = encoder_description(read_checkpoint_file(path).get("mucosa"), path)
    if info is None:
        return None
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    got = (model.get("kind"), model.get("size"), model.get("in_channels"))
    want = (model_config.kind, model_config.size, model_config.in_channels)
    if got != want:
        raise ConfigError(f"{path}: the encoder was pretrained for {got[0]} at {got[1]}x{got[1]} ({got[2]} "
                          f"channel(s)); this run trains {want[0]} at {want[1]}x{want[1]} ({want[2]} channel(s)): set "
                          "model.kind and model.size to match, or pretrain again for this model")
    return info


def model_weights(checkpoint: str | Path, data: dict | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file (or of its contents ``data``), refused when any is NaN or infinite."""
    data = read_checkpoint_file(checkpoint) if data is None else data
    source = {k.removeprefix("model."): v for k, v in data["state_dict"].items()
              if isinstance(k, str) and k.startswith("model.") and isinstance(v, torch.Tensor)}
    if not source:
        raise CheckpointFileError(f"{checkpoint}: holds no model weights")
    refuse_non_finite(source, Path(checkpoint))
    return source


# --init-from refuses (unless allow_partial) when less than this share of the feature layers' weights transfer
MIN_FEATURE_SHARE = 0.5


def _layers(keys) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys})


def transferable_weights(model: torch.nn.Module, checkpoint: Path, allow_partial: bool = False
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of another checkpoint that fit ``model`` by name and shape, or every weight of a pretrained
    encoder (``mucosa pretrain``: refused unless all fit), and the record of what transfers; ``model`` is not
    changed (:func:`initialise_from` loads them).

    Returns:
        the weights, and the record for the run's model card: ``source``, ``encoder``, ``transferred`` and
        ``fresh`` (layer names), ``feature_share`` (the share of the feature layers' weights transferred).

    Raises:
        ConfigError: no weight fits (the checkpoint of another model kind or size), an encoder that does not
            fit whole, or less than :data:`MIN_FEATURE_SHARE` of the feature layers' weights fit and not
            ``allow_partial``.
    """
    data = read_checkpoint_file(checkpoint)
    source = model_weights(checkpoint, data)
    target = model.state_dict()
    fits = [k for k in target if k in source and source[k].shape == target[k].shape]
    what = f"{type(model).__name__} at {model.config.size}x{model.config.size}"
    if not fits:
        expected = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(target.items())[:3])
        raise ConfigError(f"{checkpoint}: none of its weights fit this model ({what}; expected e.g. {expected}): "
                          "a checkpoint of another model kind or input size?")
    encoder = encoder_description(data.get("mucosa"), checkpoint) is not None
    misfit = [k for k in source if k not in target or source[k].shape != target[k].shape]
    if encoder and misfit:
        raise ConfigError(f"{checkpoint}: encoder weights {', '.join(misfit[:3])} do not fit this model ({what})")
    features = [k for k in target if any(k.startswith(name + ".") for name, _ in model.feature_layers())]
    share = sum(k in fits for k in features) / len(features) if features else 1.0
    if share < MIN_FEATURE_SHARE and not allow_partial:
        raise ConfigError(f"{checkpoint}: only {share:.0%} of this model's feature-layer weights fit (layers "
                          f"{', '.join(_layers(fits)) or 'none'}): fine-tuning would start mostly fresh; give "
                          "--allow-partial-init to do so anyway")
    record = {"source": str(checkpoint), "encoder": encoder, "transferred": _layers(fits),
              "fresh": _layers(k for k in target if k not in fits), "feature_share": round(share, 4)}
    log.info("init-from %s: %s transferred (%s); %s start fresh", checkpoint,
             "pretrained encoder" if encoder else f"{len(fits)} of {len(target)} tensors",
             ", ".join(record["transferred"]), ", ".join(record["fresh"]) or "no layer")
    return {k: source[k] for k in fits}, record


def initialise_from(model: torch.nn.Module, checkpoint: Path, allow_partial: bool = False) -> dict[str, Any]:
    """Load :func:`transferable_weights` into ``model``; returns the record of what was transferred."""
    weights, record = transferable_weights(model, checkpoint, allow_partial)
    model.load_state_dict({**model.state_dict(), **weights})
    return record
