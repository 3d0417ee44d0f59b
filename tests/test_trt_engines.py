"""TensorRT-RTX engines folders end to end: the tiny profile built by the real CLI, its manifest, and the runtime.

Without a GPU (CI): `wan-export build --profile tiny --backend tensorrt-rtx --sm 89` builds every component ahead
of time on the CPU; the manifest's engine entries are checked against the engines' own headers; a bf16 profile
builds too; `wan-rt generate` on the folder refuses in one line; the fit checks (version, compute capability)
refuse engines made for another library version or GPU. With a GPU the folder is built for CURRENT instead and
the engines run: generation matches ONNX Runtime on the same graphs, and `wan-export check` passes.
Tests needing the TensorRT-RTX wheels skip without them; tests running engines skip without a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from requires import needs, require
from test_trt_build import engine_tf32_records
from wan_rt.backends import trt as trt_backend
from wan_rt.backends.trt_engine_check import RTX_CC_BITS
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early

HAVE_RTX = trt_backend._import("tensorrt_rtx_bindings")[0] is not None
HAVE_GPU = trt_backend.gpu_info() is not None
HAVE_CUDA_PYTHON = trt_backend._import("cuda.bindings.runtime")[0] is not None
RTX_MISSING = "TensorRT-RTX wheels not installed (pip install -r requirements/tensorrt-rtx.txt)"
needs_rtx = needs(HAVE_RTX, RTX_MISSING)
needs_gpu = pytest.mark.skipif(
    not (HAVE_GPU and HAVE_CUDA_PYTHON),
    reason="running TensorRT engines needs an NVIDIA GPU and cuda-bindings; the CPU build is tested without them")
needs_no_gpu = pytest.mark.skipif(HAVE_GPU, reason="checks the no-GPU behaviour; this machine has a GPU")


def gpu_test_backend(compute_capability: str | None, rtx: bool, tensorrt: bool, ort_cuda: bool) -> tuple[str | None,
                                                                                                        str]:
    """(backend the GPU tests run on this GPU, why): TensorRT-RTX on the compute capabilities it lists, else full
    TensorRT, else ONNX Runtime's CUDA provider; None (the tests skip, saying why) when none is installed."""
    if compute_capability is None:
        return None, "no NVIDIA GPU"
    if compute_capability in RTX_TARGETS:
        return ("tensorrt-rtx", f"{compute_capability} is a TensorRT-RTX target") if rtx else (
            None, f"{compute_capability} runs TensorRT-RTX, which is not installed ({RTX_MISSING})")
    if tensorrt:
        return "tensorrt", f"{compute_capability} is not a TensorRT-RTX target; full TensorRT serves it"
    if ort_cuda:
        return "onnxruntime-cuda", f"{compute_capability} is not a TensorRT-RTX target; ONNX Runtime CUDA serves it"
    return None, (f"{compute_capability} is not a TensorRT-RTX target (it lists {', '.join(sorted(RTX_TARGETS))}) and "
                  f"neither full TensorRT nor onnxruntime-gpu is installed")


RTX_TARGETS = frozenset(RTX_CC_BITS.values())  # the compute capabilities a TensorRT-RTX engine can name
GPU_CC = trt_backend.gpu_info()[1] if HAVE_GPU else None
GPU_BACKEND, GPU_BACKEND_WHY = gpu_test_backend(GPU_CC, HAVE_RTX, trt_backend._import("tensorrt")[0] is not None,
                                                "CUDAExecutionProvider" in __import__("onnxruntime")
                                                .get_available_providers())
# the RTX GPU tests run where TensorRT-RTX serves this GPU; on others (an H100/H200: SM90) they skip with the reason
needs_rtx_gpu = pytest.mark.skipif(
    not (HAVE_GPU and HAVE_CUDA_PYTHON and GPU_BACKEND == "tensorrt-rtx"),
    reason=f"TensorRT-RTX engine runs need a GPU it targets and cuda-bindings: {GPU_BACKEND_WHY}")

ROOT = Path(__file__).resolve().parents[1]
# SM89 (RTX 4090) ahead of time without a TensorRT-RTX GPU (CURRENT is refused on one it does not target)
TARGET = "CURRENT" if GPU_BACKEND == "tensorrt-rtx" else "SM89"
COMPONENTS = ["text_encoder", "dit", "dit_skip", "dit_time", "vae_encoder", "vae_decoder_first", "vae_decoder_step",
              "vae_tiny_decoder"]


