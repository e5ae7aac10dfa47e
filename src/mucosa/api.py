"""The notebook surface of mucosa: train a model, load one, predict, evaluate — results as objects.

Everything here is re-exported by ``import mucosa``; files are written only where ``out`` is given.

Example (synthetic data, seconds): train, load, predict, embed, read the model card, evaluate.
    >>> import tempfile, mucosa
    >>> from mucosa.data.synth import synthesize_cohort
    >>> folder = tempfile.mkdtemp()
    >>> manifest = synthesize_cohort(folder + "/cohort", patients=6, per_patient=6, size=40, seed=0)
    >>> result = mucosa.train(manifest, {"model": {"size": 40}, "training": {"epochs": 1},
    ...                                  "split": {"mode": "none"}}, out=folder + "/run",
    ...                       cache_dir=folder + "/cache", progress=False)
    >>> result.classifier.classes, result.checkpoint.name, len(result.history)
    (['control', 'active'], 'best.ckpt', 1)
    >>> classifier = mucosa.load(result.checkpoint)
    >>> prediction = classifier.predict(folder + "/cohort/images/active/P01")
    >>> prediction.cases[0].verdict in ("active inflammation", "mucosal healing")
    True
    >>> classifier.embed(folder + "/cohort/images/active/P01").shape == (len(prediction), 128)
    True
    >>> classifier.card()["input_size"]
    40
    >>> evaluation = mucosa.evaluate(result.checkpoint, manifest, split="all", n_boot=20, cache_dir=folder + "/cache")
    >>> evaluation["counts"]["patients"], 0 <= evaluation["patient"]["accuracy"]["value"] <= 1
    (6, True)
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mucosa.data.cache import FrameCache
from mucosa.errors import ConfigError, ManifestError, MucosaError
from mucosa.evaluation.evaluate import EvaluationResult
from mucosa.evaluation.evaluate import evaluate as _evaluate
from mucosa.inference.atlas_build import atlas_after_training
from mucosa.inference.classifier import Classifier, load
from mucosa.inference.onnx_files import deploy_after_training
from mucosa.models.config import RunConfig, config_from_dict, load_config
from mucosa.models.training import train as _train

__all__ = ["TrainingResult", "train", "EvaluationResult", "evaluate"]


@dataclass
class TrainingResult:
    """What :func:`train` produced.

    Attributes:
        classifier: the best model (by ``training.monitor``: validation ROC AUC, or loss), ready to predict.
        history: one dict per epoch (train and validation loss, validation AUC and accuracy).
        checkpoint: ``out/best.ckpt`` when ``out`` was given, else None (the model lives in memory only).
        out: the run folder, or None.
    """

    classifier: Classifier
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    out: Path | None = None


def _config(config: RunConfig | str | Path | dict | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config, "config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"config: expected a YAML file's path, a dict of settings or a RunConfig, got {config!r}")
    return load_config(_path(config, "config", optional=True))


def _path(value: Any, what: str, error: type[MucosaError] = ConfigError, optional: bool = False) -> Path | None:
    """``value`` (a str or ``os.PathLike``) as a Path, or one clear error naming ``what``; None passes where
    ``optional``."""
    if value is None and optional:
        return None
    try:
        text = os.fsdecode(os.fspath(value))
    except TypeError:
        raise error(f"{what}: expected a path, got {value!r}") from None
    if not text.strip():
        raise error(f"{what}: expected a path, got an empty one ({value!r})")
    return Path(text)


def _cache_dir(value: Any) -> Path | None:
    """The preprocessing cache's folder, or None for the default (given as None or "")."""
    return None if value == "" else _path(value, "cache_dir", optional=True)


