"""Evaluation of a checkpoint on a cohort: image-, patient- and region-level metrics with patient-bootstrap
confidence intervals, a threshold chosen on validation data only, calibration, and the files of a report.

The flow is :func:`evaluate` → ``select_parts`` → ``score`` (predict) → ``summarise`` (metrics) →
``report.write_report`` (files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mucosa import intervals, metrics
from mucosa.atomic import OutputSet
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import FrameTable, assemble
from mucosa.data.manifest import Cohort, load_manifest
from mucosa.data.pseudonyms import key_check
from mucosa.data.splits import select_parts
from mucosa.errors import ConfigError
from mucosa.evaluation.explain import gallery
from mucosa.evaluation.privacy import Redactor, redactor, shown
from mucosa.evaluation.report import write_report
from mucosa.inference import verdict as verdicts
from mucosa.inference.pytorch import predict_table, resolve_device
from mucosa.inference.runtime import check_runtime, describe, for_checkpoint
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mucosa.tables import write_csv

OUTPUTS = ("metrics.json", "predictions.csv", "patients.csv", "regions.csv", "files.csv", "roc.png", "pr.png",
           "confusion.png", "reliability.png", "patients.png", "gallery", "report.html", "report.md")
"""Everything :func:`evaluate` writes: a rerun into the same folder replaces the whole set."""
REGION_SEPARATOR = "\x1f"  # between patient and region in a region key (a character no id or region holds)

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """Predictions for the frames of one part of a cohort."""

    rows: list[dict]          # one per frame: path, frame, patient, region, label, quality
    y_true: np.ndarray        # (N,) class index
    y_score: np.ndarray       # (N,) positive probability, or (N, K)
    patients: np.ndarray      # (N,) patient id
    regions: np.ndarray       # (N,) patient + REGION_SEPARATOR + region
    frames: FrameTable        # the preprocessed frames, in the same order


def score(checkpoint: LoadedCheckpoint, cohort: Cohort, cache: FrameCache | None = None, predictor=None) -> Scored:
    """Preprocess as the checkpoint says, predict every kept frame (with ``predictor``, from
    ``runtime.for_checkpoint``, or else the checkpoint's PyTorch model)."""
    table = assemble(cohort, checkpoint.preprocessing, cache, progress=True)
    probs = predict_table(checkpoint, table) if predictor is None else _predict_table(predictor, table)
    frame_index, quality = table.frame_index, table.quality
    rows, regions = [], []
    for i in range(len(table)):
        r = table.record(i)
        rows.append({"path": str(r.path), "frame": int(frame_index[i]), "patient": r.patient, "region": r.region,
                     "label": r.label, "quality": round(float(quality[i]), 4)})
        regions.append(f"{r.patient}{REGION_SEPARATOR}{r.region}")
    y_true = np.array([checkpoint.classes.index(row["label"]) for row in rows], np.int64)
    patients = np.array([row["patient"] for row in rows], dtype=object)
    return Scored(rows, y_true, probs, patients, np.array(regions, dtype=object), table)


def resolve_threshold(rule: str, val: Scored | None, binary: bool) -> dict:
    """The decision threshold and how it was chosen (never on the evaluated part)."""
    if not binary:
        return {"rule": "argmax", "value": None, "chosen_on": None}
    if _is_number(rule):
        return {"rule": "fixed", "value": verdicts.check_threshold(rule, "--threshold"), "chosen_on": None}
    if val is None or len(val.y_true) == 0:
        raise ConfigError(f"threshold rule {rule!r} is chosen on a validation part, but none was found (give a "
                          "manifest with split=val rows, or a checkpoint that recorded validation patients)")
    value = metrics.choose_threshold(val.y_true, val.y_score, rule)
    return {"rule": rule, "value": float(value), "chosen_on": f"validation ({len(val.y_true)} frames)"}


def _level_metrics(y_true, y_score, groups, threshold: float | None, n_boot: int, seed: int,
                   exact: bool) -> dict:
    """Entries ``{"value", "ci", "ci_method", ...}`` of one level; ``exact``: its units are independent
    (patients, files), so its proportions carry exact binomial intervals (see :mod:`mucosa.intervals`)."""
    if threshold is None:
        fn = metrics.multiclass_metrics
    else:
        def fn(t, s):
            return metrics.binary_metrics(t, s, threshold)
    called = verdicts.calls(y_score, 0.5 if threshold is None else threshold)
    return intervals.metric_entries(fn, y_true, y_score, called, groups, exact, n_boot=n_boot, seed=seed)


def aggregate(scored: Scored, keys: np.ndarray, rule: str, threshold: float | None) -> list[dict]:
    """Per patient (or region) rows: frames, mean probability, share called positive, score, true label."""
    if threshold is None:  # multi-class: mean probability per class, verdict by argmax
        rows = []
        for key in sorted(set(keys)):
            members = keys == key
            mean = scored.y_score[members].mean(0)
            labels = np.bincount(scored.y_true[members], minlength=mean.shape[0])
            rows.append({"patient": key, "n_frames": int(members.sum()), "score": mean.tolist(),
                         "true": int(labels.argmax()), "predicted": int(mean.argmax())})
        return rows
    rows = metrics.aggregate_patients(keys, scored.y_score, scored.y_true, rule=rule, threshold=threshold)
    cut = patient_threshold(rule, threshold)
    return [{**r, "true": r["label"], "predicted": verdicts.call(r["score"], cut)} for r in rows]


def patient_threshold(rule: str, threshold: float) -> float:
    """A patient is called positive when its mean probability reaches the frame threshold, or (rule
    ``share``) when at least half of its frames are called positive."""
    return threshold if rule == "mean" else 0.5


def summarise(scored: Scored, classes: list[str], threshold: dict, rule: str, n_boot: int,
              seed: int) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """All numbers of metrics.json; patient level first, as that is the clinical question.

    Levels: ``patient``; ``file`` (an image or video: its frames, or an image's tiles, aggregated like a
    patient's; CIs clustered by patient); ``image`` (every frame or tile). Also returns the patient,
    region and file rows.
    """
    value = threshold["value"]
    patients = aggregate(scored, scored.patients, rule, value)
    regions = aggregate(scored, scored.regions, rule, value)
    files = aggregate(scored, np.array([r["path"] for r in scored.rows], dtype=object), rule, value)
    owner = {r["path"]: r["patient"] for r in scored.rows}
    p_true = np.array([p["true"] for p in patients])
    p_score = np.array([p["score"] for p in patients], dtype=np.float64)
    cut = patient_threshold(rule, value) if value is not None else None
    result = {
        "classes": classes, "positive": classes[1] if value is not None else None,
        "verdicts": verdicts.verdict_names(classes), "aggregation": rule,
        "patient": _level_metrics(p_true, p_score, np.arange(len(p_true)), cut, n_boot, seed, exact=True),
        "file": _level_metrics(np.array([f["true"] for f in files]), np.array([f["score"] for f in files]),
                               np.array([owner[f["patient"]] for f in files], dtype=object), cut, n_boot, seed,
                               exact=True),
        "image": _level_metrics(scored.y_true, scored.y_score, scored.patients, value, n_boot, seed, exact=False),
        "threshold": {**threshold, "patient_threshold": cut},
        "counts": {"frames": int(len(scored.y_true)), "patients": len(patients), "regions": len(regions),
                   "files": len(files),
                   "bootstrap": n_boot, "seed": seed},
    }
    if value is not None:
        result["calibration"] = _json_safe(metrics.calibration(scored.y_true, scored.y_score))
    return result, patients, regions, files


def _json_safe(data: dict) -> dict:
    def clean(v):
        if isinstance(v, np.ndarray):
            return [clean(x) for x in v.tolist()]
        if isinstance(v, float):
            return v if np.isfinite(v) else None
        return v

    return {k: clean(v) for k, v in data.items()}


def _pseudonymise(scored: Scored, name) -> Scored:
    rows = [{**r, "patient": name(r["patient"]), "path": name(r["path"])} for r in scored.rows]
    regions = [k.split(REGION_SEPARATOR, 1) for k in scored.regions]
    regions = np.array([f"{name(p)}{REGION_SEPARATOR}{region}" for p, region in regions], dtype=object)
    return replace(scored, rows=rows, patients=np.array([r["patient"] for r in rows], dtype=object),
                   regions=regions)


def write_predictions(path: Path, scored: Scored, classes: list[str], threshold: dict) -> None:
    """One row per frame: where it came from, its probability (float32 round trip) and the call."""
    binary = scored.y_score.ndim == 1
    probability = ["probability"] if binary else [f"probability_{c}" for c in classes]
    called = verdicts.calls(scored.y_score, 0.5 if threshold["value"] is None else threshold["value"])
    rows = ([row["path"], row["frame"], row["patient"], row["region"], row["label"], row["quality"],
             *([f"{float(s):.9g}"] if binary else [f"{v:.9g}" for v in s]), classes[c]]
            for row, s, c in zip(scored.rows, scored.y_score, called))
    write_csv(path, ["path", "frame", "patient", "region", "label", "quality", *probability, "prediction"], rows)


def write_groups(path: Path, rows: list[dict], classes: list[str], key: str, regions: bool = False) -> None:
    """One row per patient (``regions``: per patient and region) or per file, with its verdict."""
    names = verdicts.verdict_names(classes)
    binary = bool(rows) and not isinstance(rows[0]["score"], list)
    extra = ["mean_probability", "share_positive"] if binary else []
    table = []
    for r in rows:
        ident = str(r["patient"]).split(REGION_SEPARATOR, 1) if regions else [r["patient"]]
        score_text = f"{r['score']:.4f}" if binary else " ".join(f"{v:.4f}" for v in r["score"])
        table.append([*ident, r["n_frames"],
                      *([f"{r['mean_probability']:.4f}", f"{r['positive_share']:.4f}"] if binary else []),
                      score_text, classes[r["true"]], names[r["predicted"]], int(r["true"] == r["predicted"])])
    header = [key, *(["region"] if regions else []), "n_frames", *extra, "score", "label", "verdict", "correct"]
    write_csv(path, header, table)


def _predict_table(predictor, table) -> np.ndarray:
    """Probabilities of every frame of a FrameTable, read from the cache a chunk at a time."""
    chunks = [predictor(np.stack([table.frame(i) for i in range(start, min(start + 1024, len(table)))]))
              for start in range(0, len(table), 1024)]
    return np.concatenate(chunks) if chunks else predictor(np.zeros((0, 1, 1), np.uint8))


@dataclass
class EvaluationResult:
    """What :func:`evaluate` found; ``result["patient"]`` reads ``result.metrics["patient"]``.

    Attributes:
        metrics: everything of ``metrics.json``: per level (``patient``, ``file``, ``image``) each figure's
            ``value``, ``ci`` and ``ci_method``; the threshold and how it was chosen; counts.
        patients, regions, files: one dict per patient, region or file (frames, score, true and called class).
        frames: one dict per evaluated frame (path, frame, patient, region, label, quality, probability).
        out: the folder written, or None.
    """

    metrics: dict
    patients: list[dict]
    regions: list[dict]
    files: list[dict]
    frames: list[dict]
    out: Path | None = None

    def __getitem__(self, key: str):
        return self.metrics[key]


def evaluate(checkpoint: str | Path, manifest: str | Path, out: str | Path | None = None, split: str = "auto",
             threshold: str = "0.5", aggregation: str = "mean", n_boot: int = 1000, seed: int = 0,
             pseudonymise: bool = False, pseudonym_key: str | None = None, cache: FrameCache | None = None,
             gallery_size: int = 3, device: str = "auto", runtime: str = "auto") -> EvaluationResult:
    """Evaluate a checkpoint on a cohort; with ``out``, write metrics.json, predictions.csv, patients.csv,
    regions.csv, files.csv, figures and reports, as one set (:data:`OUTPUTS`): an earlier result in ``out``
    is replaced whole or not at all. Without ``out`` nothing is written (but the preprocessing cache).

    The report's gallery shows Grad-CAM of the ``gallery_size`` most confident true/false positives and
    negatives (0 = no gallery). ``pseudonymise``: patient ids and paths (of the checkpoint, the manifest and
    every file) are replaced by keyed hashes in every output, and no warning or error shows the originals.
    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``runtime``: ``auto``, ``torch`` or ``onnx``
    (``runtime.open_predictor``); the one used is recorded in metrics.json (``runtime``). The gallery's
    Grad-CAM always runs the PyTorch model (it needs gradients).
    """
    check_runtime(runtime)
    if aggregation not in ("mean", "share"):
        raise ConfigError(f"aggregation {aggregation!r} must be 'mean' or 'share'")
    redact = redactor(pseudonymise, pseudonym_key)
    if redact is not None:
        redact.learn_paths(checkpoint, manifest)
    with shown(redact):
        return _evaluate(checkpoint, manifest, out, split, threshold, aggregation, n_boot, seed, redact, cache,
                         gallery_size, device, runtime)


def _evaluate(checkpoint, manifest, out, split, threshold, aggregation, n_boot, seed, redact: Redactor | None,
              cache, gallery_size, device, runtime) -> EvaluationResult:
    loaded = load_checkpoint(checkpoint)
    loaded.model.to(resolve_device(device))
    predictor = for_checkpoint(loaded, runtime, batch_size=64, device=device)
    cohort = load_manifest(manifest, classes=loaded.classes, require_all=False)
    check = loaded.info.get("split", {}).get("pseudonym_key_check")  # trained with --pseudonymise: its key's
    pseudonym = redact.name if redact is not None and check and key_check(redact.name) == check else None
    if redact is not None:
        recorded = {} if check else loaded.info.get("split", {}).get("patients", {})  # pseudonyms stay as they are
        redact.learn(*(r.patient for r in cohort.records), *(p for ids in recorded.values() for p in ids))
        redact.learn_paths(*(r.path for r in cohort.records))
    part, val_part, why = select_parts(cohort, loaded.info, split, pseudonym)
    log.info(f"evaluating {len(part.records)} rows: {why if redact is None else redact(why)}")
    binary = len(loaded.classes) == 2
    needs_val = binary and not _is_number(threshold)
    val = score(loaded, val_part, cache, predictor) if needs_val and val_part is not None else None
    chosen = resolve_threshold(threshold, val, binary)
    scored = score(loaded, part, cache, predictor)
    if len(scored.y_true) == 0:
        raise ConfigError("every frame of the evaluated part was dropped by the quality gate")
    where = {"checkpoint": str(Path(checkpoint).resolve()), "manifest": str(Path(manifest).resolve())}
    if redact is not None:
        scored = _pseudonymise(scored, redact.name)
        where = {k: redact.name(v) for k, v in where.items()}
    result, patients, regions, files = summarise(scored, loaded.classes, chosen, aggregation, n_boot, seed)
    result.update({**where, "evaluated": why, "model": loaded.model_config.kind, "size": loaded.model_config.size,
                   "pseudonymised": redact is not None, "runtime": _runtime_record(predictor.choice, redact)})
    frames = [{**row, "probability": s.tolist() if np.ndim(s) else float(s)}
              for row, s in zip(scored.rows, scored.y_score)]
    if out is None:
        return EvaluationResult(result, patients, regions, files, frames)
    with OutputSet(out, OUTPUTS) as staged:
        folder = staged.staging
        (folder / "metrics.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        write_predictions(folder / "predictions.csv", scored, loaded.classes, chosen)
        write_groups(folder / "patients.csv", patients, loaded.classes, "patient")
        write_groups(folder / "regions.csv", regions, loaded.classes, "patient", regions=True)
        write_groups(folder / "files.csv", files, loaded.classes, "file")
        shots = gallery(loaded, scored.frames, scored.y_true, scored.y_score, chosen["value"], folder / "gallery",
                        per_group=gallery_size) if gallery_size else []
        write_report(folder, result, scored, patients, shots)
    return EvaluationResult(result, patients, regions, files, frames, Path(out))


def _runtime_record(choice: dict, redact: Redactor | None) -> dict:
    """How the frames were predicted, for metrics.json (the source file's name left out when pseudonymised)."""
    record = {**choice, "line": describe(choice)}
    if redact is not None:
        record["source"] = record["line"] = "(pseudonymised)"
    return record


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
