"""Metrics for CLE classifiers as a clinical paper reports them (the paper's Table III and more).

Plain functions in scikit-learn order, ``(y_true, y_score)`` or ``(y_true, y_pred)``; scikit-learn does the
underlying computations. Binary labels are 0/1 with 1 = the positive class (inflammation) and ``y_score`` is
the positive-class probability, shape (N,); a frame is called positive when ``y_score >= threshold``, the
same convention as :func:`sklearn.metrics.roc_curve`. Multi-class labels are 0..K-1 with ``y_score`` of
shape (N, K).

A value that is undefined on the data at hand (AUC with one class present, PPV with no positive calls, ...)
is ``nan``, without warnings. Images of one patient are correlated, so confidence intervals resample
patients (:func:`bootstrap_ci`, :func:`paired_bootstrap_auc`), never images.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from mucosa.choices import AGGREGATION_RULES
from mucosa.errors import ConfigError

_TARGET_RULE = re.compile(r"^(sensitivity|specificity)\s*=\s*(\S+)$")


# --------------------------------------------------------------------------------------------- input checks

def _labels(y_true, n_classes: int = 2, name: str = "y_true") -> np.ndarray:
    """``y_true`` as a 1-D int array of labels in 0..n_classes-1, or ConfigError."""
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array of labels; got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(int)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise ConfigError(f"{name} must hold integer labels 0..{n_classes - 1}; got dtype {y.dtype}")
    y = y.astype(int)
    bad = sorted(set(np.unique(y).tolist()) - set(range(n_classes)))
    if bad:
        what = "0/1 (1 = inflammation)" if n_classes == 2 else f"0..{n_classes - 1}"
        raise ConfigError(f"{name} must hold labels {what}; found {bad[:5]}")
    return y


def _scores(y_score, n: int, name: str = "y_score", ndim: int = 1) -> np.ndarray:
    """``y_score`` as a finite float array with ``n`` rows, or ConfigError."""
    s = np.asarray(y_score, dtype=float)
    if s.ndim != ndim or s.shape[0] != n:
        want = "(N,)" if ndim == 1 else "(N, K)"
        raise ConfigError(f"{name} must have shape {want} with N={n} (one row per label); got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"{name} holds {int(np.sum(~np.isfinite(s)))} non-finite values (nan or inf)")
    return s


def _groups(groups, n: int) -> np.ndarray:
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ConfigError(f"groups must be a 1-D array with one patient id per image (N={n}); got {g.shape}")
    return g


def _both_classes(y: np.ndarray) -> bool:
    return bool(np.any(y == 1) and np.any(y == 0))


# ------------------------------------------------------------------------------------------ point metrics

def binary_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Table III metrics and their companions for a binary classifier.

    Args:
        y_true: 0/1 labels, 1 = inflammation.
        y_score: positive-class probabilities; ``y_score >= threshold`` is a positive call.
        threshold: the decision threshold (choose it on validation data, see :func:`choose_threshold`).

    Returns:
        accuracy, sensitivity (recall of class 1), specificity (recall of class 0), ppv (precision of
        class 1), npv (precision of class 0), f1 (of class 1), roc_auc, pr_auc (average precision) and the
        counts tp, fp, tn, fn (as floats). Ratios with a zero denominator and the ranking metrics when only
        one class is present are nan.
    """
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    y_pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, y_pred, labels=[0, 1]).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, y_pred, labels=[0, 1], average=None, zero_division=np.nan)
    ranked = _both_classes(y)
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "sensitivity": float(recall[1]),
        "specificity": float(recall[0]),
        "ppv": float(precision[1]),
        "npv": float(precision[0]),
        "f1": float(f1[1]),
        "roc_auc": float(roc_auc_score(y, s)) if ranked else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if ranked else float("nan"),
        "tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn),
    }


