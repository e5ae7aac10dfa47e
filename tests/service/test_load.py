"""The service under a flood of case uploads: a real uvicorn server on 127.0.0.1, real concurrent clients."""

import asyncio
import threading
import time

import httpx
import pytest

from serving import live_server

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

UPLOADS, QUEUE = 100, 2


async def _flood(base: str, image: bytes, uploads: int) -> tuple[list, list]:
    """``uploads`` case uploads at once while ``/healthz`` is asked every 0.1 s; returns the uploads'
    (status, Retry-After, detail) and the health checks' (status or error, seconds)."""
    limits = httpx.Limits(max_connections=uploads + 5, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as client:
        done = asyncio.Event()

        async def post(k: int):
            try:
                response = await client.post("/v1/cases", files={"file": (f"frame-{k}.png", image)})
            except httpx.HTTPError as error:
                return None, None, f"no answer: {type(error).__name__}"
            return response.status_code, response.headers.get("retry-after"), response.json()["detail"] \
                if response.status_code != 202 else None

        async def health():
            checks = []
            while not done.is_set():
                start = time.monotonic()
                try:
                    status = (await client.get("/healthz", timeout=5)).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                checks.append((status, time.monotonic() - start))
                await asyncio.sleep(0.1)
            return checks

        checker = asyncio.create_task(health())
        answers = await asyncio.gather(*(post(k) for k in range(uploads)))
        done.set()
        return answers, await checker


def test_a_flood_of_uploads_gets_503_beyond_the_queue_and_health_answers(engine, frame_png, monkeypatch):
    release = threading.Event()

    def held_frames(sources, store=None, cancel=None, warnings=None, patient=None):  # the worker holds a case
        release.wait(60)
        yield from ()

    monkeypatch.setattr(engine, "frames", held_frames)
    image = frame_png.read_bytes()
    try:
        with live_server(engine, queue_size=QUEUE) as base:
            answers, checks = asyncio.run(asyncio.wait_for(_flood(base, image, UPLOADS), 120))
            unanswered = [a for a in answers if a[0] is None]
            assert not unanswered, f"{len(unanswered)} of {UPLOADS} uploads got no answer: {unanswered[:3]}"
            statuses = sorted({a[0] for a in answers})
            assert statuses == [202, 503], statuses
            accepted = sum(a[0] == 202 for a in answers)
            assert QUEUE <= accepted <= QUEUE + 1  # the queue's places, and the case the worker holds
            for status, retry_after, detail in answers:
                if status == 503:
                    assert int(retry_after) >= 1 and "queue is full" in detail
            assert checks and all(status == 200 for status, _ in checks), checks
            assert max(seconds for _, seconds in checks) < 5
            health = httpx.get(base + "/healthz", timeout=5).json()
            assert health["cases"] == accepted
            release.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                cases = httpx.get(base + "/v1/cases", timeout=5).json()
                if all(case["status"] == "done" for case in cases):
                    break
                time.sleep(0.1)
            assert len(cases) == accepted and all(case["status"] == "done" for case in cases)
            assert httpx.post(base + "/v1/cases", files={"file": ("again.png", image)}, timeout=10).status_code \
                == 202  # places free again
    finally:
        release.set()
