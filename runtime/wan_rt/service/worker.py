"""`wan-rt worker`: claim a job, run the Pipeline on it (engines loaded once), write its MP4 and thumbnail.

While a job runs a heartbeat thread renews its lease and stores its progress every `heartbeat_s`. The job stops at
its next denoise step or decoded frame when
- the lease is gone (the job was deleted, or this worker stalled past the lease and another claimed it): its
  files are removed, nothing is recorded;
- the worker is asked to stop (SIGTERM, SIGINT): the job goes back to the queue at once and runs again from the
  start on the next worker that claims it.
A worker killed outright (SIGKILL, power loss) stops renewing: once its lease expires another worker claims the
job. Outputs are written under per-attempt names, temp then rename, and count only when the completion names the
current lease; so a job completes once, with one output.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.service.jobs import Job
from wan_rt.service.requests import make_request

log = logging.getLogger("wan_rt.service")

# progress (0-100) of a running job: the text encoder is 5, the denoise steps 5..85, the decoded frames 85..99;
# 100 when the output is stored
_DENOISE, _DECODE = (5, 85), (85, 99)
_RETRY_S = 5.0  # between tries to reach a queue that does not answer


class JobAborted(Exception):
    """Raised from the progress callback to stop the Pipeline mid-request."""


class Worker:
    def __init__(self, pipeline, queue, outputs: Path, name: str | None = None, lease_s: float = 60.0,
                 poll_s: float = 0.5, max_attempts: int = 3, heartbeat_s: float | None = None):
        self.pipeline, self.queue, self.outputs = pipeline, queue, Path(outputs)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_s, self.poll_s, self.max_attempts = lease_s, poll_s, max_attempts
        self.heartbeat_s = heartbeat_s or min(1.0, lease_s / 3)
        self.stop = threading.Event()
        self.abort: str | None = None  # "shutdown" | "lost", set while a job runs
        self.progress = 0
        pipeline.on_progress = self._on_progress

    def serve(self) -> int:
        """Claim and run jobs until `stop` is set; the number of jobs run."""
        done = 0
        log.info("worker %s: waiting for jobs on %s (lease %g s)", self.name, self.queue, self.lease_s)
        while not self.stop.is_set():
            try:
                job = self.queue.claim(self.name, self.lease_s, self.max_attempts)
            except WanError as exc:  # the database restarts or the network drops: wait, then reconnect
                log.warning("worker %s: %s; trying again in %g s", self.name, exc, _RETRY_S)
                self.stop.wait(_RETRY_S)
                continue
            if job is None:
                self.stop.wait(self.poll_s)
                continue
            self.run_job(job)
            done += 1
        log.info("worker %s: stopped after %d jobs", self.name, done)
        return done

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        low, high = _DENOISE if stage == "denoise" else _DECODE
        self.progress = int(low + (high - low) * min(done / max(total, 1), 1.0))
        if self.stop.is_set():
            self.abort = self.abort or "shutdown"
        if self.abort:
            raise JobAborted(self.abort)

    def _heartbeats(self, job: Job, finished: threading.Event) -> None:
        while not finished.wait(self.heartbeat_s):
            try:
                held = self.queue.heartbeat(job, self.progress, self.lease_s)
            except WanError as exc:  # keep running: the lease has until it expires for the queue to come back
                log.warning("%s: heartbeat failed: %s", job.id, exc)
                continue
            if not held:
                self.abort = self.abort or "lost"
                return

    def run_job(self, job: Job) -> None:
        log.info("%s: claimed (attempt %d): %s %s, %s s", job.id, job.attempt, "i2v" if job.image else "t2v",
                 job.size, job.seconds)
        self._remove_files(job.id)  # what an earlier attempt that died left behind
        self.abort, self.progress = None, 5
        finished = threading.Event()
        beats = threading.Thread(target=self._heartbeats, args=(job, finished), daemon=True)
        beats.start()
        video = self.outputs / f"{job.id}-{job.attempt}.mp4"
        thumbnail = self.outputs / f"{job.id}-{job.attempt}.webp"
        timings: dict = {}
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="wan-rt-job-") as scratch:
                image = None
                if job.image is not None:
                    image = Path(scratch) / "input"
                    image.write_bytes(job.image)
                result = self.pipeline.generate(make_request(job.prompt, job.params, image), video)
            timings = dict(result.timings)
            write_started = time.perf_counter()
            write_thumbnail(video, thumbnail)
            timings["thumbnail"] = time.perf_counter() - write_started
        except JobAborted:
            self._abandon(job, video, thumbnail)
            return
        except WanError as exc:
            self._finish_failed(job, "generation_failed", str(exc), video, thumbnail)
            return
        except Exception as exc:  # a bug or a broken engine: the job fails with the reason, the worker goes on
            log.error("%s: %s", job.id, traceback.format_exc())
            self._finish_failed(job, "internal_error", f"{type(exc).__name__}: {exc}", video, thumbnail)
            return
        finally:
            finished.set()
            beats.join()
        if self.abort or not self.queue.complete(job, video.name, thumbnail.name, timings):
            self._abandon(job, video, thumbnail)
            return
        log.info("%s: completed in %.1f s: %s", job.id, time.perf_counter() - started, result.summary())

    def _abandon(self, job: Job, *files: Path) -> None:
        for path in files:
            path.unlink(missing_ok=True)
        if self.abort == "shutdown" or self.stop.is_set():
            released = self.queue.release(job)
            log.info("%s: %s", job.id, "back in the queue (worker stopping)" if released else "stopped")
        else:
            log.info("%s: stopped: deleted, or its lease expired and another worker has it", job.id)

    def _finish_failed(self, job: Job, code: str, message: str, *files: Path) -> None:
        for path in files:
            path.unlink(missing_ok=True)
        if self.queue.fail(job, code, message, {}):
            log.info("%s: failed: %s", job.id, message)

    def _remove_files(self, job_id: str) -> None:
        for path in list(self.outputs.glob(f"{job_id}-*")) + list(self.outputs.glob(f".{job_id}-*")):
            path.unlink(missing_ok=True)


def write_thumbnail(video: Path, out: Path) -> None:
    """The video's first frame as a WebP image (OpenAI's thumbnail variant), temp then rename."""
    import imageio_ffmpeg
    import numpy as np
    from PIL import Image

    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        meta = next(reader)
        width, height = meta["size"]
        frame = np.frombuffer(next(reader), dtype=np.uint8).reshape(height, width, 3)
    finally:
        reader.close()
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        Image.fromarray(frame).save(tmp, format="WEBP", lossless=True)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WanError(f"cannot write {out}: {exc.strerror or exc}") from None


def run_worker(engines: Path, queue_url: str | None, outputs: Path, state: Path | None, lease_s: float,
               poll_s: float, max_attempts: int, memory: str, verify: bool) -> None:
    """`wan-rt worker`: serve until SIGTERM or SIGINT (the running job goes back to the queue)."""
    from wan_rt.pipeline import Pipeline
    from wan_rt.service.queue import open_queue

    outputs = Path(outputs)
    try:
        outputs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WanError(f"cannot create the outputs folder {outputs}: {exc.strerror or exc}") from None
    queue = open_queue(queue_url, state)
    pipeline = Pipeline(engines, verify=verify, show_progress=False, memory=memory)
    worker = Worker(pipeline, queue, outputs, lease_s=lease_s, poll_s=poll_s, max_attempts=max_attempts)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop.set())
    log.info("worker %s: engines %s (--memory %s: %s), outputs %s", worker.name, engines, pipeline.memory,
             pipeline.memory_reason, outputs)
    try:
        worker.serve()
    finally:
        pipeline.close()
        queue.close()
