"""Reviews and the audit log are append-only: a later review never overwrites an earlier one, and the database
itself refuses to change or remove a row of either."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from mucosa.store import CaseResult, InvalidReview, NotFound, StoreError


@pytest.fixture
def reviewed(store, make_case):
    """A finished case and two reviewers."""
    first = store.authenticate(store.add_user("dr first", "reviewer"))
    second = store.authenticate(store.add_user("dr second", "admin"))
    case = make_case("exam")
    store.finish(store.claim("w"), CaseResult("active", "active disease", "v7", score=0.8))
    return case, first, second


def test_a_later_review_is_added_beside_the_earlier_one(store, reviewed, clock):
    case, first, second = reviewed
    store.add_review(case.id, first, "active", True, "typical crypt architecture")
    clock.advance(3600)
    store.add_review(case.id, second, "healed", False, "histology came back: healed")
    history = store.reviews(case.id)
    assert [(r.reviewer, r.histology, r.agrees) for r in history] == [("dr first", "active", True),
                                                                       ("dr second", "healed", False)]
    assert history[0].note == "typical crypt architecture" and history[1].created_at > history[0].created_at
    assert all((r.model_version, r.verdict, r.score) == ("v7", "active", 0.8) for r in history)
    assert store.case(case.id).reviewed


def test_only_a_finished_live_case_can_be_reviewed(store, reviewed, make_case):
    case, first, _ = reviewed
    waiting = make_case("waiting")
    with pytest.raises(StoreError, match="queued: only a finished case"):
        store.add_review(waiting.id, first, "active", True)
    with pytest.raises(NotFound):
        store.add_review("nope", first, "active", True)
    with pytest.raises(InvalidReview, match="agrees must be true or false"):
        store.add_review(case.id, first, "active", "yes")
    assert store.reviews(case.id) == []


def test_a_review_cannot_contradict_itself_when_the_verdict_is_a_class(store, reviewed, make_case):
    case, first, _ = reviewed  # its verdict: active
    with pytest.raises(InvalidReview, match="agrees: false contradicts the histology: 'active' is the verdict's "
                                            "class 'active', so agrees must be true"):
        store.add_review(case.id, first, "active", False)
    with pytest.raises(InvalidReview, match="'healed' is not the verdict's class 'active', so agrees must be false"):
        store.add_review(case.id, first, "healed", True)
    assert store.reviews(case.id) == [] and not store.case(case.id).reviewed
    unfamiliar = make_case("unlike any")  # no class for a verdict: agrees is the reviewer's judgement of that
    store.finish(store.claim("w"), CaseResult(None, "unfamiliar", "v7"))
    store.add_review(unfamiliar.id, first, "active", False, "should have been called active")
    store.add_review(unfamiliar.id, first, "healed", True, "right not to call it")
    assert [r.agrees for r in store.reviews(unfamiliar.id)] == [False, True]


@pytest.mark.parametrize("statement", [
    "UPDATE reviews SET histology = 'healed'",
    "DELETE FROM reviews",
    "UPDATE audit_log SET actor = 'someone else'",
    "DELETE FROM audit_log",
])
def test_the_database_refuses_to_change_or_remove_reviews_and_audit_lines(store, reviewed, statement):
    case, first, _ = reviewed
    store.add_review(case.id, first, "active", True)
    before = (store.reviews(case.id), store.audit_log())
    engine = create_engine(store.place.url.render_as_string(hide_password=False))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    engine.dispose()
    assert (store.reviews(case.id), store.audit_log()) == before


def test_the_audit_log_says_who_did_what_when_with_the_model(store, reviewed, clock):
    case, first, second = reviewed
    clock.advance(10)
    store.add_review(case.id, first, "active", True)
    store.record(second, "case.open", case.id, "v7", {"from": "viewer"})
    newest = store.audit_log(limit=2)
    assert [(e.actor, e.action, e.case_id, e.model_version) for e in newest] == [
        ("dr second", "case.open", case.id, "v7"), ("dr first", "case.review", case.id, "v7")]
    assert newest[0].at == clock.now and newest[0].detail == {"from": "viewer"}
    assert [e.action for e in store.audit_log(case_id=case.id)] == ["case.open", "case.review", "case.done",
                                                                     "case.add"]
    assert [e.action for e in store.audit_log(actor="dr first")] == ["case.review"]
    assert store.audit_log(since=clock.now) == newest


def test_lines_recorded_at_once_are_each_written_before_their_call_returns(store, reviewed):
    case, first, _ = reviewed
    before = len(store.audit_log(limit=1000))

    def open_case(k: int) -> bool:
        store.record(first, "case.open", case.id, detail={"k": k})
        return any(e.detail == {"k": k} for e in store.audit_log(case_id=case.id, limit=1000))

    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(open_case, range(40)))
        refused = pool.submit(store.record, first, "case.open", "no such case")  # the database refuses it
    assert all(written) and len(store.audit_log(limit=1000)) == before + 40
    with pytest.raises(StoreError):
        refused.result()


def test_every_change_of_a_case_raises_its_version_whoever_makes_it(store, reviewed, place):
    """Servers keep what a list shows of a finished case by its id and version (mucosa.service.summaries): the
    version must grow with any write, a review that changes no column of the case's row and a plain SQL update
    by another writer included, on both databases (the trigger of revision 0005)."""
    from sqlalchemy import create_engine, text

    case, first, second = reviewed
    seen = [store.case(case.id, detail=False).version]
    store.add_review(case.id, first, "active", True)  # sets "reviewed"
    seen.append(store.case(case.id, detail=False).version)
    store.add_review(case.id, second, "healed", False)  # changes no column of the case's row
    seen.append(store.case(case.id, detail=False).version)
    other = create_engine(store.place.url)  # another writer, without the library
    with other.begin() as connection:
        connection.execute(text("UPDATE cases SET region = 'sigmoid' WHERE id = :id"), {"id": case.id})
    other.dispose()
    seen.append(store.case(case.id, detail=False).version)
    assert seen == sorted(set(seen)) and len(seen) == 4, seen
    listed = store.listing(limit=5)
    assert listed.versions == ((case.id, seen[-1]),) and listed.total == 1
    assert store.cases([case.id, "0" * 12])[case.id].region == "sigmoid"
    store.delete_case(case.id, by=second)
    assert store.listing().versions == () and store.cases([case.id]) == {}
