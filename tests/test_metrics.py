import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mucosa.errors import ConfigError
from mucosa.intervals import bootstrap_intervals, clopper_pearson, metric_entries, proportion_counts
from mucosa.metrics import (
    aggregate_patients,
    binary_metrics,
    bootstrap_ci,
    calibration,
    choose_threshold,
    confusion,
    multiclass_metrics,
    paired_bootstrap_auc,
)


def binary_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.2, n), 0, 1)
    return y, s


def clustered(n_patients=24, per_patient=25, seed=0):
    """Images of one patient share the patient's score offset: strongly correlated within a patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_patients) % 2, per_patient)
    offset = np.repeat(rng.normal(0.0, 1.0, n_patients), per_patient)
    s = 1 / (1 + np.exp(-(1.2 * y + offset + rng.normal(0, 0.05, y.size) - 0.6)))
    groups = np.repeat([f"P{i:02d}" for i in range(n_patients)], per_patient)
    return y, s, groups


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(threshold):
    y, s = binary_data()
    pred = (s >= threshold).astype(int)
    m = binary_metrics(y, s, threshold=threshold)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert 0 < m["specificity"] < 1 and 0 < m["sensitivity"] < 1


def test_binary_metrics_undefined_values_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_class = binary_metrics([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.4])
        no_calls = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert np.isnan(one_class["roc_auc"]) and np.isnan(one_class["pr_auc"])
    assert np.isnan(one_class["sensitivity"]) and one_class["npv"] == 1.0 and one_class["ppv"] == 0.0
    assert one_class["specificity"] == 0.75 and one_class["accuracy"] == 0.75
    assert np.isnan(no_calls["ppv"]) and no_calls["sensitivity"] == 0.0 and no_calls["npv"] == 0.5
    assert no_calls["roc_auc"] == 0.75


@pytest.mark.parametrize("labels, scores", [([0, 2, 1], [0.2, 0.3, 0.4]), ([0, 1], [0.5]),
                                            ([0, 1], [0.5, np.nan]), ([[0, 1]], [[0.5, 0.5]]), ([], [])])
def test_binary_metrics_reject_bad_input(labels, scores):
    with pytest.raises(ConfigError):
        binary_metrics(labels, scores)


def multiclass_data(n=150, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_multiclass_metrics_match_sklearn_macro():
    y, p = multiclass_data()
    pred = p.argmax(axis=1)
    m = multiclass_metrics(y, p)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    specificity = [recall_score(y != k, pred != k) for k in range(3)]
    assert m["specificity"] == pytest.approx(np.mean(specificity))
    for k in range(3):
        assert m[f"roc_auc[{k}]"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert m[f"specificity[{k}]"] == pytest.approx(specificity[k])


def test_multiclass_metrics_with_an_absent_class_average_the_defined_ones():
    y, p = multiclass_data()
    keep = y != 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multiclass_metrics(y[keep], p[keep])
    assert np.isnan(m["roc_auc[2]"]) and np.isnan(m["sensitivity[2]"])
    assert m["roc_auc"] == pytest.approx((m["roc_auc[0]"] + m["roc_auc[1]"]) / 2)
    assert not np.isnan(m["specificity[2]"])
    with pytest.raises(ConfigError):
        multiclass_metrics([0, 3], [[0.5, 0.5, 0], [0.2, 0.3, 0.5]])


def test_confusion_rows_are_truth_and_keep_absent_classes():
    y, p = multiclass_data(n=60, k=4)
    pred = p.argmax(axis=1)
    assert np.array_equal(confusion(y, pred, 4), confusion_matrix(y, pred))
    small = confusion([0, 0, 1], [1, 0, 1], n_classes=3)
    assert small.shape == (3, 3) and small[0, 1] == 1 and small[1, 0] == 0 and small.sum() == 3
    with pytest.raises(ConfigError, match="y_pred"):
        confusion([0, 1], [0, 3], n_classes=3)


@pytest.mark.slow
def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    y, s, groups = clustered()
    point = binary_metrics(y, s)
    ci = bootstrap_ci(binary_metrics, y, s, groups, n_boot=200, seed=3)
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "pr_auc"):
        low, high = ci[name]
        assert low <= point[name] <= high and low < high, name
    auc = lambda yy, ss: {"roc_auc": roc_auc_score(yy, ss)}  # noqa: E731
    assert bootstrap_ci(auc, y, s, groups, n_boot=200, seed=3) == {"roc_auc": ci["roc_auc"]}
    assert bootstrap_ci(auc, y, s, groups, n_boot=200, seed=4)["roc_auc"] != ci["roc_auc"]


@pytest.mark.slow
def test_cluster_bootstrap_is_wider_than_image_bootstrap():
    y, s, groups = clustered()
    auc = lambda yy, ss: {"roc_auc": roc_auc_score(yy, ss)}  # noqa: E731
    by_patient = bootstrap_ci(auc, y, s, groups, n_boot=200)["roc_auc"]
    by_image = bootstrap_ci(auc, y, s, np.arange(len(y)), n_boot=200)["roc_auc"]
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])


def test_bootstrap_is_stratified_by_patient_label_and_skips_nan_replicates():
    y, s, groups = clustered(n_patients=9, per_patient=4)  # 5 negative, 4 positive patients, 4 images each
    share = lambda yy, ss: {"share": yy.mean(), "n": len(yy), "odd": np.nan}  # noqa: E731
    ci = bootstrap_ci(share, y, s, groups, n_boot=100)
    assert ci["share"] == (pytest.approx(4 / 9), pytest.approx(4 / 9))  # class balance kept by strata
    assert ci["n"] == (36.0, 36.0)  # drawn patients bring all their images
    assert np.isnan(ci["odd"][0]) and np.isnan(ci["odd"][1])


@pytest.mark.slow
def test_paired_bootstrap_auc():
    y, s, groups = clustered()
    same = paired_bootstrap_auc(y, s, s, groups, n_boot=200)
    assert same["diff"] == 0 and same["ci"] == (0.0, 0.0) and same["p_value"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    good = y + rng.normal(0, 0.3, y.size)  # AUC near 1
    weak = 0.3 * y + np.repeat(rng.normal(0, 1, 24), 25)  # AUC near 0.5, patient-correlated
    out = paired_bootstrap_auc(y, good, weak, groups, n_boot=200)
    assert out["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert out["diff"] > 0.2 and out["ci"][0] > 0 and out["p_value"] < 0.05 and out["n_boot"] == 200
    reverse = paired_bootstrap_auc(y, weak, good, groups, n_boot=200)
    assert reverse["diff"] == pytest.approx(-out["diff"]) and reverse["p_value"] < 0.05


def test_youden_picks_the_obvious_cut():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.62, 0.55, 0.7, 0.8, 0.9])
    # 0.55: Se 1, Sp .75 (J .75); 0.7: Se .75, Sp 1 (J .75) -> tie, the higher; 0.62: J .5
    assert choose_threshold(y, s, "youden") == 0.7
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], "youden") == 0.6


def test_sensitivity_and_specificity_rules_reach_their_targets():
    y, s = binary_data(n=200, seed=2)
    t = choose_threshold(y, s, "sensitivity=0.95")
    assert binary_metrics(y, s, t)["sensitivity"] >= 0.95
    above = s[s > t].min()  # the next higher threshold misses the target: t is the highest one
    assert binary_metrics(y, s, above)["sensitivity"] < 0.95
    t = choose_threshold(y, s, "specificity = 0.9")
    assert binary_metrics(y, s, t)["specificity"] >= 0.9
    assert binary_metrics(y, s, s[s < t].max())["specificity"] < 0.9
    # a target nothing but "call everything negative" reaches: just above the highest score
    t = choose_threshold([0, 1, 0], [0.9, 0.5, 0.1], "specificity=1")
    assert t > 0.9 and binary_metrics([0, 1, 0], [0.9, 0.5, 0.1], t)["specificity"] == 1.0


def test_fixed_and_bad_threshold_rules():
    y, s = binary_data()
    assert choose_threshold(y, s, "0.4") == 0.4
    assert choose_threshold(y, s, 0.25) == 0.25
    for rule in ("median", "sensitivity=1.5", "sensitivity=abc", "recall=0.9", 1.5, "-0.1", None):
        with pytest.raises(ConfigError, match="threshold"):
            choose_threshold(y, s, rule)
    with pytest.raises(ConfigError, match="both classes"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "youden")


def test_calibration_ece_brier_and_table():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(p.size) < p).astype(int)
    good = calibration(y, p)
    overconfident = calibration(y, p ** 4 / (p ** 4 + (1 - p) ** 4))
    assert good["ece"] < 0.02 < 0.08 < overconfident["ece"]
    assert good["brier"] == pytest.approx(brier_score_loss(y, p))
    assert good["count"].sum() == y.size and len(good["edges"]) == 11
    observed, predicted = calibration_curve(y, p, n_bins=10)
    assert np.allclose(good["observed"], observed) and np.allclose(good["mean_predicted"], predicted)
    sparse = calibration([0, 1, 1], [0.05, 0.95, 1.0], n_bins=5)
    assert sparse["count"].tolist() == [1, 0, 0, 0, 2] and np.isnan(sparse["observed"][2])
    assert sparse["ece"] == pytest.approx((0.05 + 2 * 0.025) / 3)
    with pytest.raises(ConfigError, match="probabilities"):
        calibration([0, 1], [0.2, 1.3])


def test_aggregate_patients_mean_share_and_majority_label():
    patients = ["B", "A", "A", "B", "B", "C", "C", "A"]
    scores = [0.9, 0.2, 0.6, 0.7, 0.1, 0.45, 0.55, 0.4]
    labels = [1, 0, 0, 1, 0, 0, 1, 0]
    rows = aggregate_patients(patients, scores, labels)
    assert [r["patient"] for r in rows] == ["A", "B", "C"]
    a, b, c = rows
    assert a["n_frames"] == 3 and a["mean_probability"] == pytest.approx(0.4)
    assert a["positive_share"] == pytest.approx(1 / 3) and a["score"] == pytest.approx(0.4)
    assert b["positive_share"] == pytest.approx(2 / 3) and b["label"] == 1 and not b["label_tie"]
    assert a["label"] == 0 and c["label_tie"] and c["label"] == 1
    shared = aggregate_patients(patients, scores, rule="share", threshold=0.5)
    assert [r["score"] for r in shared] == pytest.approx([1 / 3, 2 / 3, 0.5])
    assert "label" not in shared[0]
    regions = aggregate_patients(["P1|ileum", "P1|rectum", "P1|ileum"], [0.2, 0.8, 0.4])
    assert [(r["patient"], r["n_frames"]) for r in regions] == [("P1|ileum", 2), ("P1|rectum", 1)]
    with pytest.raises(ConfigError, match="rule"):
        aggregate_patients(patients, scores, rule="max")


def test_too_few_patients_per_label_gives_no_interval_rather_than_a_false_one():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.3, 0.2, 0.8, 0.6, 0.9, 0.7, 0.4, 0.95])
    groups = np.array(["c", "c", "c", "a", "a", "a", "b", "b", "b"])  # one control patient
    ci = bootstrap_ci(binary_metrics, y, s, groups, n_boot=50)
    assert all(np.isnan(lo) and np.isnan(hi) for lo, hi in ci.values())
    test = paired_bootstrap_auc(y, s, 1 - s, groups, n_boot=50)
    assert np.isnan(test["p_value"]) and test["n_boot"] == 0
    groups[0] = "d"  # a second control patient: intervals exist again
    ci = bootstrap_ci(binary_metrics, y, s, groups, n_boot=50)
    assert np.isfinite(ci["accuracy"][0])


# ------------------------------------------------------------------------------------------------ intervals

@pytest.mark.parametrize("k, n", [(12, 12), (0, 12), (10, 12), (1, 2), (37, 80), (0, 1)])
def test_clopper_pearson_is_scipys_exact_binomial_interval(k, n):
    from scipy.stats import binomtest

    exact = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    low, high = clopper_pearson(k, n)
    assert (low, high) == (pytest.approx(exact.low, abs=1e-12), pytest.approx(exact.high, abs=1e-12))
    assert low < high and low <= k / n <= high


def test_twelve_of_twelve_is_not_certainty():
    low, high = clopper_pearson(12, 12)
    assert low == pytest.approx(0.7354, abs=1e-4) and high == 1.0
    assert np.isnan(clopper_pearson(0, 0)[0])
    with pytest.raises(ConfigError):
        clopper_pearson(13, 12)


def test_proportion_counts_reproduce_the_point_metrics():
    y, s = binary_data()
    point = binary_metrics(y, s, threshold=0.4)
    counts = proportion_counts(y, (s >= 0.4).astype(int))
    assert set(counts) == {"accuracy", "sensitivity", "specificity", "ppv", "npv"}
    for name, (k, n) in counts.items():
        assert k / n == pytest.approx(point[name]), name
    y3, s3 = multiclass_data()
    counts3 = proportion_counts(y3, s3.argmax(1), n_classes=3)
    point3 = multiclass_metrics(y3, s3)
    for name in ("accuracy", "sensitivity[1]", "specificity[2]"):
        assert counts3[name][0] / counts3[name][1] == pytest.approx(point3[name]), name


def every_patient_right(n_patients=12, per_patient=5):
    """Each patient's frames all called right: a patient bootstrap of accuracy sees no variation."""
    y = np.repeat(np.arange(n_patients) % 2, per_patient)
    rng = np.random.default_rng(0)
    s = np.where(y == 1, rng.uniform(0.6, 1.0, y.size), rng.uniform(0.0, 0.4, y.size))
    return y, s, np.repeat([f"P{i:02d}" for i in range(n_patients)], per_patient)


