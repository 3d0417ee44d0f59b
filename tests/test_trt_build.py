"""wan_export.trt: real TensorRT-RTX engine builds on this machine, ahead of time for SM89 (no GPU needed), no mocks.

Tiny attention blocks are exported with torch.onnx.export(dynamo=True) and built for real; the tests needing the
TensorRT-RTX wheels skip without them, the "no GPU" tests skip on a machine that has one.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wan_export.trt import (
    EngineRequest,
    build_engine,
    check_can_build,
    engine_header_info,
    gpu_compute_capability,
    inspect_engine,
    library_available,
)
from requires import needs
from wan_export.trt import library as libs
from wan_rt.backends import trt_engine_check
from wan_rt.errors import WanError

HAVE_RTX = library_available("tensorrt-rtx")
needs_rtx = needs(HAVE_RTX, "TensorRT-RTX wheels not installed (pip install -r requirements/tensorrt-rtx.txt)")
HAVE_GPU = gpu_compute_capability() is not None
needs_no_gpu = pytest.mark.skipif(HAVE_GPU, reason="checks the no-GPU behaviour; this machine has a GPU")

DIM = 32
SHAPES = {"x": ((1, 1, DIM), (1, 16, DIM), (1, 64, DIM))}
PROFILE = {"x": {"min": [1, 1, DIM], "opt": [1, 16, DIM], "max": [1, 64, DIM]}}


def _export(path: Path, dtype) -> Path:
    import torch

    class Block(torch.nn.Module):  # Linear + LayerNorm + softmax attention, a DiT block in miniature
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(DIM)
            self.qkv = torch.nn.Linear(DIM, 3 * DIM)
            self.out = torch.nn.Linear(DIM, DIM)

        def forward(self, x):
            q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
            attention = torch.softmax(q @ k.transpose(-1, -2) * DIM ** -0.5, dim=-1)
            return x + self.out(attention @ v)

    torch.manual_seed(0)
    model = Block().to(dtype).eval()
    seq = torch.export.Dim("seq", min=1, max=1024)
    torch.onnx.export(model, (torch.randn(1, 8, DIM, dtype=dtype),), str(path), dynamo=True, input_names=["x"],
                      output_names=["y"], dynamic_shapes={"x": {1: seq}}, verbose=False)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("onnx")
    return {name: _export(folder / f"{name}.onnx", dtype)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))}


class Log(list):
    def __call__(self, line):
        self.append(str(line))

    @property
    def text(self):
        return "\n".join(self)


def _request(onnx, engine, **kw):
    return EngineRequest(**{"onnx_path": onnx, "engine_path": engine, "library": "tensorrt-rtx", "shapes": SHAPES,
                            "precision": "fp32", **kw})


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_rtx_builds_for_sm89_on_cpu(graphs, tmp_path, precision):
    import tensorrt_rtx_bindings

    log = Log()
    engine = tmp_path / "engines" / "block.engine"  # the folder is created
    target = build_engine(_request(graphs[precision], engine, precision=precision), log=log)
    assert engine.is_file() and engine.stat().st_size > 10_000
    assert _only(engine.parent) == ["block.engine"]  # no temp file left beside it
    tf32 = precision == "fp32"  # TF32 allowed in fp32 engines by default; bf16/fp16 keep their fp32 parts exact
    reported = target.pop("reported_memory")  # the builder's own INFO lines, for wan-rt --memory auto
    assert reported["weight_bytes"] == trt_engine_check.engine_header_info(engine)["device_weight_bytes"] > 0
    assert reported["activation_bytes"] > 0
    assert target == {"library": "tensorrt-rtx", "version": tensorrt_rtx_bindings.__version__,
                      "compute_capabilities": ["SM89"], "precision": precision, "profile": PROFILE,
                      "strongly_typed": True, "tf32": tf32, "optimization_level": 3}
    assert engine_tf32_records(engine) == {tf32}  # what the engine itself says
    expected_dtype = {"fp32": "FLOAT", "bf16": "BF16", "fp16": "HALF"}[precision]
    assert f"tensorrt-rtx {tensorrt_rtx_bindings.__version__}: building block.engine" in log.text
    assert f"for SM89; precision {precision} (strongly typed; tensors: {expected_dtype} x" in log.text
    assert f"tf32 {'on' if tf32 else 'off'}; weight streaming off" in log.text
    assert "profile x: min (1, 1, 32) opt (1, 16, 32) max (1, 64, 32)" in log.text
    assert f"built {engine} (" in log.text and " s" in log[-1]
    header = engine_header_info(engine)
    assert header == {"library": "tensorrt-rtx", "version": tensorrt_rtx_bindings.__version__,
                      "compute_capabilities": ["SM89"], "size": engine.stat().st_size,
                      "device_weight_bytes": header["device_weight_bytes"]}
    assert header["device_weight_bytes"] > 0  # no weight streaming: every weight goes to the GPU at load


def engine_tf32_records(engine: Path) -> set[bool]:
    """The `tf32=0|1` lines TensorRT-RTX 1.7 writes into a serialized engine's compiled-graph records (not a
    documented API, read off its engines: the builder's TF32 flag, one line per compiled graph)."""
    import re

    return {flag == b"1" for flag in re.findall(rb"\n\s*tf32=([01])\n", engine.read_bytes())}


