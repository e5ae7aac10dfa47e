"""The store-backed API of the contract (/work/notes/api-contract.md): who is asking, exam fields, filters,
reviews, roles, the running audit and the audit log; on SQLite, and the cheap parts again on PostgreSQL."""

import datetime as dt
import time

import pytest

from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EXAM = {"patient": "P-0042", "exam_date": "2025-03-04", "region": "terminal ileum"}


@pytest.fixture(autouse=True)
def every_token_cheap(cheap_tokens):
    """Tokens hashed at a low cost."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request, tmp_path_factory):
    """``serving`` settings of a store on each backend."""
    if request.param == "sqlite":
        return {}
    cluster = request.getfixturevalue("postgres")
    return {"store": cluster.new_database(), "media": tmp_path_factory.mktemp("shared-media")}


@pytest.fixture(scope="module")
def served(engine, backend, frame_png, black_png):
    """A server on its own store, with two done image cases of two patients (one with exam fields)."""
    with serving(engine, **backend) as (client, _):
        first = upload(client, "/v1/cases?name=biopsy%20one", frame_png, data=EXAM).json()["id"]
        second = upload(client, "/v1/cases", black_png, frame_png, data={"patient": "P-0007"}).json()["id"]
        yield client, wait_done(client, first), wait_done(client, second)


def test_me_is_local_admin_without_users(served, backend):
    client, _, _ = served
    assert client.get("/v1/me").json() == {"name": "local", "role": "admin",
                                           "store": {"backend": "postgresql" if backend else "sqlite"}}


def test_exam_fields_are_kept_and_checked(served, frame_png):
    client, first, second = served
    assert {k: first[k] for k in EXAM} == EXAM and first["model_version"].startswith("run/best.ckpt:")
    assert second["exam_date"] is None and second["region"] is None and second["patient"] == "P-0007"
    assert first["reviewed"] is False and first["review"] is None and first["reviews"] == []
    tomorrow = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    for fields, named in (({"exam_date": "04/03/2025"}, "exam_date"), ({"exam_date": tomorrow}, "exam_date"),
                          ({"patient": "x" * 65}, "patient"), ({"region": "a\x01b"}, "region")):
        answer = upload(client, "/v1/cases", frame_png, data=fields)
        assert answer.status_code == 422 and answer.json()["detail"].startswith(named + ":"), answer.text
    report = client.get(f"/v1/cases/{first['id']}/report.json").json()
    assert report["exam"] == EXAM and report["model"]["model_version"] == first["model_version"]


def test_filters_and_total_count(served):
    client, first, second = served

    def ids(**params):
        answer = client.get("/v1/cases", params=params)
        assert answer.status_code == 200, answer.text
        return [c["id"] for c in answer.json()], int(answer.headers["x-total-count"])

    assert ids() == ([second["id"], first["id"]], 2)  # newest first
    assert ids(patient="P-0042") == ([first["id"]], 1)
    assert ids(q="biopsy") == ([first["id"]], 1) and ids(q="0007") == ([second["id"]], 1)
    assert ids(since="2025-03-04", until="2025-03-04") == ([first["id"]], 1)
    assert ids(verdict=first["verdict"]["class"])[0][-1] == first["id"] and ids(verdict="none") == ([], 0)
    assert ids(limit=1) == ([second["id"]], 2) and ids(limit=1, offset=1) == ([first["id"]], 2)
    for bad in ({"limit": 0}, {"limit": 501}, {"since": "March"}, {"reviewed": "maybe"}, {"offset": -1}):
        answer = client.get("/v1/cases", params=bad)
        assert answer.status_code == 422 and next(iter(bad)) in answer.json()["detail"]


def test_nul_and_odd_values_are_refused_before_the_database(served):
    """On PostgreSQL a NUL reached the database and came back as 503 "the database cannot be used" (retry!)."""
    client, first, _ = served
    for params in ({"q": "a\x00b"}, {"patient": "\x00"}, {"verdict": "a\x00"}, {"offset": "99999999999999999999"}):
        answer = client.get("/v1/cases", params=params)
        assert answer.status_code == 422 and next(iter(params)) in answer.json()["detail"], answer.text
    note = {"histology": client.get("/v1/model").json()["classes"][0], "agrees": True, "note": "a\x00b"}
    answer = client.post(f"/v1/cases/{first['id']}/review", json=note)
    assert answer.status_code == 422 and "note" in answer.json()["detail"], answer.text
    for method, path in (("GET", "%00"), ("DELETE", "%00"), ("GET", "%00/frames/0.png"), ("POST", "%00/review"),
                         ("GET", "%00/report.json")):
        answer = client.request(method, f"/v1/cases/{path}", json={**note, "note": ""})
        assert answer.status_code == 404, (method, path, answer.text)
    assert not first["reviewed"] and not client.get(f"/v1/cases/{first['id']}").json()["reviews"]


def test_reviews_roles_audit_and_the_log(served, backend):
    client, first, second = served
    store = client.app.state.store
    card = client.get("/v1/model").json()
    assert client.get("/v1/audit/calibration.png").status_code == 409
    viewer, reviewer = store.add_user("vera" + str(id(backend)), "viewer"), store.add_user(
        "rita" + str(id(backend)), "reviewer")
    as_viewer, as_reviewer = {"Authorization": f"Bearer {viewer}"}, {"Authorization": f"Bearer {reviewer}"}
    assert client.get("/v1/me").status_code == 401  # users now: no request without a token
    assert client.get("/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/me", params={"token": viewer}).json()["role"] == "viewer"
    url = f"/v1/cases/{first['id']}/review"
    called = first["verdict"]["class"]
    body = {"histology": card["classes"][0], "agrees": card["classes"][0] == called, "note": "biopsy 3"}
    assert client.post(url, json=body, headers=as_viewer).status_code == 403
    contradiction = client.post(url, json={**body, "agrees": not body["agrees"]}, headers=as_reviewer)
    assert contradiction.status_code == 422 and contradiction.json()["detail"].startswith(
        f"agrees: {str(not body['agrees']).lower()} contradicts the histology"), contradiction.text
    assert client.post(url, json={**body, "histology": "tumour"}, headers=as_reviewer).status_code == 422
    assert client.post("/v1/cases/nosuch/review", json=body, headers=as_reviewer).status_code == 404
    review = client.post(url, json=body, headers=as_reviewer)
    assert review.status_code == 201, review.text
    review = review.json()
    assert set(review) == {"id", "case_id", "reviewer", "histology", "agrees", "note", "at", "model_version",
                           "verdict", "verdict_text"}
    assert review["verdict"] == first["verdict"]["class"] and review["model_version"] == first["model_version"]
    later = client.post(url, json={**body, "histology": card["classes"][1], "agrees": card["classes"][1] == called},
                        headers=as_reviewer).json()
    case = client.get(f"/v1/cases/{first['id']}", headers=as_viewer).json()
    assert [r["id"] for r in case["reviews"]] == [review["id"], later["id"]] and case["review"] == later
    listed = client.get("/v1/cases", params={"reviewed": "true"}, headers=as_viewer).json()
    assert [c["id"] for c in listed] == [first["id"]] and listed[0]["review"] == later
    report = client.get(f"/v1/cases/{first['id']}/report.json", headers=as_viewer).json()
    assert report["review"]["reviewer"] == later["reviewer"] and report["review"]["histology"] == card["classes"][1]
    audit = client.get("/v1/audit", headers=as_viewer).json()
    assert audit["classes"] == card["classes"] and audit["overall"]["cases"] == 1
    assert list(audit["by_model"]) == [first["model_version"]] and list(audit["by_month"]) == ["2025-03"]
    assert client.get("/v1/audit", params={"since": "2025-04-01"}, headers=as_viewer).json()["overall"]["cases"] == 0
    picture = client.get("/v1/audit/calibration.png", headers=as_viewer)
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert client.delete(f"/v1/cases/{second['id']}", headers=as_reviewer).status_code == 403
    admin = store.add_user("ada" + str(id(backend)), "admin")
    assert client.delete(f"/v1/cases/{second['id']}", headers={"Authorization": f"Bearer {admin}"}).status_code == 204
    log = {(e.action, e.actor) for e in store.audit_log(case_id=first["id"])}
    assert {("case.add", "local"), ("case.open", "local"), ("case.review", review["reviewer"])} <= log
    deleted = store.audit_log(case_id=second["id"])[0]
    assert deleted.action == "case.delete" and deleted.actor.startswith("ada") and deleted.model_version


def test_a_case_not_done_cannot_be_reviewed(engine, frame_png, monkeypatch):
    release = __import__("threading").Event()

    def held(sources, store=None, cancel=None, warnings=None, patient=None):
        release.wait(30)
        yield from ()

    monkeypatch.setattr(engine, "frames", held)
    with serving(engine) as (client, _):
        case_id = upload(client, "/v1/cases", frame_png).json()["id"]
        answer = client.post(f"/v1/cases/{case_id}/review", json={"histology": "x", "agrees": True})
        assert answer.status_code == 409 and "only a finished case" in answer.json()["detail"]
        release.set()


def test_token_alone_is_one_admin(engine):
    with serving(engine, token="s3cret-0123456789") as (client, _):
        assert client.get("/v1/me").status_code == 401
        assert client.get("/v1/me", params={"token": "s3cret-0123456789"}).json()["role"] == "admin"


def test_cases_survive_a_restart(engine, frame_png, black_png, tmp_path):
    store = tmp_path / "store"
    with serving(engine, store=str(store)) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", frame_png, black_png, frame_png, data=EXAM).json()["id"])
        frame = client.get(f"/v1/cases/{case['id']}/frames/2.jpg").content
        cam = client.get(f"/v1/cases/{case['id']}/frames/0.png", params={"gradcam": 1}).content
    with serving(engine, store=str(store)) as (client, _):
        again = client.get(f"/v1/cases/{case['id']}").json()
        for key in ("status", "verdict", "timeline", "patient", "exam_date", "region", "frames_done", "created",
                    "finished", "files"):
            assert again[key] == case[key], key
        assert client.get(f"/v1/cases/{case['id']}/frames/2.jpg").content == frame
        assert client.get(f"/v1/cases/{case['id']}/frames/0.png", params={"gradcam": 1}).content == cam
        assert client.get(f"/v1/cases/{case['id']}/report.pdf").status_code == 200
        assert [c["id"] for c in client.get("/v1/cases").json()] == [case["id"]]
        start = time.monotonic()
        events = client.get(f"/v1/cases/{case['id']}/events").text
        assert '"status": "done"' in events and time.monotonic() - start < 10


def test_a_list_shows_what_another_writer_changed_and_its_kept_summaries_are_exact(served):
    """A list keeps each finished case's checked summary by its id and version: a change written by anyone else
    (another server, plain SQL) is shown at once, and kept summaries give the very bytes a fresh build gives."""
    from sqlalchemy import create_engine, text

    from mucosa.service.summaries import Summaries

    client, first, _ = served
    token = client.app.state.store.add_user(f"lisa{time.monotonic_ns()}", "viewer")
    client.headers["Authorization"] = f"Bearer {token}"  # users may exist already: every request names one
    before = client.get("/v1/cases")
    assert before.status_code == 200 and client.get("/v1/cases").content == before.content  # the second: kept
    fresh, total = Summaries(client.app.state.cases).page(limit=100, offset=0)
    assert fresh == before.content and total == int(before.headers["x-total-count"])
    other = create_engine(client.app.state.store.place.url)
    try:
        with other.begin() as connection:
            connection.execute(text("UPDATE cases SET region = 'sigmoid colon' WHERE id = :id"), {"id": first["id"]})
        shown = {case["id"]: case["region"] for case in client.get("/v1/cases").json()}
        assert shown[first["id"]] == "sigmoid colon"
    finally:
        with other.begin() as connection:
            connection.execute(text("UPDATE cases SET region = :region WHERE id = :id"),
                               {"region": first["region"], "id": first["id"]})
        other.dispose()
        client.headers.pop("Authorization")


def test_a_reviewer_can_say_the_tissue_is_none_of_the_model_classes(served):
    """A colon video under a brain model: only the model's classes could be chosen, so a reviewer had to record a
    false class, which the export then made a training label. The API takes the words for "none of them" (the
    viewer offers them), and still refuses any other name."""
    from mucosa.choices import OUTSIDE_CLASSES

    client, first, _ = served
    token = client.app.state.store.add_user(f"otto{time.monotonic_ns()}", "reviewer")
    auth = {"Authorization": f"Bearer {token}"}
    url = f"/v1/cases/{first['id']}/review"
    refused = client.post(url, json={"histology": "colon", "agrees": False, "note": ""}, headers=auth)
    assert refused.status_code == 422 and OUTSIDE_CLASSES in refused.json()["detail"]
    taken = client.post(url, json={"histology": OUTSIDE_CLASSES, "agrees": False, "note": "colorectal"},
                        headers=auth)
    assert taken.status_code == 201 and taken.json()["histology"] == OUTSIDE_CLASSES, taken.text
    script = client.get("/static/common.js").text  # the viewer offers the same words
    assert f'const OUTSIDE_CLASSES = "{OUTSIDE_CLASSES}";' in script
