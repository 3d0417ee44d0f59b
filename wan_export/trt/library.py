"""The one place where TensorRT and TensorRT for RTX differ (import, pip packages, capabilities, targets).

Both libraries share the same Python API shape (Builder, OnnxParser, IBuilderConfig, Runtime); what differs:

                          tensorrt (tensorrt-cu12/cu13)        tensorrt-rtx (tensorrt-rtx-cu13-libs/-bindings)
    import name           tensorrt                             tensorrt_rtx_bindings
    build needs a GPU     yes: tunes kernels on the GPU        no: ahead of time on CPU, kernels JIT-compiled
                                                               on the target GPU at run time
    build targets         the GPU it runs on                   ComputeCapability SM75..SM121 or CURRENT
    timing cache          yes (IBuilderConfig timing cache)    no: the API exists but is a no-op since 1.2
                                                               (deprecated), and NVIDIA says it makes an AOT
                                                               build query a GPU; a *runtime* cache replaces it
    engine validity       deserialize and see                  Runtime.get_engine_validity (needs a GPU too)

Both create strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED): the graph's own dtypes are
the precision, so no FP16/BF16 builder flags are set. TF32 is turned off so that fp32 math stays fp32.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import os
import shutil
import subprocess
from dataclasses import dataclass

from wan_rt.errors import WanError

NO_GPU_MESSAGE = ("TensorRT builds need an NVIDIA GPU; none found. Use --backend tensorrt-rtx to build ahead of "
                  "time on this machine, or build on the GPU machine")


@dataclass(frozen=True)
class Library:
    name: str  # the --backend value and manifest "library"
    module: str  # import name
    install_hint: str  # what to pip install when the import fails
    needs_gpu_to_build: bool
    has_compute_capability_targets: bool  # IBuilderConfig.set_compute_capability
    timing_cache: bool  # whether the builder actually uses a timing cache
    default_targets: tuple[str, ...] = ()


LIBRARIES = {
    "tensorrt": Library(
        name="tensorrt", module="tensorrt",
        install_hint=("pip install tensorrt-cu12 (CUDA 12 driver) or tensorrt-cu13 (CUDA 13 driver); it downloads "
                      "the real wheels from NVIDIA's index while installing"),
        needs_gpu_to_build=True, has_compute_capability_targets=False, timing_cache=True),
    "tensorrt-rtx": Library(
        name="tensorrt-rtx", module="tensorrt_rtx_bindings",
        install_hint=("pip install -r requirements/tensorrt-rtx.txt (tensorrt-rtx-cu13-libs==1.7.1.116 and "
                      "tensorrt-rtx-cu13-bindings==1.7.1.116; the tensorrt-rtx meta package is a stub)"),
        needs_gpu_to_build=False, has_compute_capability_targets=True, timing_cache=False,
        default_targets=("SM89",)),  # RTX 4090, the GPU the official TI2V-5B numbers were measured on
}


def get_library(library: str) -> Library:
    try:
        return LIBRARIES[library]
    except KeyError:
        raise WanError(f"unknown engine library {library!r}; choose from {sorted(LIBRARIES)}") from None


@functools.lru_cache(maxsize=None)
def _import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or OSError from a shared library that fails to load
        return None, f"{type(exc).__name__}: {exc}"


def library_available(library: str) -> bool:
    """Whether `library` ("tensorrt" | "tensorrt-rtx") imports here."""
    return _import(get_library(library).module)[0] is not None


def load(library: str):
    """The imported module (`tensorrt` or `tensorrt_rtx_bindings`), or a WanError saying what to install."""
    spec = get_library(library)
    module, problem = _import(spec.module)
    if module is None:
        raise WanError(f"{library} is not installed here (import {spec.module} failed: {problem}); "
                       f"{spec.install_hint}")
    return module


def version(trt) -> str:
    return str(trt.__version__)


def strongly_typed_flag(trt) -> int | None:
    """Network creation flags for a strongly typed network, or None when this TensorRT predates them."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return None if flag is None else 1 << int(flag)