@pytest.mark.slow
def test_patient_level_proportions_get_exact_intervals_and_degenerate_bootstraps_none():
    y, s, groups = every_patient_right()
    patient_y = y[::5]
    patient_s = np.array([s[groups == g].mean() for g in dict.fromkeys(groups)])
    entries = metric_entries(lambda t, p: binary_metrics(t, p, 0.5), patient_y, patient_s,
                             (patient_s >= 0.5).astype(int), np.arange(12), exact=True, n_boot=200)
    accuracy = entries["accuracy"]
    assert accuracy["value"] == 1.0 and accuracy["ci_method"] == "clopper-pearson" and accuracy["count"] == [12, 12]
    assert accuracy["ci"] == [pytest.approx(0.7354, abs=1e-4), 1.0]
    assert entries["sensitivity"]["count"] == [6, 6] and entries["npv"]["count"] == [6, 6]
    auc = entries["roc_auc"]  # every resample separates the classes perfectly: no interval, and why
    assert auc["value"] == 1.0 and auc["ci"] is None and auc["ci_method"] == "bootstrap-patients"
    assert "all 200 resamples" in auc["ci_note"]
    assert not any(k in entries for k in ("tp", "fp", "tn", "fn"))


@pytest.mark.slow
def test_frame_level_bootstrap_never_gives_a_zero_width_interval():
    y, s, groups = every_patient_right()
    fn = lambda t, p: binary_metrics(t, p, 0.5)  # noqa: E731
    raw = bootstrap_ci(fn, y, s, groups, n_boot=100)
    assert raw["accuracy"] == (1.0, 1.0)  # what a plain percentile bootstrap would print
    intervals = bootstrap_intervals(fn, y, s, groups, n_boot=100)
    assert intervals["accuracy"].low is None and "resamples of patients gave 1.000" in intervals["accuracy"].note
    entries = metric_entries(fn, y, s, (s >= 0.5).astype(int), groups, exact=False, n_boot=100)
    assert all(e["ci_method"] == "bootstrap-patients" for e in entries.values())
    assert all(e["ci"] is None or e["ci"][0] < e["ci"][1] for e in entries.values())
    y2, s2, g2 = clustered()  # real variation: real intervals
    varied = bootstrap_intervals(fn, y2, s2, g2, n_boot=100)
    assert varied["roc_auc"].low < varied["roc_auc"].high and varied["roc_auc"].note is None


def test_one_patient_of_a_label_gives_no_interval_and_says_so():
    y = np.array([0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.3, 0.8, 0.6, 0.9, 0.7])
    groups = np.array(["c", "c", "a", "a", "b", "b"])
    intervals = bootstrap_intervals(binary_metrics, y, s, groups, n_boot=20)
    assert all(i.low is None and "fewer than 2 patients" in i.note for i in intervals.values())
