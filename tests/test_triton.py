"""Serving with Triton on the CPU: `wan-export triton` repositories in the real tritonserver 2.51 that
nvidia-pytriton bundles (python backend, ONNX Runtime inside it), over the tiny engines.

Two servers, one at a time: the default repository (2 instances per model; its engines "moved", found through
--engines) started with `wan-rt serve` and stopped with SIGINT (Ctrl-C) by its process id, then a --bls repository
started with the plain binary as docs/triton.md shows. Every request goes over HTTP with tritonclient. Skipped, with
the reason, where the Triton wheels are not installed (pip install --no-deps -r requirements/triton.txt; python -m
wan_rt.serve --prepare-env); a failure under CI, which installs them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from requires import require
from wan_rt.errors import WanError

INSTALL = "pip install --no-deps -r requirements/triton.txt"
require(importlib.util.find_spec("pytriton") is not None,
        f"nvidia-pytriton (it bundles tritonserver) is not installed: {INSTALL}", module_level=True)
try:
    import tritonclient.http as httpclient
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import InferenceServerException
except ImportError as exc:
    require(False, f"tritonclient[http] with its model-config protobuf is not importable ({exc}): {INSTALL}",
            module_level=True)

from wan_rt import remote, serve  # noqa: E402
from wan_rt.manifest import load_manifest  # noqa: E402
from wan_rt.pipeline import GenerationRequest, Pipeline  # noqa: E402
from wan_rt.video import open_video_writer, read_video  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "A red fox trots through fresh snow at sunrise"
START_TIMEOUT = 120  # seconds for a server to report ready
TRITON_DTYPE_NAMES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16", "int32": "TYPE_INT32"}


# -- helpers ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_repo(engines: Path, out: Path, *args: str) -> Path:
    from wan_export.cli import main as export_main

    result = CliRunner().invoke(export_main, ["triton", "--engines", str(engines), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def parse_config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensor(name: str, array: np.ndarray):
    datatype = "BYTES" if array.dtype == object else {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
                                                      np.dtype(np.float32): "FP32",
                                                      np.dtype(np.uint8): "UINT8"}[array.dtype]
    value = httpclient.InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array)
    return value


def video_request(client, prompt=PROMPT, outputs=("video", "mp4", "seed_used"), **values):
    inputs = [tensor("prompt", np.array([prompt.encode()], dtype=object))]
    for name, value in values.items():
        if isinstance(value, np.ndarray):
            inputs.append(tensor(name, value))
        elif isinstance(value, str):
            inputs.append(tensor(name, np.array([value.encode()], dtype=object)))
        elif isinstance(value, float):
            inputs.append(tensor(name, np.array([value], np.float32)))
        else:
            inputs.append(tensor(name, np.array([value], np.int64 if name == "seed" else np.int32)))
    requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
    return client.infer("wan_video", inputs, outputs=requested, timeout=300)


def stop_process(process: subprocess.Popen, sig=signal.SIGINT, timeout: float = 30) -> int:
    """Stop by its own process id; if that does not end it, kill its session (it was started in its own)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


class Server:
    def __init__(self, command: list[str], log: Path, port: int, env: dict | None = None):
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.log = log
        self.handle = open(log, "wb")
        self.clients = []
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        if not serve.wait_ready(f"http://{self.url}", self.process, START_TIMEOUT):
            tail = self.log_text()[-3000:]
            self.stop()
            pytest.fail(f"tritonserver did not become ready in {START_TIMEOUT} s: {' '.join(command)}\n{tail}")

    def log_text(self) -> str:
        if not self.handle.closed:
            self.handle.flush()
        return self.log.read_text(errors="replace")

    def client(self):
        client = httpclient.InferenceServerClient(self.url, connection_timeout=300, network_timeout=300)
        self.clients.append(client)
        return client

    def stop(self, sig=signal.SIGINT) -> int:
        for client in self.clients:  # an open keep-alive connection holds the server's exit for its exit timeout
            client.close()
        self.clients.clear()
        code = stop_process(self.process, sig)
        self.handle.close()
        return code


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub_env():
    try:
        return serve.ensure_stub_env()
    except WanError as exc:
        require(False, f"no stub environment for the python backend: {exc}")


@pytest.fixture(scope="module")
def repo(tiny_engines, stub_env, tmp_path_factory) -> Path:
    """The default repository, written for engines that have moved since (a symlink, removed after): the server
    below is pointed at them with --engines."""
    folder = tmp_path_factory.mktemp("triton")
    moved = folder / "engines-moved"
    moved.symlink_to(tiny_engines)
    out = write_repo(moved, folder / "repo", "--instances", "2")
    moved.unlink()
    return out