@needs_rtx
def test_strict_fp32_and_weight_streaming_are_read_back_from_the_engine(graphs, tmp_path):
    """The build flags as the engine records them (ahead of time, no GPU): `tf32=0` in its compiled-graph records
    with strict_fp32, and no weights loaded with the engine (header) with weight streaming."""
    from wan_export.trt.builder import onnx_weight_bytes

    log = Log()
    engine = tmp_path / "streamed.engine"
    target = build_engine(_request(graphs["fp32"], engine, strict_fp32=True, weight_streaming=True), log=log)
    assert target["tf32"] is False and engine_tf32_records(engine) == {False}
    assert target["weight_streaming"] is True and target["weight_bytes"] == onnx_weight_bytes(graphs["fp32"])
    assert engine_header_info(engine)["device_weight_bytes"] == 0
    assert "tf32 off; weight streaming on" in log.text
    if not HAVE_GPU:  # the engine's streamable_weights_size needs it deserialized, on a GPU
        assert target["streamable_bytes"] is None
        assert "streamable bytes are known once the engine is loaded on a GPU" in log.text
    # the same graph without weight streaming: all its weights go to the GPU with the engine, about the
    # graph's initializer bytes (the engine packs them, with a little alignment)
    plain = tmp_path / "plain.engine"
    build_engine(_request(graphs["fp32"], plain), log=Log())
    loaded = engine_header_info(plain)["device_weight_bytes"]
    assert target["weight_bytes"] <= loaded <= target["weight_bytes"] + 4096, (loaded, target["weight_bytes"])


@pytest.mark.parametrize("installed, refused", [("10.13.3.9", True), ("8.6.1", True), ("10.14.1.48", False),
                                               ("10.16.0.72", False), ("11.0.0.1", False)])
def test_tensorrt_older_than_10_14_is_refused(installed, refused):
    """Opset 23 with the ONNX Attention operator needs TensorRT 10.14 (a fake installed version: the check takes
    the version as data; check_can_build gives it the library's __version__ before any export)."""
    if not refused:
        libs.check_version("tensorrt", installed)
        return
    with pytest.raises(WanError) as excinfo:
        libs.check_version("tensorrt", installed)
    assert _one_line_error(excinfo) == (
        f"tensorrt {installed} is installed, and these graphs need tensorrt 10.14 or newer (opset 23 with the ONNX "
        f"Attention operator, which TensorRT parses from 10.14 on); pip install 'tensorrt-cu13>=10.14' (or "
        f"tensorrt-cu12)")


