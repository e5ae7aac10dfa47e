"""The running audit's figures on a small example counted by hand."""

from __future__ import annotations

import datetime as dt

import pytest
from scipy.stats import binomtest

from mucosa.errors import ConfigError
from mucosa.evaluation.audit import ReviewedCase, calibration_curve, running_audit, summarize


def day(month: int, date: int) -> dt.date:
    return dt.date(2025, month, date)


# (verdict, histology, probability of "active", model, date[, reason]); by hand: TP TP FN TN (v1), FP TN TN (v2)
CASES = [
    ("active", "active", 0.95, "v1", day(1, 5)),
    ("active", "active", 0.85, "v1", day(1, 20)),
    ("healed", "active", 0.30, "v1", day(2, 3)),
    ("healed", "healed", 0.10, "v1", day(2, 10)),
    ("active", "healed", 0.65, "v2", day(2, 15)),
    ("healed", "healed", 0.05, "v2", day(3, 1)),
    ("healed", "healed", 0.15, "v2", day(3, 2)),
    (None, "active", None, "v2", day(3, 3), "no informative frames"),
    (None, "healed", None, "v1", day(1, 7), "unfamiliar images"),
]


def counts(summary: dict, *names: str) -> list:
    return [summary[name]["count"] for name in names]


def test_overall_figures_match_the_hand_count():
    report = running_audit(CASES)
    assert (report["classes"], report["positive"]) == (["healed", "active"], "active")
    overall = report["overall"]
    assert overall["cases"] == 7
    assert overall["not_counted"] == {"no informative frames": 1, "unfamiliar images": 1}
    assert counts(overall, "accuracy", "sensitivity", "specificity", "ppv", "npv") == [[5, 7], [2, 3], [3, 4],
                                                                                       [2, 3], [3, 4]]
    assert overall["accuracy"]["value"] == pytest.approx(5 / 7)
    exact = binomtest(5, 7).proportion_ci(method="exact")
    assert overall["accuracy"]["ci"] == pytest.approx([exact.low, exact.high])
    assert overall["accuracy"]["ci_method"] == "clopper-pearson"
    assert overall["confusion"] == {"classes": ["healed", "active"], "rows": "histology", "columns": "verdict",
                                    "counts": [[3, 1], [1, 2]]}


def test_figures_by_model_and_by_month_match_the_hand_count():
    report = running_audit(CASES)
    by_model, by_month = report["by_model"], report["by_month"]
    assert list(by_model) == ["v1", "v2"] and list(by_month) == ["2025-01", "2025-02", "2025-03"]
    assert counts(by_model["v1"], "accuracy", "sensitivity", "specificity") == [[3, 4], [2, 3], [1, 1]]
    assert counts(by_model["v2"], "accuracy", "sensitivity", "specificity") == [[2, 3], [0, 0], [2, 3]]
    assert by_model["v2"]["sensitivity"]["value"] is None and by_model["v2"]["sensitivity"]["ci"] is None
    assert by_model["v1"]["not_counted"] == {"unfamiliar images": 1}
    assert counts(by_month["2025-01"], "accuracy", "sensitivity") == [[2, 2], [2, 2]]
    assert counts(by_month["2025-02"], "accuracy", "sensitivity", "specificity") == [[1, 3], [0, 1], [1, 2]]
    assert counts(by_month["2025-03"], "accuracy", "specificity") == [[2, 2], [2, 2]]
    assert by_month["2025-03"]["not_counted"] == {"no informative frames": 1}


def test_the_calibration_curve_bins_the_positive_probability():
    curve = running_audit(CASES)["overall"]["calibration"]
    assert [(point["bin"][0], point["cases"], point["count"]) for point in curve] == [
        (0.0, 1, [0, 1]), (0.1, 2, [0, 2]), (0.3, 1, [1, 1]), (0.6, 1, [0, 1]), (0.8, 1, [1, 1]), (0.9, 1, [1, 1])]
    assert curve[1]["predicted"] == pytest.approx(0.125) and curve[2]["observed"] == 1.0
    edge = calibration_curve([ReviewedCase("active", "active", 1.0, "v1", day(1, 1))], "active", bins=4)
    assert edge[0]["bin"] == [0.75, 1.0]
    with pytest.raises(ConfigError):
        calibration_curve([], "active", bins=0)


def test_naming_the_other_class_positive_swaps_sensitivity_and_specificity():
    report = running_audit(CASES, positive="healed")
    assert counts(report["overall"], "sensitivity", "specificity") == [[3, 4], [2, 3]]
    assert report["positive"] == "healed" and report["classes"] == ["active", "healed"]


def test_a_histology_outside_the_given_classes_is_counted_apart_and_three_classes_work():
    cases = [ReviewedCase("a", "a", None, "v1", day(1, 1)), ReviewedCase("b", "c", None, "v1", day(1, 1)),
             ReviewedCase("b", "lymphoma", None, "v1", day(1, 1))]
    summary = summarize(cases, ["a", "b", "c"])
    assert summary["cases"] == 2
    assert summary["not_counted"] == {"histology 'lymphoma' is not one of the classes": 1}
    assert counts(summary, "accuracy", "sensitivity[0]", "sensitivity[2]", "specificity[1]") == [[1, 2], [1, 1],
                                                                                               [0, 1], [1, 2]]
    assert summary["calibration"] == []


def test_no_reviewed_case_gives_an_empty_report():
    report = running_audit([])
    assert report["overall"]["cases"] == 0 and report["by_model"] == {} and report["classes"] == []


def test_tissue_outside_the_model_classes_is_never_taken_for_a_class():
    """A reviewer's "none of the model's classes" (a colon video under a brain model) is counted apart, also when
    the classes are found from the cases themselves (``mucosa audit`` without ``--classes``)."""
    from mucosa.choices import OUTSIDE_CLASSES

    report = running_audit([*CASES, (None, OUTSIDE_CLASSES, None, "v1", day(1, 9), "unfamiliar"),
                            ("active", OUTSIDE_CLASSES, 0.9, "v1", day(1, 9))])
    assert report["classes"] == ["healed", "active"]
    assert report["overall"]["cases"] == 7 and report["overall"]["not_counted"][f"histology {OUTSIDE_CLASSES}"] == 1
