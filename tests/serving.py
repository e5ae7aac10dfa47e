"""The web service as the service tests run it (importable from every test folder: pytest's pythonpath):
in process through FastAPI's TestClient, or as a real uvicorn server on a loopback port in a thread."""

import csv
import os
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serving(engine, **settings):
    """A TestClient with the lifespan running, on a case store of its own (a temporary folder, unless
    ``store=`` names one); yields (client, the server's temporary folder). ``client.app.state.cases`` is the
    case service (its ``folders.final(case_id)``: where a case's files go)."""
    from fastapi.testclient import TestClient

    from mucosa.service.app import create_app
    from mucosa.service.settings import ServeSettings

    with tempfile.TemporaryDirectory(prefix="mucosa-test-store-") as store:
        settings.setdefault("store", store)
        app = create_app(engine, ServeSettings(**settings))
        with TestClient(app) as client:
            yield client, app.state.root


@contextmanager
def live_server(engine, startup: float = 30.0, **settings):
    """``create_app`` under a real uvicorn server on a free 127.0.0.1 port, in a daemon thread; yields its
    base URL. A server whose event loop hangs is left to its daemon thread when the test ends.

    (The service's modules are imported when called: without the serve extra this module still imports.)"""
    import uvicorn

    from mucosa.service.app import create_app
    from mucosa.service.server import bind
    from mucosa.service.settings import ServeSettings

    folder = tempfile.TemporaryDirectory(prefix="mucosa-test-store-")
    settings.setdefault("store", folder.name)
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(engine, ServeSettings(**settings)), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        folder.cleanup()


def wait_done(client, case_id, timeout=120.0, **headers):
    """The case once it is done, failed or cancelled (AssertionError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        case = client.get(f"/v1/cases/{case_id}", headers=headers).json()
        if case["status"] in ("done", "failed", "cancelled"):
            return case
        time.sleep(0.1)
    raise AssertionError(f"case {case_id} did not finish in {timeout} s")


def upload(client, url, *paths, **kwargs):
    """POST the files at ``paths`` as the multipart field ``file``."""
    files = [("file", (Path(p).name, Path(p).read_bytes())) for p in paths]
    return client.post(url, files=files, **kwargs)


def patient_images(cohort, patient):
    """The image files of one patient of the synthetic cohort."""
    with open(cohort / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["patient"] == patient]
    return [cohort / row["path"] for row in rows]


def sine_png(folder):
    """A synthetic sine pattern, nothing like the cohort's images."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:120, 0:120]
    image = np.round(127.5 + 127.5 * np.sin(x / 2.0) * np.cos(y / 3.0)).astype(np.uint8)
    path = folder / "sine.png"
    Image.fromarray(image).save(path)
    return path


def poppler(tool: str) -> str:
    """The path of a poppler-utils tool; the test skips without it (fails in CI)."""
    import pytest

    found = shutil.which(tool)
    if found is None:
        if os.environ.get("MUCOSA_REQUIRE_REAL_DATA") == "1":
            pytest.fail(f"{tool} is not installed but MUCOSA_REQUIRE_REAL_DATA=1 (apt-get install poppler-utils)",
                        pytrace=False)
        pytest.skip(f"{tool} is not installed (poppler-utils)")
    return found


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    """The text of a PDF as pdftotext reads it."""
    (tmp_path / "report.pdf").write_bytes(pdf)
    return subprocess.run([poppler("pdftotext"), "-layout", str(tmp_path / "report.pdf"), "-"], check=True,
                          capture_output=True, text=True).stdout
