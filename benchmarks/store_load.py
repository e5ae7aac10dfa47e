"""Load test of ``mucosa serve`` on its case store: many stored cases, many clients; two servers sharing work.

``--part browse`` fills a new store (SQLite folder, or a throwaway PostgreSQL cluster from tests/postgres.py)
with ``--cases`` done cases (each with a 40-frame timeline; a spread of patients, days and verdicts) and one
reviewer (on PostgreSQL it then gathers the planner's statistics, as autovacuum does soon after a bulk load),
starts ``mucosa serve --store`` on it, and lets ``--clients`` concurrent clients, each with the reviewer's
token, list (``GET /v1/cases?offset=…``), search (``?q=…&verdict=…&since=…``) and open (``GET /v1/cases/{id}``,
which also writes its ``case.open`` line in the audit log) cases for ``--seconds``. With ``--think 0`` (the
default) each client sends its next request as soon as the previous answer has come (a closed loop: it
measures throughput as much as latency); ``--think S`` makes each client wait a random time (exponential,
mean S seconds) before each request, as people reading a page do. It reports the latency of each kind (p50,
p95, p99, max), the failed requests, the CPU time per request of the server, of PostgreSQL's processes and of
the clients, and the machine's load average before and after. With ``--alone`` it then runs each kind by
itself for ``--seconds`` on the same server (``alone``: what each kind costs the server and PostgreSQL).

The clients are coroutines of one asyncio process on the same machine as the server, sharing its cores. With
``--client lean`` (the default) each keeps one HTTP/1.1 connection open and writes its requests by hand (about
0.15 ms of CPU a request); ``--client httpx`` gives each an httpx ``AsyncClient`` (about 2 ms a request, taken
from the cores the server needs).

``--part share`` starts a PostgreSQL cluster and one, then two, ``mucosa serve`` processes on one store (a
shared media folder), uploads ``--videos`` short clips cut from the real pCLE brain videos (``--frames``
frames each, every clip distinct), half to each server, waits until every case is done and reports the
time, the cases per minute, the cases each server read, and from the audit log whether any case was read
twice (``case.done`` more than once, or ``case.retry``) or lost.

Without ``--checkpoint``, the served model is made first by the library (:func:`tiny_checkpoint`: a tiny 64x64
CNN-LSTM trained for one epoch on a small synthetic cohort, under a minute on two cores); browsing never runs
it, the share part does.

    python benchmarks/store_load.py --part browse --backend sqlite [--cases 10000] [--think 1]
    python benchmarks/store_load.py --part browse --backend postgresql
    python benchmarks/store_load.py --part share [--videos 50] [--checkpoint C.ckpt]

Client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BRAIN = ROOT.parent / "shared" / "data" / "pcle-brain"
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL cluster of the tests


class Server:
    """``mucosa serve`` in its own process on a free port (its log read to find the port)."""

    def __init__(self, checkpoint: Path, store: str, *extra: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "mucosa", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
                   "--device", "cpu", "--store", store, "--queue", "1000", *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        self.url = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (user and system; Linux only, else None)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def postgres_cpu_seconds(cluster) -> float | None:
    """CPU time used so far by the cluster's PostgreSQL processes: its postmaster, its live children, and the
    children that have ended (a connection closed; the postmaster has reaped them). Linux only, else None; None
    without a cluster."""
    if cluster is None:
        return None
    try:
        postmaster = int((cluster.folder / "data" / "postmaster.pid").read_text().split()[0])
        total = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(entry.name) == postmaster:
                        total += sum(int(value) for value in fields[11:15])  # its own and its reaped children's
                    elif int(fields[1]) == postmaster:
                        total += int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


KINDS = ("list", "search", "open")  # the requests browse's clients make


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000
    return {"n": len(values), "p50": round(float(np.percentile(ms, 50)), 1),
            "p95": round(float(np.percentile(ms, 95)), 1), "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1)}


# ---------------------------------------------------------------------------------------------- browse


TINY_SERVE = {"model": {"size": 64}, "preprocessing": {"fov_frames": 8},
              "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1},
              "training": {"epochs": 1, "batch_size": 8, "threads": 2}}


def tiny_checkpoint(folder: Path) -> Path:
    """A model to serve, made by the library: a tiny 64x64 CNN-LSTM (the tests' serve model, one epoch) trained on
    9 synthetic patients of 4 images (40x40)."""
    from mucosa.data.cache import FrameCache
    from mucosa.data.synth import synthesize_cohort
    from mucosa.models.config import config_from_dict
    from mucosa.models.training import train

    manifest = synthesize_cohort(folder / "cohort", patients=9, per_patient=4, size=40, seed=3)
    return Path(train(manifest, config_from_dict(TINY_SERVE), folder / "run", cache=FrameCache(folder / "cache")))


def fill(store_location: str, media: Path | None, count: int, seed: int = 0) -> tuple[list[str], str]:
    """``count`` done cases written straight into the store's tables (in batches), and a reviewer; returns the
    cases' ids and the reviewer's token."""
    from sqlalchemy import create_engine, insert, text

    from mucosa.store import Store
    from mucosa.store.tables import CaseDetailRow, CaseRow, JobRow

    rng = random.Random(seed)
    with Store.open(store_location, media, create=True) as store:
        sha = store.put_media(b"benchmark video", ".mpg")
        token = store.add_user("benchmark reviewer", "reviewer")
        url = store.place.url
    engine = create_engine(url)
    now = dt.datetime.now(dt.timezone.utc)
    ids = [f"{k:012x}" for k in range(count)]
    classes = ("mucosal healing", "active inflammation")
    for start in range(0, count, 1000):
        cases, jobs, details = [], [], []
        for k in range(start, min(count, start + 1000)):
            day = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(700))
            verdict = rng.choice(("control", "active"))
            when = now - dt.timedelta(minutes=count - k)
            timeline = [{"frame": f, "time": f / 24, "quality": 0.9, "dropped": False,
                         "probability": round(rng.random(), 4), "smoothed": 0.5, "called": verdict, "source": None,
                         "unfamiliar": None, "unfamiliarity": None} for f in range(40)]
            summary = {"verdict": {"state": "final", "label": classes[verdict == "active"], "class": verdict,
                                   "text": classes[verdict == "active"], "score": 0.5, "threshold": 0.5,
                                   "frames": 40, "total": 40, "calls": {}}, "fps": 24.0, "started": None,
                       "frames_done": 40, "frames_dropped": 0}
            cases.append({"id": ids[k], "name": f"exam {k} ileum", "kind": "video",
                          "media": [{"sha256": sha, "name": f"exam{k}.mpg"}], "patient": f"P-{k % 2000:05d}",
                          "exam_date": day, "region": "terminal ileum", "day": day, "created_at": when,
                          "created_by": None, "status": "done", "frames_announced": 40, "frames_decoded": 40,
                          "decode_warnings": [], "verdict": verdict, "verdict_text": summary["verdict"]["label"],
                          "score": 0.5, "unfamiliar_share": None, "model_version": "bench:0", "error": None,
                          "summary": summary, "reviewed": False, "finished_at": when})
            jobs.append({"case_id": ids[k], "state": "done", "attempts": 1, "created_at": when, "updated_at": when})
            details.append({"case_id": ids[k], "detail": {"timeline": timeline}})
        with engine.begin() as connection:
            connection.execute(insert(CaseRow.__table__), cases)
            connection.execute(insert(JobRow.__table__), jobs)
            connection.execute(insert(CaseDetailRow.__table__), details)
    if engine.dialect.name == "postgresql":  # the statistics autovacuum gathers within a minute of a bulk load
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return ids, token


class KeptAlive:
    """One HTTP/1.1 connection kept open, one GET at a time, written and read by hand over asyncio's streams (a
    few tens of microseconds a request; httpx's client took 2-3 ms of CPU a request, on the cores the server
    needs). Answers are read by their Content-Length, as the server sends them. As any HTTP client does, it
    opens a new connection when the server has closed the one it kept (uvicorn closes a connection idle for 5 s:
    a client that thinks may find it closed), and sends a request again on a new one when the server closed
    the kept one before answering anything."""

    def __init__(self, url: str, token: str) -> None:
        address = urlsplit(url)
        self.host, self.port = address.hostname, address.port
        self.head = f"Host: {address.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, params: dict) -> int:
        """The answer's status (its body read whole)."""
        request = f"GET {f'{path}?{urlencode(params)}' if params else path} HTTP/1.1\r\n{self.head}".encode()
        kept = self.writer is not None and not self.reader.at_eof()
        if not kept:
            self.close()
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            if not kept or getattr(error, "partial", b""):  # a new connection, or part of an answer: it failed
                raise
        return await self._exchange(request)  # the kept connection was closed as the request left

    async def _exchange(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(request)
            lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            fields = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
            await self.reader.readexactly(int(fields[b"content-length"]))
        except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
            self.close()
            raise
        if fields.get(b"connection", b"").strip() == b"close":
            self.close()
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def browse(url: str, ids: list[str], token: str, clients: int, seconds: float, think: float,
                 client_kind: str = "lean", kinds: tuple[str, ...] = KINDS) -> dict:
    import httpx

    timings: dict[str, list[float]] = {"list": [], "search": [], "open": []}
    failures = 0
    end = time.monotonic() + seconds

    async def client(seed: int) -> None:
        nonlocal failures
        rng = random.Random(seed)
        if client_kind == "httpx":
            http = httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})

            async def get(path: str, params: dict) -> int:
                return (await http.get(path, params=params)).status_code
        else:
            http = KeptAlive(url, token)
            get = http.get
        try:
            while time.monotonic() < end:
                if think > 0:
                    await asyncio.sleep(rng.expovariate(1 / think))
                kind = rng.choice(kinds)
                if kind == "list":
                    request = ("/v1/cases", {"limit": 50, "offset": rng.randrange(0, len(ids) - 50)})
                elif kind == "search":
                    request = ("/v1/cases", {"q": f"P-{rng.randrange(2000):05d}", "verdict": "active",
                                             "since": "2024-06-01", "limit": 50})
                else:
                    request = (f"/v1/cases/{rng.choice(ids)}", {})
                start = time.monotonic()
                try:
                    ok = await asyncio.wait_for(get(*request), 60) == 200
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, KeyError,
                        ValueError):
                    ok = False
                timings[kind].append(time.monotonic() - start)
                failures += not ok
        finally:
            await http.aclose() if client_kind == "httpx" else http.close()

    cpu = time.process_time()
    await asyncio.gather(*(client(k) for k in range(clients)))
    cpu = time.process_time() - cpu
    every = [t for values in timings.values() for t in values]
    return {"all": percentiles(every), **{k: percentiles(v) for k, v in timings.items() if k in kinds},
            "failed": failures,
            "requests_per_s": round(len(every) / seconds, 1),
            "client_cpu_ms_per_request": round(1000 * cpu / max(1, len(every)), 2)}


