"""`wan-rt api`: the HTTP server (uvicorn) and the workers it runs on this machine.

The embedded workers are `wan-rt worker` processes, one per visible GPU (one on a CPU host; `--workers N` sets it,
0 for an API-only machine), each on its GPU (CUDA_VISIBLE_DEVICES). A worker that exits is started again (its job
went back to the queue, or its lease runs out); they get SIGTERM when the server stops, and also when the server
process dies (PR_SET_PDEATHSIG), so none outlives it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wan_rt.errors import WanError

log = logging.getLogger("wan_rt.service")


@dataclass
class ApiOptions:
    engines: Path
    host: str = "127.0.0.1"
    port: int = 8000
    state: Path = Path("wan-rt-state")
    queue_url: str | None = None
    outputs: Path | None = None
    keys: tuple = ()
    key_file: Path | None = None
    workers: int | None = None
    max_queued: int = 100
    max_upload_mb: float = 20.0
    lease_s: float = 60.0
    memory: str = "auto"
    model_name: str = "wan2.2-ti2v-5b"
    verify: bool = True
    poll_after_ms: int = 1000


def visible_gpus() -> list[str]:
    """The GPUs a worker may take: CUDA_VISIBLE_DEVICES's entries, else nvidia-smi's list, else none."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [str(i) for i, line in enumerate(result.stdout.splitlines()) if line.startswith("GPU ")]


def _die_with_parent() -> None:
    """In a worker process before exec: SIGTERM when the API process dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedWorkers:
    """The `wan-rt worker` processes of this machine, restarted when one exits."""

    def __init__(self, args: list[str], devices: list[str | None]):
        self.args, self.devices = args, devices
        self.processes: list[subprocess.Popen | None] = [None] * len(devices)
        self.restarts = 0
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        for index in range(len(self.devices)):
            self._spawn(index)
        self.watcher.start()

    def _spawn(self, index: int) -> None:
        env = dict(os.environ)
        if self.devices[index] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.devices[index]
        self.processes[index] = subprocess.Popen(self.args, env=env, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        delay = {index: 1.0 for index in range(len(self.devices))}
        while not self.stopping.wait(0.5):
            for index, process in enumerate(self.processes):
                if process is None or process.poll() is None:
                    continue
                log.warning("worker %d exited with status %s; starting it again in %.0f s", index,
                            process.returncode, delay[index])
                if self.stopping.wait(delay[index]):
                    return
                delay[index] = min(delay[index] * 2, 60.0)  # a worker that cannot start is not restarted in a loop
                self.restarts += 1
                self._spawn(index)

    def alive(self) -> int:
        return sum(1 for process in self.processes if process is not None and process.poll() is None)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to each (its running job goes back to the queue), then wait; SIGKILL after `timeout`."""
        self.stopping.set()
        running = [process for process in self.processes if process is not None and process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in %.0f s; killing it", process.pid, timeout)
                process.kill()
                process.wait()


def worker_args(options: ApiOptions, queue_url: str, outputs: Path) -> list[str]:
    args = [sys.executable, "-m", "wan_rt.cli", "worker", "--engines", str(options.engines), "--queue", queue_url,
            "--outputs", str(outputs), "--lease", str(options.lease_s), "--memory", options.memory]
    return args + ([] if options.verify else ["--no-verify"])


def run_api(options: ApiOptions) -> None:
    """Serve until SIGTERM / SIGINT, then stop the embedded workers (their jobs go back to the queue)."""
    import uvicorn

    from wan_rt.pipeline import Pipeline
    from wan_rt.residency import device_free_bytes
    from wan_rt.service.app import ApiSettings, create_app
    from wan_rt.service.auth import KeyCheck, load_keys
    from wan_rt.service.queue import open_queue

    keys = KeyCheck(load_keys(options.keys, options.key_file))
    state = Path(options.state).resolve()
    outputs = Path(options.outputs or state / "outputs").resolve()
    scratch = state / "scratch"
    for folder in (state, outputs, scratch):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WanError(f"cannot create {folder}: {exc.strerror or exc}") from None
    queue = open_queue(options.queue_url, state)
    queue_url = options.queue_url or f"sqlite:///{state / 'jobs.db'}"
    if queue.kind == "sqlite":  # one machine: every worker of the queue is this server's, and none runs yet
        requeued = queue.requeue_all_running()
        if requeued:
            log.info("%d jobs that were running when the server stopped are queued again", requeued)
    # the API only checks requests (no engine opens); the device query is for the workers
    # (the workers check the engine files' sha256)
    pipeline = Pipeline(options.engines, verify=False, show_progress=False, memory="stage")
    gpus = visible_gpus() if device_free_bytes(pipeline.manifest)[0] else []
    count = options.workers if options.workers is not None else max(1, len(gpus))
    devices = [gpus[i % len(gpus)] if gpus else None for i in range(count)]
    workers = EmbeddedWorkers(worker_args(options, queue_url, outputs), devices)
    settings = ApiSettings(model_name=options.model_name, outputs=outputs, scratch=scratch, keys=keys,
                           max_queued=options.max_queued, max_upload_bytes=int(options.max_upload_mb * 2**20),
                           poll_after_ms=options.poll_after_ms)
    app = create_app(settings, queue, pipeline,
                     health=lambda: {"workers": {"embedded": count, "alive": workers.alive(),
                                                 "restarts": workers.restarts}})
    server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                                           access_log=False))
    log.info("wan-rt api: http://%s:%d/v1 (model %s), queue %s, outputs %s, workers here: %d%s, API keys: %s",
             options.host, options.port, options.model_name, queue, outputs, count,
             f" on GPUs {','.join(d for d in devices if d)}" if gpus else "", len(keys.keys) or "off")
    # uvicorn handles SIGTERM / SIGINT while it runs (graceful shutdown), then raises the signal again with the
    # handler it found: this one, so the workers are stopped and the server exits 0 instead of dying by the signal
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    workers.start()
    try:
        server.run()  # returns on SIGTERM / SIGINT, after the open requests finish
    except SystemExit:  # uvicorn exits when it cannot listen (it logged why)
        pass
    finally:
        workers.stop()
        queue.close()
    if not server.started:
        raise WanError(f"could not listen on {options.host}:{options.port} (in use, or not an address of this "
                       f"machine); pick another --port or --host")
    log.info("wan-rt api: stopped")