def _history(run: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run folder (the training logger's CSV), numbers as floats."""
    found = sorted(run.rglob("metrics.csv")) or sorted(run.glob("epochs.csv"))
    if not found:
        return []
    rows: dict[int, dict[str, Any]] = {}
    with found[-1].open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = int(float(row.get("epoch") or 0))
            merged = rows.setdefault(epoch, {"epoch": epoch})
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return [rows[e] for e in sorted(rows)]


def train(manifest: str | Path, config: RunConfig | str | Path | dict | None = None, out: str | Path | None = None,
          init_from: str | Path | None = None, cache_dir: str | Path | None = None, device: str = "auto",
          runtime: str = "auto", progress: bool = True, onnx: bool = True, atlas: bool = True,
          allow_partial_init: bool = False) -> TrainingResult:
    """Train a model on a cohort manifest and return it, ready to predict.

    Args:
        manifest: the cohort CSV (``mucosa index`` writes one).
        config: a config file (``configs/pcle.yaml``), a nested dict of settings, a ``RunConfig``, or None
            for the defaults (the paper's).
        out: the run folder (config.yaml, split.csv, logs, best.ckpt, last.ckpt); None trains in a
            temporary folder that is removed afterwards.
        init_from: a checkpoint or pretrained encoder whose matching weights start the model; refused when no
            weight fits, or when less than half of the feature layers' weights fit unless ``allow_partial_init``.
        cache_dir: the preprocessing cache (None or "": the default, ``~/.cache/mucosa``).
        device, runtime: for the returned classifier (see :func:`mucosa.load`).
        progress: show progress bars.
        onnx: write ``best.onnx`` and ``best.int8.onnx`` beside ``best.ckpt`` (``inference.onnx_files``); a
            failure to write them is a warning, not an error.
        atlas: write ``atlas/`` beside ``best.ckpt`` (``inference.atlas_build``): the training and validation
            frames, calibrated on the validation frames, so that the classifier tells unfamiliar recordings and
            finds similar cases; a failure to write it is a warning, not an error.
    """
    manifest = _path(manifest, "manifest", ManifestError)
    out, init_from = _path(out, "out", optional=True), _path(init_from, "init_from", optional=True)
    run_config = _config(config)
    cache = FrameCache(_cache_dir(cache_dir))
    with tempfile.TemporaryDirectory(prefix="mucosa-train-") as scratch:
        folder = Path(out) if out is not None else Path(scratch) / "run"
        best = _train(manifest, run_config, folder, init_from=init_from, cache=cache, progress=progress,
                      allow_partial_init=allow_partial_init)
        if onnx:
            deploy_after_training(best, folder / "split.csv", cache)
        if atlas:
            atlas_after_training(best, folder / "split.csv", cache)
        classifier = load(best, device=device, runtime=runtime, atlas=None if atlas else False)
        if classifier.atlas is not None:  # weights and atlas in memory: they outlive the folder
            classifier.atlas.thumbnails = np.array(classifier.atlas.thumbnails)
        return TrainingResult(classifier, _history(folder), Path(best) if out is not None else None,
                              folder if out is not None else None)



def evaluate(checkpoint: str | Path, manifest: str | Path, out: str | Path | None = None, split: str = "auto",
             threshold: str | float = 0.5, aggregation: str = "mean", n_boot: int = 1000, seed: int = 0,
             cache_dir: str | Path | None = None, device: str = "auto", **options: Any) -> EvaluationResult:
    """Evaluate a checkpoint on a cohort: patient, file and image metrics with intervals.

    Args:
        checkpoint: a mucosa checkpoint.
        manifest: the cohort CSV; ``split="auto"`` evaluates its test rows, or the test patients the
            checkpoint recorded, or every row of a cohort the model never saw.
        out: a folder for metrics.json, the CSVs, figures and the HTML/Markdown report; None writes nothing.
        threshold: a number in [0, 1], or a rule chosen on the validation patients (``youden``,
            ``sensitivity=0.95``).
        aggregation: a patient's score: ``mean`` probability, or ``share`` of frames called positive.
        n_boot, seed: the patient bootstrap behind the intervals.
        cache_dir: the preprocessing cache (None or "": the default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        options: ``pseudonymise``, ``pseudonym_key``, ``gallery_size`` (see ``mucosa evaluate``).

    Returns:
        an :class:`EvaluationResult`; ``result["patient"]["accuracy"]["value"]`` is the patient accuracy.
    """
    checkpoint, manifest = _path(checkpoint, "checkpoint"), _path(manifest, "manifest", ManifestError)
    out, cache_dir = _path(out, "out", optional=True), _cache_dir(cache_dir)
    return _evaluate(checkpoint, manifest, out, split=split, threshold=str(threshold), aggregation=aggregation,
                     n_boot=n_boot, seed=seed, cache=FrameCache(cache_dir), device=device, **options)
