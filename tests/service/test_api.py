"""Every route and error case of the web service, through FastAPI's TestClient (in process, no socket)."""

import base64
import csv
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from media import files_under
from mucosa.cli import main
from mucosa.data.video import iter_video_frames
from mucosa.errors import ConfigError
from mucosa.service.engine import Engine
from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def leftovers(root: Path) -> list[Path]:
    return files_under(root)


@pytest.fixture(scope="module")
def client(engine):
    with serving(engine) as (client, root):
        yield client


@pytest.fixture(scope="module")
def video_case(client, brain_video):
    """The real 162-frame pCLE video, uploaded and processed."""
    response = upload(client, "/v1/cases", brain_video)
    assert response.status_code == 202, response.text
    return wait_done(client, response.json()["id"])


# ------------------------------------------------------------------------------------------------ service


def test_health_viewer_docs(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["runtime"] in ("torch", "onnx") and health["device"] == "cpu"
    page = client.get("/")
    assert page.status_code == 200 and "viewer.js" in page.text
    for asset in ("viewer.js", "viewer.css", "index.html"):
        assert client.get(f"/static/{asset}").status_code == 200
    for docs in ("/docs", "/redoc"):  # their scripts and styles come from this server, not a CDN
        page = client.get(docs)
        links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert page.status_code == 200 and links and all(link.startswith("/") for link in links), links
        assert all(client.get(link).status_code == 200 for link in links)
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/predict", "/v1/cases", "/v1/cases/{case_id}", "/v1/cases/{case_id}/events",
                  "/v1/cases/{case_id}/frames/{number}.{ext}", "/v1/cases/{case_id}/timeline.csv",
                  "/v1/cases/{case_id}/report.html", "/v1/cases/{case_id}/report.json",
                  "/v1/cases/{case_id}/report.pdf", "/v1/model", "/healthz"):
        assert route in paths
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]


def test_model_card_has_counts_not_ids(client, serve_checkpoint):
    import torch

    card = client.get("/v1/model").json()
    assert card["classes"] == ["control", "active"] and card["positive"] == "active"
    assert card["verdicts"] == {"control": "mucosal healing", "active": "active inflammation"}
    assert card["input_size"] == 64 and card["preprocessing"]["quality_threshold"] == 0.5
    patients = card["training"]["patients"]
    assert set(patients) == {"train", "val", "test"} and all(isinstance(n, int) for n in patients.values())
    assert sum(patients.values()) == 9 and "val_auc" in card["validation"]
    ids = torch.load(serve_checkpoint, weights_only=True)["mucosa"]["split"]["patients"]["train"]
    text = json.dumps(card)
    assert not any(f'"{patient}"' in text for patient in ids) and "manifest" not in text


def test_serves_an_onnx_export_of_its_checkpoint(serve_checkpoint, engine, frame_png, tmp_path):
    import onnx

    from mucosa.inference.onnx import export

    export(serve_checkpoint, tmp_path / "model.onnx")
    exported = Engine(serve_checkpoint, device="cpu", onnx=tmp_path / "model.onnx")
    assert exported.card()["runtime"]["name"] == "onnx" and exported.card()["runtime"]["quantization"] == "none"
    mine, theirs = exported.predict_image(frame_png), engine.predict_image(frame_png)
    assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-4)
    model = onnx.load(tmp_path / "model.onnx")
    for entry in model.metadata_props:
        if entry.key == "classes":
            entry.value = json.dumps(["normal", "inflamed"])
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(ConfigError, match="other.onnx: its SHA-256 is not one"):  # metadata edited: other bytes
        Engine(serve_checkpoint, device="cpu", onnx=tmp_path / "other.onnx")
    for entry in model.metadata_props:  # the right classes, but exported from other weights (stale)
        if entry.key == "classes":
            entry.value = json.dumps(engine.classes)
        elif entry.key == "weights_sha256":
            entry.value = "0" * 64
    onnx.save(model, tmp_path / "stale.onnx")
    with pytest.raises(ConfigError, match="stale.onnx: its SHA-256 is not one"):
        Engine(serve_checkpoint, device="cpu", onnx=tmp_path / "stale.onnx")
    with pytest.raises(ConfigError, match="not found"):
        Engine(serve_checkpoint, device="cpu", onnx=tmp_path / "none.onnx")


def test_bad_threshold_is_an_error(serve_checkpoint):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="threshold"):
            Engine(serve_checkpoint, threshold=bad)