def multiclass_metrics(y_true, y_score) -> dict[str, float]:
    """Macro-averaged metrics of a K-class classifier; the predicted class is the argmax of ``y_score``.

    Per class k (one-vs-rest) ``roc_auc[k]``, ``pr_auc[k]``, ``sensitivity[k]`` and ``specificity[k]``;
    the macro values (``roc_auc``, ``pr_auc``, ``sensitivity``, ``specificity``, ``f1``) average the classes
    where the value is defined (scikit-learn's ``zero_division=nan`` convention) and are nan when none is.
    With every class present ``roc_auc`` equals ``roc_auc_score(multi_class="ovr", average="macro")``.
    """
    s = np.asarray(y_score, dtype=float)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ConfigError(f"y_score must have shape (N, K) with K >= 2 classes; got {s.shape}")
    k_classes = s.shape[1]
    y = _labels(y_true, k_classes)
    s = _scores(s, len(y), ndim=2)
    y_pred = np.argmax(s, axis=1)
    labels = list(range(k_classes))
    out: dict[str, float] = {"accuracy": float(accuracy_score(y, y_pred))}
    per_class: dict[str, list[float]] = {"roc_auc": [], "pr_auc": [], "sensitivity": [], "specificity": []}
    for k in labels:
        one_vs_rest = (y == k).astype(int)
        ranked = _both_classes(one_vs_rest)
        values = {
            "roc_auc": roc_auc_score(one_vs_rest, s[:, k]) if ranked else np.nan,
            "pr_auc": average_precision_score(one_vs_rest, s[:, k]) if ranked else np.nan,
            "sensitivity": recall_score(one_vs_rest, (y_pred == k).astype(int), zero_division=np.nan),
            "specificity": recall_score(1 - one_vs_rest, (y_pred != k).astype(int), zero_division=np.nan),
        }
        for name, value in values.items():
            out[f"{name}[{k}]"] = float(value)
            per_class[name].append(float(value))
    for name, values in per_class.items():
        out[name] = _nanmean(values)
    out["f1"] = float(f1_score(y, y_pred, labels=labels, average="macro", zero_division=np.nan))
    return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrix (K, K) of counts; rows are the true class, columns the predicted class."""
    if int(n_classes) < 2:
        raise ConfigError(f"n_classes must be at least 2; got {n_classes}")
    y = _labels(y_true, int(n_classes))
    p = _labels(y_pred, int(n_classes), name="y_pred")
    if len(p) != len(y):
        raise ConfigError(f"y_pred has {len(p)} entries but y_true has {len(y)}")
    return confusion_matrix(y, p, labels=list(range(int(n_classes))))


# ------------------------------------------------------------------------------------- patient bootstrap

MIN_PATIENTS_PER_STRATUM = 2
"""Below this many patients of one label, the bootstrap cannot see between-patient variation: intervals and
p-values are nan rather than falsely narrow."""


def _patient_resampler(y_true, groups, seed: int) -> Callable[[], np.ndarray] | None:
    """A function that draws one cluster-bootstrap sample: image indices of patients drawn with replacement
    (``None`` when a stratum has fewer than ``MIN_PATIENTS_PER_STRATUM`` patients).

    Patients are stratified by their label (the majority label of their images, ties going to the larger
    label) when there are at least two such patient labels: each stratum is resampled to its own size, so
    every replicate keeps the cohort's patient class balance and both classes. With a single patient label
    (e.g. every patient has mixed images) the patients are resampled without strata.
    """
    y = np.asarray(y_true)
    keys, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(keys))]  # image indices per patient
    patient_label = []
    for m in members:
        values, counts = np.unique(y[m], return_counts=True)  # values sorted
        patient_label.append(values[np.flatnonzero(counts == counts.max())[-1]])  # a tie goes to the larger
    patient_label = np.asarray(patient_label)
    strata = [np.flatnonzero(patient_label == c) for c in np.unique(patient_label)]
    if len(strata) < 2:
        strata = [np.arange(len(keys))]
    if min(len(stratum) for stratum in strata) < MIN_PATIENTS_PER_STRATUM:
        return None  # a stratum of one patient would be copied unchanged into every replicate
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        drawn = np.concatenate([rng.choice(stratum, size=len(stratum), replace=True) for stratum in strata])
        return np.concatenate([members[p] for p in drawn])

    return draw


def bootstrap_ci(metric_fn: Callable[..., dict], y_true, y_score, groups, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of every metric of ``metric_fn`` by a patient (cluster) bootstrap.

    Each replicate draws patients with replacement (stratified by patient label, see below); all images of
    a drawn patient come along and a patient drawn twice counts twice. ``metric_fn(y_true, y_score)`` is
    recomputed on each replicate; replicates where a metric is nan are left out of that metric's interval.
    Stratification: a patient's label is the majority label of its images; when the patients carry at least
    two labels, each label's patients are resampled separately, to their own number, so every replicate
    keeps both classes; otherwise the patients are resampled as one pool.

    Args:
        metric_fn: e.g. :func:`binary_metrics` or ``lambda y, s: binary_metrics(y, s, threshold=0.3)``.
        y_true: labels (N,).
        y_score: scores (N,) or (N, K), as ``metric_fn`` expects them.
        groups: the patient (cluster) of every image (N,); pass ``np.arange(N)`` to resample images.
        n_boot: number of replicates.
        alpha: 1 - coverage; 0.05 gives a 95% interval.
        seed: the same seed gives the same intervals.

    Returns:
        ``{metric: (low, high)}``; (nan, nan) where every replicate was nan, or for every metric when a
        label has fewer than ``MIN_PATIENTS_PER_STRATUM`` patients.
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be between 0 and 1; got {alpha}")
    names, replicates = bootstrap_replicates(metric_fn, y_true, y_score, groups, n_boot, seed)
    if replicates is None:
        return {name: (float("nan"), float("nan")) for name in names}
    out = {}
    for j, name in enumerate(names):
        column = replicates[:, j][np.isfinite(replicates[:, j])]
        if column.size == 0:
            out[name] = (float("nan"), float("nan"))
        else:
            low, high = np.quantile(column, [alpha / 2, 1 - alpha / 2])
            out[name] = (float(low), float(high))
    return out


def bootstrap_replicates(metric_fn: Callable[..., dict], y_true, y_score, groups, n_boot: int = 1000,
                         seed: int = 0) -> tuple[list[str], np.ndarray | None]:
    """The metric names of ``metric_fn`` and their values on ``n_boot`` patient-bootstrap replicates.

    Resampling as in :func:`bootstrap_ci`. Returns ``(names, replicates)`` with replicates of shape
    (n_boot, len(names)), nan where a metric is undefined on a replicate; ``replicates`` is None when a label
    has fewer than ``MIN_PATIENTS_PER_STRATUM`` patients (no replicate could show between-patient variation).
    """
    y, s = np.asarray(y_true), np.asarray(y_score)
    if y.ndim != 1 or y.size == 0 or s.shape[:1] != y.shape:
        raise ConfigError(f"y_true (N,) and y_score (N, ...) must have the same non-empty N; "
                          f"got {y.shape} and {s.shape}")
    g = _groups(groups, len(y))
    if int(n_boot) < 1:
        raise ConfigError(f"n_boot must be at least 1; got {n_boot}")
    names = [k for k, v in metric_fn(y, s).items() if np.ndim(v) == 0]
    draw = _patient_resampler(y, g, seed)
    if draw is None:
        return names, None
    replicates = np.full((int(n_boot), len(names)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(int(n_boot)):
            idx = draw()
            values = metric_fn(y[idx], s[idx])
            replicates[b] = [float(values.get(name, np.nan)) for name in names]
    return names, replicates


def paired_bootstrap_auc(y_true, score_a, score_b, groups, n_boot: int = 2000, seed: int = 0,
                         alpha: float = 0.05) -> dict:
    """Compare the ROC AUCs of two classifiers scored on the same images, by a paired patient bootstrap.

    Both AUCs are recomputed on the same resampled patients (stratified as in :func:`bootstrap_ci`). The
    two-sided p-value is ``2 * min(P(d* <= 0), P(d* >= 0))`` over the replicate differences d*, with the
    usual +1 correction so it is never exactly 0 - it is below ``alpha`` about when the percentile CI
    excludes 0.

    Returns:
        auc_a, auc_b, diff (auc_a - auc_b), ci (low, high) of diff, p_value, se (bootstrap standard error
        of diff) and n_boot (replicates with both classes present).
    """
    y = _labels(y_true)
    a = _scores(score_a, len(y), name="score_a")
    b = _scores(score_b, len(y), name="score_b")
    g = _groups(groups, len(y))
    if not _both_classes(y):
        raise ConfigError("comparing ROC AUCs needs both classes in y_true; only one is present")
    diff = float(roc_auc_score(y, a) - roc_auc_score(y, b))
    draw = _patient_resampler(y, g, seed)
    deltas = []
    for _ in range(int(n_boot) if draw is not None else 0):
        idx = draw()
        if _both_classes(y[idx]):
            deltas.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    d = np.asarray(deltas)
    if d.size == 0:
        nan = float("nan")
        return {"auc_a": float(roc_auc_score(y, a)), "auc_b": float(roc_auc_score(y, b)), "diff": diff,
                "ci": (nan, nan), "p_value": nan, "se": nan, "n_boot": 0}
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return {
        "auc_a": float(roc_auc_score(y, a)),
        "auc_b": float(roc_auc_score(y, b)),
        "diff": diff,
        "ci": (float(low), float(high)),
        "p_value": float(min(1.0, 2.0 * (tail + 1) / (d.size + 1))),
        "se": float(np.std(d, ddof=1)) if d.size > 1 else float("nan"),
        "n_boot": int(d.size),
    }


# ------------------------------------------------------------------------------------ thresholds, calibration

def choose_threshold(y_true, y_score, rule: str | float) -> float:
    """The decision threshold a rule picks on VALIDATION data (choosing it on test data biases the test).

    Rules:
        ``"youden"``: maximises sensitivity + specificity - 1 (the highest such threshold on ties).
        ``"sensitivity=0.95"``: the highest threshold whose sensitivity reaches 0.95 (best specificity).
        ``"specificity=0.9"``: the lowest threshold whose specificity reaches 0.9 (best sensitivity).
        a number or number string (``0.4``, ``"0.4"``): that fixed threshold, in [0, 1].

    A chosen threshold is one of the validation scores (positive call: ``score >= threshold``), so
    :func:`binary_metrics` reproduces the validation sensitivity / specificity exactly; when no score works
    (e.g. ``specificity=1`` with a negative scored highest) it is the next float above the highest score.
    """
    fixed = _fixed_threshold(rule)
    if fixed is not None:
        return fixed
    text = str(rule).strip().lower()
    match = _TARGET_RULE.match(text)
    if text != "youden" and match is None:
        raise ConfigError(f"unknown threshold rule {rule!r}; use 'youden', 'sensitivity=<0..1>', "
                          f"'specificity=<0..1>' or a number in [0, 1]")
    target = None
    if match is not None:
        try:
            target = float(match.group(2))
        except ValueError:
            target = float("nan")
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"threshold rule {rule!r}: the target must be a number in (0, 1]")
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    if not _both_classes(y):
        raise ConfigError(f"threshold rule {rule!r} needs both classes in the validation labels; "
                          f"only class {int(y[0])} is present")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)  # thresholds decreasing, [0] = inf
    if text == "youden":
        i = 1 + int(np.argmax((tpr - fpr)[1:]))
    elif match.group(1) == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[-1])
    if not np.isfinite(thresholds[i]):
        return float(np.nextafter(s.max(), np.inf))
    return float(thresholds[i])


def _fixed_threshold(rule: str | float) -> float | None:
    """The number a fixed-threshold rule names, None when the rule is not a number."""
    if isinstance(rule, bool):
        raise ConfigError(f"threshold rule must be a string or a number; got {rule!r}")
    try:
        value = float(rule)
    except (TypeError, ValueError):
        if not isinstance(rule, str):
            raise ConfigError(f"threshold rule must be a string or a number; got {rule!r}") from None
        return None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"fixed threshold {rule!r} must be a probability in [0, 1]")
    return value


def calibration(y_true, y_score, n_bins: int = 10) -> dict:
    """Brier score, expected calibration error and the reliability table of binary probabilities.

    Bins are equal-width on [0, 1], assigned as :func:`sklearn.calibration.calibration_curve` does
    (``strategy="uniform"``). ECE is the count-weighted mean of |observed frequency - mean predicted| over
    the bins; MCE the largest such gap over non-empty bins.

    Returns:
        brier, ece, mce, and the table: edges (n_bins + 1,), mean_predicted, observed, count (n_bins,);
        empty bins have nan mean_predicted / observed and count 0.
    """
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be at least 1; got {n_bins}")
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    if s.min() < 0.0 or s.max() > 1.0:
        raise ConfigError(f"calibration needs probabilities in [0, 1]; scores span [{s.min():g}, {s.max():g}]")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    bin_of = np.searchsorted(edges[1:-1], s)  # (N,) same assignment as calibration_curve
    count = np.bincount(bin_of, minlength=int(n_bins))
    filled = count > 0
    mean_predicted = np.full(int(n_bins), np.nan)
    observed = np.full(int(n_bins), np.nan)
    mean_predicted[filled] = np.bincount(bin_of, weights=s, minlength=int(n_bins))[filled] / count[filled]
    observed[filled] = np.bincount(bin_of, weights=y, minlength=int(n_bins))[filled] / count[filled]
    gap = np.abs(observed[filled] - mean_predicted[filled])
    return {
        "brier": float(brier_score_loss(y, s, labels=[0, 1])),
        "ece": float(np.sum(gap * count[filled]) / len(y)),
        "mce": float(gap.max()),
        "edges": edges,
        "mean_predicted": mean_predicted,
        "observed": observed,
        "count": count,
    }


# ---------------------------------------------------------------------------------------- patient verdicts

def aggregate_patients(patients, y_score, y_true=None, rule: str = "mean", threshold: float = 0.5) -> list[dict]:
    """One row per patient (or per ``"patient|region"`` key), sorted by key, ready for ``csv.DictWriter``.

    Args:
        patients: the patient (or region) key of every frame (N,).
        y_score: positive-class probability of every frame (N,).
        y_true: optional 0/1 frame labels (N,).
        rule: the patient score: ``"mean"`` = mean probability, ``"share"`` = share of frames called
            positive (``score >= threshold``).
        threshold: the frame-level decision threshold.

    Returns:
        dicts with patient, n_frames, mean_probability, positive_share, score, and with ``y_true`` also
        label (majority of the frames' labels; a tie is called 1, since any active inflammation rules out
        mucosal healing) and label_tie (True when the frames' labels were split evenly). Feed
        ``[r["label"] ...]`` and ``[r["score"] ...]`` to :func:`binary_metrics` for patient-level metrics.
    """
    if rule not in AGGREGATION_RULES:
        raise ConfigError(f"unknown patient aggregation rule {rule!r}; use one of {', '.join(AGGREGATION_RULES)}")
    keys = np.asarray([str(p) for p in np.asarray(patients, dtype=object).ravel()])
    if keys.size == 0:
        raise ConfigError("aggregate_patients needs at least one frame")
    s = _scores(y_score, len(keys))
    y = None if y_true is None else _labels(y_true)
    if y is not None and len(y) != len(keys):
        raise ConfigError(f"y_true has {len(y)} entries but patients has {len(keys)}")
    unique, inverse = np.unique(keys, return_inverse=True)
    rows = []
    for i, key in enumerate(unique):
        frames = inverse == i
        probs = s[frames]
        row = {
            "patient": str(key),
            "n_frames": int(frames.sum()),
            "mean_probability": float(probs.mean()),
            "positive_share": float(np.mean(probs >= threshold)),
        }
        row["score"] = row["mean_probability"] if rule == "mean" else row["positive_share"]
        if y is not None:
            positives = int(y[frames].sum())
            negatives = row["n_frames"] - positives
            row["label"] = int(positives >= negatives)
            row["label_tie"] = positives == negatives
        rows.append(row)
    return rows