def precision_flags(trt, precision: str, strongly_typed: bool) -> tuple[list, list]:
    """(builder flags to set, builder flags to clear) for `precision`.

    Strongly typed: the graph's dtypes decide; setting FP16/BF16 is an error there, so only TF32 is cleared
    (fp32 tensors stay true fp32). Weakly typed (TensorRT before 9): FP16/BF16 let the builder lower precision.
    """
    flags = trt.BuilderFlag
    clear = [flags.TF32] if hasattr(flags, "TF32") else []
    if strongly_typed or precision == "fp32":
        return [], clear
    wanted = {"fp16": "FP16", "bf16": "BF16"}[precision]
    if not hasattr(flags, wanted):
        raise WanError(f"TensorRT {version(trt)} supports neither strongly typed networks nor {precision}; "
                       f"install TensorRT 10 or newer")
    return [getattr(flags, wanted)], clear


def target_names(trt) -> list[str]:
    """Compute capabilities this TensorRT-RTX can build for (e.g. SM75 ... SM121, CURRENT)."""
    return [name for name in trt.ComputeCapability.__members__ if name != "NONE"]


def set_targets(trt, config, library: str, requested: tuple[str, ...], gpu: tuple[str, str] | None) -> dict:
    """Apply the build targets to `config`; returns the manifest fields describing them.

    tensorrt: no targets (the engine is for the GPU the build runs on); `requested` may only name that GPU.
    tensorrt-rtx: `requested` or the default SM89; CURRENT means this machine's GPU and must stand alone.
    """
    spec = get_library(library)
    if not spec.has_compute_capability_targets:
        here = gpu[1] if gpu else None
        if any(cc not in ("CURRENT", here) for cc in requested):
            raise WanError(f"compute capability targets {list(requested)} are a tensorrt-rtx option; a TensorRT "
                           f"engine is built for the GPU it is built on ({here or 'none here'})")
        return {"compute_capabilities": [here], "gpu": gpu[0]}
    targets = tuple(cc.upper() for cc in (requested or spec.default_targets))
    known = target_names(trt)
    unknown = [cc for cc in targets if cc not in known]
    if unknown:
        raise WanError(f"{library} {version(trt)} cannot target {unknown}; choose from {known}")
    if len(set(targets)) != len(targets):
        raise WanError(f"compute capabilities {list(targets)} name a target twice")
    fields = {"compute_capabilities": list(targets)}
    if "CURRENT" in targets:
        if len(targets) != 1:
            raise WanError("compute capability CURRENT (this machine's GPU) cannot be combined with other targets")
        if gpu is None:
            raise WanError(f"compute capability CURRENT means this machine's GPU, and no NVIDIA GPU is visible; "
                           f"name a target instead: {[cc for cc in known if cc != 'CURRENT']}")
        fields["gpu"] = gpu[0]
        fields["gpu_compute_capability"] = gpu[1]
    config.num_compute_capabilities = len(targets)
    for index, cc in enumerate(targets):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, cc), index):
            raise WanError(f"{library} {version(trt)} refused compute capability {cc}")
    return fields


# --- GPU presence -------------------------------------------------------------------------------------------
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def _gpu_from_driver() -> tuple[str, str] | None | bool:
    """First visible GPU via the CUDA driver (libcuda, honours CUDA_VISIBLE_DEVICES); False if no driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count, major, minor, device = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    if (cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != 0):
        return None
    cuda.cuDeviceGetName(name, len(name), device)
    return name.value.decode(errors="replace") or "NVIDIA GPU", f"SM{major.value}{minor.value}"


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    smi = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if smi is None or (visible is not None and visible.strip() in ("", "-1")):
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.count(",") >= 3]
    if visible is not None:
        first = visible.split(",")[0].strip()
        rows = [row for row in rows if first in (row[0], row[1])]
    if not rows:
        return None
    _, _, name, cap = rows[0]
    major, _, minor = cap.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return name, f"SM{major}{minor}"


@functools.lru_cache(maxsize=1)
def gpu_info() -> tuple[str, str] | None:
    """(name, "SM90") of the first visible NVIDIA GPU, or None. The CUDA driver first, then nvidia-smi."""
    found = _gpu_from_driver()
    if found is False:  # no libcuda.so.1: no usable GPU, but a stray nvidia-smi may still say more
        found = _gpu_from_nvidia_smi()
    return found or None


def gpu_compute_capability() -> str | None:
    """e.g. "SM90" when an NVIDIA GPU is visible, else None."""
    info = gpu_info()
    return info[1] if info else None


def check_can_build(library: str) -> None:
    """Fail at once (before any export or parse) when `library` cannot build here: no GPU, or not installed."""
    spec = get_library(library)
    if spec.needs_gpu_to_build and gpu_info() is None:
        raise WanError(NO_GPU_MESSAGE)
    load(library)