def test_priority_lock_serves_urgent_calls_first_and_background_in_time():
    from mucosa.service.scheduling import PriorityLock

    lock, order = PriorityLock(max_wait=5.0), []

    def call(kind, hold=0.05):
        with getattr(lock, kind)():
            order.append(kind)
            time.sleep(hold)

    with lock.urgent():  # the model is busy; a background frame and then two urgent calls wait
        waiting = [threading.Thread(target=call, args=("background",))]
        waiting[0].start()
        time.sleep(0.05)
        waiting += [threading.Thread(target=call, args=("urgent",)) for _ in range(2)]
        for thread in waiting[1:]:
            thread.start()
        time.sleep(0.05)
    for thread in waiting:
        thread.join()
    assert order == ["urgent", "urgent", "background"]
    # a background caller waits at most max_wait for a stream of urgent ones
    lock.max_wait = 0.3
    stop, order = time.monotonic() + 1.0, []
    flood = [threading.Thread(target=lambda: [call("urgent", 0.02) for _ in range(200)
                                              if time.monotonic() < stop]) for _ in range(3)]
    for thread in flood:
        thread.start()
    time.sleep(0.05)
    start = time.monotonic()
    call("background", 0)
    assert time.monotonic() - start < 0.3 + 0.3
    for thread in flood:
        thread.join()
    # overdue while a slot is free (urgent callers woken but not yet in): it must take the slot, not wait
    lock = PriorityLock(max_wait=0.05)
    lock._urgent = 1  # an urgent caller between being woken and taking the slot
    late = threading.Thread(target=call, args=("background", 0))
    late.start()
    late.join(2)
    assert not late.is_alive(), "the background caller hung with a free slot"
    # with two slots two calls run side by side
    lock, running, peak = PriorityLock(slots=2), [0], [0]

    def hold():
        with lock.urgent():
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            running[0] -= 1

    pair = [threading.Thread(target=hold) for _ in range(3)]
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join()
    assert peak[0] == 2


# ------------------------------------------------------------------------------------------------ predict


def test_predict_real_frame_as_predict_does(client, frame_png, serve_checkpoint, tmp_path):
    from mucosa.inference.batch import predict

    result = upload(client, "/v1/predict", frame_png).json()
    assert not result["dropped"] and 0 <= result["quality"] <= 1
    p = result["probability"]
    assert result["probabilities"]["active"] == pytest.approx(p) and sum(result["probabilities"].values()) == \
        pytest.approx(1)
    assert result["verdict"]["label"] == ("active inflammation" if p >= 0.5 else "mucosal healing")
    assert result["verdict"]["frames"] == 1 and result["gradcam"] is None
    reference = predict(serve_checkpoint, [frame_png], tmp_path / "p")
    assert p == pytest.approx(float(reference.files[0].scores[0]), abs=1e-4)


def test_predict_gradcam_overlay(client, frame_png):
    from PIL import Image

    result = upload(client, "/v1/predict?gradcam=1", frame_png).json()
    head, data = result["gradcam"].split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        assert image.size == (464, 336) and image.mode == "RGB"


def test_predict_dropped_by_quality_gate(client, black_png):
    result = upload(client, "/v1/predict?gradcam=1", black_png).json()
    assert result["dropped"] and result["probabilities"] is None and result["probability"] is None
    assert result["verdict"]["label"] is None and result["verdict"]["frames"] == 0 and result["gradcam"] is None


def test_predict_bad_input(client, brain_video, frame_png, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    checks = [(upload(client, "/v1/predict", brain_video), 415, "a video"),
              (upload(client, "/v1/predict", tmp_path / "notes.txt"), 415, "not an image or video type"),
              (upload(client, "/v1/predict", tmp_path / "broken.png"), 422, "cannot read image"),
              (upload(client, "/v1/predict", frame_png, frame_png), 422, "exactly one image"),
              (client.post("/v1/predict", content=b"raw", headers={"content-type": "image/png"}), 415, "multipart"),
              (client.post("/v1/predict", data={"name": "x"}, files={}), 415, "multipart"),
              (client.post("/v1/predict", files={"note": (None, "text only")}), 422, "exactly one image")]
    for response, status, reason in checks:
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]


def test_predict_sniffs_a_nameless_image(client, frame_png):
    response = client.post("/v1/predict", files={"file": ("upload", frame_png.read_bytes())})
    assert response.status_code == 200 and response.json()["probability"] is not None


def test_non_finite_probability_gives_no_verdict(engine, frame_png, brain_video, monkeypatch):
    monkeypatch.setattr(engine, "predictor", lambda frames: np.full(len(frames), np.nan, np.float32))
    with serving(engine) as (client, root):
        response = upload(client, "/v1/predict", frame_png)
        assert response.status_code == 422 and "non-finite" in response.json()["detail"]
        case = wait_done(client, upload(client, "/v1/cases", brain_video).json()["id"])
        assert case["status"] == "failed" and "non-finite" in case["error"]
        assert case["verdict"]["state"] == "error" and case["verdict"]["label"] is None
        assert case["verdict"]["score"] is None


