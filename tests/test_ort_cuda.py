"""ONNX Runtime on CUDA (issue 24), what a CPU machine can prove: every refusal, on real sessions and real packages.

- a session asked for CUDA that ONNX Runtime quietly put on the CPU is refused in one line naming the cause (here the
  real CPU onnxruntime package: its sessions report CPUExecutionProvider only);
- the cause is the loader's own message (a provider library that does not load);
- no ONNX Runtime, or both onnxruntime and onnxruntime-gpu, are one line (the metadata of a real second distribution
  on the path, seen by a real `wan-rt` process);
- an onnxruntime without the CUDA Attention-23 kernel is refused with the minimum version;
- TF32 is off unless asked for, and the log says so;
- a text encoder placed on the CPU opens on the CPU provider beside CUDA-asked engines and counts as host memory.
The GPU half (the providers really on CUDA, IOBinding in device memory, timings) is scripts/gpu_check.sh's ONNX Runtime
CUDA stage.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from wan_rt.backends import open_runner, ort_providers
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest
from wan_rt.residency import choose_mode, host_bytes, need_bytes, stages

CUDA_FIRST = "CUDAExecutionProvider,CPUExecutionProvider"
DENOISE = ("dit", "dit_skip", "dit_time")


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_cuda_asked_but_cpu_given_is_refused_with_the_cause(tiny_engines, monkeypatch, caplog):
    """The real CPU package: ONNX Runtime warns and runs on the CPU; the runner refuses instead."""
    monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", CUDA_FIRST)
    manifest = load_manifest(tiny_engines)
    with caplog.at_level(logging.INFO, logger="wan_rt"), pytest.raises(WanError) as excinfo:
        with open_runner(manifest, "dit_time") as runner:
            runner.run({"timesteps": np.zeros((1, 1), np.float32)})
    message = _one_line(excinfo)
    assert message.startswith("ONNX Runtime was asked for CUDA but runs on CPUExecutionProvider: this onnxruntime "
                              "package has no CUDA provider (it is the CPU build)")
    assert "pip install 'wan-deploy[cuda]'" in message and "WAN_RT_ORT_PROVIDERS=CPUExecutionProvider" in message
    assert "TF32 off, as the fp32 PyTorch reference" in caplog.text


def test_a_provider_library_that_does_not_load_is_named_by_the_loader(tmp_path):
    library = tmp_path / "libonnxruntime_providers_cuda.so"
    library.write_bytes(b"not an ELF file")
    cause = ort_providers.cuda_load_failure(library)
    assert cause.startswith("libonnxruntime_providers_cuda.so does not load: ")
    assert "header" in cause or "too short" in cause  # the dynamic loader's own words
    assert ort_providers.cuda_load_failure(tmp_path / "absent.so").endswith("(it is the CPU build)")


def test_sessions_that_got_cuda_or_did_not_ask_pass():
    never = pytest.fail  # the cause is only looked up when refusing
    ort_providers.check_session_providers(["CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                          never)
    ort_providers.check_session_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"], never)


def test_exactly_one_runtime_package():
    installed = ort_providers.installed_runtime_packages()  # make install / CI: ["onnxruntime"] ([cpu])
    assert len(installed) == 1 and installed[0] in ort_providers.RUNTIME_PACKAGES
    ort_providers.check_runtime_packages(installed)
    with pytest.raises(WanError, match=r"ONNX Runtime is not installed; pip install 'wan-deploy\[cpu\]'"):
        ort_providers.check_runtime_packages([])


def test_both_runtime_packages_installed_is_one_line(tiny_engines, tmp_path):
    """A real onnxruntime-gpu distribution record beside the CPU package (what `pip install onnxruntime-gpu` on top
    of onnxruntime leaves): `wan-rt generate` stops before opening an engine."""
    site = tmp_path / "site"
    record = site / "onnxruntime_gpu-1.31.1.dist-info"
    record.mkdir(parents=True)
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines),
                             "--prompt", "a fox", "--out", str(tmp_path / "out.npy"), "--steps", "1"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-1500:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: both onnxruntime and onnxruntime-gpu are installed"), last
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in last
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("version", ["1.22.0", "1.24.4"])
def test_onnxruntime_without_the_cuda_attention_kernel_is_refused(version):
    with pytest.raises(WanError) as excinfo:
        ort_providers.check_attention_kernel(version)
    assert f"onnxruntime {version} has no CUDA kernel for the opset-23 Attention op" in _one_line(excinfo)
    assert "pip install 'onnxruntime-gpu>=1.25'" in str(excinfo.value)


@pytest.mark.parametrize("version", ["1.25.0", "1.31.1", "1.32.0.dev20260101", onnxruntime.__version__])
def test_onnxruntime_with_the_cuda_attention_kernel_passes(version):
    ort_providers.check_attention_kernel(version)


def test_tf32_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("WAN_RT_ORT_TF32", raising=False)
    assert ort_providers.cuda_provider_options() == {"use_tf32": "0"}
    monkeypatch.setenv("WAN_RT_ORT_TF32", "1")
    assert ort_providers.cuda_provider_options() == {"use_tf32": "1"}


def test_cuda_free_memory_without_a_cuda_runtime_is_unknown():
    """This CPU machine has no libcudart: `--memory auto` then keeps, and says why (residency.choose_mode)."""
    assert ort_providers.cuda_free_bytes() is None


@pytest.fixture
def placed(tiny_engines, tmp_path) -> Path:
    """The session's tiny folder (hard links) with its text encoder placed on the CPU, as --place text_encoder=cpu
    records it."""
    folder = tmp_path / "placed"
    shutil.copytree(tiny_engines, folder, copy_function=os.link)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["components"]["text_encoder"]["device"] = "cpu"
    path.unlink()  # a hard link: write a new file, not through the shared one
    path.write_text(json.dumps(data))
    return folder


def test_text_encoder_on_the_cpu_opens_beside_cuda_engines(placed, monkeypatch):
    monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", CUDA_FIRST)
    manifest = load_manifest(placed)
    with open_runner(manifest, "text_encoder") as encoder:
        assert encoder.session.get_providers() == ["CPUExecutionProvider"]
        assert encoder.memory == "cpu"
    with pytest.raises(WanError, match="asked for CUDA but runs on CPUExecutionProvider"):
        with open_runner(manifest, "dit_time") as runner:
            runner.run({"timesteps": np.zeros((1, 1), np.float32)})


def test_residency_counts_a_cpu_placed_text_encoder_in_host_memory(placed, tiny_engines):
    """`--memory auto` on a GPU whose free memory holds the DiT and VAE but not also the text encoder: keep with the
    text encoder on the CPU, stage without (fake free-memory figures; the sizes are the manifest's)."""
    placed_manifest, plain = load_manifest(placed), load_manifest(tiny_engines)
    every = [n for names in stages(DENOISE).values() for n in names]
    encoder = placed_manifest.data["components"]["text_encoder"]["memory"]["weight_bytes"]
    assert host_bytes(placed_manifest) == encoder and host_bytes(plain) == 0
    assert need_bytes(plain, every) - need_bytes(placed_manifest, every) == encoder
    free = int((need_bytes(placed_manifest, every) + encoder / 2) / 0.9)  # fits without the encoder only
    mode, why = choose_mode("auto", placed_manifest, DENOISE, True, free)
    assert mode == "keep" and "in host memory (components placed on the CPU)" in why
    assert choose_mode("auto", plain, DENOISE, True, free)[0] == "stage"


def test_wheel_parts_split_join_and_refuse_a_damaged_part(tmp_path):
    """scripts/onnxruntime_gpu_wheel.sh's split and join on a stand-in wheel (1 MiB parts here, 60 in use): parts
    within the limit, joined bit for bit, and a cut part refused in one line."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "onnxruntime_gpu_wheel.sh"
    wheel = tmp_path / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(np.random.default_rng(0).bytes(int(2.5 * 2**20)))
    parts = tmp_path / "parts"
    env = {**os.environ, "PART_MIB": "1"}
    subprocess.run(["bash", str(script), "split", str(wheel), str(parts)], check=True, env=env, timeout=60,
                   capture_output=True)
    sizes = sorted(p.stat().st_size for p in parts.glob("*.part-*"))
    assert len(sizes) == 3 and max(sizes) <= 2**20
    joined = subprocess.run(["bash", str(script), "join", str(parts)], capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    assert Path(joined.stdout.strip()).read_bytes() == wheel.read_bytes()
    (parts / f"{wheel.name}.part-ab").write_bytes(b"cut")
    damaged = subprocess.run(["bash", str(script), "join", str(parts)], capture_output=True, text=True, timeout=60)
    assert damaged.returncode == 2
    assert damaged.stderr.strip().splitlines()[-1].startswith(f"error: {wheel.name}: the joined parts do not match")
