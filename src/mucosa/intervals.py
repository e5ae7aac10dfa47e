"""Confidence intervals that claim no more than the data hold, each saying which kind it is.

- A proportion of independent units - the patients (or files) called right (accuracy), the inflamed ones
  called inflamed (sensitivity), the healed ones called healed (specificity), the calls that were right
  (PPV, NPV) - gets an exact binomial interval (:func:`clopper_pearson`): 12 patients of 12 called right
  give 0.735-1.000, never "1.000 (1.000-1.000)".
- Every other figure (frame-level figures, whose frames are clustered in patients; F1; ROC and PR AUC) gets
  a percentile bootstrap that resamples patients (:func:`mucosa.metrics.bootstrap_replicates`).
- A bootstrap that cannot show variation gives no interval, with the reason: fewer than two patients of a
  label, a figure undefined in every resample, or resamples that (nearly) all gave the same value - a
  zero-width interval would read as certainty.

:func:`metric_entries` builds the entries of ``metrics.json``:
``{"value", "ci": [low, high] | None, "ci_method": "clopper-pearson" | "bootstrap-patients"}``, with
``"count": [successes, trials]`` for an exact interval and ``"ci_note"`` (the reason) where ``ci`` is None.

Example:
    >>> low, high = clopper_pearson(12, 12)
    >>> round(low, 3), high
    (0.735, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mucosa import metrics
from mucosa.errors import ConfigError

__all__ = [
    "BOOTSTRAP",
    "DESCRIPTIONS",
    "EXACT",
    "Interval",
    "bootstrap_intervals",
    "clopper_pearson",
    "metric_entries",
    "proportion_counts",
]

EXACT = "clopper-pearson"
BOOTSTRAP = "bootstrap-patients"
DESCRIPTIONS = {EXACT: "exact binomial (Clopper–Pearson)", BOOTSTRAP: "percentile bootstrap over patients"}
_COUNTS = ("tp", "fp", "tn", "fn")


@dataclass(frozen=True)
class Interval:
    """A 95% interval (low, high), or none (both None) with the reason in ``note``."""

    low: float | None
    high: float | None
    method: str
    note: str | None = None
    count: tuple[int, int] | None = None  # (successes, trials) behind an exact interval

    def entry(self, value: float) -> dict:
        """The ``metrics.json`` entry of a figure with this interval."""
        value = _finite(value)
        out: dict = {"value": value, "ci": None, "ci_method": self.method}
        if self.count is not None:
            out["count"] = list(self.count)
        if value is None:
            out["ci_note"] = "undefined on these data"
        elif self.low is None or self.high is None:
            out["ci_note"] = self.note or "no interval"
        else:
            out["ci"] = [self.low, self.high]
        return out


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) binomial interval of ``successes / trials``; (nan, nan) for 0 trials.

    The same interval as ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``; its coverage is at
    least ``1 - alpha`` for every true proportion.
    """
    from scipy.stats import beta

    k, n = int(successes), int(trials)
    if n < 0 or not 0 <= k <= n:
        raise ConfigError(f"a binomial interval needs 0 <= successes <= trials; got {k} of {n}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be between 0 and 1; got {alpha}")
    if n == 0:
        return float("nan"), float("nan")
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def proportion_counts(y_true, y_pred, n_classes: int = 2) -> dict[str, tuple[int, int]]:
    """(successes, trials) of every figure that is a proportion of the units: binary accuracy, sensitivity,
    specificity, ppv, npv; with 3+ classes accuracy, ``sensitivity[k]`` and ``specificity[k]``."""
    y, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    if y.shape != p.shape or y.ndim != 1:
        raise ConfigError(f"y_true and y_pred must be 1-D of the same length; got {y.shape} and {p.shape}")
    out = {"accuracy": (int(np.sum(y == p)), len(y))}
    if n_classes == 2:
        tp, fp = int(np.sum((y == 1) & (p == 1))), int(np.sum((y == 0) & (p == 1)))
        tn, fn = int(np.sum((y == 0) & (p == 0))), int(np.sum((y == 1) & (p == 0)))
        out.update(sensitivity=(tp, tp + fn), specificity=(tn, tn + fp), ppv=(tp, tp + fp), npv=(tn, tn + fn))
        return out
    for k in range(n_classes):
        out[f"sensitivity[{k}]"] = (int(np.sum((y == k) & (p == k))), int(np.sum(y == k)))
        out[f"specificity[{k}]"] = (int(np.sum((y != k) & (p != k))), int(np.sum(y != k)))
    return out


