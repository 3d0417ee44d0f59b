"""Throughput of `wan-rt api` and what the service adds per job, on an engines folder (the tiny engines: small jobs,
so the service's own cost shows).

    python benchmarks/bench_api.py --engines ENGINES [--jobs 40] [--workers 1,2]

For each worker count: a fresh server (SQLite queue, --workers N), `--jobs` jobs submitted at once through the
official `openai` SDK, polled until all are completed; jobs per minute = jobs / (first submit .. last completion).
The service's overhead per job = that wall time per job with one worker minus the time per job of the same requests
in one process (`Pipeline.generate`, engines loaded once): queue, HTTP, polling, thumbnail. Also the median time of
POST /v1/videos (the request checks run there). One ONNX Runtime thread per session (WAN_RT_ORT_THREADS=1).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

JOB = {"size": "64x64", "extra_body": {"steps": 2, "frames": 5}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_process_seconds(engines: Path, jobs: int) -> float:
    """Seconds per job of the same requests in one process, engines loaded once."""
    from wan_rt.pipeline import GenerationRequest, Pipeline

    with tempfile.TemporaryDirectory() as folder, Pipeline(engines, verify=False, show_progress=False,
                                                            memory="keep") as pipeline:
        def one(i):
            return pipeline.generate(GenerationRequest(prompt=f"prompt {i}", size=(64, 64), frames=5, steps=2,
                                                       seed=i), Path(folder) / f"{i}.mp4")
        one(-1)  # engines open
        started = time.perf_counter()
        for i in range(jobs):
            one(i)
        return (time.perf_counter() - started) / jobs


def through_api(engines: Path, jobs: int, workers: int) -> tuple[float, float]:
    """(wall seconds for `jobs` jobs, median seconds of POST /v1/videos) with `workers` embedded workers."""
    import openai

    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen([sys.executable, "-m", "wan_rt.cli", "api", "--engines", str(engines), "--state",
                                   state, "--port", str(port), "--no-verify", "--workers", str(workers),
                                   "--poll-after-ms", "50"], stderr=subprocess.DEVNULL,
                                  env={**os.environ, "WAN_RT_ORT_THREADS": "1"})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
                        if f'"alive":{workers}' in response.read().decode():
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("wan-rt api did not start")
                time.sleep(0.1)
            time.sleep(1.0)  # the workers open their engines
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            post_seconds = []

            def submit(i):
                started = time.perf_counter()
                video = client.videos.create(prompt=f"prompt {i}", extra_body={**JOB["extra_body"], "seed": i},
                                             size=JOB["size"])
                post_seconds.append(time.perf_counter() - started)
                return video.id

            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                ids = list(pool.map(submit, range(jobs)))
            for video_id in ids:
                assert client.videos.poll(video_id, poll_interval_ms=20).status == "completed"
            return time.perf_counter() - started, statistics.median(post_seconds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    os.environ.setdefault("WAN_RT_ORT_THREADS", "1")
    per_job = in_process_seconds(args.engines, args.jobs)
    print(f"in one process: {per_job:.3f} s per job ({60 / per_job:.0f} jobs/min)")
    for workers in (int(n) for n in args.workers.split(",")):
        wall, post = through_api(args.engines, args.jobs, workers)
        line = f"wan-rt api, {workers} worker(s): {args.jobs} jobs in {wall:.1f} s = {60 * args.jobs / wall:.0f} jobs/min"
        if workers == 1:
            line += f"; overhead {wall / args.jobs - per_job:.3f} s per job"
        print(f"{line}; POST /v1/videos median {1000 * post:.1f} ms")


if __name__ == "__main__":
    main()
