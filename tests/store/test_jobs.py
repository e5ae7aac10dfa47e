"""Jobs: claimed once, held under a lease kept alive by heartbeats, taken up again when their worker dies, and
finished in one transaction; two processes share the work without processing a case twice or losing one."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time

import pytest

import store_worker
from mucosa.store import CaseResult, CaseStatus, LeaseLost, StoreError
from mucosa.store.jobs import MAX_ATTEMPTS

RESULT = CaseResult("active", "active disease", "v2", score=0.9, frames_decoded=80, decode_warnings=("frame 3",),
                    detail={"timeline": [0.9, 0.8]}, summary={"dropped": 1})


def test_jobs_are_claimed_oldest_first_and_each_by_one_worker(store, make_case, clock):
    first = make_case("first")
    clock.advance(1)
    second = make_case("second")
    a, b = store.claim("a"), store.claim("b")
    assert (a.case_id, a.worker, a.attempt, b.case_id) == (first.id, "a", 1, second.id)
    assert a.lease_expires == clock.now + dt.timedelta(seconds=60)
    assert store.claim("c") is None
    assert store.case(first.id).status is CaseStatus.RUNNING
    assert store.job_counts()["running"] == 2


def test_finish_writes_the_results_and_ends_the_job_together(store, make_case):
    case = make_case("exam", frames_announced=100)
    done = store.finish(store.claim("a"), RESULT)
    assert (done.status, done.verdict, done.verdict_text, done.score, done.model_version) == (
        CaseStatus.DONE, "active", "active disease", 0.9, "v2")
    assert (done.frames_announced, done.frames_decoded, done.decode_warnings) == (100, 80, ("frame 3",))
    assert done.detail == {"timeline": [0.9, 0.8]} and done.finished_at is not None
    assert done.summary == {"dropped": 1}
    brief = store.case(case.id, detail=False)  # what a list needs, without the detail
    assert (brief.detail, brief.summary, brief.verdict) == (None, {"dropped": 1}, "active")
    assert store.search().cases[0].summary == {"dropped": 1}
    assert store.claim("b") is None
    assert store.job_counts()["done"] == 1
    assert [e.action for e in store.audit_log(case_id=case.id)][:1] == ["case.done"]


def test_a_failed_write_of_the_results_leaves_nothing_half_written(store, make_case):
    case = make_case("exam")
    job = store.claim("a")
    broken = CaseResult("active", "active disease", "v2", score=0.9, detail={"not json": object()})
    with pytest.raises(StoreError):
        store.finish(job, broken)
    seen = store.case(case.id)
    assert (seen.status, seen.verdict, seen.score, seen.detail) == (CaseStatus.RUNNING, None, None, {})
    store.finish(store.heartbeat(job), RESULT)  # the job is still this worker's
    assert store.case(case.id).verdict == "active"


def test_heartbeats_keep_the_lease_and_report_progress(store, make_case, clock):
    case = make_case("exam")
    job = store.claim("a")
    for _ in range(3):
        clock.advance(50)  # 150 s in all, more than the 60 s lease, but never 60 s without a heartbeat
        job = store.heartbeat(job, frames_decoded=10)
        assert store.claim("b") is None
    assert job.lease_expires == clock.now + dt.timedelta(seconds=60)
    assert store.case(case.id).frames_decoded == 10


def test_a_job_whose_lease_expired_is_taken_up_and_its_old_worker_is_fenced_off(store, make_case, clock):
    case = make_case("exam")
    stalled = store.claim("a")
    clock.advance(61)
    taken = store.claim("b")
    assert (taken.case_id, taken.worker, taken.attempt) == (case.id, "b", 2)
    for late in (lambda: store.heartbeat(stalled), lambda: store.finish(stalled, RESULT),
                 lambda: store.fail(stalled, "boom"), lambda: store.release(stalled)):
        with pytest.raises(LeaseLost, match="no longer held by a"):
            late()
    assert store.case(case.id).verdict is None
    store.finish(taken, RESULT)
    assert store.case(case.id).status is CaseStatus.DONE
    assert ("b", "case.retry") in [(e.actor, e.action) for e in store.audit_log(case_id=case.id)]


def test_a_job_that_keeps_killing_its_workers_is_given_up(store, make_case, clock):
    poison, good = make_case("poison"), make_case("good")
    for attempt in range(MAX_ATTEMPTS):
        job = store.claim(f"w{attempt}")
        assert (job.case_id, job.attempt) == (poison.id, attempt + 1)
        clock.advance(61)
    assert store.claim("next").case_id == good.id
    failed = store.case(poison.id)
    assert failed.status is CaseStatus.FAILED and f"after {MAX_ATTEMPTS} attempts" in failed.error


def test_release_and_fail(store, make_case):
    released, failing = make_case("released"), make_case("failing")
    store.release(store.claim("a"))
    assert store.case(released.id).status is CaseStatus.QUEUED
    again = store.claim("b")
    assert (again.case_id, again.attempt) == (released.id, 2)
    job = store.claim("b")
    store.fail(job, "cannot decode the video", ["frame 0 damaged"], "v2")
    seen = store.case(failing.id)
    assert (seen.status, seen.error, seen.decode_warnings) == (CaseStatus.FAILED, "cannot decode the video",
                                                               ("frame 0 damaged",))


def test_deleting_a_running_case_stops_its_worker(store, make_case):
    case = make_case("exam")
    job = store.claim("a")
    store.delete_case(case.id)
    with pytest.raises(LeaseLost):
        store.finish(job, RESULT)
    assert store.search().total == 0 and store.claim("b") is None


def _spawn():
    return multiprocessing.get_context("spawn")


@pytest.mark.slow  # starts other Python processes (seconds each on a busy machine)
def test_two_processes_share_the_work_without_doing_a_case_twice_or_losing_one(place, make_case, tmp_path):
    with place.open(create=True) as store:
        made = {make_case(f"video {i}", target=store).id for i in range(40)}
    context = _spawn()
    start = context.Event()
    outputs = [tmp_path / f"worker{i}.json" for i in range(2)]
    workers = [context.Process(target=store_worker.claim_all, args=(place.location, place.media, f"p{i}", start, out))
               for i, out in enumerate(outputs)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    done = [json.loads(out.read_text()) for out in outputs]
    assert not set(done[0]) & set(done[1])
    assert sorted(done[0] + done[1]) == sorted(made)
    assert all(done), f"one process took every job: {[len(d) for d in done]}"
    with place.open() as store:
        assert store.job_counts()["done"] == 40
        assert {c.detail["worker"] for c in map(store.case, made)} == {"p0", "p1"}
        assert len([e for e in store.audit_log(limit=500) if e.action == "case.done"]) == 40


@pytest.mark.slow  # starts other Python processes (seconds each on a busy machine)
def test_a_job_whose_process_was_killed_is_claimed_again_when_its_lease_expires(place, make_case):
    with place.open(create=True, lease_seconds=1) as store:
        case = make_case("exam", target=store)
        killed = _spawn().Process(target=store_worker.claim_and_die, args=(place.location, place.media, "doomed"))
        killed.start()
        killed.join(60)
        assert killed.exitcode == -9
        assert store.case(case.id).status is CaseStatus.RUNNING and store.claim("survivor") is None
        time.sleep(1.2)
        job = store.claim("survivor")
        assert (job.case_id, job.attempt) == (case.id, 2)
