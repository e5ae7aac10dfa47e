"""Load test of ``mucosa serve``: concurrent single-image predictions while videos are processed.

Starts ``mucosa serve`` on a free 127.0.0.1 port, then for ``--seconds``:

- ``--clients`` concurrent clients each post one real pCLE frame (``POST /v1/predict``) after another
  (closed loop: a client sends its next frame when the answer to the previous one has come, after
  ``--think`` seconds). The frames are real: taken from the pCLE brain videos in ``../shared/data``,
  cropped to their field of view and resized to ``--size`` (300: a single 300×300 gray PNG per request);
- ``--videos`` real pCLE videos are processed as cases meanwhile (``POST /v1/cases`` by path under
  ``--data-root``), each re-submitted when it finishes, so that video work runs during the whole test;
- the server's resident memory (``VmRSS`` of its process) is sampled every second.

It reports the latency of the predictions (p50, p95, p99, max; over the whole run and per 10-second
window), throughput, failed requests (any answer but 200, or a connection error), the video frames
processed meanwhile and the memory over time (after ``--warmup`` seconds of warm-up, which are not
counted). Client and server share the machine's cores.

    python benchmarks/serve_load.py --checkpoint C.ckpt [--clients 50] [--seconds 60] [--videos 2] \\
        [--think 0] [--onnx C.int8.onnx] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BRAIN = ROOT.parent / "shared" / "data" / "pcle-brain"
VIDEOS = ("glioblastoma/gbm-08.mpg", "glioblastoma/gbm-10.mpg", "meningioma/men-10.mpg", "meningioma/men-11.mpg")


def real_frames(count: int, size: int) -> list[bytes]:
    """``count`` real pCLE frames as gray PNGs of ``size``×``size``: field of view cropped, resized."""
    from PIL import Image

    from mucosa.data.preparation import Preprocessing, iter_frames

    videos = sorted(BRAIN.rglob("*.mpg"))
    per_video = -(-count // len(videos))
    frames = []
    for video in videos:
        prepared = list(iter_frames(video, Preprocessing(size=size), "0-63"))
        for frame in prepared[32::max(1, 32 // per_video)][:per_video]:
            buffer = io.BytesIO()
            Image.fromarray(frame.image).save(buffer, format="PNG")
            frames.append(buffer.getvalue())
    return frames[:count]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int | str = "self") -> float:
    """CPU seconds (user + system) of one process and its finished children."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, port: int, queue: int, parallel: int | None, onnx: Path | None
                 ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "mucosa", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               "--data-root", str(BRAIN), "--queue", str(queue)]
    command += (["--parallel", str(parallel)] if parallel else []) + (["--onnx", str(onnx)] if onnx else [])
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(client, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server stopped:\n" + process.stderr.read())
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise SystemExit("the server did not start")


class Run:
    """What the clients, the video feeder and the memory sampler record."""

    def __init__(self, start: float, warmup: float, end: float) -> None:
        self.start, self.warmup, self.end = start, warmup, end
        self.latency: list[tuple[float, float]] = []  # (time since start, seconds) of answered requests
        self.failed: list[str] = []
        self.memory: list[tuple[float, float]] = []
        self.video_frames = 0
        self.videos_done = 0

    def counting(self, now: float) -> bool:
        return self.start + self.warmup <= now < self.end


async def client_loop(client, frames: list[bytes], run: Run, think: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < run.end:
        data = rng.choice(frames)
        tic = time.monotonic()
        try:
            response = await client.post("/v1/predict", files={"file": ("frame.png", data, "image/png")})
            ok = response.status_code == 200 and "verdict" in response.json()
            problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
        except Exception as error:  # a failed request, not a failed benchmark
            problem = f"{type(error).__name__}: {error}"
        toc = time.monotonic()
        if run.counting(tic):
            if problem is None:
                run.latency.append((tic - run.start, toc - tic))
            else:
                run.failed.append(f"at {tic - run.start:.1f} s after {toc - tic:.1f} s: {problem}")
        if think:
            await asyncio.sleep(think)


async def video_feeder(client, slot: int, run: Run) -> None:
    """Keep one video case running: submit, wait for it, count its frames, submit the next."""
    k = slot
    while time.monotonic() < run.end:
        path = VIDEOS[k % len(VIDEOS)]
        response = await client.post("/v1/cases", json={"path": path})
        if response.status_code != 202:
            run.failed.append(f"case {path}: HTTP {response.status_code} {response.text[:200]}")
            await asyncio.sleep(1)
            continue
        case_id, seen = response.json()["id"], 0
        while True:
            await asyncio.sleep(1)
            case = (await client.get(f"/v1/cases/{case_id}", params={"since": 10**9})).json()
            done = case["frames_done"]
            if run.counting(time.monotonic()):
                run.video_frames += done - seen
            seen = done
            if case["status"] != "running" and case["status"] != "queued":
                run.videos_done += case["status"] == "done"
                break
            if time.monotonic() >= run.end:
                await client.delete(f"/v1/cases/{case_id}")
                return
        await client.delete(f"/v1/cases/{case_id}")
        k += 2


async def memory_sampler(pid: int, run: Run) -> None:
    while time.monotonic() < run.end:
        run.memory.append((time.monotonic() - run.start, rss_mb(pid)))
        await asyncio.sleep(1)


def summarize(run: Run, args: argparse.Namespace, server_pid_info: dict) -> dict:
    latency = np.array([s for _, s in run.latency]) * 1000
    seconds = args.seconds
    windows = []
    for start in range(int(args.warmup), int(args.warmup + seconds), 10):
        part = np.array([s for t, s in run.latency if start <= t < start + 10]) * 1000
        windows.append({"from_s": start, "requests": int(part.size),
                        "p95_ms": round(float(np.percentile(part, 95)), 1) if part.size else None})
    after = [(t, m) for t, m in run.memory if t >= args.warmup]
    slope = float(np.polyfit([t for t, _ in after], [m for _, m in after], 1)[0] * 60) if len(after) > 2 else None
    pct = (lambda q: round(float(np.percentile(latency, q)), 1)) if latency.size else (lambda q: None)
    return {"clients": args.clients, "seconds": seconds, "think_s": args.think, "size": args.size,
            "videos": args.videos, **server_pid_info,
            "requests": int(latency.size), "failed": len(run.failed), "failures": run.failed[:5],
            "throughput_per_s": round(latency.size / seconds, 2),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "max": round(float(latency.max()), 1) if latency.size else None},
            "p95_per_10s": windows, "video_frames": run.video_frames,
            "video_fps": round(run.video_frames / seconds, 2), "videos_finished": run.videos_done,
            "memory_mb": {"start": round(run.memory[0][1], 1) if run.memory else None,
                          "after_warmup": round(after[0][1], 1) if after else None,
                          "end": round(run.memory[-1][1], 1) if run.memory else None,
                          "max": round(max(m for _, m in run.memory), 1) if run.memory else None,
                          "slope_mb_per_min_after_warmup": round(slope, 2) if slope is not None else None},
            "memory_timeline": [(round(t, 1), round(m, 1)) for t, m in run.memory]}


async def main_async(args: argparse.Namespace) -> dict:
    import httpx

    frames = real_frames(args.frames, args.size)
    port = free_port()
    process = start_server(args.checkpoint, port, args.queue, args.parallel, args.onnx)
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            await wait_ready(client, process)
            card = (await client.get("/v1/model")).json()
            if card["input_size"] != args.size:
                print(f"warning: the model's input is {card['input_size']}, the frames {args.size}", file=sys.stderr)
            start = time.monotonic()
            run = Run(start, args.warmup, start + args.warmup + args.seconds)
            tasks = [memory_sampler(process.pid, run)]
            tasks += [video_feeder(client, slot, run) for slot in range(args.videos)]
            tasks += [client_loop(client, frames, run, args.think, seed) for seed in range(args.clients)]
            cpu = (busy_seconds(), process_seconds(process.pid), process_seconds(), time.monotonic())
            await asyncio.gather(*tasks)
            wall = time.monotonic() - cpu[3]
            server, benchmark = process_seconds(process.pid) - cpu[1], process_seconds() - cpu[2]
            other = busy_seconds() - cpu[0] - server - benchmark
            info = {"runtime": card["runtime"], "model_input": card["input_size"], "cpus": os.cpu_count(),
                    "cores_used": {"server": round(server / wall, 2), "clients": round(benchmark / wall, 2),
                                   "other_processes": round(max(other, 0) / wall, 2)},
                    "load_average_after": os.getloadavg()[0]}
            return summarize(run, args, info)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def report(result: dict) -> str:
    lat, mem = result["latency_ms"], result["memory_mb"]
    lines = [f"{result['clients']} clients x {result['seconds']} s ({result['size']}x{result['size']} PNG, think "
             f"{result['think_s']} s), {result['videos']} videos meanwhile; runtime {result['runtime']['name']} "
             f"({result['runtime'].get('quantization')}) on {result['runtime']['device']}, "
             f"{result['runtime'].get('slots')} calls at a time x {result['runtime'].get('threads')} threads, "
             f"{result['cpus']} CPUs",
             f"cores used: server {result['cores_used']['server']}, clients {result['cores_used']['clients']}, "
             f"other processes of the machine {result['cores_used']['other_processes']}",
             f"requests {result['requests']}, failed {result['failed']}, throughput {result['throughput_per_s']}/s"
             + "".join(f"\n  failed: {problem}" for problem in result["failures"]),
             f"latency ms: p50 {lat['p50']}, p95 {lat['p95']}, p99 {lat['p99']}, max {lat['max']}",
             "p95 per 10 s: " + ", ".join(f"{w['from_s']}s {w['p95_ms']}" for w in result["p95_per_10s"]),
             f"video frames processed meanwhile: {result['video_frames']} ({result['video_fps']}/s), "
             f"{result['videos_finished']} videos finished",
             f"server memory MB: start {mem['start']}, after warm-up {mem['after_warmup']}, end {mem['end']}, "
             f"max {mem['max']}, slope after warm-up {mem['slope_mb_per_min_after_warmup']} MB/min",
             "memory every 10 s: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in result["memory_timeline"][::10])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a 300x300 mucosa checkpoint")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--videos", type=int, default=2, help="video cases kept running meanwhile")
    parser.add_argument("--think", type=float, default=0.0, help="seconds a client waits between requests")
    parser.add_argument("--size", type=int, default=300, help="side of the posted frames")
    parser.add_argument("--frames", type=int, default=40, help="distinct real frames posted")
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=None, help="the server's --parallel (default: its own)")
    parser.add_argument("--onnx", type=Path, default=None, help="the server's --onnx: an export of the checkpoint")
    parser.add_argument("--json", type=Path, help="write the full result (with the memory timeline) here")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
