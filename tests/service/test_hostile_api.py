"""What a hostile client found in the store-backed API, each refused at its cause: a server opened to anyone by
disabling its users, a /healthz that says what the store holds, client input answered as a database failure
(503), errors naming the store, a full disk as a 500, reads missing from the audit log, a file in a text field
opening a case, and unknown verdicts listed as nothing. Synthetic images only: no real data needed."""

import errno
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from serving import serving, sine_png, upload, wait_done

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(autouse=True)
def every_token_cheap(cheap_tokens):
    """Tokens hashed at a low cost."""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return sine_png(tmp_path_factory.mktemp("sine"))


def one_line(answer, status: int, *words: str) -> str:
    """The answer's one-sentence detail, after checking its status and that it names ``words``."""
    detail = answer.json()["detail"]
    assert answer.status_code == status and "\n" not in detail and all(w in detail for w in words), answer.text
    return detail


def test_local_is_an_admin_only_while_the_store_never_had_another_user(engine):
    with serving(engine) as (client, _):
        assert client.get("/v1/me").json()["name"] == "local"
        assert set(client.get("/healthz").json()) >= {"status", "cases", "queued"}  # local: a user
        store = client.app.state.store
        token = store.add_user("dr who", "admin")
        store.disable_user("dr who")  # every other user disabled: the server stays closed
        assert client.get("/v1/me").status_code == 401
        assert client.get("/v1/cases").status_code == 401
        assert client.get("/healthz").json() == {"status": "ok"}  # liveness only, without a user
        store.enable_user("dr who")
        health = client.get("/healthz", headers={"Authorization": f"Bearer {token}"}).json()
        assert health["status"] == "ok" and health["cases"] == 0 and "model" in health


def test_a_chosen_token_is_its_own_admin_and_healthz_tells_it_alone_what_the_store_holds(engine):
    with serving(engine, token="the laptop token, 16+") as (client, _):
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/me").status_code == 401
        me = client.get("/v1/me", params={"token": "the laptop token, 16+"}).json()
        assert me["role"] == "admin" and me["name"].startswith("token-")
        health = client.get("/healthz", params={"token": "the laptop token, 16+"}).json()
        assert health["cases"] == 0 and health["queued"] == 0


def test_bad_client_input_is_a_4xx_naming_the_field_never_a_database_failure(engine, image, tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.png").write_bytes(image.read_bytes())
    with serving(engine, data_root=str(tmp_path / "root")) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", image).json()["id"])
        before = client.get("/v1/cases").headers["x-total-count"]
        for name in ("  ", "a\nb", "a\u202eb", "a\u0085b"):
            one_line(upload(client, "/v1/cases", image, params={"name": name}), 422, "name:")
            one_line(client.post("/v1/cases", json={"path": "a.png", "name": name}), 422, "name:")
        one_line(client.post("/v1/cases", json={"path": "a.png", "name": "a\u0000b"}), 422, "name")
        for field, value in (("region", "ileum\u202eP01"), ("patient", "P\u200b01"), ("patient", "a\u2028b"),
                             ("exam_date", "20250304"), ("exam_date", "2025-W10-2"), ("exam_date", "1899-12-31")):
            one_line(upload(client, "/v1/cases", image, data={field: value}), 422, f"{field}:")
        with open(image, "rb") as handle:  # a file in a text field is no second video
            answer = client.post("/v1/cases", files=[("file", ("a.png", handle.read())),
                                                      ("patient", ("clip.avi", b"RIFF...."))])
        one_line(answer, 422, "'patient' holds a file", "'file'")
        for params, field in (({"q": "a\x00b"}, "q:"), ({"patient": "a\x00b"}, "patient:"),
                              ({"patient": "a\u202eb"}, "patient:"), ({"verdict": "a\x00b"}, "verdict:"),
                              ({"offset": "99999999999999999999"}, "offset"), ({"since": "1800-01-01"}, "since")):
            one_line(client.get("/v1/cases", params=params), 422, field)
        classes = client.get("/v1/model").json()["classes"]
        detail = one_line(client.get("/v1/cases", params={"verdict": "Active"}), 422, "verdict:", "unfamiliar", "none")
        assert all(c in detail for c in classes)
        note = {"histology": classes[0], "agrees": True, "note": "biopsy\x00 3"}
        one_line(client.post(f"/v1/cases/{case['id']}/review", json=note), 422, "note")
        lines = {**note, "note": "biopsy 3\nsecond line\ttabbed"}  # a note keeps its lines
        assert client.post(f"/v1/cases/{case['id']}/review", json=lines).status_code == 201
        for bad in ("%00", "a%00b", "%E2%80%AE", "x" * 300):
            for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/frames/0.png"), ("GET", "/report.json"),
                                 ("POST", "/review")):
                answer = client.request(method, f"/v1/cases/{bad}{path}", json=note if method == "POST" else None)
                assert answer.status_code in (404, 422), (method, bad, path, answer.text)
        assert client.get("/v1/cases").headers["x-total-count"] == before  # nothing was created


