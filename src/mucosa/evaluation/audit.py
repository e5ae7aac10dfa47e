"""The running audit: how the model does on the unit's own patients, judged against histology.

Pure functions on reviewed cases (:class:`ReviewedCase`, or plain tuples ``(verdict, histology, probability,
model, date)``): accuracy, sensitivity and specificity with exact binomial (Clopper–Pearson) intervals, the
confusion table and a binned calibration curve, overall, by model version and by month (of the case's date).

A case counts when both its verdict and its histology are classes. A case without a verdict (no informative
frames, unfamiliar images) is not an error of the model: it is counted apart, under ``not_counted``, by its
reason; so is a histology outside the classes given.

Example:
    >>> import datetime as dt
    >>> day = dt.date(2024, 5, 2)
    >>> cases = [("active", "active", 0.9, "v1", day), ("healed", "active", 0.4, "v1", day),
    ...          ("healed", "healed", 0.2, "v1", day), (None, "healed", None, "v1", day)]
    >>> report = running_audit(cases)
    >>> report["positive"], report["overall"]["cases"], report["overall"]["not_counted"]
    ('active', 3, {'no verdict': 1})
    >>> report["overall"]["sensitivity"]["count"], report["overall"]["specificity"]["count"]
    ([1, 2], [1, 1])
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mucosa.choices import OUTSIDE_CLASSES
from mucosa.data.manifest import order_classes
from mucosa.errors import ConfigError
from mucosa.intervals import EXACT, Interval, clopper_pearson, proportion_counts

__all__ = ["ReviewedCase", "NO_VERDICT", "running_audit", "summarize", "confusion_table", "calibration_curve"]

NO_VERDICT = "no verdict"
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class ReviewedCase:
    """A case's verdict and its histology truth.

    Args:
        verdict: the class the model called; None when it called none (``reason`` says why).
        histology: the class histology found (the latest review's).
        probability: the model's probability of the positive class (two-class models), else None.
        model: the model version that gave the verdict.
        date: the exam date (the audit's months are of this date).
        reason: why there is no verdict, e.g. "no informative frames" (default :data:`NO_VERDICT`).
    """

    verdict: str | None
    histology: str
    probability: float | None
    model: str | None
    date: dt.date
    reason: str | None = None


def _cases(rows: Iterable[ReviewedCase | Sequence]) -> list[ReviewedCase]:
    return [row if isinstance(row, ReviewedCase) else ReviewedCase(*row) for row in rows]


def _classes(cases: list[ReviewedCase], classes: Sequence[str] | None, positive: str | None) -> list[str]:
    if classes is not None:
        classes = list(classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"the classes must be two or more different names, e.g. control,active; got "
                              f"{','.join(classes)[:80]!r}")
        if positive is not None and positive not in classes:
            raise ConfigError(f"the positive class {positive!r} is not one of the classes {classes}")
        if positive is not None and len(classes) == 2:
            classes = [c for c in classes if c != positive] + [positive]
        return classes
    seen = {c.histology for c in cases if c.histology != OUTSIDE_CLASSES} | {
        c.verdict for c in cases if c.verdict is not None}
    return order_classes(seen, positive) if seen else []


def _why_not_counted(case: ReviewedCase, classes: list[str]) -> str | None:
    if case.verdict is None or case.verdict not in classes:
        return case.reason or (NO_VERDICT if case.verdict is None else f"verdict {case.verdict!r} is not a class")
    if case.histology == OUTSIDE_CLASSES:  # tissue the model does not know: not an error of its classes
        return f"histology {OUTSIDE_CLASSES}"
    if case.histology not in classes:
        return f"histology {case.histology!r} is not one of the classes"
    return None


def _exact(successes: int, trials: int) -> dict:
    """A proportion's entry, as in ``metrics.json``: value, Clopper–Pearson interval, count."""
    low, high = clopper_pearson(successes, trials)
    value = successes / trials if trials else float("nan")
    interval = Interval(None if trials == 0 else low, None if trials == 0 else high, EXACT, None, (successes, trials))
    return interval.entry(value)


def confusion_table(cases: Sequence[ReviewedCase], classes: Sequence[str]) -> dict:
    """Counts of every (histology, verdict) pair: ``counts[i][j]`` cases of histology ``classes[i]`` called
    ``classes[j]``."""
    index = {name: i for i, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for case in cases:
        counts[index[case.histology]][index[case.verdict]] += 1
    return {"classes": list(classes), "rows": "histology", "columns": "verdict", "counts": counts}


def calibration_curve(cases: Sequence[ReviewedCase], positive: str, bins: int = 10) -> list[dict]:
    """The share of cases histology found positive, per bin of the model's positive probability (equal-width
    bins on [0, 1]; empty bins left out), with its exact interval: a calibrated model's points lie on the
    diagonal."""
    if bins < 1:
        raise ConfigError(f"a calibration curve needs at least one bin; got {bins}")
    grouped: dict[int, list[ReviewedCase]] = defaultdict(list)
    for case in cases:
        if case.probability is not None:
            grouped[min(int(case.probability * bins), bins - 1)].append(case)
    curve = []
    for b in sorted(grouped):
        members = grouped[b]
        positives = sum(c.histology == positive for c in members)
        observed = _exact(positives, len(members))
        curve.append({"bin": [b / bins, (b + 1) / bins], "cases": len(members),
                      "predicted": sum(c.probability for c in members) / len(members),
                      "observed": observed["value"], "ci": observed["ci"], "count": observed["count"]})
    return curve


def summarize(cases: Iterable[ReviewedCase | Sequence], classes: Sequence[str], positive: str | None = None,
              bins: int = 10) -> dict:
    """The audit's figures for one group of cases (see the module's description for what counts)."""
    cases, classes = _cases(cases), list(classes)
    counted, not_counted = [], Counter()
    for case in cases:
        reason = _why_not_counted(case, classes)
        if reason is None:
            counted.append(case)
        else:
            not_counted[reason] += 1
    out: dict = {"cases": len(counted), "not_counted": dict(sorted(not_counted.items()))}
    if classes:
        index = {name: i for i, name in enumerate(classes)}
        counts = proportion_counts([index[c.histology] for c in counted], [index[c.verdict] for c in counted],
                                   len(classes))
        out.update({name: _exact(*count) for name, count in counts.items()})
    out["confusion"] = confusion_table(counted, classes)
    out["calibration"] = calibration_curve(counted, positive, bins) if positive is not None else []
    return out


def running_audit(cases: Iterable[ReviewedCase | Sequence], classes: Sequence[str] | None = None,
                  positive: str | None = None, bins: int = 10) -> dict:
    """The running audit: the figures of :func:`summarize` overall, by model version and by month.

    Args:
        cases: the reviewed cases (unreviewed cases must not be given).
        classes: the model's classes; by default those seen in verdicts and histology.
        positive: the class counted as positive (inflammation) with two classes; by default the last of
            ``classes`` when given, else a label like "active" (see :func:`mucosa.data.manifest.order_classes`).
        bins: bins of the calibration curve.

    Returns:
        ``{"classes", "positive", "overall", "by_model": {version: ...}, "by_month": {"YYYY-MM": ...}}``, JSON-ready.
    """
    cases = _cases(cases)
    names = _classes(cases, classes, positive)
    positive = names[-1] if len(names) == 2 else None
    by_model, by_month = defaultdict(list), defaultdict(list)
    for case in cases:
        by_model[case.model or UNKNOWN_MODEL].append(case)
        by_month[case.date.strftime("%Y-%m")].append(case)
    return {"classes": names, "positive": positive, "overall": summarize(cases, names, positive, bins),
            "by_model": {k: summarize(v, names, positive, bins) for k, v in sorted(by_model.items())},
            "by_month": {k: summarize(v, names, positive, bins) for k, v in sorted(by_month.items())}}
