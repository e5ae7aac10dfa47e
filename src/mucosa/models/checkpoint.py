"""Self-describing checkpoints: weights + model config + classes + preprocessing + split, in one file.

Training writes Lightning checkpoints with an extra ``"mucosa"`` entry of plain types (see
:func:`describe`), so every later step (evaluate, predict, stream, export) rebuilds the model and its
preprocessing from that one file. Files are written atomically and read with ``weights_only=True``:
nothing a user hands us is ever unpickled.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from mucosa._version import __version__
from mucosa.data.preparation import Preprocessing
from mucosa.errors import MucosaError
from mucosa.models.networks import ModelConfig, create_model

FORMAT = "mucosa-checkpoint"
FORMAT_VERSION = 1


class CheckpointFileError(MucosaError):
    """A file is not a mucosa checkpoint, or one this version cannot read."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A process killed at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # temporary files are private; checkpoints are not
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def describe(model_config: ModelConfig, classes: list[str], prep: Preprocessing, run_config: dict,
             split: dict) -> dict[str, Any]:
    """The ``"mucosa"`` entry of a checkpoint: everything needed to rebuild model and preprocessing."""
    from dataclasses import asdict

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mucosa_version": __version__,
            "model": asdict(model_config), "classes": list(classes), "preprocessing": prep.to_dict(),
            "config": run_config, "split": split}


def read_checkpoint_file(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointFileError(f"{path}: not a readable PyTorch checkpoint, or it holds objects that are not "
                                  f"plain data and were refused for safety ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointFileError(f"{path}: not a training checkpoint (no state_dict)")
    return data


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with what describes it."""

    model: torch.nn.Module
    model_config: ModelConfig
    classes: list[str]
    preprocessing: Preprocessing
    info: dict[str, Any]
    path: Path

    @property
    def positive(self) -> str | None:
        return self.classes[-1] if len(self.classes) == 2 else None


def _dataclass_from(cls, values: dict, path: Path):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (in eval mode) and its preprocessing from one checkpoint file.

    Raises:
        CheckpointFileError: not a checkpoint, not a mucosa checkpoint, or from an incompatible version.
    """
    path = Path(path)
    data = read_checkpoint_file(path, map_location)
    info = data.get("mucosa")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointFileError(f"{path}: not a mucosa checkpoint (no 'mucosa' description inside)")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointFileError(f"{path}: written by mucosa {info.get('mucosa_version')} in checkpoint format "
                                  f"{info['format_version']}; this is mucosa {__version__} (format "
                                  f"{FORMAT_VERSION}); upgrade mucosa to read it")
    model_config = _dataclass_from(ModelConfig, info["model"], path)
    prep = _dataclass_from(Preprocessing, info["preprocessing"], path)
    model = create_model(model_config)
    state = {k.removeprefix("model."): v for k, v in data["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointFileError(f"{path}: weights do not fit the described model ({str(error)[:300]})") from None
    model.eval()
    return LoadedCheckpoint(model, model_config, list(info["classes"]), prep, info, path)