def _cli(module: str, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def rtx_engines(tiny_official_ckpt, tiny_engines, tmp_path_factory) -> Path:
    """The tiny profile (fp32) built by `wan_export.build.build` for TensorRT-RTX from the graphs of the session's
    ONNX Runtime folder (`--onnx-from`: the same weights, so the same graphs, not exported a second time), each
    engine built in its child process as `wan-export build` does. The bf16 fixture below runs the whole CLI,
    exports (in their child processes) included."""
    require(HAVE_RTX, RTX_MISSING)
    from wan_export import build as build_module
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    # strict fp32 (no TF32): the GPU tests compare these engines with ONNX Runtime at fp32 limits
    return build_module.build(profile, source, tmp_path_factory.mktemp("rtx") / "tiny",
                              build_module.BuildOptions(backend="tensorrt-rtx", compute_capabilities=(TARGET,),
                                                        strict_fp32=True, onnx_from=tiny_engines))


def _bf16_profile(folder: Path) -> Path:
    """The tiny profile asking for bf16 text encoder and DiT, as the 5B profiles do."""
    text = (ROOT / "profiles" / "tiny.toml").read_text()
    text = text.replace('text_encoder = "fp32"', 'text_encoder = "bf16"').replace('dit = "fp32"', 'dit = "bf16"')
    path = folder / "tiny-bf16.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def bf16_engines(tmp_path_factory) -> Path:
    """text_encoder and dit of a tiny profile file asking for bf16 (the 5B profiles' precision), built by the real
    CLI for TensorRT-RTX: `wan-export build --profile FILE --backend tensorrt-rtx --sm 89 --only ... --out ...`."""
    require(HAVE_RTX, RTX_MISSING)
    folder = tmp_path_factory.mktemp("bf16")
    result = _cli("wan_export.cli", "build", "--profile", _bf16_profile(folder), "--backend", "tensorrt-rtx",
                  "--sm", TARGET.removeprefix("SM"), "--only", "text_encoder", "--only", "dit",
                  "--only", "vae_encoder", "--weight-streaming", "--out", folder / "engines")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision bf16 (strongly typed; tensors: BF16 x" in result.stderr
    return folder / "engines"


def _dynamic_profile(component) -> dict:
    """{input: {"min", "opt", "max"}} the manifest's dims imply, for every input with a named axis."""
    expected = {}
    for tensor in component.inputs:
        if all(isinstance(d, int) for d in tensor.shape):
            continue
        triple = {}
        for which, key in enumerate(("min", "opt", "max")):
            shape = []
            for dim in tensor.shape:
                if isinstance(dim, int):
                    shape.append(dim)
                else:
                    name, _, factor = dim.partition("*")
                    shape.append(component.dims[name][which] * int(factor or 1))
            triple[key] = shape
        expected[tensor.name] = triple
    return expected


# --- CPU: the build and the manifest ------------------------------------------------------------------------
@needs_rtx
def test_tiny_profile_builds_every_component_into_an_engine(rtx_engines, tiny_engines):
    import tensorrt_rtx_bindings

    manifest = load_manifest(rtx_engines)  # verifies every file's sha256
    assert sorted(manifest.components) == sorted(COMPONENTS)
    graphs = load_manifest(tiny_engines, verify=False).components  # --onnx-from: the very same graph files
    assert {n: c.files[f"{n}.onnx"] for n, c in manifest.components.items()} == {
        n: c.files[f"{n}.onnx"] for n, c in graphs.items()}
    version = tensorrt_rtx_bindings.__version__
    for name, component in manifest.components.items():
        assert component.backend == "tensorrt-rtx" and component.precision == "fp32"
        assert component.file == f"{name}.engine"
        assert set(component.files) == {f"{name}.onnx", f"{name}.engine"}  # sha256 of graph and engine
        assert all(len(digest) == 64 for digest in component.files.values())
        target = component.target
        assert target["library"] == "tensorrt-rtx" and target["version"] == version
        assert target["compute_capabilities"] == [TARGET]
        assert target["precision"] == "fp32" and target["strongly_typed"] is True and target["tf32"] is False
        assert engine_tf32_records(manifest.path(name)) == {False}, name  # --strict-fp32, as the engine says
        assert "weight_streaming" not in target
        assert target["profile"] == _dynamic_profile(component), name
        header = trt_backend.engine_header_info(manifest.path(name))
        assert header["library"] == "tensorrt-rtx" and header["version"] == version
        # the builder's own memory figures (its INFO lines), for `wan-rt --memory auto`: weights as the engine
        # header counts them, activations at the profile's max shapes
        memory = manifest.data["components"][name]["memory"]
        assert memory["weight_bytes"] == target["reported_memory"]["weight_bytes"] == header["device_weight_bytes"]
        assert memory["weight_bytes"] > 0, name
        assert memory["activation_bytes"]["max"] == target["reported_memory"]["activation_bytes"] > 0, name
        if TARGET != "CURRENT":
            assert header["compute_capabilities"] == [TARGET]
            gpu = ("NVIDIA GeForce RTX 4090", "SM89")
            assert trt_backend.check_engine_fits(component, manifest.path(name), version, gpu) == header
    dit = manifest.component("dit").target["profile"]
    assert dit["tokens"]["min"][0] == 1 and dit["tokens"]["max"][0] == 2  # batch 1..2: guidance in one call
    assert manifest.data["versions"]["tensorrt-rtx-cu13-bindings"] == version


@needs_rtx
def test_bf16_profile_exports_and_builds_text_encoder_and_dit(bf16_engines):
    import onnx

    from wan_export.trt.builder import onnx_weight_bytes

    manifest = load_manifest(bf16_engines)
    assert sorted(manifest.components) == ["dit", "text_encoder", "vae_encoder"]
    assert manifest.data["profile"]["precision"]["dit"] == "bf16"
    for component in manifest.components.values():
        precision = "fp32" if component.name == "vae_encoder" else "bf16"
        assert component.precision == precision and component.target["precision"] == precision
        assert component.target["compute_capabilities"] == [TARGET]
        # TF32 by default in the fp32 engine only (bf16 engines keep their fp32 islands exact), in the manifest
        # and in the engine's own records
        assert component.target["tf32"] is (precision == "fp32")
        assert engine_tf32_records(manifest.path(component.name)) == {precision == "fp32"}, component.name
        # --weight-streaming: recorded with the graph's weight bytes; the engine loads no weights up front
        target, path = component.target, manifest.path(component.name)
        assert target["weight_streaming"] is True
        assert target["weight_bytes"] == onnx_weight_bytes(bf16_engines / f"{component.name}.onnx") > 0
        assert trt_backend.engine_header_info(path)["device_weight_bytes"] == 0
        if not HAVE_GPU:
            assert target["streamable_bytes"] is None  # known only once loaded on a GPU
        trt_backend.check_weight_streaming(component, path, 0.5)  # a budget is accepted for these engines
    # The engine I/O stays float32 / int64 (the graph casts inside), so the runtime feeds the same arrays.
    assert {t.dtype for c in manifest.components.values() for t in (*c.inputs, *c.outputs)} == {"float32", "int64"}
    # The official fp32 islands stay fp32 in the bf16 graph; the matmul weights are bf16.
    graph = onnx.load(str(bf16_engines / "dit.onnx"))
    dtypes = {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in graph.graph.initializer}
    islands = [n for n in dtypes if n.endswith((".modulation", ".norm_q.weight", ".norm3.weight"))
               or ".time_embedding." in n or ".time_projection." in n]
    assert islands and {dtypes[n] for n in islands} == {"FLOAT"}
    assert dtypes["dit.blocks.0.self_attn.q.bias"] == "BFLOAT16"


@needs_rtx
@pytest.mark.parametrize("targets, expected", [
    (("90",), "cannot target ['SM90']; choose from"),
    (("89", "SM89"), "compute capabilities ['SM89', 'SM89'] name a target twice"),
    (("CURRENT", "89"), "compute capability CURRENT (this machine's GPU) cannot be combined")])
def test_bad_targets_are_refused_before_any_export(tmp_path, targets, expected):
    args = [arg for cc in targets for arg in ("--sm", cc)]
    result = _cli("wan_export.cli", "build", "--profile", "tiny", "--backend", "tensorrt-rtx", *args,
                  "--out", tmp_path / "engines")
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr
    assert "exported" not in result.stderr and list(tmp_path.iterdir()) == []


def test_tensorrt_options_need_a_tensorrt_backend(tmp_path):
    result = _cli("wan_export.cli", "build", "--profile", "tiny", "--backend", "onnxruntime", "--weight-streaming",
                  "--out", tmp_path / "engines")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: --strict-fp32, --weight-streaming and --refittable are TensorRT build options (ONNX Runtime folders "
        "can always be refitted); add --backend tensorrt or --backend tensorrt-rtx")
    assert list(tmp_path.iterdir()) == []


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_turing_targets_are_refused_before_any_export(tmp_path, precision):
    """TensorRT-RTX compiles neither fp32 nor bf16 matrix multiplies for SM75 (its builder says "FP32 GEMM is not
    supported" for Turing): refused in one line at once instead of failing after the exports."""
    profile = _bf16_profile(tmp_path) if precision == "bf16" else "tiny"
    result = _cli("wan_export.cli", "build", "--profile", profile, "--backend", "tensorrt-rtx", "--sm", "75",
                  "--out", tmp_path / "engines")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "error: tensorrt-rtx cannot build these engines for SM75 (Turing): its compiler has no fp32 or bf16")
    assert "target SM80 or newer" in result.stderr and "exported" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-bf16.toml"][: precision == "bf16"]


@needs_rtx
@needs_no_gpu
def test_generate_without_gpu_fails_in_one_line(rtx_engines, tmp_path):
    out = tmp_path / "t2v.mp4"
    result = _cli("wan_rt.cli", "generate", "--engines", rtx_engines, "--prompt", "a fox in the snow", "--seed", "1",
                  "--out", out, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "text_encoder.engine is a tensorrt-rtx engine and needs an NVIDIA GPU" in errors[0]
    assert f"--backend onnxruntime --out {rtx_engines}-onnxruntime" in errors[0]
    assert not out.exists()


def test_tensorrt_build_without_gpu_fails_before_any_export(tiny_official_ckpt, tmp_path):
    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    if HAVE_GPU:
        pytest.skip("checks the no-GPU behaviour; this machine has a GPU")
    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    with pytest.raises(WanError, match="^TensorRT builds need an NVIDIA GPU; none found. Use --backend tensorrt-rtx"):
        build(profile, source, tmp_path / "engines", BuildOptions(backend="tensorrt"))
    assert list(tmp_path.iterdir()) == []


def test_runtime_backend_imports_without_torch_or_wan_export():
    code = ("import sys, wan_rt.backends.trt as t; t.engine_header_info('/nonexistent'); t.gpu_info(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wan_export', 'tensorrt', "
            "'tensorrt_rtx_bindings', 'cuda')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_wan_export_uses_the_runtime_copies():
    from wan_export import trt as export_trt
    from wan_export.trt import library

    assert export_trt.engine_header_info is trt_backend.engine_header_info
    assert library.gpu_info is trt_backend.gpu_info
    assert library.LIBRARIES["tensorrt-rtx"].module == trt_backend.LIBRARY_MODULES["tensorrt-rtx"]


# --- CPU: refusing engines made for another version or GPU (pure checks on the real engine files) ------------
@pytest.fixture
def dit_component(rtx_engines):
    manifest = load_manifest(rtx_engines, verify=False)
    return manifest.component("dit"), manifest.path("dit")


def _refusal(component, path, version, gpu, library_targets=None) -> str:
    with pytest.raises(WanError) as excinfo:
        trt_backend.check_engine_fits(component, path, version, gpu, library_targets)
    message = str(excinfo.value)
    assert "\n" not in message and message == message.strip()
    return message


@needs_rtx
@needs_no_gpu
def test_engine_for_another_gpu_is_refused_with_the_rebuild_command(dit_component):
    component, path = dit_component
    version = component.target["version"]
    message = _refusal(component, path, version, ("NVIDIA GeForce RTX 3090", "SM86"))
    ckpt = load_manifest(path.parent, verify=False).data["weights"]["path"]
    assert message == (f"dit: dit.engine was built by tensorrt-rtx {version} for SM89, but this GPU (NVIDIA GeForce "
                       f"RTX 3090) is SM86; rebuild for this machine: wan-export build --profile tiny --ckpt-dir {ckpt} "
                       f"--backend tensorrt-rtx --sm CURRENT --out {path.parent}")


@needs_rtx
@needs_no_gpu
def test_rtx_engine_on_an_h100_points_to_full_tensorrt(dit_component):
    """TensorRT-RTX has no SM90 target (its own ComputeCapability enum, as the runner passes it): an RTX engine on
    an H100/H200 (a fake device info; check_engine_fits takes the GPU as data) says so and how to build for it."""
    import tensorrt_rtx_bindings

    component, path = dit_component
    version = component.target["version"]
    targets = trt_backend.rtx_targets(tensorrt_rtx_bindings)
    assert "SM90" not in targets and "SM89" in targets
    message = _refusal(component, path, version, ("NVIDIA H100 80GB HBM3", "SM90"), targets)
    ckpt = load_manifest(path.parent, verify=False).data["weights"]["path"]
    assert message == (f"dit: dit.engine is a TensorRT-RTX engine, and tensorrt-rtx {version} has no target for this "
                       f"GPU (NVIDIA H100 80GB HBM3, SM90): it builds and runs engines for SM75, SM80, SM86, SM89, "
                       f"SM120, SM121 only (RTX-class GPUs; data-centre GPUs such as the H100/H200, SM90, are not "
                       f"among them); use --backend tensorrt on this GPU instead: wan-export build --profile tiny "
                       f"--ckpt-dir {ckpt} --backend tensorrt --out {path.parent}-tensorrt")


@needs_rtx
@needs_no_gpu
def test_gpu_memory_budget_needs_weight_streaming_engines(rtx_engines, monkeypatch):
    """--gpu-memory-budget on engines built without --weight-streaming: refused in one line when the engine opens,
    before any GPU memory is touched (the GPU probe says RTX 4090; nothing else is faked)."""
    from wan_rt.pipeline import Pipeline

    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ("NVIDIA GeForce RTX 4090", "SM89"))
    with Pipeline(rtx_engines, verify=False, show_progress=False, gpu_memory_budget=4.0) as pipe:
        with pytest.raises(WanError) as excinfo:
            pipe.runner("dit")
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(
        "dit: --gpu-memory-budget needs engines built with weight streaming, and dit.engine was built without it")
    assert message.endswith(f"--backend tensorrt-rtx --sm CURRENT --out {rtx_engines} --weight-streaming")
    assert trt_backend.SharedDevice._current is None
    with pytest.raises(WanError, match="must be a positive number of GB"):
        trt_backend.check_weight_streaming(load_manifest(rtx_engines, verify=False).component("dit"), "dit.engine", 0)


def test_onnxruntime_engines_ignore_the_gpu_memory_budget_in_one_line(tiny_engines, caplog):
    import logging

    from wan_rt import backends
    from wan_rt.pipeline import Pipeline

    backends._said_ignored.discard("gpu_memory_budget")
    with caplog.at_level(logging.INFO, logger="wan_rt"):
        with Pipeline(tiny_engines, verify=False, show_progress=False, gpu_memory_budget=2.0) as pipe:
            pipe.runner("text_encoder")
            pipe.runner("dit")
    lines = [r.getMessage() for r in caplog.records if "--gpu-memory-budget" in r.getMessage()]
    assert lines == ["--gpu-memory-budget ignored: it is a TensorRT weight-streaming setting, and these are ONNX "
                     "Runtime engines"]


@needs_rtx
@needs_no_gpu
def test_engine_from_another_library_version_is_refused(dit_component):
    component, path = dit_component
    version = component.target["version"]
    message = _refusal(component, path, "1.8.0.12", ("NVIDIA GeForce RTX 4090", "SM89"))
    assert f"dit.engine was built with tensorrt-rtx {version}, this machine has tensorrt-rtx 1.8.0.12" in message
    assert "--backend tensorrt-rtx --sm CURRENT" in message
    assert f"install tensorrt-rtx-cu13-libs=={version} tensorrt-rtx-cu13-bindings=={version}" in message


@needs_rtx
@needs_no_gpu
def test_manifest_and_engine_header_must_agree(dit_component):
    component, path = dit_component
    version = component.target["version"]
    gpu = ("NVIDIA GeForce RTX 4090", "SM89")
    edited = dataclasses.replace(component, target={**component.target, "compute_capabilities": ["SM86"]})
    assert "the folder is inconsistent" in _refusal(edited, path, version, gpu)
    edited = dataclasses.replace(component, target={**component.target, "version": "1.6.0.1"})
    assert f"says it was built by tensorrt-rtx {version} for SM89" in _refusal(edited, path, "1.6.0.1", gpu)
    edited = dataclasses.replace(component, backend="tensorrt", target={**component.target, "library": "tensorrt"})
    assert "is a TensorRT-RTX engine" in _refusal(edited, path, version, gpu)
    edited = dataclasses.replace(component, target={})
    assert "does not say which library version and GPU" in _refusal(edited, path, version, gpu)
    # Built for CURRENT: the GPU it was built on decides, whatever the header's bit says.
    current = dataclasses.replace(component, target={**component.target, "compute_capabilities": ["CURRENT"],
                                                     "gpu": "NVIDIA H100 80GB HBM3", "gpu_compute_capability": "SM90"})
    assert trt_backend.check_engine_fits(current, path, version, ("NVIDIA H100 80GB HBM3", "SM90"))
    assert "for SM90 (NVIDIA H100 80GB HBM3), but this GPU" in _refusal(current, path, version, gpu)


def test_full_tensorrt_engine_is_judged_by_its_manifest(tmp_path):
    from wan_rt.manifest import ComponentInfo

    engine = tmp_path / "dit.engine"
    engine.write_bytes(b"ftrt" + bytes(200))  # not decodable without TensorRT: the manifest target decides
    component = ComponentInfo(name="dit", backend="tensorrt", precision="bf16", file="dit.engine", files={},
                              inputs=(), outputs=(), dims={},
                              target={"library": "tensorrt", "version": "10.13.3.9", "compute_capabilities": ["SM90"],
                                      "gpu": "NVIDIA H100 80GB HBM3"})
    assert trt_backend.check_engine_fits(component, engine, "10.13.3.9", ("NVIDIA H100 80GB HBM3", "SM90")) == {}
    with pytest.raises(WanError, match=r"built by tensorrt 10.13.3.9 for SM90 \(NVIDIA H100 80GB HBM3\), but this "
                                       r"GPU \(NVIDIA GeForce RTX 4090\) is SM89; rebuild for this machine: "
                                       r"wan-export build --profile PROFILE --backend tensorrt --out"):
        trt_backend.check_engine_fits(component, engine, "10.13.3.9", ("NVIDIA GeForce RTX 4090", "SM89"))
    with pytest.raises(WanError, match=r"install tensorrt-cu13==10.13.3.9"):
        trt_backend.check_engine_fits(component, engine, "10.14.0.2", ("NVIDIA H100 80GB HBM3", "SM90"))


class _FakeCudart:
    """Stands in for cuda.bindings.runtime on a machine without a driver: records calls, hands out addresses."""

    class cudaError_t:  # noqa: N801 (the real enum's name)
        cudaSuccess = 0

    cudaStreamNonBlocking = 1

    def __init__(self):
        self.calls, self.live, self._next = [], set(), 0x1000

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            if name == "cudaMalloc":
                self._next += 1 << 20
                self.live.add(self._next)
                return 0, self._next
            if name == "cudaFree" and args[0]:
                self.live.discard(args[0])
            return (0, 7) if name == "cudaStreamCreateWithFlags" else (0,)
        return call


@needs_rtx
@needs_no_gpu
def test_open_refused_by_the_library_releases_shared_memory(rtx_engines, monkeypatch):
    """The whole open path up to the library's verdict, for real: on this CPU machine TensorRT-RTX itself says
    the engine cannot run; the runner reports it in one line and gives back the shared stream and scratch."""
    from wan_rt.backends import open_runner

    fake = _FakeCudart()
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: ("NVIDIA GeForce RTX 4090", "SM89"))
    monkeypatch.setattr(trt_backend, "load_cudart", lambda: fake)
    manifest = load_manifest(rtx_engines, verify=False)
    with pytest.raises(WanError) as excinfo:
        with open_runner(manifest, "dit"):
            pass
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("dit: tensorrt-rtx ")
    assert "cannot run dit.engine on this GPU (NVIDIA GeForce RTX 4090, SM89)" in message
    assert "--sm CURRENT" in message
    assert trt_backend.SharedDevice._current is None
    assert "cudaStreamDestroy" in fake.calls and not fake.live


def test_runtime_cache_location(monkeypatch, tmp_path):
    from wan_rt.manifest import ComponentInfo

    component = ComponentInfo(name="dit", backend="tensorrt-rtx", precision="bf16", file="dit.engine",
                              files={"dit.engine": "ab" * 32}, inputs=(), outputs=(), dims={})
    monkeypatch.setenv("WAN_RT_TRT_CACHE", str(tmp_path))
    assert trt_backend.runtime_cache_path(component, "SM89") == tmp_path / f"dit-{'ab' * 8}-SM89.cache"
    monkeypatch.setenv("WAN_RT_TRT_CACHE", "off")
    assert trt_backend.runtime_cache_path(component, "SM89") is None


def test_gpu_check_script_parses_and_the_bench_counts_dit_flops():
    import importlib.util

    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True, timeout=30)
    spec = importlib.util.spec_from_file_location("bench_dit_gpu", ROOT / "benchmarks" / "bench_dit_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from wan_export.config import TI2V_5B

    assert bench.dit_flops(TI2V_5B.dit, 27280, 1) == pytest.approx(5.2e14, rel=0.01)  # 720p x 121 frames
    assert bench.dit_flops(TI2V_5B.dit, 27280, 2) == 2 * bench.dit_flops(TI2V_5B.dit, 27280, 1)


def test_gpu_check_script_reports_every_stage_without_a_gpu(tmp_path):
    """The script on this machine with an empty wheels folder: every stage is in the report (failed or skipped with
    the stage it needs), the failed stage's log tail is attached, and the script still exits 0."""
    if trt_backend.gpu_info() is not None:
        pytest.skip("a GPU is present: scripts/gpu_check.sh would run its real stages here")
    (tmp_path / "wheels").mkdir()
    report = tmp_path / "out" / "report.md"
    env = {**os.environ, "PYTHON": sys.executable, "SIZES": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "wheels"), str(report),
                             str(tmp_path / "work")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert "| env | ok |" in text
    assert "| wheels | FAILED (exit 1) |" in text and "error: no wheels in" in text
    assert "| imports | skipped (needs wheels) |" in text
    assert "| tiny_build | skipped (needs imports, gpu" in text and "| tiny_check | skipped (needs tiny_build) |" in text
    assert "### wheels: FAILED (exit 1)" in text  # the failed stage's log tail
    assert "| tiny_tf32_check | skipped (needs imports, gpu" in text


def test_gpu_check_quick_mode_stops_at_the_first_failure(tmp_path):
    """--quick on this machine: the env stage runs, the wheels stage fails (empty folder) with its own error line,
    and every later stage is listed as not run because of it; the rows come before the closing sections."""
    if trt_backend.gpu_info() is not None:
        pytest.skip("a GPU is present: scripts/gpu_check.sh would run its real stages here")
    (tmp_path / "wheels").mkdir()
    report = tmp_path / "report.md"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--quick", str(tmp_path / "wheels"),
                             str(report), str(tmp_path / "work")], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert text.startswith("# wan-deploy GPU check (quick, 570 s budget)")
    assert "| env | ok |" in text
    assert "| wheels | FAILED (exit 1) | " in text and f"error: no wheels in {tmp_path / 'wheels'} |" in text
    for name in ("imports", "probe", "tiny_build", "tiny_generate", "tiny_check", "dit_720p_build", "dit_720p_bench"):
        assert f"| {name} | not run (stopped after wheels failed) |" in text, name
    assert "| tests |" not in text and "dit_480p" not in text  # quick mode runs neither
    assert text.index("| dit_720p_bench |") < text.index("## Run") < text.index("## Targets")
    assert "- finished " in text and "stopped after wheels failed" in text.split("## Run")[1]