@needs_rtx
def test_rtx_has_no_floor_and_no_sm90_target():
    """TensorRT-RTX's own enum: the targets are SM75, SM80, SM86, SM89, SM120, SM121 (and CURRENT); no SM90. So
    --sm CURRENT on an H100/H200 (a fake device info: validate_targets takes the GPU as data) is one line that
    points to --backend tensorrt, and an RTX GPU's CURRENT passes."""
    trt = libs.load("tensorrt-rtx")
    libs.check_version("tensorrt-rtx", trt.__version__)
    assert libs.target_names(trt) == ["CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121"]
    assert not hasattr(trt.ComputeCapability, "SM90")
    with pytest.raises(WanError) as excinfo:
        libs.validate_targets(trt, "tensorrt-rtx", ("CURRENT",), ("NVIDIA H200", "SM90"))
    message = _one_line_error(excinfo)
    assert message.startswith(f"tensorrt-rtx {trt.__version__} has no target for this GPU (NVIDIA H200, SM90)")
    assert "SM75, SM80, SM86, SM89, SM120, SM121 only" in message and message.endswith("use --backend tensorrt "
                                                                                       "on this GPU instead")
    assert libs.validate_targets(trt, "tensorrt-rtx", ("CURRENT",), ("NVIDIA GeForce RTX 4090", "SM89")) == (
        "CURRENT",)


@needs_rtx
def test_one_logger_per_library_routes_errors_to_the_calling_thread(tmp_path):
    """Every builder and runner shares the library's one ILogger; a real parser error raised in one thread lands
    in that thread's sink, not in the sink another thread has active at the same time."""
    import threading

    from wan_rt.backends.trt_library import make_logger

    trt = libs.load("tensorrt-rtx")
    mine, other = make_logger(trt, Log(), "a"), make_logger(trt, Log(), "b")
    assert mine.logger is other.logger
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf " * 20)
    other_active, parsed = threading.Event(), threading.Event()

    def hold_other():
        with other.active():
            other_active.set()
            parsed.wait(60)

    thread = threading.Thread(target=hold_other)
    thread.start()
    other_active.wait(60)
    try:
        with mine.active():
            network = trt.Builder(mine.logger).create_network(libs.strongly_typed_flag(trt))
            assert not trt.OnnxParser(network, mine.logger).parse_from_file(str(corrupt))
    finally:
        parsed.set()
        thread.join(60)
    assert mine.errors and any("parse" in line.lower() for line in mine.errors), mine.errors
    assert other.errors == []


@needs_rtx
def test_rtx_several_targets_optimization_level_and_workspace(graphs, tmp_path):
    engine = tmp_path / "multi.engine"
    target = build_engine(_request(graphs["bf16"], engine, precision="bf16", compute_capabilities=("SM86", "sm89", "SM120"),
                                   optimization_level=0, workspace_bytes=1 << 28), log=Log())
    assert target["compute_capabilities"] == ["SM86", "SM89", "SM120"]
    assert target["optimization_level"] == 0
    assert engine_header_info(engine)["compute_capabilities"] == ["SM86", "SM89", "SM120"]


@needs_rtx
def test_rtx_ignores_timing_cache_and_says_so(graphs, tmp_path):
    fresh, existing = tmp_path / "fresh.cache", tmp_path / "existing.cache"
    existing.write_bytes(b"left alone")
    for cache in (fresh, existing):
        log = Log()
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", timing_cache=cache), log=log)
        assert "timing cache: not used; tensorrt-rtx ignores timing caches" in log.text
        assert f"{cache} is neither read nor written" in log.text
    assert not fresh.exists() and existing.read_bytes() == b"left alone"


