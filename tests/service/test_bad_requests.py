"""Requests the service must refuse with a 4xx and one readable sentence, never a 500, a server path, its
process id or an error number; and paths that must not lead out of ``--data-root``."""

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from media import files_under
from mucosa.service.app import create_app
from mucosa.service.settings import ServeSettings
from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def assert_private(detail, *folders):
    """``detail`` is one sentence that names none of the server's folders, its process id or an errno."""
    assert isinstance(detail, str) and detail, detail
    for folder in folders:
        assert str(folder) not in detail, detail
    assert "mucosa-serve" not in detail and str(os.getpid()) not in detail and "errno" not in detail.lower(), detail


@pytest.fixture
def data_root(tmp_path, frame_png):
    """A data root with a folder of images, and beside it an image outside the root."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(frame_png.read_bytes())
    (tmp_path / "secret.png").write_bytes(frame_png.read_bytes())
    return root


@pytest.mark.slow
def test_a_link_inside_a_named_folder_cannot_lead_out_of_the_data_root(engine, data_root):
    (data_root / "mixed").mkdir()
    (data_root / "mixed" / "a.png").symlink_to(data_root / "images" / "a.png")  # inside: fine
    (data_root / "mixed" / "b.png").symlink_to(data_root.parent / "secret.png")
    (data_root / "inner").mkdir()
    (data_root / "inner" / "a.png").symlink_to("../images/a.png")
    with serving(engine, data_root=data_root) as (client, root):
        for body in ({"path": "mixed"}, {"paths": ["images/a.png", "mixed/b.png"]}):
            response = client.post("/v1/cases", json=body)
            assert response.status_code == 403, response.text
            detail = response.json()["detail"]
            assert detail.startswith("mixed/b.png: outside the server's --data-root")
            assert_private(detail, data_root, root)
        assert client.get("/v1/cases").json() == []
        case = wait_done(client, client.post("/v1/cases", json={"path": "inner"}).json()["id"])
        assert case["status"] == "done" and case["files"] == ["a.png"]


@pytest.fixture(scope="module")
def rooted(engine, frame_png, tmp_path_factory):
    """A server whose data root holds a folder of images, a link to itself and a folder with a loop of links;
    yields (client, data root, the server's temporary folder)."""
    data_root = tmp_path_factory.mktemp("data-root")
    (data_root / "images").mkdir()
    (data_root / "images" / "a.png").write_bytes(frame_png.read_bytes())
    (data_root / "loop.png").symlink_to("loop.png")
    (data_root / "looping").mkdir()
    (data_root / "looping" / "x.png").symlink_to("y.png")
    (data_root / "looping" / "y.png").symlink_to("x.png")
    with serving(engine, data_root=data_root) as (client, root):
        yield client, data_root, root


DEEP = '{"path": ' + "[" * 20_000 + "]" * 20_000 + "}"  # under the 64 KB a JSON body may have


@pytest.mark.slow
@pytest.mark.parametrize("body, words", [
    ({"path": "images/a\x00.png"}, "NUL"),
    ({"path": "x" * 5000}, "at most 1024 characters"),
    ({"path": "y" * 300}, "too long"),
    ({"path": "loop.png"}, "loop.png: a loop of symbolic links"),
    ({"path": "looping"}, "looping/x.png: a loop of symbolic links"),
    ({"path": "images", "name": 5}, "name: input should be a valid string"),
    ({"path": "images", "name": ["a", "b"]}, "name: input should be a valid string"),
    ({"paths": "."}, "paths: input should be a valid array"),
    ({"paths": []}, "paths"),
    ({"path": ""}, "path"),
    ({"path": "images", "paths": ["images"]}, 'send {"path"'),
    ({"path": "images", "extra": 1}, "extra"),
    ([], "object"),
    (DEEP, "recursion"),
    ("{", "JSON")], ids=["nul", "5000-characters", "name-too-long", "link-loop", "loop-in-folder", "name-number",
                         "name-list", "paths-string", "paths-empty", "path-empty", "path-and-paths",
                         "unknown-field", "array", "deeply-nested", "not-json"])
def test_malformed_case_requests_are_422_with_one_sentence(rooted, body, words):
    client, data_root, root = rooted
    if isinstance(body, str):
        response = client.post("/v1/cases", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/cases", json=body)
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert words.lower() in detail.lower() and len(detail) < 400, detail
    assert_private(detail, data_root, root)
    assert client.get("/v1/cases").json() == []  # no case was opened
    assert files_under(root) == []  # and no file left behind


@pytest.mark.slow
def test_request_validation_errors_are_one_sentence(client_with_case):
    client, case_id = client_with_case
    for method, url, words in (("get", f"/v1/cases/{case_id}?since=-1", "since"),
                               ("get", f"/v1/cases/{case_id}/frames/first.png", "number"),
                               ("get", f"/v1/cases/{case_id}/report.html?download=maybe", "download"),
                               ("post", "/v1/predict?gradcam=maybe", "gradcam")):
        response = getattr(client, method)(url)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail and "[" not in detail, detail


@pytest.fixture
def client_with_case(engine, frame_png):
    with serving(engine) as (client, root):
        case = wait_done(client, upload(client, "/v1/cases", frame_png).json()["id"])
        yield client, case["id"]


@pytest.mark.slow
def test_no_stored_case_breaks_the_list(engine, frame_png):
    from sqlalchemy import create_engine, update

    from mucosa.store.tables import CaseRow

    with serving(engine) as (client, root):
        good = wait_done(client, upload(client, "/v1/cases", frame_png).json()["id"])
        broken = wait_done(client, upload(client, "/v1/cases", frame_png).json()["id"])
        database = create_engine(client.app.state.store.place.url)
        with database.begin() as connection:  # a summary that is not one, as an older server could have written
            connection.execute(update(CaseRow).where(CaseRow.id == broken["id"]).values(summary={"verdict": 5}))
        database.dispose()
        response = client.get("/v1/cases")
        assert response.status_code == 200, response.text
        assert [c["id"] for c in response.json()] == [good["id"]]
        assert client.get("/healthz").json()["cases"] == 2


@pytest.mark.slow
def test_error_details_never_show_server_paths_pids_or_errnos(engine, tmp_path, brain_video, frame_png):
    (tmp_path / "clip.mpg").write_bytes(b"\x00\x00\x01\xba" + b"\x00" * 4000)
    (tmp_path / "fragment.mpg").write_bytes(brain_video.read_bytes()[:2048])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    with serving(engine, data_root=tmp_path) as (client, root):
        for name in ("clip.mpg", "broken.png"):
            for response in (upload(client, "/v1/cases", tmp_path / name),
                             client.post("/v1/cases", json={"path": name})):
                assert response.status_code == 422, response.text
                assert name in response.json()["detail"]
                assert_private(response.json()["detail"], root, tmp_path)
        response = upload(client, "/v1/predict", tmp_path / "broken.png")
        assert response.status_code == 422 and "broken.png" in response.json()["detail"]
        assert_private(response.json()["detail"], root, tmp_path)
        response = upload(client, "/v1/cases", tmp_path / "fragment.mpg")
        if response.status_code == 202:  # the container opens; no frame decodes: the case fails
            case = wait_done(client, response.json()["id"])
            assert case["status"] == "failed" and "fragment.mpg" in case["error"]
            assert_private(case["error"], root, tmp_path)
        else:
            assert_private(response.json()["detail"], root, tmp_path)


@pytest.mark.slow
def test_an_unexpected_error_is_a_json_500_without_details(engine, frame_png, monkeypatch):
    def broken(paths):
        raise RuntimeError(f"{paths[0]}: something went wrong at {time.time()}")

    monkeypatch.setattr(engine, "inspect", broken)
    with TestClient(create_app(engine, ServeSettings()), raise_server_exceptions=False) as client:
        response = upload(client, "/v1/cases", frame_png)
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error (see the server's log)"}
        assert client.get("/v1/cases").json() == []


def test_public_reasons_keep_file_names_only():
    from mucosa.service.engine import public

    root = Path("/tmp/mucosa-serve-4242-ab12")
    said = (f"[Errno 36] cannot open '{root}/cases/c1/upload/0000-clip.mpg' (in {root}, beside "
            f"{root}x/other.png): errno 5")
    assert public(said, [root]) == ("cannot open '0000-clip.mpg' (in the server's folder, beside "
                                    f"{root}x/other.png):")
