"""Run configuration: typed settings read from YAML (safely: a config never runs code).

A config file has up to five sections; anything left out keeps its default::

    model:         {kind: cnn-lstm, size: 300, conv_dropout: 0.25, dense_dropout: 0.5}
    preprocessing: {crop: auto, channel: auto, quality_threshold: 0.5}
    split:         {mode: patient, test: 0.2, val: 0.2, k: 5, fold: 0, seed: 0}
    training:      {epochs: 200, batch_size: 16, lr: 0.001, ...}
    augmentation:  {rotate: 20, translate: 0.1, shear: 0.1, zoom: 0.1, flip: true}

Every value is type- and range-checked when the file is read, before any work; each problem is one line
with its key path (``training.epochs: must be at least 1``), and an unknown key names the closest valid
one. Settings are changed from the command line with :func:`apply_settings` (``--set training.lr=3e-4``).
The input size is ``model.size``; preprocessing always resizes to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mucosa.choices import LOGGERS
from mucosa.data.preparation import Preprocessing
from mucosa.data.splits import MODES
from mucosa.errors import ConfigError
from mucosa.models.networks import ModelConfig
from mucosa.settings import Bool, Float, Int, Settings, Text, closest, format_errors, read_yaml, whole_number, yaml_load

SEED = Field(0, ge=0, le=2**32 - 1)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64",
              "transformer-engine", "transformer-engine-float16")


class SplitConfig(Settings):
    """How the cohort is divided (see ``mucosa.data.splits``); ``val`` is a share of the training part."""

    SECTION: ClassVar[str] = "split"

    mode: Literal[MODES] = "patient"
    test: Float = Field(0.2, ge=0.0, lt=1.0)
    val: Float = Field(0.2, ge=0.0, lt=1.0)
    k: Int = Field(5, ge=2)
    fold: Int = Field(0, ge=0)
    seed: Int = SEED

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitConfig:
        if self.mode == "kfold" and self.fold >= self.k:
            raise PydanticCustomError("mucosa", "fold {fold} is not in 0..{last} (k = {k} folds)",
                                      {"fold": self.fold, "last": self.k - 1, "k": self.k})
        return self


def check_devices(value: Any) -> int | str:
    """Lightning's ``devices``: a count (``-1`` = all), ``auto`` or device ids such as ``0,1``.

    Example:
        >>> check_devices("0,1"), check_devices("-1"), check_devices(2)
        ('0,1', -1, 2)

    Raises:
        ConfigError: anything else, e.g. ``0``.
    """
    if isinstance(value, str) and (value == "auto" or "," in value and all(p.strip().isdigit()
                                                                          for p in value.split(",") if p.strip())):
        return value
    try:
        count = whole_number(value)
    except PydanticCustomError:
        count = 0
    if count < 1 and count != -1:
        raise ConfigError(f"expected a device count of at least 1, -1 (all), auto or device ids such as '0,1', "
                          f"got {repr(value)[:60]}")
    return count


def _devices(value: Any) -> int | str:
    try:
        return check_devices(value)
    except ConfigError as error:
        raise PydanticCustomError("mucosa", "{why}", {"why": str(error)}) from None


def _precision(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # precision: 16


class TrainingConfig(Settings):
    """Optimisation and run settings."""

    SECTION: ClassVar[str] = "training"

    epochs: Int = Field(200, ge=1)
    batch_size: Int = Field(16, ge=1)
    lr: Float = Field(1e-3, gt=0.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    class_weights: Bool = False      # weight the loss by inverse class frequency
    early_stopping: Int = Field(0, ge=0)   # patience in epochs on the monitored figure; 0 = off
    # what chooses best.ckpt and stops early: validation ROC AUC (ranking only), or validation loss (a proper
    # scoring rule: it also punishes a model whose probabilities sit at 0 or 1 whatever the frame)
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    frames_per_case: Int = Field(0, ge=0)  # per epoch, at most this many frames of one video/patient (0 = all)
    seed: Int = SEED
    threads: Int = Field(0, ge=0)    # torch intra-op threads; 0 = all cores
    workers: Int = Field(0, ge=0)    # data-loading processes
    accelerator: Literal[ACCELERATORS] = "auto"
    devices: Annotated[int | str, BeforeValidator(_devices)] = 1
    num_nodes: Int = Field(1, ge=1)
    strategy: Text = "auto"
    precision: Annotated[Literal[PRECISIONS], BeforeValidator(_precision)] = "32-true"
    channels_last: Bool = True
    logger: Literal[LOGGERS] = "csv"  # metrics.csv is always written; tensorboard/mlflow log as well

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        if strategy == "auto":
            return strategy
        from lightning.pytorch.strategies import StrategyRegistry

        known = ["auto", *StrategyRegistry.available_strategies()]
        if strategy not in known:
            guess = closest(strategy, known)
            raise PydanticCustomError("mucosa", "unknown Lightning strategy {got}" + (
                f"; did you mean '{guess}'?" if guess else " (e.g. ddp)"), {"got": repr(strategy)})
        return strategy


class AugmentationConfig(Settings):
    """MONAI random affine (the paper's rotation, translation, shear, zoom) plus flips."""

    SECTION: ClassVar[str] = "augmentation"

    rotate: Float = Field(20.0, ge=0.0, le=180.0)      # degrees, +-
    translate: Float = Field(0.1, ge=0.0, le=1.0)      # share of the side, +-
    shear: Float = Field(0.1, ge=0.0, le=1.0)
    zoom: Float = Field(0.1, ge=0.0, lt=1.0)           # scale 1 +- zoom
    flip: Bool = True
    probability: Float = Field(0.8, ge=0.0, le=1.0)    # chance that the affine is applied to an image


class RunConfig(Settings):
    """The five sections; ``preprocessing.size`` always follows ``model.size``."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)

    @model_validator(mode="after")
    def _size_from_model(self) -> RunConfig:
        if self.preprocessing.size != self.model.size:
            object.__setattr__(self, "preprocessing", self.preprocessing.replace(size=self.model.size))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name).to_dict() for name in SECTIONS}
        del data["preprocessing"]["size"]  # always model.size
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        from mucosa.atomic import write_text

        return write_text(path, self.to_yaml())


BUILTIN = Path(__file__).parent.parent / "configs"
SECTIONS = ("model", "preprocessing", "split", "training", "augmentation")


def config_from_dict(data: dict | None, where: str = "config", labels: dict[str, str] | None = None) -> RunConfig:
    """Build a RunConfig from nested dicts; every problem is one line ``WHERE: key.path: what is wrong``.

    Args:
        labels: names to show instead of key paths (command-line flags).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)}, "
                          f"got {type(data).__name__}")
    data = {k: ({} if v is None and k in SECTIONS else v) for k, v in data.items()}  # "training:" left empty
    problems = []
    model, prep = data.get("model"), data.get("preprocessing")
    if isinstance(prep, dict) and "size" in prep:
        default = ModelConfig.model_fields["size"].default
        size = (model or {}).get("size", default) if isinstance(model, (dict, type(None))) else model.size
        if prep["size"] != size:
            problems.append(f"preprocessing.size: differs from model.size ({size}); set model.size only")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        problems += format_errors(error, RunConfig, labels=labels)
    if problems:
        raise ConfigError("\n".join(f"{where}: {line}" for line in problems))
    return config


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
    return config_from_dict(read_yaml(path), str(path))


def parse_setting(text: str) -> tuple[str, Any]:
    """``SECTION.KEY=VALUE`` → (``SECTION.KEY``, VALUE read as YAML: ``3e-4`` is a number, ``[0, 0, 9, 9]``
    a list, ``true`` a boolean)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. training.lr=3e-4")
    try:
        return key, yaml_load(value)
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--set {text[:200]!r}: the value is not valid YAML ({first})") from None


def apply_settings(config: RunConfig, settings: dict[str, Any], where: str = "command line",
                   labels: dict[str, str] | None = None) -> RunConfig:
    """A checked copy of ``config`` with ``{"section.key": value}`` settings changed."""
    if not settings:
        return config
    data = config.to_dict()
    for key, value in settings.items():
        section, name = key.split(".", 1)
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{where}: {key}: {section} is not a section")
        data.setdefault(section, {})[name] = value
    return config_from_dict(data, where, labels)


def override(config: RunConfig, section: str, **values: Any) -> RunConfig:
    """A copy of ``config`` with the given settings of one section changed (``None`` values are ignored)."""
    settings = {f"{section}.{k}": v for k, v in values.items() if v is not None}
    return apply_settings(config, settings, f"option --{section}")