@needs_rtx
def test_onnx_with_external_data_found_beside_the_graph(graphs, tmp_path, monkeypatch):
    import onnx

    model = onnx.load(str(graphs["fp32"]))  # loads the external weights torch wrote too
    folder = tmp_path / "graph"
    folder.mkdir()
    onnx.save_model(model, str(folder / "block.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="block.onnx.data", size_threshold=0)
    assert (folder / "block.onnx.data").stat().st_size > 4 * DIM * DIM * 4  # every weight is outside the graph
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the weights are found next to the graph, not in the working directory
    engine = tmp_path / "external.engine"
    assert build_engine(_request(folder / "block.onnx", engine), log=Log())["precision"] == "fp32"
    assert engine.stat().st_size > 10_000

    (folder / "block.onnx.data").unlink()
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(folder / "block.onnx", tmp_path / "nodata.engine"), log=Log())
    message = _one_line_error(excinfo)
    assert "could not parse" in message and "block.onnx.data" in message
    assert not (tmp_path / "nodata.engine").exists()


@needs_rtx
def test_shapes_naming_a_wrong_input_fail_and_leave_nothing(graphs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bad = {"latent": SHAPES["x"]}
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], out / "e.engine", shapes=bad), log=Log())
    message = _one_line_error(excinfo)
    assert "['latent']" in message and "its inputs are: x(1, -1, 32)" in message
    assert _only(out) == []


@needs_rtx
def test_dynamic_input_without_shapes_is_named(graphs, tmp_path):
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", shapes={}), log=Log())
    assert "['x'] have dynamic axes" in _one_line_error(excinfo)
    assert _only(tmp_path) == []


@needs_rtx
@pytest.mark.parametrize("shapes, words", [
    ({"x": ((1, 64, DIM), (1, 16, DIM), (1, 1, DIM))}, "min <= opt <= max"),
    ({"x": ((1, DIM), (16, DIM), (64, DIM))}, "has rank 2"),
    ({"x": ((1, 1, 8), (1, 16, 8), (1, 64, 8))}, "fixed axes"),
])
def test_bad_profiles_are_refused(graphs, tmp_path, shapes, words):
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", shapes=shapes), log=Log())
    assert words in _one_line_error(excinfo)
    assert _only(tmp_path) == []


@needs_rtx
def test_library_build_failure_is_one_line_and_keeps_the_old_engine(graphs, tmp_path):
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"previous engine")
    with pytest.raises(WanError) as excinfo:  # Turing has no bf16: build_serialized_network returns None
        build_engine(_request(graphs["bf16"], engine, precision="bf16", compute_capabilities=("SM75",)), log=Log())
    message = _one_line_error(excinfo)
    assert "failed to build e.engine" in message and "for SM75" in message and "sm75" in message
    assert _only(tmp_path) == ["e.engine"] and engine.read_bytes() == b"previous engine"


@needs_rtx
def test_precision_must_match_the_graph(graphs, tmp_path):
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", precision="bf16"), log=Log())
    assert "precision bf16 was asked, but the graph computes in FLOAT only" in _one_line_error(excinfo)


@needs_rtx
def test_corrupt_or_missing_onnx(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf " * 20)
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(corrupt, tmp_path / "e.engine"), log=Log())
    message = _one_line_error(excinfo)
    assert f"could not parse {corrupt}" in message and "Failed to parse the ONNX model" in message
    with pytest.raises(WanError, match="does not exist"):
        build_engine(_request(tmp_path / "missing.onnx", tmp_path / "e.engine"), log=Log())
    assert _only(tmp_path) == ["corrupt.onnx"]


@needs_rtx
def test_rtx_target_names_are_checked(graphs, tmp_path):
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", compute_capabilities=("SM90",)), log=Log())
    assert "cannot target ['SM90']" in _one_line_error(excinfo) and "'SM89'" in str(excinfo.value)
    with pytest.raises(WanError, match="cannot be combined"):
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", compute_capabilities=("CURRENT", "SM89")))


@needs_rtx
@needs_no_gpu
def test_rtx_current_target_needs_a_gpu(graphs, tmp_path):
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(graphs["fp32"], tmp_path / "e.engine", compute_capabilities=("CURRENT",)), log=Log())
    assert "CURRENT means this machine's GPU, and no NVIDIA GPU is visible" in _one_line_error(excinfo)


