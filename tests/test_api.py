"""`wan-rt api` and `wan-rt worker` as real processes on the tiny engines, driven by the official `openai` SDK.

One API server (SQLite queue, one embedded worker, four API keys) serves the module's SDK tests; the restart test
runs its own, the PostgreSQL test a real PostgreSQL 15 cluster (tests/pg_server.py) with an API-only server and
two `wan-rt worker` processes. Every video is compared with `wan-rt generate`'s for the same seed (decoded frames).
Jobs are small (64x64, 5 frames, 2 steps); the "long" jobs that get interrupted take a few seconds (many steps).
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import pg_server
from requires import require

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the SDK marks videos.*

KEYS = ["key-alpha", "key-bravo", "key-charlie", "key-delta"]
SMALL = {"steps": 2, "frames": 5}  # extra body fields of a fast job (with size 64x64)
LONG = {"steps": 400, "frames": 9}  # a job of a few seconds (with size 192x128), to interrupt mid-run
CONCURRENT_SEEDS = list(range(100, 120))


def _require_serving():
    for module, extra in (("fastapi", "serve"), ("uvicorn", "serve"), ("psycopg", "serve"),
                          ("prometheus_client", "serve"), ("python_multipart", "serve"), ("openai", "test")):
        try:
            __import__(module)
        except ImportError:
            require(False, f"{module} is not installed: pip install -e '.[{extra}]'")


def _env() -> dict:
    # one thread per ONNX Runtime session: the server, its workers and the other tests share two cores
    return {**os.environ, "WAN_RT_ORT_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_gone(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class Service:
    """A `wan-rt api` or `wan-rt worker` process; logs in a file, stopped (and its children) at the end."""

    def __init__(self, args: list[str], log: Path, port: int | None = None):
        self.log, self.port = log, port
        self.handle = open(log, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "wan_rt.cli", *args], stdout=self.handle,
                                        stderr=subprocess.STDOUT, env=_env())
        if port is not None:
            self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"wan-rt api exited:\n{self.log.read_text()[-3000:]}"
            try:
                health = self.health()
                if health["workers"]["alive"] == health["workers"]["embedded"]:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"wan-rt api did not answer /health in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            return json.loads(response.read())

    def client(self, key: str | None = KEYS[0]):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key or "none", max_retries=0)

    def stop(self, signum=signal.SIGTERM, timeout: float = 30.0) -> int:
        children = _children(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"process did not stop on signal {signum}:\n{self.log.read_text()[-3000:]}")
        finally:
            self.handle.close()
        _wait_gone(children)
        return code


def _api_args(engines: Path, state: Path, port: int, *extra: str) -> list[str]:
    return ["api", "--engines", str(engines), "--state", str(state), "--port", str(port), "--no-verify",
            "--poll-after-ms", "50", *extra]


def _frames(data: bytes, tmp: Path, name: str) -> np.ndarray:
    from wan_rt.video import read_video

    path = tmp / name
    path.write_bytes(data)
    return read_video(path)[0]


def _wait(client, video_id: str, done, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if done(video):
            return video
        time.sleep(0.05)
    raise AssertionError(f"{video_id} did not get there in {timeout} s: {video}")


def _post_json(service: Service, key: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{service.port}/v1/videos", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def _cli_error(engines: Path, *options: str) -> str:
    """The one line `wan-rt generate` prints for options it refuses (without "error: ")."""
    result = subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(engines), "--no-verify",
                             "--prompt", "x", "--out", os.devnull + ".mp4", *options], capture_output=True, text=True,
                            env=_env())
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


@pytest.fixture(scope="module")
def cli_videos(tiny_engines, input_image, tmp_path_factory) -> dict:
    """`wan-rt generate --requests` outputs, one run: seed -> frames, for every job the API tests make."""
    _require_serving()
    folder = tmp_path_factory.mktemp("cli")
    lines = [{"prompt": f"prompt {seed}", "seed": seed, "size": "64x64", **SMALL, "out": str(folder / f"{seed}.mp4")}
             for seed in [7, *CONCURRENT_SEEDS]]
    lines.append({"prompt": "it comes alive", "seed": 8, "size": "64x64", "image": str(input_image), **SMALL,
                  "out": str(folder / "8.mp4")})
    (folder / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines), "--no-verify",
                    "--requests", str(folder / "requests.jsonl")], check=True, capture_output=True, env=_env())
    from wan_rt.video import read_video

    return {line["seed"]: read_video(line["out"])[0] for line in lines}


@pytest.fixture(scope="module")
def api(tiny_engines, tmp_path_factory):
    """One server for the module: SQLite state, one embedded worker, four keys, 0.5 MB uploads."""
    _require_serving()
    folder = tmp_path_factory.mktemp("api")
    keys = folder / "keys.txt"
    keys.write_text("# test keys\n" + "\n".join(KEYS[1:]) + "\n")
    port = pg_server.free_port()
    service = Service(_api_args(tiny_engines, folder / "state", port, "--api-key", KEYS[0], "--api-key-file",
                                str(keys), "--max-upload-mb", "0.5"), folder / "api.log", port=port)
    service.state = folder / "state"
    yield service
    assert service.stop() == 0, service.log.read_text()[-3000:]


def test_sdk_create_poll_download_list_delete(api, cli_videos, input_image, tmp_path):
    client = api.client()
    video = client.videos.create_and_poll(prompt="prompt 7", size="64x64", extra_body={**SMALL, "seed": 7},
                                          poll_interval_ms=50)
    assert (video.status, video.progress, video.size, video.model) == ("completed", 100, "64x64", "wan2.2-ti2v-5b")
    assert video.seconds == "0.208" and video.completed_at >= video.created_at and video.error is None
    frames = _frames(client.videos.download_content(video.id).read(), tmp_path, "t2v.mp4")
    np.testing.assert_array_equal(frames, cli_videos[7])
    from PIL import Image

    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumbnail.format == "WEBP"
    np.testing.assert_array_equal(np.asarray(thumbnail.convert("RGB")), frames[0])
    import openai

    with pytest.raises(openai.BadRequestError, match="variant 'spritesheet' is not available"):
        client.videos.download_content(video.id, variant="spritesheet")

    with open(input_image, "rb") as image:  # image-to-video: a multipart upload
        i2v = client.videos.create_and_poll(prompt="it comes alive", input_reference=image, size="64x64",
                                            extra_body={**SMALL, "seed": 8}, poll_interval_ms=50)
    assert i2v.status == "completed", i2v.error
    np.testing.assert_array_equal(_frames(client.videos.download_content(i2v.id).read(), tmp_path, "i2v.mp4"),
                                  cli_videos[8])

    # the same image as a data URL in a JSON body (the SDK 3.57 only uploads files: it refuses the dict form)
    encoded = base64.b64encode(Path(input_image).read_bytes()).decode()
    created = _post_json(api, KEYS[0], {"prompt": "it comes alive", "size": "64x64", **SMALL, "seed": 8,
                                        "input_reference": {"image_url": f"data:image/png;base64,{encoded}"}})
    by_url = client.videos.poll(created["id"], poll_interval_ms=50)
    assert by_url.status == "completed", by_url.error
    np.testing.assert_array_equal(_frames(client.videos.download_content(by_url.id).read(), tmp_path, "url.mp4"),
                                  cli_videos[8])
    client.videos.delete(by_url.id)

    assert client.videos.retrieve(video.id).id == video.id
    newest_first = [v.id for v in client.videos.list(order="desc", limit=1)]  # auto-paging: after= cursor
    assert newest_first[:2] == [i2v.id, video.id]
    assert [v.id for v in client.videos.list(order="asc")][-2:] == [video.id, i2v.id]
    page = client.videos.list(order="asc", limit=1, after=video.id)
    assert [v.id for v in page.data] == [i2v.id]

    outputs = list((api.state / "outputs").glob(f"{video.id}*"))
    assert len(outputs) == 2  # the MP4 and the thumbnail
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted) == (video.id, True)
    assert not any(path.exists() for path in outputs)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    client.videos.delete(i2v.id)


def test_delete_stops_a_running_job(api):
    client = api.client(KEYS[2])
    running = client.videos.create(prompt="long", size="192x128", extra_body=LONG)
    _wait(client, running.id, lambda v: v.status == "in_progress" and v.progress > 5)
    client.videos.delete(running.id)
    # the worker runs one job at a time: once the next one is done, the deleted one has stopped
    after = client.videos.create_and_poll(prompt="next", size="64x64", extra_body=SMALL, poll_interval_ms=50)
    assert after.status == "completed" and after.attempts == 1
    outputs = api.state / "outputs"
    assert not list(outputs.glob(f"*{running.id}*")) and len(list(outputs.glob(f"{after.id}-1.*"))) == 2
    assert "stopped: deleted" in api.log.read_text()
    client.videos.delete(after.id)


def test_bad_requests_are_one_line_4xx_and_store_nothing(api, tiny_engines, tmp_path):
    import openai

    client = api.client(KEYS[3])
    before = api.health()["jobs"]
    cases = [
        ({"size": "big"}, openai.BadRequestError, _cli_error(tiny_engines, "--size", "big")),
        ({"size": "4000x4000"}, openai.BadRequestError, _cli_error(tiny_engines, "--size", "4000x4000")),
        ({"extra_body": {"guide_scale": "nan"}}, openai.BadRequestError,
         _cli_error(tiny_engines, "--guide-scale", "nan")),
        ({"seconds": "4"}, openai.BadRequestError,
         "seconds 4 at 24 fps is 97 frames: frame count 97 is outside what these engines were built for (1..17)"),
        ({"seconds": "-1"}, openai.BadRequestError, "seconds must be a finite number > 0, got -1.0"),
        ({"extra_body": {"steps": 0}}, openai.BadRequestError, "field 'steps' must be >= 1, got 0"),
        ({"extra_body": {"solver": "magic"}}, openai.BadRequestError, "field 'solver' must be one of"),
        ({"extra_body": {"out": "/etc/passwd"}}, openai.BadRequestError, "unknown field 'out'"),
        ({"model": "sora-2"}, openai.BadRequestError, "model 'sora-2' is not served here"),
        ({"input_reference": ("x.png", b"not an image", "image/png")}, openai.BadRequestError,
         "cannot read image input_reference"),
        ({"input_reference": ("big.png", b"\0" * (600 * 1024), "image/png")}, openai.APIStatusError,
         "over the 0.5 MB upload limit"),
    ]
    for fields, error, message in cases:
        with pytest.raises(error) as raised:
            client.videos.create(prompt="x", **fields)
        assert 400 <= raised.value.status_code < 500
        body = raised.value.body
        assert message in body["message"] and "\n" not in body["message"], (fields, body)
    # JSON body without a prompt, and a wrong key: OpenAI's error shape too
    with pytest.raises(urllib.error.HTTPError) as missing:
        _post_json(api, KEYS[3], {"size": "64x64"})
    assert missing.value.code == 400
    assert json.loads(missing.value.read())["error"]["message"].startswith("prompt is required")
    with pytest.raises(openai.AuthenticationError):
        api.client("wrong-key").videos.create(prompt="x", size="64x64", extra_body=SMALL)
    with pytest.raises(openai.AuthenticationError):
        api.client("wrong-key").videos.list()
    assert list(client.videos.list()) == [] and api.health()["jobs"] == before


def test_twenty_jobs_from_four_keys(api, cli_videos, tmp_path):
    import openai

    clients = {key: api.client(key) for key in KEYS}

    def submit(index: int):
        key = KEYS[index % 4]
        seed = CONCURRENT_SEEDS[index]
        return key, seed, clients[key].videos.create(prompt=f"prompt {seed}", size="64x64",
                                                     extra_body={**SMALL, "seed": seed})

    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit, range(20)))
    for key in KEYS:
        mine = {video.id for k, _, video in submitted if k == key}
        assert {video.id for video in clients[key].videos.list()} == mine
    other_key, _, other_video = next(item for item in submitted if item[0] != KEYS[0])
    with pytest.raises(openai.NotFoundError):  # another key's job does not exist for this key
        clients[KEYS[0]].videos.retrieve(other_video.id)
    for key, seed, video in submitted:
        done = clients[key].videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed", done.error
        frames = _frames(clients[key].videos.download_content(video.id).read(), tmp_path, f"{seed}.mp4")
        np.testing.assert_array_equal(frames, cli_videos[seed])
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{api.port}/metrics").read().decode()
    assert "wan_rt_queue_depth 0.0" in metrics and 'wan_rt_jobs{state="completed"} 20.0' in metrics
    for stage in ("text", "denoise", "decode", "thumbnail"):
        assert f'wan_rt_stage_seconds_count{{stage="{stage}"}} 20.0' in metrics
    for key, _, video in submitted:
        clients[key].videos.delete(video.id)


def test_queue_full_is_429(tiny_engines, tmp_path):
    """A bounded queue: with no worker (--workers 0) and --max-queued 2, the third job is refused."""
    _require_serving()
    import openai

    port = pg_server.free_port()
    service = Service(_api_args(tiny_engines, tmp_path / "state", port, "--workers", "0", "--max-queued", "2"),
                      tmp_path / "api.log", port=port)
    try:
        client = service.client(None)
        for _ in range(2):
            client.videos.create(prompt="x", size="64x64", extra_body=SMALL)
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            client.videos.create(prompt="x", size="64x64", extra_body=SMALL)
        assert service.health()["jobs"] == {"queued": 2}
    finally:
        assert service.stop() == 0


def test_api_restart_loses_nothing(tiny_engines, tmp_path):
    """SQLite: the API process killed mid-job; after a restart the running job runs again, the queued one runs,
    and the completed one is still there."""
    _require_serving()
    state, port = tmp_path / "state", pg_server.free_port()
    first = Service(_api_args(tiny_engines, state, port), tmp_path / "api1.log", port=port)
    client = first.client(None)
    done = client.videos.create_and_poll(prompt="done before", size="64x64", extra_body=SMALL, poll_interval_ms=50)
    before = client.videos.download_content(done.id).read()
    running = client.videos.create(prompt="interrupted", size="192x128", extra_body=LONG)
    waiting = client.videos.create(prompt="waiting", size="64x64", extra_body=SMALL)
    _wait(client, running.id, lambda v: v.status == "in_progress" and v.progress > 5)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # its worker gets SIGTERM (parent death) and stops too

    second = Service(_api_args(tiny_engines, state, port), tmp_path / "api2.log", port=port)
    try:
        assert client.videos.download_content(done.id).read() == before
        for video in (running, waiting):
            finished = client.videos.poll(video.id, poll_interval_ms=50)
            assert finished.status == "completed", finished.error
        assert client.videos.retrieve(running.id).attempts == 2
        assert len(list((state / "outputs").glob(f"{running.id}*.mp4"))) == 1
    finally:
        assert second.stop() == 0


def test_postgres_two_workers_sigkill_and_sigterm(tiny_engines, tmp_path, cli_videos):
    """A real PostgreSQL queue, an API-only server and two workers: a worker killed mid-job has its job finished by
    the other after the lease expires (once: one output, one completion); a worker stopped with SIGTERM puts its
    job back in the queue."""
    _require_serving()
    require(pg_server.available(), f"PostgreSQL server binaries not found in {pg_server.PG_BIN} (apt-get install "
                                   f"postgresql-15), or running as root without runuser")
    import psycopg

    with pg_server.PostgresServer() as pg:
        port, outputs = pg_server.free_port(), tmp_path / "outputs"
        api = Service(_api_args(tiny_engines, tmp_path / "state", port, "--queue", pg.url, "--outputs", str(outputs),
                                "--workers", "0"), tmp_path / "api.log", port=port)
        worker_args = ["worker", "--engines", str(tiny_engines), "--queue", pg.url, "--outputs", str(outputs),
                       "--no-verify", "--lease", "2", "--poll", "0.1"]
        workers = [Service(worker_args, tmp_path / f"worker{i}.log") for i in range(2)]
        client = api.client(None)
        try:
            long_job = client.videos.create(prompt="long", size="192x128", extra_body={**LONG, "seed": 5})
            short = [client.videos.create(prompt=f"prompt {seed}", size="64x64", extra_body={**SMALL, "seed": seed})
                     for seed in CONCURRENT_SEEDS[:4]]
            _wait(client, long_job.id, lambda v: v.status == "in_progress" and v.progress > 5)
            with psycopg.connect(pg.url) as connection:
                holder = connection.execute("SELECT worker FROM jobs WHERE id = %s", (long_job.id,)).fetchone()[0]
            victim = next(w for w in workers if holder.endswith(f":{w.process.pid}"))
            assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
            workers.remove(victim)

            finished = client.videos.poll(long_job.id, poll_interval_ms=50)
            assert (finished.status, finished.attempts) == ("completed", 2), finished.error
            assert sorted(path.name for path in outputs.glob(f"*{long_job.id}*")) == [
                f"{long_job.id}-2.mp4", f"{long_job.id}-2.webp"]  # the killed attempt's partial file is gone
            for video, seed in zip(short, CONCURRENT_SEEDS[:4]):
                done = client.videos.poll(video.id, poll_interval_ms=50)
                frames = _frames(client.videos.download_content(video.id).read(), tmp_path, f"{seed}.mp4")
                np.testing.assert_array_equal(frames, cli_videos[seed])
                assert done.completed_at is not None
            with psycopg.connect(pg.url) as connection:
                rows = connection.execute("SELECT status, worker, completed_at FROM jobs WHERE id = %s",
                                          (long_job.id,)).fetchall()
            assert len(rows) == 1 and rows[0][0] == "completed" and rows[0][1] != holder

            # SIGTERM mid-job: the worker exits 0 and the job is queued again, for the next worker
            again = client.videos.create(prompt="stopped", size="192x128", extra_body=LONG)
            _wait(client, again.id, lambda v: v.status == "in_progress" and v.progress > 5)
            assert workers[0].stop(signal.SIGTERM) == 0
            assert client.videos.retrieve(again.id).status == "queued"
            client.videos.delete(again.id)
        finally:
            for service in workers:
                service.stop()
            assert api.stop() == 0


def test_queue_leases_complete_once(tmp_path):
    """The queue's own rules on a real SQLite file: a lease that expires passes the job on, the old holder's
    heartbeat and completion no longer land, a job claimed max_attempts times fails when its lease expires again."""
    _require_serving()
    from wan_rt.service.jobs import Job
    from wan_rt.service.queue import open_queue

    queue = open_queue(None, tmp_path)

    def job(name: str) -> Job:
        return Job(id=name, owner="", prompt="x", model="m", size="64x64", seconds="1", params={}, created_at=1.0)

    assert queue.submit(job("a"), max_queued=2) and queue.submit(job("b"), max_queued=2)
    assert not queue.submit(job("c"), max_queued=2)  # full: nothing stored
    first = queue.claim("w1", lease_s=0.2, max_attempts=3)
    assert (first.id, first.attempt) == ("a", 1) and queue.heartbeat(first, 30, 0.2)
    assert queue.claim("w2", lease_s=60, max_attempts=3).id == "b"  # "a" is leased: the next one
    time.sleep(0.3)  # the lease of w1 runs out
    second = queue.claim("w2", lease_s=60, max_attempts=3)
    assert (second.id, second.attempt) == ("a", 2)
    assert not queue.heartbeat(first, 50, 60) and not queue.complete(first, "a-1.mp4", "a-1.webp", {})
    assert queue.complete(second, "a-2.mp4", "a-2.webp", {"denoise": 1.0})
    assert not queue.complete(second, "a-2.mp4", "a-2.webp", {})  # once
    assert queue.get("a", "").output == "a-2.mp4" and queue.stage_seconds() == {"denoise": (1.0, 1)}

    assert queue.submit(job("d"), max_queued=5)
    lost = queue.claim("w3", lease_s=0.1, max_attempts=1)
    time.sleep(0.2)
    assert lost.id == "d" and queue.claim("w4", lease_s=60, max_attempts=1) is None
    failed = queue.get("d", "")
    assert (failed.status, failed.error_code) == ("failed", "worker_lost") and failed.completed_at is not None
    assert queue.counts() == {"completed": 1, "failed": 1, "in_progress": 1}
    queue.close()
