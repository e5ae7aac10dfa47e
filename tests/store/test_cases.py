"""Cases and their media: content-addressed files, exam fields, search and filters, deletion."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from mucosa.store import CaseResult, CaseStatus, MediaFile, NotFound, StoreError

DAY = dt.date(2025, 3, 1)


def test_media_are_kept_once_under_their_sha256_with_their_suffix(store, tmp_path):
    video = tmp_path / "Exam 1.MP4"
    video.write_bytes(b"\x00video" * 1000)
    sha = store.put_media(video)
    assert sha == hashlib.sha256(video.read_bytes()).hexdigest()
    stored = store.media_path(MediaFile(sha, "Exam 1.MP4"))
    assert stored == store.media.root / sha[:2] / f"{sha[2:]}.mp4"
    assert stored.read_bytes() == video.read_bytes()
    assert store.put_media(video.read_bytes(), ".mp4") == sha  # the same content: one file
    assert sorted(p.name for p in store.media.root.rglob("*") if p.is_file()) == [f"{sha[2:]}.mp4"]
    with pytest.raises(StoreError, match="not a file suffix"):
        store.put_media(b"x", "../../etc")


def test_a_case_refuses_media_the_store_does_not_hold_and_bad_fields(store, make_case):
    with pytest.raises(StoreError, match="media not in the store"):
        store.add_case("exam", [MediaFile("a" * 64, "exam.mp4")])
    with pytest.raises(StoreError, match="kind"):
        make_case("exam", kind="audio")
    with pytest.raises(StoreError, match="patient id"):
        make_case("exam", patient="x" * 101)
    for day in ("12/03/2025", "20250310", "2025-W11-1", "2025-03-10T09:00"):  # YYYY-MM-DD, nothing else
        with pytest.raises(StoreError, match=f"exam date: '{day}' is not a date"):
            make_case("exam", exam_date=day)
    with pytest.raises(StoreError, match="exam date: 1899-12-31 is before 1900"):
        make_case("exam", exam_date="1899-12-31")
    for odd in ("a\u0085b", "ileum\u202eP01", "a\u2028b", "a\u200bb", "a\x00b"):  # invisible, or moving text
        for field in ("patient", "region"):
            with pytest.raises(StoreError, match="printable characters"):
                make_case("exam", **{field: odd})
        with pytest.raises(StoreError, match="case name"):
            make_case(odd)
    assert store.search().total == 0


def test_a_malformed_case_id_or_page_is_refused_without_a_query(store, make_case):
    make_case("exam")
    for case_id in ("\x00", "a\x00b", "../x", "x" * 5000, "ABCDEF012345"):
        with pytest.raises(NotFound):
            store.case(case_id)
        with pytest.raises(NotFound):
            store.delete_case(case_id)
    with pytest.raises(StoreError, match="offset 0 to"):
        store.search(offset=10**20)


def test_a_case_keeps_its_exam_fields_and_two_cases_may_share_a_name(store, make_case, clock):
    first = make_case("colon", patient="P-01", exam_date=DAY, region="rectum", frames_announced=120)
    clock.advance(1)
    second = make_case("colon")
    assert first.id != second.id
    assert (first.patient, first.exam_date, first.region, first.day) == ("P-01", DAY, "rectum", DAY)
    assert second.day == clock.now.date() and second.patient is None
    assert (first.status, first.frames_announced, first.reviewed) == (CaseStatus.QUEUED, 120, False)
    assert store.case(first.id) == first


def _done(store, verdict: str | None, score: float | None = None) -> None:
    job = store.claim("worker")
    store.finish(job, CaseResult(verdict, verdict or "no informative frames", "v1", score=score))


@pytest.fixture
def cohort(store, make_case, clock):
    """Six cases over three days and two patients; the first three processed, one of them reviewed."""
    reviewer = store.authenticate(store.add_user("dr r", "reviewer"))
    made = []
    for i, (patient, day) in enumerate([("P-01", 1), ("P-02", 2), ("P-01", 3), ("P-02", 3), ("P-03", 5),
                                        (None, None)]):
        clock.advance(60)
        exam = DAY + dt.timedelta(days=day) if day is not None else None
        made.append(make_case(f"case {i} 50%_off", patient=patient, exam_date=exam))
    for verdict in ("active", "healed", None):
        _done(store, verdict, 0.5)
    store.add_review(made[1].id, reviewer, "healed", True)
    return made


@pytest.mark.parametrize("filters, expected", [
    ({}, [5, 4, 3, 2, 1, 0]),
    ({"patient": "P-01"}, [2, 0]),
    ({"since": DAY + dt.timedelta(days=2), "until": DAY + dt.timedelta(days=3)}, [3, 2, 1]),
    ({"verdict": "active"}, [0]),
    ({"reviewed": True}, [1]),
    ({"reviewed": False, "status": "done"}, [2, 0]),
    ({"name": "CASE 3"}, [3]),
    ({"name": "0%_"}, [5, 4, 3, 2, 1, 0]),
    ({"name": "5_%"}, []),  # `%` and `_` are plain characters, not wildcards
    ({"patient": "P-02", "since": DAY + dt.timedelta(days=3)}, [3]),
    ({"since": "2025-03-04", "until": dt.datetime(2025, 3, 4, 23, tzinfo=dt.timezone.utc)}, [3, 2]),
])
def test_search_filters_newest_first(store, cohort, filters, expected):
    page = store.search(**filters)
    assert [c.id for c in page.cases] == [cohort[i].id for i in expected]
    assert page.total == len(expected)
    assert all(c.detail is None for c in page.cases)


def test_search_pages_through_every_case_once(store, cohort):
    seen = []
    for offset in range(0, 6, 4):
        page = store.search(limit=4, offset=offset)
        assert page.total == 6
        seen += [c.id for c in page.cases]
    assert seen == [c.id for c in reversed(cohort)]
    with pytest.raises(StoreError, match="page"):
        store.search(limit=0)


@pytest.mark.parametrize("filters", [{}, {"name": "case"}])
def test_every_page_counts_all_the_matches_past_the_end_too(store, cohort, filters):
    for limit, offset in [(3, 3), (4, 4), (5, 6), (2, 50)]:  # full to the end, not full, empty, far past the end
        page = store.search(limit=limit, offset=offset, **filters)
        assert page.total == 6
        assert [c.id for c in page.cases] == [c.id for c in reversed(cohort)][offset:offset + limit]


def test_a_deleted_case_leaves_every_list_and_its_job_is_cancelled(store, make_case):
    kept, deleted = make_case("kept"), make_case("deleted")
    store.delete_case(deleted.id, model_version="best.ckpt:0123")  # not judged yet: the model that was to
    assert [c.id for c in store.search().cases] == [kept.id]
    with pytest.raises(NotFound):
        store.case(deleted.id)
    with pytest.raises(NotFound):
        store.delete_case(deleted.id)
    assert store.job_counts()["queued"] == 1
    assert store.claim("w").case_id == kept.id
    assert store.claim("w") is None
    assert [e.action for e in store.audit_log(case_id=deleted.id)] == ["case.delete", "case.add"]
    assert store.audit_log(case_id=deleted.id)[0].model_version == "best.ckpt:0123"


def test_the_count_of_every_case_follows_each_add_and_delete_whoever_makes_it(store, make_case):
    """A list of every case reads its count from one row the database's triggers keep (revision 0005), not by
    counting: adding and deleting, and deleting or undeleting by plain SQL from another writer, must move it."""
    from sqlalchemy import create_engine, text

    admin = store.authenticate(store.add_user("dr admin", "admin"))
    made = [make_case(f"exam {k}").id for k in range(3)]
    assert store.search(limit=1).total == 3 and store.listing(limit=1).total == 3  # a full page: the kept count
    store.delete_case(made[0], by=admin)
    assert store.search(limit=1).total == 2
    other = create_engine(store.place.url)
    try:
        with other.begin() as connection:
            connection.execute(text("UPDATE cases SET deleted_at = created_at WHERE id = :id"), {"id": made[1]})
        assert store.search(limit=1).total == 1 == len(store.search().cases)
        with other.begin() as connection:
            connection.execute(text("UPDATE cases SET deleted_at = NULL WHERE id IN (:a, :b)"),
                               {"a": made[0], "b": made[1]})
            connection.execute(text("UPDATE cases SET region = 'ileum' WHERE id = :id"), {"id": made[2]})
        assert store.search(limit=1).total == 3 == len(store.search().cases)
    finally:
        other.dispose()


def test_a_blank_patient_or_verdict_matches_no_case_and_the_count_says_so_from_any_offset(store, make_case):
    """A blank patient id or verdict is a condition that no case meets (``patient = ''``), not "no filter": the
    count of a page past the matches gave every live case's count (the kept ``case_counts``) for 0 matches."""
    for k in range(3):
        make_case(f"exam {k}", patient="P-1")
    for blank in ({"patient": ""}, {"verdict": ""}):
        for offset in (0, 1, 5):
            assert (store.search(**blank, offset=offset).total, store.listing(**blank, offset=offset).total) == (0, 0)
    assert store.search(text="", name="", offset=5).total == 3  # empty text filters are no filter