@needs_rtx
@needs_no_gpu
def test_inspect_engine_without_gpu_returns_none_and_says_why(graphs, tmp_path):
    engine = tmp_path / "e.engine"
    build_engine(_request(graphs["fp32"], engine), log=Log())
    log = Log()
    assert inspect_engine(engine, "tensorrt-rtx", log=log) is None
    assert "needs an NVIDIA GPU and none is visible" in log.text


def test_engine_header_info_ignores_other_files(tmp_path):
    other = tmp_path / "x.engine"
    other.write_bytes(b"ftrt" + bytes(100))
    assert engine_header_info(other) is None
    assert engine_header_info(tmp_path / "missing.engine") is None


@needs_no_gpu
def test_tensorrt_without_gpu_fails_at_once(tmp_path):
    # The real check (CUDA driver, then nvidia-smi): this machine has no GPU. It fails before touching the graph.
    with pytest.raises(WanError) as excinfo:
        build_engine(EngineRequest(onnx_path=tmp_path / "never-read.onnx", engine_path=tmp_path / "e.engine",
                                   library="tensorrt", shapes=SHAPES, precision="bf16"), log=Log())
    assert str(excinfo.value) == (
        "TensorRT builds need an NVIDIA GPU; none found. Use --backend tensorrt-rtx to build ahead of time on this "
        "machine, or build on the GPU machine")
    with pytest.raises(WanError, match="^TensorRT builds need an NVIDIA GPU; none found"):
        check_can_build("tensorrt")
    assert _only(tmp_path) == []


@pytest.mark.skipif(library_available("tensorrt"), reason="tensorrt is installed here")
def test_missing_library_names_the_pip_package():
    with pytest.raises(WanError) as excinfo:
        libs.load("tensorrt")
    assert "tensorrt-cu12" in _one_line_error(excinfo) and "tensorrt-cu13" in str(excinfo.value)


def test_missing_rtx_names_the_wheels():
    """Where the wheels are installed (CI), a child process in which they do not import stands in for a machine
    without them."""
    code = ("import sys\nsys.modules['tensorrt_rtx_bindings'] = None  # import fails, as when not installed\n"
            "from wan_export.trt import check_can_build\nfrom wan_rt.errors import WanError\n"
            "try:\n    check_can_build('tensorrt-rtx')\nexcept WanError as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tensorrt-rtx-cu13-libs==1.7.1.116 and tensorrt-rtx-cu13-bindings" in result.stdout, result.stdout


def test_unknown_library_and_bad_request(tmp_path):
    with pytest.raises(WanError, match="unknown engine library 'onnx'"):
        library_available("onnx")
    with pytest.raises(WanError, match="precision 'int8'"):
        build_engine(_request(tmp_path / "g.onnx", tmp_path / "e.engine", precision="int8"), log=Log())
    with pytest.raises(WanError, match="optimization level 7"):
        build_engine(_request(tmp_path / "g.onnx", tmp_path / "e.engine", optimization_level=7), log=Log())


def test_requirements_pin_both_rtx_wheels():
    lines = (Path(__file__).parents[1] / "requirements" / "tensorrt-rtx.txt").read_text().split("\n")
    pins = sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    assert pins == ["tensorrt-rtx-cu13-bindings==1.7.1.116", "tensorrt-rtx-cu13-libs==1.7.1.116"]
    assert libs.LIBRARIES["tensorrt-rtx"].module == "tensorrt_rtx_bindings"


def _export_sdpa_chain(path: Path, count: int) -> Path:
    """`count` fp32 scaled_dot_product_attention ops in a row: opset 23 exports them as ONNX Attention."""
    import torch

    class Chain(torch.nn.Module):
        def forward(self, x):
            for _ in range(count):
                x = x + torch.nn.functional.scaled_dot_product_attention(x, x * 0.5, x)
            return x

    seq = torch.export.Dim("seq", min=1, max=1024)
    torch.onnx.export(Chain().eval(), (torch.randn(1, 2, 8, 64),), str(path), dynamo=True, opset_version=23,
                      input_names=["x"], output_names=["y"], dynamic_shapes={"x": {2: seq}}, verbose=False)
    return path


@needs_rtx
def test_every_fp32_attention_is_marked_decomposable_and_builds(tmp_path):
    from wan_export.trt.builder import _allow_attention_fallback

    count = 12  # enough ops that a stale "already marked" check would skip some
    onnx = _export_sdpa_chain(tmp_path / "chain.onnx", count)
    trt = libs.load("tensorrt-rtx")
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(libs.strongly_typed_flag(trt))
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx))
    log = Log()
    _allow_attention_fallback(trt, network, "fp32", log)
    attentions = []  # keep the wrappers alive so each read-back names its own op
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.ATTENTION_OUTPUT:
            layer.__class__ = trt.IAttentionBoundaryLayer
            attentions.append(layer.attention)
    assert len({a.name for a in attentions}) == count
    assert all(a.decomposable for a in attentions)
    assert f"{count} fp32 attention op(s) may be decomposed" in log.text

    shapes = {"x": ((1, 2, 1, 64), (1, 2, 16, 64), (1, 2, 64, 64))}
    engine = tmp_path / "chain.engine"
    build_engine(_request(onnx, engine, shapes=shapes, compute_capabilities=("SM89",)), Log())
    assert engine.stat().st_size > 0