@pytest.fixture(scope="module")
def server(repo, tiny_engines, tmp_path_factory):
    """`wan-rt serve --repository REPO --http-port P --engines DIR` (docs/triton.md), stopped by its pid at the end."""
    port = free_port()
    running = Server([sys.executable, "-m", "wan_rt.cli", "serve", "--repository", str(repo), "--http-port", str(port),
                      "--engines", str(tiny_engines)], tmp_path_factory.mktemp("logs") / "serve.log", port)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def local(tiny_engines):
    with Pipeline(tiny_engines, show_progress=False) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def reference_t2v(local, tmp_path_factory) -> np.ndarray:
    """What `wan-rt generate` makes for the T2V request below, in this process."""
    out = tmp_path_factory.mktemp("reference") / "t2v.npy"
    local.generate(GenerationRequest(prompt=PROMPT, seed=7), out)
    return np.load(out)


def local_frames(pipeline, request: GenerationRequest, folder: Path) -> np.ndarray:
    out = folder / "local.npy"
    pipeline.generate(request, out)
    return np.load(out)


# -- repositories (no server) ---------------------------------------------------------------------------------------
def check_component_config(config, component, platform: str):
    assert config.name == component.name
    assert [t.name for t in config.input] == [t.name for t in component.inputs]
    assert [t.name for t in config.output] == [t.name for t in component.outputs]
    for ours, theirs in ((config.input, component.inputs), (config.output, component.outputs)):
        for got, want in zip(ours, theirs):
            assert model_config_pb2.DataType.Name(got.data_type) == TRITON_DTYPE_NAMES[want.dtype]
            assert list(got.dims) == [a if isinstance(a, int) else -1 for a in want.shape]
    assert json.loads(config.parameters["wan_dims"].string_value) == {k: list(v) for k, v in component.dims.items()}
    shapes = json.loads(config.parameters["wan_shapes"].string_value)
    assert shapes == {t.name: list(t.shape) for t in (*component.inputs, *component.outputs)}
    assert config.max_batch_size == 0
    if platform == "python":
        assert config.backend == "python" and not config.platform
    else:
        assert config.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[platform]
        assert config.default_model_filename == component.file


def test_repositories_parse_with_triton_model_config(tiny_engines, stub_env, tmp_path):
    manifest = load_manifest(tiny_engines)
    variants = {"python": ("--instances", "3"), "python-bls": ("--bls",),
                "onnxruntime": ("--platform", "onnxruntime"),
                "onnxruntime-copy": ("--platform", "onnxruntime", "--copy-engines")}
    for label, args in variants.items():
        repo = write_repo(tiny_engines, tmp_path / label, *args)
        assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted([*manifest.components, "wan_video"])
        platform = label.split("-")[0]
        readme = (repo / "README.md").read_text()
        assert "tritonserver --model-repository=" in readme
        assert ("wan-rt serve --repository" in readme) == (platform == "python")
        for name, component in manifest.components.items():
            config = parse_config(repo / name / "config.pbtxt")
            check_component_config(config, component, platform)
            files = sorted(p.name for p in (repo / name / "1").iterdir())
            if platform == "python":
                assert files == ["model.py"] and config.instance_group[0].count == (3 if label == "python" else 1)
                assert Path(config.parameters["EXECUTION_ENV_PATH"].string_value) == stub_env
            else:
                assert files == sorted(component.files)
                linked = repo / name / "1" / component.file
                assert linked.is_symlink() != label.endswith("copy")
                assert linked.read_bytes() == (tiny_engines / component.file).read_bytes()
        pipeline = parse_config(repo / "wan_video" / "config.pbtxt")
        assert pipeline.backend == "python"
        assert {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims), t.optional) for t in pipeline.input} \
            == {"prompt": ("TYPE_STRING", [1], False), "negative_prompt": ("TYPE_STRING", [1], True),
                "image": ("TYPE_UINT8", [-1, -1, 3], True), "seed": ("TYPE_INT64", [1], True),
                "steps": ("TYPE_INT32", [1], True), "width": ("TYPE_INT32", [1], True),
                "height": ("TYPE_INT32", [1], True), "frames": ("TYPE_INT32", [1], True),
                "guide_scale": ("TYPE_FP32", [1], True), "shift": ("TYPE_FP32", [1], True),
                "solver": ("TYPE_STRING", [1], True), "fps": ("TYPE_INT32", [1], True),
                "cache": ("TYPE_STRING", [1], True), "cache_threshold": ("TYPE_FP32", [1], True),
                "decoder": ("TYPE_STRING", [1], True)}
        assert {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in pipeline.output} == {
            "video": ("TYPE_UINT8", [-1, -1, -1, 3]), "mp4": ("TYPE_STRING", [1]), "seed_used": ("TYPE_INT64", [1])}
        assert pipeline.parameters["bls"].string_value == ("false" if label == "python" else "true")
        engines = pipeline.parameters["engines"].string_value
        assert engines == ("wan_video/engines" if label.endswith("copy") else str(tiny_engines))
        if label.endswith("copy"):
            assert load_manifest(repo / engines).components.keys() == manifest.components.keys()
        if platform != "python":  # the full container's python: no stub environment named
            assert "EXECUTION_ENV_PATH" not in pipeline.parameters