# ------------------------------------------------------------------------------------------------ limits


def test_upload_over_the_limit(engine, brain_video):
    size = brain_video.stat().st_size
    with serving(engine, max_upload_mb=0.5) as (client, root):
        assert size > 0.5 * 2**20
        response = upload(client, "/v1/cases", brain_video)  # announced by Content-Length: refused unread
        assert response.status_code == 413 and "--max-upload-mb" in response.json()["detail"]

        def chunks():  # no Content-Length: refused while streaming, the partial file removed
            data = brain_video.read_bytes()
            body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.mpg\"\r\n\r\n" + data
                    + b"\r\n--b--\r\n")
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        response = client.post("/v1/cases", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
        assert leftovers(root) == [] and client.get("/v1/cases").json() == []


def test_client_disconnect_mid_upload_leaves_nothing(engine, brain_video, caplog):
    data = brain_video.read_bytes()
    head = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.mpg\"\r\n\r\n"
    messages = [{"type": "http.request", "body": head + data[:300_000], "more_body": True},
                {"type": "http.request", "body": data[300_000:600_000], "more_body": True},
                {"type": "http.disconnect"}]
    with serving(engine) as (client, root):
        app = client.app
        sent = []

        async def run():
            async def receive():
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/cases", "raw_path": b"/v1/cases", "query_string": b"",
                     "root_path": "", "headers": [(b"host", b"testserver"),
                                                  (b"content-type", b"multipart/form-data; boundary=b"),
                                                  (b"content-length", str(len(head) + len(data) + 8).encode())],
                     "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}, "app": app}
            await app(scope, receive, send)

        with caplog.at_level("INFO", logger="mucosa.service.app"):
            client.portal.call(run)
        assert "client disconnected mid-upload" in caplog.text
        assert leftovers(root) == [] and client.get("/v1/cases").json() == []


def test_token(engine, frame_png):
    with serving(engine, token="s3cret-0123456789") as (client, root):
        for headers, params in (({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({}, {"token": "wrong"})):
            response = client.get("/v1/model", headers=headers, params=params)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        response = upload(client, "/v1/predict", frame_png)
        assert response.status_code == 401 and leftovers(root) == []
        assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret-0123456789"}).status_code == 200
        assert client.get("/v1/cases", params={"token": "s3cret-0123456789"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_full_queue_answers_503_with_retry_after(engine, frame_png, monkeypatch):
    release = threading.Event()

    def slow_frames(sources, store=None, cancel=None, warnings=None, patient=None):
        release.wait(30)
        yield from ()

    monkeypatch.setattr(engine, "frames", slow_frames)
    with serving(engine, queue_size=1) as (client, root):
        first = upload(client, "/v1/cases", frame_png).json()["id"]
        deadline = time.monotonic() + 10
        while client.get(f"/v1/cases/{first}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upload(client, "/v1/cases", frame_png).status_code == 202  # waits in the queue
        response = upload(client, "/v1/cases", frame_png)
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert "queue is full" in response.json()["detail"]
        assert len(client.get("/v1/cases").json()) == 2
        start = time.perf_counter()
        assert upload(client, "/v1/predict", frame_png).status_code == 200  # images still go through
        assert time.perf_counter() - start < 5
        release.set()


# ------------------------------------------------------------------------------------------------ cases


def test_video_case_timeline_and_verdict(video_case, brain_video, engine):
    decoded = sum(1 for _ in iter_video_frames(brain_video))
    rows = video_case["timeline"]
    assert video_case["status"] == "done" and video_case["kind"] == "video" and video_case["progress"] == 1
    assert [r["frame"] for r in rows] == list(range(decoded)) and video_case["frames_done"] == decoded
    assert rows[1]["time"] == pytest.approx(1 / 24, abs=1e-3)
    used = [r["probability"] for r in rows if not r["dropped"]]
    verdict = video_case["verdict"]
    assert verdict["state"] == "final" and verdict["frames"] == len(used) and verdict["total"] == decoded
    assert verdict["score"] == pytest.approx(np.mean(used), abs=1e-6)
    assert verdict["label"] == ("active inflammation" if np.mean(used) >= 0.5 else "mucosal healing")
    assert rows[-1]["smoothed"] == pytest.approx(np.mean(used[-engine.window:]), abs=1e-6)


def test_video_case_equals_predict(video_case, brain_video, serve_checkpoint, tmp_path):
    from mucosa.inference.batch import predict

    result = predict(serve_checkpoint, [brain_video], tmp_path / "p")
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        reference = list(csv.DictReader(handle))
    for mine, theirs in zip(video_case["timeline"], reference, strict=True):
        assert mine["dropped"] == (theirs["used"] == "0")
        if not mine["dropped"]:
            assert mine["probability"] == pytest.approx(float(theirs["probability"]), abs=1e-4)
    assert video_case["verdict"]["label"] == result.verdict(result.cases[0])


def test_case_events(client, video_case):
    def events(headers=None):
        found = []
        with client.stream("GET", f"/v1/cases/{video_case['id']}/events", headers=headers or {}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    found.append((kind, json.loads(line[6:])))
        return found

    found = events()
    assert found[-1] == ("end", {"status": "done"})
    rows = [row for kind, data in found if kind == "update" for row in data["timeline"]]
    assert rows == video_case["timeline"]
    assert [d for k, d in found if k == "update"][-1]["verdict"] == video_case["verdict"]
    resumed = events({"Last-Event-ID": "100"})
    assert resumed[0][1]["since"] == 100 and len(resumed[0][1]["timeline"]) == len(rows) - 100


def test_case_frames_csv_report_list(client, video_case):
    from PIL import Image

    base = f"/v1/cases/{video_case['id']}"
    jpg = client.get(f"{base}/frames/10.jpg")
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"
    png = client.get(f"{base}/frames/10.png")
    cam = client.get(f"{base}/frames/10.png", params={"gradcam": 1})
    for response, mode in ((png, "L"), (cam, "RGB")):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (464, 336) and image.mode == mode
    assert client.get(f"{base}/frames/100000.png").status_code == 404
    assert client.get(f"{base}/frames/10.gif").status_code == 404
    assert client.get(f"{base}/frames/10.jpg", params={"gradcam": 1}).status_code == 409
    table = list(csv.DictReader(io.StringIO(client.get(f"{base}/timeline.csv").text)))
    assert len(table) == len(video_case["timeline"])
    assert list(table[0]) == ["frame", "time", "probability", "smoothed", "quality", "dropped", "called",
                              "unfamiliar"]
    report = client.get(f"{base}/report.html").text
    assert video_case["verdict"]["label"] in report.lower() and "<svg" in report
    download = client.get(f"{base}/report.html", params={"download": 1})
    assert download.headers["content-disposition"] == 'attachment; filename="men-09-report.html"'
    assert any(c["id"] == video_case["id"] and "timeline" not in c for c in client.get("/v1/cases").json())
    assert len(client.get(base, params={"since": 150}).json()["timeline"]) == len(video_case["timeline"]) - 150


def test_images_case_with_a_dropped_frame(client, frame_png, black_png):
    response = upload(client, "/v1/cases?name=biopsy%20site%201", frame_png, black_png, frame_png)
    case = wait_done(client, response.json()["id"])
    assert case["name"] == "biopsy site 1" and case["kind"] == "images" and case["files"][1] == "black.png"
    assert [r["dropped"] for r in case["timeline"]] == [False, True, False]
    assert [r["source"] for r in case["timeline"]] == [0, 1, 2] and case["timeline"][0]["time"] is None
    assert case["verdict"]["frames"] == 2 and case["frames_dropped"] == 1
    assert client.get(f"/v1/cases/{case['id']}/frames/1.png", params={"gradcam": 1}).status_code == 409
    assert client.get(f"/v1/cases/{case['id']}/frames/1.png").status_code == 200
    assert "source" in client.get(f"/v1/cases/{case['id']}/timeline.csv").text.splitlines()[0]


def test_case_bad_media(client, tmp_path, brain_video, frame_png):
    (tmp_path / "clip.mpg").write_bytes(b"\x00\x00\x01\xba" + b"\x00" * 4000)
    (tmp_path / "data.bin").write_bytes(b"\x01\x02\x03" * 100)
    checks = [(upload(client, "/v1/cases", tmp_path / "clip.mpg"), 422),
              (upload(client, "/v1/cases", tmp_path / "data.bin"), 415),
              (upload(client, "/v1/cases", brain_video, frame_png), 422),
              (client.post("/v1/cases", files={"name": (None, "x")}), 422)]
    for response, status in checks:
        assert response.status_code == status, response.text
        assert response.json()["detail"]


def test_delete_removes_files(engine, brain_video):
    with serving(engine) as (client, root):
        folders = client.app.state.cases.folders
        done = wait_done(client, upload(client, "/v1/cases", brain_video).json()["id"])["id"]
        assert (folders.final(done) / "frames" / "index.json").is_file()
        running = upload(client, "/v1/cases", brain_video).json()["id"]
        time.sleep(0.5)  # running or queued: either way its files go
        for case_id in (done, running):
            assert client.delete(f"/v1/cases/{case_id}").status_code == 204
            assert client.get(f"/v1/cases/{case_id}").status_code == 404
            assert client.delete(f"/v1/cases/{case_id}").status_code == 404
        deadline = time.monotonic() + 10
        while files_under(folders.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert files_under(folders.root) == []
        wait_done(client, upload(client, "/v1/cases", brain_video).json()["id"])
    assert not root.exists()  # the server's temporary folder goes when it stops


def test_data_root_paths(engine, pcle_brain, tmp_path, frame_png):
    folder = tmp_path / "root"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(frame_png.read_bytes())
    (folder / "empty").mkdir()
    (folder / "link.mpg").symlink_to(pcle_brain / "meningioma" / "men-09.mpg")
    with serving(engine, data_root=pcle_brain) as (client, root):
        response = client.post("/v1/cases", json={"path": "meningioma/men-09.mpg", "name": "by path"})
        assert response.status_code == 202
        case = wait_done(client, response.json()["id"])
        assert case["status"] == "done" and case["name"] == "by path" and case["frames_done"] == 162
        for given in ("../pcle-colon/s01v01.mpeg", "/etc/passwd", str(folder / "images")):
            response = client.post("/v1/cases", json={"path": given})
            assert response.status_code == 403 and "outside" in response.json()["detail"]
        assert client.post("/v1/cases", json={"path": "meningioma/none.mpg"}).status_code == 404
        assert client.post("/v1/cases", json={"nothing": 1}).status_code == 422
        assert client.post("/v1/cases", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    with serving(engine, data_root=folder) as (client, root):
        case = wait_done(client, client.post("/v1/cases", json={"path": "images"}).json()["id"])
        assert case["kind"] == "images" and case["files"] == ["a.png"]
        assert client.post("/v1/cases", json={"path": "empty"}).status_code == 422
        assert client.post("/v1/cases", json={"path": "link.mpg"}).status_code == 403  # leads outside the root
    with serving(engine) as (client, root):
        response = client.post("/v1/cases", json={"path": "meningioma/men-09.mpg"})
        assert response.status_code == 403 and "--data-root" in response.json()["detail"]


def test_folders_of_killed_servers_are_removed(engine, tmp_path):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f"mucosa-serve-{gone.pid}-abcd"
    (orphan / "cases" / "x").mkdir(parents=True)
    (orphan / "cases" / "x" / "frame.jpg").write_bytes(b"x")
    alive = tmp_path / f"mucosa-serve-{os.getpid()}-efgh"
    alive.mkdir()
    with serving(engine, temp_parent=tmp_path) as (client, root):
        assert root.parent == tmp_path and root.name.startswith(f"mucosa-serve-{os.getpid()}-")
        assert not orphan.exists() and alive.exists()


def test_unknown_case_is_404(client):
    for path in ("", "/events", "/frames/0.png", "/timeline.csv", "/report.html"):
        response = client.get(f"/v1/cases/nosuchcase{path}")
        assert response.status_code == 404 and "no case" in response.json()["detail"]
    assert client.delete("/v1/cases/nosuchcase").status_code == 404


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_errors_are_one_line_and_exit_2(serve_checkpoint, tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.setenv("MUCOSA_STORE", str(tmp_path / "store"))  # never the user's default store

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = str(taken.getsockname()[1])
    (tmp_path / "file.txt").write_text("x")
    cases = [(["--checkpoint", str(tmp_path / "none.ckpt"), "--port", "0"], "checkpoint not found"),
             (["--checkpoint", str(tmp_path / "file.txt"), "--port", "0"], "not a readable PyTorch checkpoint"),
             (["--checkpoint", str(serve_checkpoint), "--port", port], "already in use"),
             (["--checkpoint", str(serve_checkpoint), "--data-root", str(tmp_path / "file.txt")], "not a folder"),
             (["--checkpoint", str(serve_checkpoint), "--port", "0", "--threshold", "2"], "threshold"),
             (["--checkpoint", str(serve_checkpoint), "--max-upload-mb", "0"], "max-upload-mb"),
             (["--checkpoint", str(serve_checkpoint), "--port", "0", "--device", "tpu"], "device 'tpu'")]
    try:
        for args, message in cases:
            assert main(["serve", *args]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    finally:
        taken.close()