# --- GPU: running the engines -------------------------------------------------------------------------------
def _onnxruntime_view(engines: Path, out: Path) -> Path:
    """The same engines folder seen through its ONNX graphs: backend onnxruntime, files linked, not copied."""
    out.mkdir()
    data = json.loads((engines / MANIFEST_NAME).read_text())
    for name, component in data["components"].items():
        graphs = {f: digest for f, digest in component["files"].items() if not f.endswith(".engine")}
        component.update(backend="onnxruntime", file=f"{name}.onnx", files=graphs, target={})
    for path in engines.iterdir():
        if path.name != MANIFEST_NAME and not path.name.endswith(".engine") and not path.name.startswith("."):
            (out / path.name).symlink_to(path)
    (out / MANIFEST_NAME).write_text(json.dumps(data))
    return out


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


@needs_rtx
@needs_rtx_gpu
def test_t2v_through_rtx_engines_matches_onnxruntime(rtx_engines, bf16_engines, tmp_path, monkeypatch):
    monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", "CPUExecutionProvider")  # the reference: ONNX Runtime on the CPU
    from wan_rt.pipeline import GenerationRequest, Pipeline

    request = dict(prompt="a red fox trots through fresh snow", seed=3)
    reference_dir = _onnxruntime_view(rtx_engines, tmp_path / "ort")
    with Pipeline(reference_dir, show_progress=False) as pipe:
        reference = pipe.generate(GenerationRequest(**request), tmp_path / "ort.npy")
    with Pipeline(rtx_engines, show_progress=False) as pipe:
        assert type(pipe.runner("dit")).__name__ == "TrtRunner"
        result = pipe.generate(GenerationRequest(**request), tmp_path / "trt.npy")
    # fp32 engines (TF32 off): ONNX Runtime's numbers up to kernel summation order, amplified a little by the
    # guidance scale over the steps
    assert _relative_error(result.latents, reference.latents) < 5e-3
    frames, expected = np.load(tmp_path / "trt.npy"), np.load(tmp_path / "ort.npy")
    assert frames.shape == expected.shape
    difference = np.abs(frames.astype(int) - expected.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 8
    # bf16 text encoder and DiT (fp32 islands kept): within bf16 error of the fp32 result, latents only
    with Pipeline(bf16_engines, show_progress=False) as pipe:
        bf16 = pipe.generate(GenerationRequest(**request))
    assert _relative_error(bf16.latents, reference.latents) < 0.1


@needs_rtx
@needs_rtx_gpu
def test_runners_reuse_buffers_and_share_activation_memory(rtx_engines, monkeypatch):
    # the bit-exact comparisons between calls below hold with kernels specialized before the first run: lazily
    # (TensorRT-RTX's default) a later call may run a newly specialized kernel with another summation order
    monkeypatch.setenv("WAN_RT_TRT_SPECIALIZATION", "eager")
    from wan_export.components import RequestPoint, component_specs
    from wan_export.weights import weight_source_from_manifest
    from wan_rt.backends import open_runner

    manifest = load_manifest(rtx_engines)
    specs = {s.name: s for s in component_specs(weight_source_from_manifest(manifest.data, None).config,
                                                 manifest.limits)}
    small, large = RequestPoint(64, 64, 1, 1), RequestPoint(160, 96, 9, 2)
    with open_runner(manifest, "text_encoder") as text, open_runner(manifest, "dit") as dit:
        assert text.device is dit.device and text.device.users == 2
        assert dit.device.scratch_size == 0  # activations are allocated for the shapes of the first call
        feeds = specs["dit"].sample(large, np.random.default_rng(0))
        first = dit.run(feeds)["velocity"]
        assert dit._activation_size() <= dit.device.scratch_size  # sized for this request ...
        assert dit._activation_size() <= dit._memory_size  # ... which needs at most the profile's max corner
        kept = dit.run(feeds, keep=("velocity",))["velocity"]  # left on the GPU, copied back on request
        assert np.array_equal(kept.numpy(), first)
        buffers = dict(dit._buffers)
        second = dit.run(feeds)["velocity"]
        assert dit._buffers == buffers and np.array_equal(first, second)  # same buffers, deterministic
        assert first.shape == feeds["tokens"].shape[:2] + (first.shape[2],)
        smaller = dit.run(specs["dit"].sample(small, np.random.default_rng(1)))["velocity"]
        assert smaller.shape[0] == 1 and dit._buffers == buffers  # a smaller call fits the same buffers
        text.run(specs["text_encoder"].sample(large, np.random.default_rng(0)))
    assert trt_backend.SharedDevice._current is None


@needs_rtx
@needs_rtx_gpu
def test_check_compares_the_engines_with_the_reference(rtx_engines):
    from wan_export.check import check_engines

    report = check_engines(rtx_engines)
    assert report.passed, report.table()
    runners = {(row.component, row.runner) for row in report.rows}
    assert {(name, "tensorrt-rtx") for name in COMPONENTS} <= runners, report.table()


def test_gpu_tests_choose_the_backend_the_gpu_supports():
    """The rule the GPU tests above follow, for the GPUs users have (no GPU needed to check it)."""
    assert RTX_TARGETS == {"SM75", "SM80", "SM86", "SM89", "SM120", "SM121"}
    for cc in ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121"):  # RTX 20xx..50xx, A100, L4/L40
        assert gpu_test_backend(cc, True, True, True)[0] == "tensorrt-rtx"
        assert gpu_test_backend(cc, False, True, True)[0] is None  # its backend is missing: skip, saying so
    for cc in ("SM90", "SM100", "SM87"):  # H100 / H200, B200, Jetson Orin: not RTX targets
        assert gpu_test_backend(cc, True, True, True)[0] == "tensorrt"
        assert gpu_test_backend(cc, True, False, True)[0] == "onnxruntime-cuda"
        backend, why = gpu_test_backend(cc, True, False, False)
        assert backend is None and cc in why and "not a TensorRT-RTX target" in why
    assert gpu_test_backend(None, True, True, True) == (None, "no NVIDIA GPU")


def test_tf32_tolerance_applies_to_fp32_engines_built_with_tf32_only(tiny_engines):
    """wan_export.check's rule: an fp32 TensorRT engine with TF32 on is checked at the TF32 tolerance, strict fp32
    and ONNX Runtime engines at fp32's, bf16/fp16 engines at their own whatever the TF32 flag says."""
    import dataclasses

    from wan_export.check import TOLERANCES, tolerance_key

    component = load_manifest(tiny_engines, verify=False).component("dit")  # ONNX Runtime fp32: target {}
    assert tolerance_key(component) == "fp32"
    fp32 = dataclasses.replace(component, precision="fp32")
    assert tolerance_key(dataclasses.replace(fp32, target={"tf32": True})) == "tf32"
    assert tolerance_key(dataclasses.replace(fp32, target={"tf32": False})) == "fp32"
    for precision in ("bf16", "fp16"):
        assert tolerance_key(dataclasses.replace(component, precision=precision, target={"tf32": True})) == precision
    assert TOLERANCES["fp32"] < TOLERANCES["tf32"] < TOLERANCES["fp16"] < TOLERANCES["bf16"]


@pytest.mark.skipif(not (HAVE_GPU and GPU_BACKEND in ("tensorrt", "onnxruntime-cuda")),
                    reason=f"runs where TensorRT-RTX does not serve the GPU (an H100/H200): {GPU_BACKEND_WHY}")
def test_t2v_on_the_backend_a_non_rtx_gpu_uses_matches_onnxruntime_on_the_cpu(tiny_official_ckpt, tiny_engines,
                                                                              tmp_path, monkeypatch):
    """On a GPU TensorRT-RTX does not target, the engines it runs: full TensorRT (strict fp32, built here from the
    session's graphs) or, without it, the session's folder on ONNX Runtime's CUDA provider; the latents equal
    ONNX Runtime on the CPU to fp32 kernel-order (TensorRT) or TF32 (ONNX Runtime CUDA's default) limits."""
    from wan_rt.pipeline import GenerationRequest, Pipeline

    request = GenerationRequest(prompt="a red fox trots through fresh snow", seed=3, steps=4)
    monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", "CPUExecutionProvider")
    with Pipeline(tiny_engines, show_progress=False) as pipe:
        reference = pipe.generate(request)
    if GPU_BACKEND == "tensorrt":
        from wan_export.build import BuildOptions, build
        from wan_export.profiles import load_profile
        from wan_export.weights import weight_source

        profile = load_profile("tiny")
        source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
        engines, bound = build(profile, source, tmp_path / "trt", BuildOptions(
            backend="tensorrt", strict_fp32=True, onnx_from=tiny_engines, only=("text_encoder", "dit"))), 5e-3
        runner_type = "TrtRunner"
    else:
        monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", "CUDAExecutionProvider")
        engines, bound, runner_type = tiny_engines, 2e-2, "OrtRunner"
    with Pipeline(engines, show_progress=False) as pipe:
        assert type(pipe.runner("dit")).__name__ == runner_type
        result = pipe.generate(request)
    assert _relative_error(result.latents, reference.latents) < bound