def test_store_failures_never_name_the_store_and_a_full_disk_is_507(engine, image, monkeypatch):
    from mucosa.atomic import write_error
    from mucosa.store.location import locate
    from mucosa.store.schema import database_error

    with serving(engine) as (client, _):
        store = client.app.state.store
        full = database_error(store.place, OperationalError("INSERT", {}, sqlite3.OperationalError(
            f"database or disk is full: {store.place.database_file}")))
        remote = database_error(locate("postgresql+psycopg://mucosa@db.unit.local/cases", "/mnt/media"),
                                OperationalError("SELECT", {}, Exception('connection to server at "db.unit.local" '
                                                                         'failed: FATAL: role "mucosa" is locked')))
        assert "db.unit.local" in str(remote) and str(store.place.folder) in str(full)  # the operator's message

        def raises(error):
            def fail(*args, **kwargs):
                raise error
            return fail

        with monkeypatch.context() as patch:
            patch.setattr(store, "add_case", raises(full))
            answer = upload(client, "/v1/cases", image)
        detail = one_line(answer, 507, "full", "operator")
        with monkeypatch.context() as patch:
            patch.setattr(store, "put_media", raises(write_error(OSError(errno.ENOSPC, "No space left on device"),
                                                                 store.media.root)))
            answer = upload(client, "/v1/cases", image)
        assert one_line(answer, 507) == detail
        with monkeypatch.context() as patch:
            patch.setattr(store, "listing", raises(remote))  # what a list reads first
            answer = client.get("/v1/cases")
        detail = one_line(answer, 503, "cannot be used")
        assert answer.headers["retry-after"]
        for shown in (detail, *(r.json()["detail"] for r in [answer])):
            for secret in ("db.unit.local", "mucosa@", "postgresql", str(store.place.folder), "/mnt/media"):
                assert secret not in shown
        assert client.get("/v1/cases").status_code == 200


def test_the_audit_log_records_reports_exports_similar_and_a_running_case_deleted(engine, image, monkeypatch):
    with serving(engine) as (client, _):
        store, version = client.app.state.store, client.app.state.model_version
        case = wait_done(client, upload(client, "/v1/cases", image).json()["id"])
        for what in ("report.json", "report.html", "report.pdf", "timeline.csv", "similar"):
            assert client.get(f"/v1/cases/{case['id']}/{what}").status_code in (200, 409, 501), what
        client.get(f"/v1/cases/{case['id']}/frames/0.jpg")  # a frame image is no line of its own
        lines = [(e.action, e.actor, (e.detail or {}).get("as")) for e in store.audit_log(case_id=case["id"])]
        for form in ("report.json", "report.html", "report.pdf"):
            assert ("case.report", "local", form) in lines or form == "report.pdf", lines
        assert ("case.export", "local", "timeline.csv") in lines
        assert all(action != "case.frame" for action, _, _ in lines)

        release = __import__("threading").Event()

        def held(sources, store=None, cancel=None, warnings=None, patient=None):
            release.wait(30)
            yield from ()

        monkeypatch.setattr(engine, "frames", held)
        running = upload(client, "/v1/cases", image).json()["id"]
        assert client.delete(f"/v1/cases/{running}").status_code == 204
        release.set()
        deleted = store.audit_log(case_id=running)[0]
        assert deleted.action == "case.delete" and deleted.model_version == version
