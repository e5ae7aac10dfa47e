"""Run configuration: plain dataclasses read from YAML (``yaml.safe_load``: a config never runs code).

A config file has up to five sections; anything left out keeps its default::

    model:         {kind: cnn-lstm, size: 300, conv_dropout: 0.25, dense_dropout: 0.5}
    preprocessing: {crop: auto, channel: auto, quality_threshold: 0.5}
    split:         {mode: patient, test: 0.2, val: 0.2, k: 5, fold: 0, seed: 0}
    training:      {epochs: 200, batch_size: 16, lr: 0.001, ...}
    augmentation:  {rotate: 20, translate: 0.1, shear: 0.1, zoom: 0.1, flip: true}

The input size is ``model.size``; preprocessing always resizes to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mucosa.data.preparation import Preprocessing
from mucosa.errors import ConfigError
from mucosa.models.networks import ModelConfig


@dataclass
class SplitConfig:
    """How the cohort is divided (see ``mucosa.data.splits``); ``val`` is a share of the training part."""

    mode: str = "patient"
    test: float = 0.2
    val: float = 0.2
    k: int = 5
    fold: int = 0
    seed: int = 0


@dataclass
class TrainingConfig:
    """Optimisation and run settings."""

    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    class_weights: bool = False      # weight the loss by inverse class frequency
    early_stopping: int = 0          # patience in epochs on validation AUC; 0 = off
    frames_per_case: int = 0         # per epoch, at most this many frames of one video/patient (0 = all)
    seed: int = 0
    threads: int = 0                 # torch intra-op threads; 0 = all cores
    workers: int = 0                 # data-loading processes
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    channels_last: bool = True


@dataclass
class AugmentationConfig:
    """MONAI random affine (the paper's rotation, translation, shear, zoom) plus flips."""

    rotate: float = 20.0      # degrees, +-
    translate: float = 0.1    # share of the side, +-
    shear: float = 0.1
    zoom: float = 0.1         # scale 1 +- zoom
    flip: bool = True
    probability: float = 0.8  # chance that the affine is applied to an image


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    split: SplitConfig = field(default_factory=SplitConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self) -> None:
        if self.preprocessing.size != self.model.size:
            self.preprocessing = replace(self.preprocessing, size=self.model.size)

    def to_dict(self) -> dict[str, Any]:
        data = {name: asdict(getattr(self, name)) for name in _SECTIONS}
        data["preprocessing"] = self.preprocessing.to_dict()
        del data["preprocessing"]["size"]  # always model.size
        return data

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


BUILTIN = Path(__file__).parent / "configs"
_SECTIONS = {"model": ModelConfig, "preprocessing": Preprocessing, "split": SplitConfig,
             "training": TrainingConfig, "augmentation": AugmentationConfig}


def _section(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping of settings, not {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(**values)


def config_from_dict(data: dict | None, where: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts, naming the file and key of any unknown setting."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sections {', '.join(_SECTIONS)}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
    sections = {name: _section(cls, data.get(name) or {}, f"{where} [{name}]") for name, cls in _SECTIONS.items()}
    model, prep = sections["model"], sections["preprocessing"]
    if "size" in (data.get("preprocessing") or {}) and prep.size != model.size:
        raise ConfigError(f"{where}: preprocessing.size {prep.size} differs from model.size {model.size}; "
                          "set model.size only")
    return RunConfig(**sections)


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config (``None`` gives the defaults; ``configs/NAME.yaml`` also finds the shipped ones)."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file() and (BUILTIN / f"{path.stem}.yaml").is_file() and path.parent == Path("configs"):
        path = BUILTIN / f"{path.stem}.yaml"  # configs/NAME.yaml from any folder: the copy shipped with mucosa
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (shipped configs: "
                          f"{', '.join('configs/' + p.name for p in sorted(BUILTIN.glob('*.yaml')))})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    return config_from_dict(data, str(path))


def override(config: RunConfig, section: str, **values: Any) -> RunConfig:
    """A copy of ``config`` with the given settings of one section changed (``None`` values are ignored)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return config
    data = config.to_dict()
    data[section].update(values)
    return config_from_dict(data, f"option --{section}")
