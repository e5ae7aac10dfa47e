"""``mucosa texture``: the texture classifier on a run's own split, alone and fused with the network.

The published EGC-Z method fuses texture descriptors with CNN features; where a network trained from
scratch learns little (a small microscopy set), texture alone can beat it. This fits
:class:`mucosa.models.texture.TextureModel` on the training and validation files of a split manifest (a
run's ``split.csv``), scores its test files and, given the network's evaluation of that same test part
(a ``mucosa evaluate`` folder), averages each file's two probabilities: late fusion. Every method is
judged the same way: a file is called at 0.5, a patient by the mean of its files' probabilities at 0.5
(:func:`mucosa.metrics.aggregate_patients`: a patient's label is its files' majority, a tie active).

Writes ``files.csv`` (one row per test file: each method's probability), ``patients.csv`` and
``metrics.json`` (file ROC AUC and accuracy with patient-bootstrap CIs, patient accuracy with an exact
binomial CI, per method) as one set.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa import intervals, metrics
from mucosa.atomic import OutputSet
from mucosa.data.manifest import Record, load_manifest
from mucosa.data.readers import read_image
from mucosa.data.video import iter_video_frames
from mucosa.errors import ConfigError, UnreadableFileError
from mucosa.evaluation.privacy import Redactor, redactor, shown
from mucosa.models.texture import TextureModel, texture_features
from mucosa.tables import write_csv

__all__ = ["OUTPUTS", "TextureResult", "file_features", "network_probabilities", "texture"]

OUTPUTS = ("files.csv", "patients.csv", "metrics.json")
log = logging.getLogger(__name__)


@dataclass
class TextureResult:
    """Per method (``texture``, and with a network evaluation ``network`` and ``fused``), its metrics."""

    methods: dict[str, dict]
    out: Path


def file_features(record: Record, channel: str = "auto") -> np.ndarray:
    """The mean texture features of a manifest row's frames (an image, or the selected frames of a video)."""
    if not record.is_video:
        return texture_features(read_image(record.path, channel))
    total, count = 0.0, 0
    for _, frame in iter_video_frames(record.path, record.frames, channel):
        total, count = total + texture_features(frame), count + 1
    if not count:
        raise UnreadableFileError(f"{record.path}: no frame could be read for the texture features")
    return total / count


def network_probabilities(evaluation: Path, records: list[Record], positive: str) -> np.ndarray:
    """Each record's probability of ``positive`` from a ``mucosa evaluate`` folder (its ``files.csv``)."""
    try:
        info = json.loads((evaluation / "metrics.json").read_text())
        with open(evaluation / "files.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        found = {Path(r["file"]).resolve(): float(r["mean_probability"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{evaluation}: not a readable two-class mucosa evaluate folder (metrics.json and "
                          f"files.csv with mean_probability: {type(error).__name__})") from None
    if info.get("positive") != positive:
        raise ConfigError(f"{evaluation}: the network's positive class is {info.get('positive')!r}, the "
                          f"manifest's {positive!r}")
    missing = [r.path for r in records if r.path.resolve() not in found]
    if missing:
        raise ConfigError(f"{evaluation}: no network probability for {len(missing)} of {len(records)} test files "
                          f"(e.g. {missing[0]}); evaluate this split's test part, without --pseudonymise")
    return np.array([found[r.path.resolve()] for r in records])


def _summary(y: np.ndarray, score: np.ndarray, patients: np.ndarray, rows: list[dict], n_boot: int,
             seed: int) -> dict:
    """File ROC AUC and accuracy at 0.5 with patient-bootstrap CIs; patients (``rows``) by mean probability."""
    def file_metrics(t, s):  # ROC AUC nan where one class; accuracy of the calls score >= 0.5
        found = metrics.binary_metrics(t, s)
        return {"roc_auc": found["roc_auc"], "accuracy": found["accuracy"]}

    point, ci = file_metrics(y, score), metrics.bootstrap_ci(file_metrics, y, score, patients, n_boot, seed=seed)
    right = sum(int(r["score"] >= 0.5) == r["label"] for r in rows)

    def entry(value, low_high):  # None where undefined (one class; too few patients for an interval)
        shown = np.isfinite(value) and all(np.isfinite(low_high))
        return {"value": float(value) if np.isfinite(value) else None,
                "ci": [float(x) for x in low_high] if shown else None}

    return {"files": len(y), "roc_auc": entry(point["roc_auc"], ci["roc_auc"]),
            "accuracy": entry(point["accuracy"], ci["accuracy"]),
            "patient_accuracy": {"value": right / len(rows), "ci": list(intervals.clopper_pearson(right, len(rows))),
                                 "count": [right, len(rows)]}}


