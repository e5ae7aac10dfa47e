"""The store's running audit and its export of reviewed cases as training data."""

from __future__ import annotations

import datetime as dt

import pytest

from mucosa.data.manifest import load_manifest
from mucosa.data.pseudonyms import pseudonymiser
from mucosa.store import CaseResult, MediaFile, StoreError


@pytest.fixture
def reviewer(store):
    return store.authenticate(store.add_user("dr r", "reviewer"))


def _finished(store, make_case, name, verdict, score, model="v1", **fields):
    case = make_case(name, **fields)
    job = store.claim("w")
    assert job.case_id == case.id
    store.finish(job, CaseResult(verdict, verdict or "no informative frames", model, score=score))
    return case


def test_the_audit_counts_reviewed_cases_by_their_latest_review(store, make_case, reviewer, clock):
    changed = _finished(store, make_case, "changed", "active", 0.9, exam_date=dt.date(2025, 1, 10))
    right = _finished(store, make_case, "right", "healed", 0.2, exam_date=dt.date(2025, 2, 10))
    _finished(store, make_case, "unreviewed", "active", 0.8, exam_date=dt.date(2025, 2, 11))
    empty = _finished(store, make_case, "empty", None, None, exam_date=dt.date(2025, 2, 12))
    older = _finished(store, make_case, "older model", "active", 0.7, "v0", exam_date=dt.date(2024, 12, 1))
    store.add_review(changed.id, reviewer, "healed", False)
    clock.advance(60)
    store.add_review(changed.id, reviewer, "active", True, "histology revised")  # the truth now
    for case, histology, agrees in ((right, "healed", True), (empty, "active", False), (older, "healed", False)):
        store.add_review(case.id, reviewer, histology, agrees)
    report = store.audit()
    overall = report["overall"]
    assert report["positive"] == "active"
    assert overall["cases"] == 3 and overall["not_counted"] == {"no informative frames": 1}
    assert [overall[k]["count"] for k in ("accuracy", "sensitivity", "specificity")] == [[2, 3], [1, 1], [1, 2]]
    assert list(report["by_model"]) == ["v0", "v1"] and list(report["by_month"]) == ["2024-12", "2025-01", "2025-02"]
    assert store.audit(since=dt.date(2025, 1, 1))["overall"]["accuracy"]["count"] == [2, 2]
    assert store.audit(model="v0")["overall"]["accuracy"]["count"] == [0, 1]
    assert store.audit(classes=["healed", "active"])["overall"]["confusion"]["counts"] == [[1, 1], [0, 1]]
    store.delete_case(older.id)
    assert store.audit()["overall"]["cases"] == 2


def test_reviewed_cases_export_as_a_manifest_that_training_reads(store, make_case, reviewer, tmp_path):
    first = _finished(store, make_case, "first", "active", 0.9, patient="P-01", region="rectum", content=b"colon")
    images = [store.put_media(bytes([i]) * 100, ".png") for i in range(2)]
    second = store.add_case("images", [MediaFile(sha, f"img{i}.png") for i, sha in enumerate(images)],
                            kind="images", exam_date=dt.date(2025, 1, 2))
    store.finish(store.claim("w"), CaseResult("healed", "healed", "v1", score=0.1))
    duplicate = _finished(store, make_case, "same video", "active", 0.9, content=b"colon")  # first's video
    _finished(store, make_case, "unreviewed", "active", 0.9)
    with pytest.raises(StoreError, match="no reviewed case"):
        store.export_reviewed(tmp_path / "none.csv")
    for case, histology in ((first, "active"), (second, "healed"), (duplicate, "active")):
        store.add_review(case.id, reviewer, histology, True)
    out = tmp_path / "exports" / "manifest.csv"
    assert store.export_reviewed(out) == 3
    cohort = load_manifest(out)
    rows = sorted((r.label, r.patient, r.region, r.extra["case"], r.path) for r in cohort.records)
    assert rows == sorted([
        ("active", "P-01", "rectum", first.id, store.media_path(first.media[0]).resolve()),
        ("healed", f"case-{second.id}", "", second.id, store.media_path(second.media[0]).resolve()),
        ("healed", f"case-{second.id}", "", second.id, store.media_path(second.media[1]).resolve()),
    ])
    assert cohort.classes == ["healed", "active"]
    assert not out.read_text().count(str(tmp_path))  # paths are relative to the CSV


@pytest.mark.parametrize("pseudonymise", [False, True])
def test_a_pseudonymised_export_names_no_patient_and_no_file(store, reviewer, tmp_path, pseudonymise):
    patient, file = "Roe_Richard_1980", "Doe_John_1970"
    sha = store.put_media(b"a colonoscopy", ".mpg")
    case = store.add_case(f"{file} exam", [MediaFile(sha, f"{file}.mpg")], patient=patient,
                          region=f"rectum of {patient}")
    store.finish(store.claim("w"), CaseResult("active", "active", "v1", score=0.9))
    store.add_review(case.id, reviewer, "active", True, f"{patient}, {file}.mpg")
    name = pseudonymiser("the unit's key")
    out = tmp_path / "manifest.csv"
    assert store.export_reviewed(out, name if pseudonymise else None) == 1
    data = out.read_bytes()
    assert (patient.encode() in data, file.encode() in data) == (not pseudonymise, False)  # files: by content
    (row,) = load_manifest(out).records  # training still reads it, the file where it is
    assert row.path == store.media_path(case.media[0]).resolve()
    assert (row.patient, row.region) == ((name(patient), f"rectum of {name(patient)}") if pseudonymise else
                                         (patient, f"rectum of {patient}"))


def test_tissue_outside_the_model_classes_is_reviewed_counted_apart_and_never_exported(store, make_case, reviewer,
                                                                                      tmp_path):
    """A colon video under a brain model: its reviewer records histology "outside the model's classes". Before,
    only a class could be chosen, and the export then taught the next model a false label."""
    from mucosa.choices import OUTSIDE_CLASSES

    colon = _finished(store, make_case, "colon video", None, None)
    store.add_review(colon.id, reviewer, OUTSIDE_CLASSES, True, "colorectal mucosa: not a brain tumour")
    with pytest.raises(StoreError, match=f"1 reviewed as {OUTSIDE_CLASSES!r}"):
        store.export_reviewed(tmp_path / "none.csv")
    known = _finished(store, make_case, "brain video", "active", 0.9)
    store.add_review(known.id, reviewer, "active", True)
    out = tmp_path / "manifest.csv"
    assert store.export_reviewed(out) == 1
    assert [r.extra["case"] for r in load_manifest(out).records] == [known.id]
    overall = store.audit(classes=["healed", "active"])["overall"]
    assert overall["cases"] == 1 and sum(overall["not_counted"].values()) == 1, overall["not_counted"]