def part_browse(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="mucosa-store-load-") as folder:
        cluster, media = None, None
        if args.backend == "postgresql":
            from postgres import start_cluster

            cluster = start_cluster()
            location, media = cluster.new_database(), Path(folder) / "media"
        else:
            location = str(Path(folder) / "store")
        try:
            checkpoint = args.checkpoint or tiny_checkpoint(Path(folder) / "model")
            start = time.monotonic()
            ids, token = fill(location, media, args.cases)
            filled = time.monotonic() - start
            server = Server(checkpoint, location, *(["--media", str(media)] if media else []))
            try:
                load_before = os.getloadavg()
                result = _browse_costed(server, cluster, args, ids, token, KINDS)
                if args.alone:  # each kind by itself, one after the other, on the same server
                    result["alone"] = {kind: _browse_costed(server, cluster, args, ids, token, (kind,))
                                       for kind in KINDS}
                load_after = os.getloadavg()
            finally:
                server.stop()
        finally:
            if cluster is not None:
                cluster.stop()
    return {"part": "browse", "backend": args.backend, "cases": args.cases, "clients": args.clients,
            "think_seconds": args.think, "client": args.client, "seconds": args.seconds,
            "fill_seconds": round(filled, 1), **result, "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after]}


def _browse_costed(server: Server, cluster, args: argparse.Namespace, ids: list[str], token: str,
                   kinds: tuple[str, ...]) -> dict:
    """:func:`browse` of ``kinds`` with the server's and PostgreSQL's CPU time per request."""
    cpu_before, database_before = server.cpu_seconds(), postgres_cpu_seconds(cluster)
    result = asyncio.run(browse(server.url, ids, token, args.clients, args.seconds, args.think, args.client, kinds))
    return {**result, "server_cpu_ms_per_request": _per_request(cpu_before, server.cpu_seconds(), result),
            "postgres_cpu_ms_per_request": _per_request(database_before, postgres_cpu_seconds(cluster), result)}


def _per_request(before: float | None, after: float | None, result: dict) -> float | None:
    return None if before is None or after is None else round(1000 * (after - before) / max(1, result["all"]["n"]), 2)


# ---------------------------------------------------------------------------------------------- share


def clips(folder: Path, count: int, frames: int) -> list[Path]:
    """``count`` distinct clips of ``frames`` real pCLE frames each (lossless gray AVI), cut from the brain
    videos."""
    import av

    from mucosa.data.video import iter_video_frames

    videos = sorted(BRAIN.rglob("*.mpg"))
    paths, k = [], 0
    for video in videos:
        stack = [np.asarray(frame * 255 if frame.dtype != np.uint8 else frame, np.uint8)
                 for _, frame in iter_video_frames(video)]
        for start in range(0, len(stack) - frames + 1, frames):
            if k == count:
                return paths
            path = folder / f"clip{k:03d}.avi"
            with av.open(str(path), "w", format="avi") as container:
                stream = container.add_stream("ffv1", rate=24)
                stream.height, stream.width = stack[0].shape
                stream.pix_fmt = "gray"
                for frame in stack[start:start + frames]:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
                container.mux(stream.encode())
            paths.append(path)
            k += 1
    return paths


def share_run(checkpoint: Path, cluster, media: Path, videos: list[Path], servers: int) -> dict:
    import httpx

    from mucosa.store import Store

    url = cluster.new_database()
    running = [Server(checkpoint, url, "--media", str(media / str(servers)))]
    try:
        running += [Server(checkpoint, url, "--media", str(media / str(servers))) for _ in range(servers - 1)]
        start = time.monotonic()
        ids = []
        for k, video in enumerate(videos):
            answer = httpx.post(running[k % servers].url + "/v1/cases", timeout=120,
                                files=[("file", (video.name, video.read_bytes()))])
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        while True:
            listed = httpx.get(running[0].url + "/v1/cases", params={"limit": 500}, timeout=60).json()
            if all(case["status"] in ("done", "failed") for case in listed) and len(listed) == len(ids):
                break
            time.sleep(0.5)
        seconds = time.monotonic() - start
    finally:
        for server in running:
            server.stop()
    with Store.open(url, media / str(servers)) as store:
        log = store.audit_log(limit=10_000)
    done = [entry for entry in log if entry.action == "case.done"]
    readers: dict[str, int] = {}
    for entry in done:
        pid = entry.actor.split(":")[1]
        readers[pid] = readers.get(pid, 0) + 1
    return {"servers": servers, "cases": len(ids), "seconds": round(seconds, 1),
            "cases_per_minute": round(60 * len(ids) / seconds, 1), "cases_per_server": sorted(readers.values()),
            "read_twice": len(done) - len({e.case_id for e in done}),
            "retried": sum(entry.action == "case.retry" for entry in log),
            "lost": len(set(ids) - {e.case_id for e in done}),
            "failed": sum(case["status"] == "failed" for case in listed)}


def part_share(args: argparse.Namespace) -> dict:
    from postgres import start_cluster

    cluster = start_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="mucosa-store-share-") as folder:
            checkpoint = args.checkpoint or tiny_checkpoint(Path(folder) / "model")
            videos = clips(Path(folder), args.videos, args.frames)
            runs = [share_run(checkpoint, cluster, Path(folder) / "media", videos, n) for n in (1, 2)]
    finally:
        cluster.stop()
    return {"part": "share", "videos": len(videos), "frames_per_video": args.frames, "runs": runs,
            "speed_up": round(runs[1]["cases_per_minute"] / runs[0]["cases_per_minute"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the model to serve (default: a tiny one made first, see tiny_checkpoint)")
    parser.add_argument("--part", choices=("browse", "share"), required=True)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--think", type=float, default=0.0, help="mean seconds a client waits between requests")
    parser.add_argument("--alone", action="store_true",
                        help="browse: then each kind of request by itself for --seconds (its CPU per request)")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean",
                        help="browse's clients: connections kept open and written by hand (lean), or httpx's")
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = part_browse(args) if args.part == "browse" else part_share(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