def test_tensorrt_repository(tiny_engines, tmp_path):
    """tensorrt_plan configs from a TensorRT engines folder (the tiny ONNX files stand in for the plans here)."""
    fake = tmp_path / "trt-engines"
    fake.mkdir()
    for item in tiny_engines.iterdir():
        if item.name != "manifest.json":
            (fake / item.name).symlink_to(item)
    data = json.loads((tiny_engines / "manifest.json").read_text(encoding="utf-8"))
    for component in data["components"].values():
        component["backend"] = "tensorrt"
    (fake / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    repo = write_repo(fake, tmp_path / "repo", "--platform", "tensorrt")
    manifest = load_manifest(fake)
    for name, component in manifest.components.items():
        config = parse_config(repo / name / "config.pbtxt")
        check_component_config(config, component, "tensorrt")
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == [component.file]
    # ONNX Runtime engines cannot be served as plans: one clear line
    from wan_export.cli import main as export_main

    result = CliRunner().invoke(export_main, ["triton", "--engines", str(tiny_engines), "--out",
                                              str(tmp_path / "bad"), "--platform", "tensorrt"])
    assert result.exit_code == 2
    assert "--platform tensorrt serves tensorrt engines" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()


def test_serve_refuses_clearly(tmp_path, monkeypatch):
    from wan_rt.cli import main as rt_main

    result = CliRunner().invoke(rt_main, ["serve", "--repository", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else
                        real_find_spec(name, *a))
    with pytest.raises(WanError, match="Triton Inference Server is not installed: pip install"):
        serve.find_triton()


# -- the default repository in the real server (wan-rt serve) --------------------------------------------------------
def test_text_to_video(server, reference_t2v, tmp_path):
    started = time.perf_counter()
    result = video_request(server.client(), seed=7)
    seconds = time.perf_counter() - started
    video = result.as_numpy("video")
    assert video.shape == (9, 96, 160, 3) and video.dtype == np.uint8  # the manifest's defaults
    np.testing.assert_array_equal(video, reference_t2v)  # the same host loop as wan-rt generate
    assert result.as_numpy("seed_used").tolist() == [7]
    mp4 = tmp_path / "t2v.mp4"
    mp4.write_bytes(result.as_numpy("mp4")[0])
    decoded, fps = read_video(mp4)
    assert decoded.shape == video.shape and fps == 24.0
    # the same encode as wan-rt's own writer makes of these frames (H.264 4:2:0 is lossy: noise frames change)
    local_mp4 = tmp_path / "local.mp4"
    with open_video_writer(local_mp4, 24, 160, 96) as writer:
        writer.write(reference_t2v)
    np.testing.assert_array_equal(decoded, read_video(local_mp4)[0])
    print(f"T2V over HTTP: {seconds:.1f} s")


def test_image_to_video(server, local, input_image, tmp_path):
    from PIL import Image

    image = np.asarray(Image.open(input_image).convert("RGB"))
    result = video_request(server.client(), image=image, width=160, height=96, frames=5, steps=2, seed=11)
    video = result.as_numpy("video")
    assert video.shape == (5, 96, 160, 3)
    expected = local_frames(local, GenerationRequest(prompt=PROMPT, image=input_image, size=(160, 96), frames=5,
                                                     steps=2, seed=11), tmp_path)
    np.testing.assert_array_equal(video, expected)
    mp4 = tmp_path / "i2v.mp4"
    mp4.write_bytes(result.as_numpy("mp4")[0])
    assert read_video(mp4)[0].shape == (5, 96, 160, 3)


def test_concurrent_requests(server):
    seeds = [1, 2, 3, 4, 1, 2, 3, 4]

    def one(seed):
        result = video_request(server.client(), outputs=("video",), seed=seed, frames=5, steps=2)
        return result.as_numpy("video")

    started = time.perf_counter()
    with ThreadPoolExecutor(len(seeds)) as pool:
        videos = list(pool.map(one, seeds))
    print(f"8 concurrent requests: {time.perf_counter() - started:.1f} s")
    assert all(v.shape == (5, 96, 160, 3) for v in videos)
    for i, seed in enumerate(seeds):
        for j in range(i + 1, len(seeds)):
            assert np.array_equal(videos[i], videos[j]) == (seeds[j] == seed), (i, j)


def test_bad_requests_answered_and_server_keeps_serving(server, tiny_engines):
    client = server.client()
    refused = {
        "frame count 10 is not 4n+1": dict(frames=10),
        "size 256x64 is outside what these engines were built for": dict(width=256, height=64),
        "unknown scheduler 'foo'": dict(solver="foo"),
        "guide scale must be a finite number >= 0, got nan": dict(guide_scale=float("nan")),
        "steps 5000 is more than the schedule's 1000 training timesteps": dict(steps=5000),
        "give both width and height": dict(width=96),
        "unknown step cache 'foo'; choose from none, magcache, teacache": dict(cache="foo"),
        "cache threshold must be a finite number >= 0 and <= 1, got inf": dict(cache="magcache",
                                                                             cache_threshold=float("inf")),
        "input image must be uint8 RGB [height, width, 3]": dict(image=np.zeros((0, 8, 3), np.uint8)),
        "unexpected shape for input 'image'": dict(image=np.zeros((8, 8, 3, 1), np.uint8)),  # Triton's own check
    }
    for message, values in refused.items():
        with pytest.raises(InferenceServerException) as caught:
            video_request(client, outputs=("video",), **values)
        assert message in caught.value.message(), caught.value.message()
        assert caught.value.status() == "400"
        assert "Traceback" not in caught.value.message()
    # a component model refuses a shape outside the engine's range with the runner's line
    dit = load_manifest(tiny_engines, verify=False).component("dit")
    tokens = dit.dims["tokens"][2] + 1
    feeds = {"tokens": np.zeros((1, tokens, 192), np.float32), "timesteps": np.zeros((1, tokens), np.float32),
             "context": np.zeros((1, 512, 128), np.float32), "rope_cos": np.zeros((tokens, 32), np.float32),
             "rope_sin": np.zeros((tokens, 32), np.float32)}
    with pytest.raises(WanError, match="outside the range the engine was built for"):
        remote.http_call(server.url, "dit", client)(feeds, ["velocity"])
    tokens = dit.dims["tokens"][1]  # in range, but NaN: one error line for that request too
    feeds = {"tokens": np.full((1, tokens, 192), np.nan, np.float32), "timesteps": np.zeros((1, tokens), np.float32),
             "context": np.zeros((1, 512, 128), np.float32), "rope_cos": np.zeros((tokens, 32), np.float32),
             "rope_sin": np.zeros((tokens, 32), np.float32)}
    with pytest.raises(WanError, match="dit: input tokens holds NaN or Inf values"):
        remote.http_call(server.url, "dit", client)(feeds, ["velocity"])
    assert client.is_server_ready() and client.is_model_ready("wan_video")
    assert video_request(client, outputs=("video",), frames=1, steps=1, seed=3).as_numpy("video").shape == \
        (1, 96, 160, 3)


def test_component_models_drive_the_host_loop(server, tiny_engines, tmp_path):
    """The component models, called one by one over HTTP by the unchanged host loop (what a C++ client does),
    give the wan_video model's video."""
    client = server.client()
    expected = video_request(client, outputs=("video",), seed=5, frames=5, steps=2).as_numpy("video")

    def make_runner(component):
        return remote.ForwardingRunner(component, remote.http_call(server.url, component.name, client))

    with remote.RunnerPipeline(tiny_engines, make_runner) as pipeline:
        frames = local_frames(pipeline, GenerationRequest(prompt=PROMPT, seed=5, frames=5, steps=2), tmp_path)
    np.testing.assert_array_equal(frames, expected)


def test_serve_stops_on_ctrl_c(server):
    child = int(re.search(r"tritonserver pid (\d+)", server.log_text()).group(1))
    started = time.perf_counter()
    code = server.stop(signal.SIGINT)
    print(f"stopped in {time.perf_counter() - started:.1f} s")
    assert code == 0, server.log_text()[-2000:]
    assert "tritonserver stopped" in server.log_text()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


# -- a --bls repository with the plain binary -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bls_server(tiny_engines, stub_env, tmp_path_factory):
    repo = write_repo(tiny_engines, tmp_path_factory.mktemp("triton-bls") / "repo", "--bls", "--copy-engines")
    triton = serve.find_triton()
    serve.install_stub(triton)  # cp $S/python_backend_stubs/3.11/triton_python_backend_stub $S/backends/python/
    port = free_port()
    command = [str(triton.binary), f"--model-repository={repo}", f"--backend-directory={triton.backends}",
               "--http-address=127.0.0.1", f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
               "--disable-auto-complete-config"]
    running = Server(command, tmp_path_factory.mktemp("logs") / "bls.log", port)
    yield running
    running.stop(signal.SIGTERM)


def test_bls_repository_matches(bls_server, reference_t2v):
    result = video_request(bls_server.client(), outputs=("video",), seed=7)
    np.testing.assert_array_equal(result.as_numpy("video"), reference_t2v)
    with pytest.raises(InferenceServerException, match="4n\\+1"):
        video_request(bls_server.client(), outputs=("video",), frames=6)
    assert bls_server.client().is_server_ready()