def bootstrap_intervals(metric_fn: Callable[..., dict], y_true, y_score, groups, n_boot: int = 1000,
                        alpha: float = 0.05, seed: int = 0) -> dict[str, Interval]:
    """Percentile intervals of every metric of ``metric_fn`` by a patient bootstrap, none where degenerate.

    Resampling as :func:`mucosa.metrics.bootstrap_ci`; an interval is withheld (with the reason) when a label
    has fewer than two patients, when the metric is undefined in every replicate, or when its percentiles
    coincide (all or nearly all replicates gave one value).
    """
    names, replicates = metrics.bootstrap_replicates(metric_fn, y_true, y_score, groups, n_boot, seed)
    if replicates is None:
        why = f"fewer than {metrics.MIN_PATIENTS_PER_STRATUM} patients of a label"
        return {name: Interval(None, None, BOOTSTRAP, why) for name in names}
    out = {}
    for j, name in enumerate(names):
        column = replicates[:, j][np.isfinite(replicates[:, j])]
        if column.size == 0:
            out[name] = Interval(None, None, BOOTSTRAP, "undefined in every resample of patients")
            continue
        low, high = (float(v) for v in np.quantile(column, [alpha / 2, 1 - alpha / 2]))
        tolerance = 1e-9 * max(1.0, abs(high))  # replicates equal but for rounding count as equal
        if high - low <= tolerance:
            share = "all" if np.ptp(column) <= tolerance else f"at least {1 - alpha:.0%} of the"
            where = "" if column.size == len(replicates) else " where it is defined"
            out[name] = Interval(None, None, BOOTSTRAP, f"{share} {column.size} resamples of patients{where} gave "
                                                        f"{low:.3f}, so the bootstrap cannot show the uncertainty")
        else:
            out[name] = Interval(low, high, BOOTSTRAP)
    return out


def metric_entries(metric_fn: Callable[..., dict], y_true, y_score, y_pred, groups, exact: bool,
                   n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, dict]:
    """``metrics.json`` entries of every figure of ``metric_fn(y_true, y_score)`` with its interval.

    Args:
        metric_fn: :func:`mucosa.metrics.binary_metrics` at a threshold, or ``multiclass_metrics``.
        y_pred: the class called for every unit (the same calls ``metric_fn`` makes).
        groups: the patient of every unit (for the bootstrap).
        exact: the units are independent (patients, or files): proportions get exact intervals; otherwise
            (frames) every figure gets the patient bootstrap.
    """
    y_score = np.asarray(y_score)
    point = {k: v for k, v in metric_fn(y_true, y_score).items() if k not in _COUNTS}
    n_classes = 2 if y_score.ndim == 1 else y_score.shape[1]
    counts = proportion_counts(y_true, y_pred, n_classes) if exact else {}
    boot = bootstrap_intervals(metric_fn, y_true, y_score, groups, n_boot, alpha, seed)
    entries = {}
    for name, value in point.items():
        if name in counts:
            k, n = counts[name]
            low, high = clopper_pearson(k, n, alpha)
            interval = Interval(_finite(low), _finite(high), EXACT, None, (k, n))
        else:
            interval = boot.get(name, Interval(None, None, BOOTSTRAP, "no interval"))
        entries[name] = interval.entry(value)
    return entries


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
