"""The TensorRT libraries (`tensorrt`, `tensorrt_rtx_bindings`) and the GPU probe, shared by the runtime backend and
`wan_export.trt` (which must not be imported by wan_rt, so these live here). Nothing is imported until asked."""
from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import os
import shutil
import subprocess

from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")


# --- the two libraries -------------------------------------------------------------------------------------
LIBRARY_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
INSTALL_HINTS = {
    "tensorrt": ("pip install tensorrt-cu12 (CUDA 12 driver) or tensorrt-cu13 (CUDA 13 driver); it downloads the "
                 "real wheels from NVIDIA's index while installing"),
    "tensorrt-rtx": ("pip install -r requirements/tensorrt-rtx.txt (tensorrt-rtx-cu13-libs==1.7.1.116 and "
                     "tensorrt-rtx-cu13-bindings==1.7.1.116; the tensorrt-rtx meta package is a stub)"),
}
CUDA_HINT = "pip install cuda-bindings (NVIDIA's cuda-python runtime bindings, matching the driver's CUDA major)"


def _version_pins(backend: str, version: str) -> str:
    """What to install to get `version` of `backend` back."""
    if backend == "tensorrt-rtx":
        return f"tensorrt-rtx-cu13-libs=={version} tensorrt-rtx-cu13-bindings=={version}"
    return f"tensorrt-cu13=={version} (or tensorrt-cu12=={version})"


@functools.lru_cache(maxsize=None)
def _import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or OSError from a shared library that fails to load
        return None, f"{type(exc).__name__}: {exc}"


def load_library(backend: str):
    """The imported `tensorrt` / `tensorrt_rtx_bindings` module, or a WanError naming what to install."""
    if backend not in LIBRARY_MODULES:
        raise WanError(f"unknown engine library {backend!r}; choose from {sorted(LIBRARY_MODULES)}")
    module, problem = _import(LIBRARY_MODULES[backend])
    if module is None:
        raise WanError(f"{backend} is not installed here (import {LIBRARY_MODULES[backend]} failed: {problem}); "
                       f"{INSTALL_HINTS[backend]}")
    return module


def _one_line(text) -> str:
    return " ".join(str(text).split())


_MEMORY_BUDGET = "Exceeded mem budget"


def make_logger(trt, log_line, label: str, max_warnings: int = 20):
    """A TensorRT ILogger that keeps errors (`.errors`, for the WanError) and passes distinct warnings on."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._warned: set[str] = set()

        def log(self, severity, msg):
            text = _one_line(msg)
            try:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    if text not in self.errors:
                        self.errors.append(text)
                elif _MEMORY_BUDGET in text and text not in self.errors:
                    # only logged at VERBOSE, yet it is what an "OutOfMemory" build failure means: the engine's
                    # estimated GPU memory against weights + workspace (not host memory)
                    self.errors.append(text)
                elif severity == trt.ILogger.Severity.WARNING and text not in self._warned:
                    self._warned.add(text)
                    if len(self._warned) <= max_warnings:
                        log_line(f"{label} warning: {text}")
            except Exception:  # never let a logging problem unwind through TensorRT
                pass

    return _Logger()


# --- is there a GPU ----------------------------------------------------------------------------------------
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