def texture(manifest: str | Path, out: str | Path, evaluation: str | Path | None = None, channel: str = "auto",
            n_boot: int = 1000, seed: int = 0, pseudonymise: bool = False,
            pseudonym_key: str | None = None) -> TextureResult:
    """Fit the texture model on the manifest's train and val rows, score its test rows, fuse, write ``out``.

    ``pseudonymise``: patient ids and paths become keyed pseudonyms (``evaluation.privacy``) in every output
    and every line shown, as in ``mucosa evaluate``.

    Raises:
        ConfigError: no split column, a part without files, one class in training, more than two classes,
            or an evaluation that does not cover the test files.
        ManifestError, UnreadableFileError: the manifest or a file cannot be read.
    """
    manifest, redact = Path(manifest), redactor(pseudonymise, pseudonym_key)
    if redact is not None:
        redact.learn_paths(manifest, *([evaluation] if evaluation else []))
    with shown(redact):
        return _texture(manifest, Path(out), evaluation, channel, n_boot, seed, redact)


def _texture(manifest: Path, out: Path, evaluation, channel: str, n_boot: int, seed: int,
             redact: Redactor | None) -> TextureResult:
    cohort = load_manifest(manifest)
    if redact is not None:
        redact.learn(*(r.patient for r in cohort.records))
        redact.learn_paths(*(r.path for r in cohort.records))
    if len(cohort.classes) != 2:
        raise ConfigError(f"{manifest}: mucosa texture needs two classes; found {', '.join(cohort.classes)}")
    train = [r for r in cohort.records if r.split in ("train", "val")]
    test = [r for r in cohort.records if r.split == "test"]
    if not train or not test:
        raise ConfigError(f"{manifest}: needs a split column with train (or val) and test rows, as in a run's "
                          "split.csv (mucosa train writes it; mucosa split makes one)")
    positive = cohort.classes[-1]
    labels = np.array([r.label == positive for r in train + test], dtype=np.int64)
    if len(set(labels[:len(train)].tolist())) < 2:
        raise ConfigError(f"{manifest}: the train and val rows hold one class only; the texture model needs both")
    network = None if evaluation is None else network_probabilities(Path(evaluation), test, positive)
    features = _features(train + test, channel)  # minutes for large images: after every check
    model = TextureModel().fit(features[:len(train)], labels[:len(train)])
    scores = {"texture": model.probability(features[len(train):])}
    if network is not None:
        scores["network"], scores["fused"] = network, (scores["texture"] + network) / 2
    shown_as = (lambda text: text) if redact is None else redact.name  # an identifier as the outputs show it
    y, patients = labels[len(train):], np.array([shown_as(r.patient) for r in test])
    per_patient = {name: metrics.aggregate_patients(patients, s, y) for name, s in scores.items()}
    methods = {name: _summary(y, s, patients, per_patient[name], n_boot, seed) for name, s in scores.items()}
    about = {"manifest": str(manifest) if redact is None else "(pseudonymised)", "positive": positive,
             "train_files": len(train), "channel": channel, "pseudonymised": redact is not None}
    files = [(shown_as(str(r.path)), shown_as(r.patient), r.label) for r in test]
    _write(out, files, cohort.classes, scores, per_patient, methods, about)
    return TextureResult(methods, out)


def _features(records: list[Record], channel: str) -> np.ndarray:
    from tqdm import tqdm

    return np.stack([file_features(r, channel) for r in tqdm(records, desc="texture features", unit="file")])


def _write(out: Path, files: list[tuple[str, str, str]], classes: list[str], scores: dict, per_patient: dict,
           methods: dict, about: dict) -> None:
    """files.csv (``files``: each test file's path, patient and label, as shown), patients.csv, metrics.json."""
    names = list(scores)
    with OutputSet(out, OUTPUTS) as staged:
        write_csv(staged.path("files.csv"), ["file", "patient", "label", *names],
                  [[*file, *(f"{scores[n][i]:.4f}" for n in names)] for i, file in enumerate(files)])
        per_method = [per_patient[n] for n in names]  # the same patients in the same order for every method
        rows = [[first["patient"], first["n_frames"], classes[first["label"]],
                 *(f"{method[i]['mean_probability']:.4f}" for method in per_method)]
                for i, first in enumerate(per_method[0])]
        write_csv(staged.path("patients.csv"), ["patient", "files", "label", *names], rows)
        staged.path("metrics.json").write_text(json.dumps({**about, "methods": methods}, indent=1))
