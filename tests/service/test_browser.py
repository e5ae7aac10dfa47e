"""The viewer in a real browser: Playwright driving Debian's chromium against ``mucosa serve`` on localhost
(:mod:`browsing`): a video's live verdict, timeline, Grad-CAM and downloads.

Missing playwright or chromium skips these tests, or fails them when MUCOSA_REQUIRE_REAL_DATA=1 (CI).
Screenshots go to $MUCOSA_SCREENSHOTS (default: the test's temporary folder).
"""

import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from browsing import mucosa_serve
from media import files_under
from mucosa.data.video import iter_video_frames

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(serve_checkpoint, pcle_brain, tmp_path_factory):
    """``mucosa serve`` in a subprocess on a free localhost port; yields (base URL, its TMPDIR)."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    with mucosa_serve(serve_checkpoint, tmp, "--data-root", str(pcle_brain)) as base:
        yield base, tmp


def test_video_upload_live_verdict_timeline_gradcam(browser, server, pcle_brain, shots):
    base, _ = server
    video = pcle_brain / "meningioma" / "men-08.mpg"  # 342 frames, 16 of them below the quality gate
    decoded = sum(1 for _ in iter_video_frames(video))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base + "/")
    page.wait_for_selector("#model:has-text('active inflammation')")
    page.set_input_files("#file", str(video))
    page.wait_for_selector("#verdict[data-state=running], #verdict[data-state=final]", timeout=60_000)
    page.wait_for_selector("#verdict[data-state=final]", timeout=180_000)

    case = httpx.get(base + "/v1/cases").json()[0]
    rows = httpx.get(f"{base}/v1/cases/{case['id']}").json()["timeline"]
    timeline = page.locator("#timeline")
    assert int(timeline.get_attribute("data-points")) == decoded == len(rows) == case["frames_done"]
    assert int(timeline.get_attribute("data-total")) == decoded
    dropped = [k for k, row in enumerate(rows) if row["dropped"]]
    assert int(timeline.get_attribute("data-dropped")) == len(dropped) > 0
    label = case["verdict"]["label"]
    assert label in ("active inflammation", "mucosal healing")
    assert page.inner_text("#verdict-label").lower() == label
    assert f"rests on {case['verdict']['frames']} of {decoded} frames" in page.inner_text("#verdict-frames")
    # the list follows within moments: it is read again when the case's events end, just after its final verdict
    page.wait_for_selector(f"#cases li:has-text('{label}')", timeout=10_000)
    assert page.locator("#cases li").count() == 1 and label in page.inner_text("#cases li").lower()
    with page.expect_download() as download:
        page.click("#dl-csv")
    assert len(Path(download.value.path()).read_text().splitlines()) == decoded + 1
    with page.expect_download() as download:
        page.click("#dl-report")
    report = Path(download.value.path())
    assert report.read_bytes().startswith(b"%PDF") and download.value.suggested_filename == "men-08-report.pdf"
    shutil.copyfile(report, shots / "report.pdf")
    page_report = httpx.get(base + page.get_attribute("#dl-html", "href")).text
    assert label in page_report.lower()
    (shots / "report.html").write_text(page_report)

    # a frame the quality gate dropped is marked on the frame; a used one can show its Grad-CAM
    page.locator("#seek").fill(str(dropped[-1]))
    page.wait_for_selector("#frame-badge.dropped")
    used = next(k for k in range(len(rows) // 3, len(rows)) if not rows[k]["dropped"])
    page.locator("#seek").fill(str(used))
    page.wait_for_selector(f"#frame[data-frame='{rows[used]['frame']}'][data-gradcam=off]")
    page.check("#gradcam")
    page.wait_for_selector(f"#frame[data-frame='{rows[used]['frame']}'][data-gradcam=shown]", timeout=30_000)
    assert page.evaluate("document.querySelector('.main').scrollHeight <= document.querySelector('.main').clientHeight")
    page.screenshot(path=str(shots / "viewer-1280x800.png"))
    page.uncheck("#gradcam")
    page.wait_for_selector("#frame[data-gradcam=off]")

    page.set_viewport_size({"width": 768, "height": 1024})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth <= 768")
    page.check("#gradcam")
    page.wait_for_selector("#frame[data-gradcam=shown]", timeout=30_000)
    page.screenshot(path=str(shots / "viewer-768x1024.png"), full_page=True)
    assert (shots / "viewer-1280x800.png").stat().st_size > 20_000
    assert not errors, errors
    page.close()


def test_upload_error_is_shown(browser, server, tmp_path):
    base, _ = server
    (tmp_path / "notes.txt").write_text("not a video")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(base + "/")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#notice.error")
    assert "415" in page.inner_text("#notice") and "not an image or video" in page.inner_text("#notice")
    page.close()


def test_disconnect_mid_upload_over_a_socket_leaves_nothing(server, pcle_brain):
    base, tmp = server
    port = int(base.rsplit(":", 1)[1])
    (root,) = tmp.glob("mucosa-serve-*")
    stored = lambda: files_under(root, ".part")  # noqa: E731
    before = httpx.get(base + "/v1/cases").json()
    data = (pcle_brain / "meningioma" / "men-09.mpg").read_bytes()
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="v.mpg"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/cases HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: " + str(len(part) + len(data) + 8).encode() + b"\r\n\r\n")
        sock.sendall(part + data[: len(data) // 2])
        deadline = time.monotonic() + 10
        while not stored() and time.monotonic() < deadline:  # the upload is being written...
            time.sleep(0.05)
        assert stored(), "the partial upload never reached the disk"
    uploads = root / "uploads"  # a folder per upload in flight (the cases themselves are in the store)
    folders = lambda: {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()  # noqa: E731
    deadline = time.monotonic() + 10  # ...and goes when the client hangs up, with its upload folder
    while (stored() or folders()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored() == [] and folders() == set()
    assert httpx.get(base + "/v1/cases").json() == before