@needs_rtx
def test_device_memory_budget_failure_says_what_it_means(tmp_path):
    """An "OutOfMemory" build is the builder's GPU-memory estimate over weights + workspace: the error says so."""
    onnx = _export_sdpa_chain(tmp_path / "chain.onnx", 4)
    shapes = {"x": ((1, 2, 1, 64), (1, 2, 16384, 64), (1, 2, 16384, 64))}  # fp32 attention decomposed: 2 GB scores
    engine = tmp_path / "chain.engine"
    with pytest.raises(WanError) as excinfo:
        build_engine(_request(onnx, engine, shapes=shapes, compute_capabilities=("SM89",),
                              workspace_bytes=64 << 20), Log())
    message = _one_line_error(excinfo)
    assert "the engine would need about" in message and "GB of GPU memory" in message
    assert "budget of 0.1 GB" in message and "--workspace-gb" in message
    assert not engine.exists() and not [name for name in _only(tmp_path) if "engine" in name]


@needs_rtx
def test_a_killed_build_child_is_one_line(graphs, tmp_path):
    """wan-export build exports and builds in child processes (wan_export.isolated): a child killed mid-build
    (e.g. by the OOM killer) is one WanError line naming the signal, and no engine or temp file is left; the
    same call otherwise returns the child's result, with its log lines passed on."""
    import logging
    import multiprocessing
    import os
    import signal

    from wan_export.build import build_engine_logged, remove_partial_engines
    from wan_export.isolated import call_in_child

    engine = tmp_path / "block.engine"
    request = _request(graphs["fp32"], engine, compute_capabilities=("SM89",))

    class Lines(logging.Handler):
        def __init__(self, kill: bool):
            super().__init__()
            self.kill, self.killed, self.lines = kill, [], []

        def emit(self, record):
            self.lines.append(record.getMessage())
            if self.kill and not self.killed:  # the child's first log line: it is building now
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)
                    self.killed.append(child.pid)

    def run_logged(handler):
        logger = logging.getLogger("wan_export")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            return call_in_child("building block.engine", build_engine_logged, request,
                                 cleanup=lambda: remove_partial_engines(engine))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)

    killer = Lines(kill=True)
    with pytest.raises(WanError) as excinfo:
        run_logged(killer)
    message = _one_line_error(excinfo)
    assert killer.killed and message.startswith("building block.engine failed: the worker process was killed by "
                                                "SIGKILL") and "OOM killer" in message
    assert _only(tmp_path) == []

    watcher = Lines(kill=False)
    target = run_logged(watcher)
    assert target["compute_capabilities"] == ["SM89"] and engine.stat().st_size > 0
    assert any("SM89" in line for line in watcher.lines), watcher.lines  # the builder's lines came through
