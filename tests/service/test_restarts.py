"""Real server processes on one store: ``kill -9`` in the middle of a case, then a restart, loses nothing; two
servers on one PostgreSQL share the uploads and never read a case twice."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SRC = Path(__file__).resolve().parents[2] / "src"
LEASE = 2  # seconds: a job of a killed server is taken again this soon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``mucosa serve`` in a process of its own, on a free port; its log is kept in ``lines``."""

    def __init__(self, checkpoint: Path, store: str, *extra: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mucosa", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
             "--device", "cpu", "--store", store, "--set", f"serve.lease_seconds={LEASE}", "--parallel", "1", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start:\n" + "".join(self.lines[-30:]))
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def get(self, path: str, **kwargs):
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def upload(self, path: Path, **fields) -> str:
        answer = httpx.post(self.url + "/v1/cases", files=[("file", (path.name, path.read_bytes()))], data=fields,
                            timeout=60)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def wait(self, case_id: str, timeout: float = 120.0, status=("done", "failed")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            case = self.get(f"/v1/cases/{case_id}").json()
            if case["status"] in status:
                return case
            time.sleep(0.1)
        raise AssertionError(f"case {case_id} is still {case['status']}:\n" + "".join(self.lines[-20:]))

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def test_kill_9_mid_case_then_restart_loses_nothing(serve_checkpoint, brain_video, frame_png, tmp_path):
    store = str(tmp_path / "store")
    first = Server(serve_checkpoint, store)
    try:
        done = [first.wait(first.upload(frame_png, patient="P-1")) for _ in range(2)]
        interrupted = first.upload(brain_video, patient="P-2")
        waiting = first.upload(frame_png, patient="P-3")  # queued behind it (one worker)
        running = first.wait(interrupted, status=("running",))
        deadline = time.monotonic() + 30
        while running["frames_done"] < 5 and time.monotonic() < deadline:
            running = first.get(f"/v1/cases/{interrupted}").json()
        assert running["status"] == "running" and 5 <= running["frames_done"] < 162, running["frames_done"]
    finally:
        first.kill()
    assert first.process.returncode == -signal.SIGKILL
    second = Server(serve_checkpoint, store)
    try:
        listed = {case["id"]: case for case in second.get("/v1/cases").json()}
        assert set(listed) == {done[0]["id"], done[1]["id"], interrupted, waiting}
        for case in done:
            again = second.get(f"/v1/cases/{case['id']}").json()
            assert {k: again[k] for k in ("status", "verdict", "timeline", "finished", "patient")} == \
                {k: case[k] for k in ("status", "verdict", "timeline", "finished", "patient")}
        finished = second.wait(interrupted)
        assert finished["status"] == "done" and finished["frames_done"] == 162
        assert [row["frame"] for row in finished["timeline"]] == list(range(162))
        assert second.wait(waiting)["status"] == "done"
        assert second.get(f"/v1/cases/{interrupted}/frames/161.jpg").status_code == 200
    finally:
        second.stop()


def test_two_servers_on_one_postgresql_share_the_work(serve_checkpoint, brain_video, frame_png, postgres, tmp_path):
    from mucosa.store import Store

    url, media = postgres.new_database(), tmp_path / "shared-media"
    servers = [Server(serve_checkpoint, url, "--media", str(media))]
    try:
        servers.append(Server(serve_checkpoint, url, "--media", str(media)))
        ids = [servers[k % 2].upload(brain_video if k % 2 else frame_png) for k in range(6)]
        cases = [servers[(k + 1) % 2].wait(case_id) for k, case_id in enumerate(ids)]  # each seen by the other
        assert all(case["status"] == "done" for case in cases)
        for case in cases:  # each server serves the frames the other wrote
            assert all(server.get(f"/v1/cases/{case['id']}/frames/0.jpg").status_code == 200 for server in servers)
        assert {c["id"] for c in servers[0].get("/v1/cases").json()} == set(ids)
    finally:
        for server in servers:
            server.stop()
    with Store.open(url, media) as store:
        log = store.audit_log(limit=1000)
    done = [entry.case_id for entry in log if entry.action == "case.done"]
    assert sorted(done) == sorted(ids)  # each case read once
    assert not [entry for entry in log if entry.action == "case.retry"]
