"""The TensorRT libraries (`tensorrt`, `tensorrt_rtx_bindings`) and the GPU probe, shared by the runtime backend and
`wan_export.trt` (which must not be imported by wan_rt, so these live here). Nothing is imported until asked."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import logging
import os
import re
import shutil
import subprocess
import threading

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
# cuda-bindings of the CUDA major of the TensorRT wheels (pyproject.toml extras: tensorrt = cu13, tensorrt-cu12)
CUDA_PINS = {13: "cuda-bindings>=13,<14", 12: "cuda-bindings>=12.6,<13"}
CUDA_HINT = (f"pip install 'wan-deploy[tensorrt]' (or '{CUDA_PINS[13]}': NVIDIA's cuda-python runtime bindings of "
             f"the CUDA 13 TensorRT wheels; '{CUDA_PINS[12]}' with tensorrt-cu12 on a CUDA 12 driver)")


def driver_too_old_message(cudart, what: str) -> str:
    """One line for cudaErrorInsufficientDriver at first contact: the driver's CUDA against the bindings' runtime."""
    def cuda_version(call) -> str:
        try:
            number = int(call()[1])
        except Exception:
            return "unknown"
        return f"{number // 1000}.{number % 1000 // 10}" if number else "none"

    driver, runtime = cuda_version(cudart.cudaDriverGetVersion), cuda_version(cudart.cudaRuntimeGetVersion)
    major = runtime.split(".")[0]
    return (f"CUDA {what} failed: the NVIDIA driver is too old or missing (it supports CUDA {driver}, the installed "
            f"cuda-python runtime is CUDA {runtime}); update the NVIDIA driver to one for CUDA {major}, or on a CUDA 12 driver "
            f"install the CUDA 12 wheels: pip install '{CUDA_PINS[12]}' tensorrt-cu12")


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


_REPORTED_MEMORY = re.compile(r"Total (Activation|Weights) Memory: (\d+) bytes")
_REPORTED_KEYS = {"Activation": "activation_bytes", "Weights": "weight_bytes"}


class LogSink:
    """Where the library's messages go while one builder or runner is calling it: `.errors` (for the WanError)
    and distinct warnings passed to `log_line`. `.logger` is the library's one process-wide ILogger."""

    def __init__(self, logger, log_line, label: str, max_warnings: int):
        self.logger, self.log_line, self.label, self.max_warnings = logger, log_line, label, max_warnings
        self.errors: list[str] = []
        self._warned: set[str] = set()
        self.reported: dict[str, int] = {}  # the builder's memory figures: weight_bytes, activation_bytes

    def active(self):
        """`with sink.active():` messages logged by this thread go to this sink (errors start empty)."""
        self.errors = []
        return self.logger.routed_to(self)

    def take(self, severity, text: str, severities) -> None:
        figure = _REPORTED_MEMORY.match(text)
        if figure:  # INFO lines of a build: "Total Activation Memory: N bytes", "Total Weights Memory: N bytes"
            self.reported[_REPORTED_KEYS[figure.group(1)]] = int(figure.group(2))
        if severity in (severities.INTERNAL_ERROR, severities.ERROR):
            if text not in self.errors:
                self.errors.append(text)
        elif _MEMORY_BUDGET in text and text not in self.errors:
            # only logged at VERBOSE, yet it is what an "OutOfMemory" build failure means: the engine's
            # estimated GPU memory against weights + workspace (not host memory)
            self.errors.append(text)
        elif severity == severities.WARNING and text not in self._warned:
            self._warned.add(text)
            if len(self._warned) <= self.max_warnings:
                self.log_line(f"{self.label} warning: {text}")


_LOGGERS: dict[str, object] = {}  # library module name -> its one ILogger
_LOGGERS_GUARD = threading.Lock()


def _library_logger(trt):
    """The one ILogger of library `trt` in this process. The library keeps the first logger it is given (a second
    one passed to a new Runtime is ignored, with a warning), so every Builder, OnnxParser and Runtime gets this
    one, and it routes each message to the sink of the thread calling the library (`LogSink.active`); a message
    from a thread with no active sink (the library's own threads) goes to the sink activated last."""
    with _LOGGERS_GUARD:
        found = _LOGGERS.get(trt.__name__)
        if found is not None:
            return found

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self._local = threading.local()
                self._last = None

            @contextlib.contextmanager
            def routed_to(self, sink):
                stack = self._local.__dict__.setdefault("sinks", [])
                stack.append(sink)
                self._last = sink
                try:
                    yield sink
                finally:
                    stack.pop()

            def log(self, severity, msg):
                try:
                    stack = getattr(self._local, "sinks", None)
                    sink = stack[-1] if stack else self._last
                    text = _one_line(msg)
                    if sink is not None:
                        sink.take(severity, text, trt.ILogger.Severity)
                    elif severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                        log.warning("%s: %s", trt.__name__, text)
                except Exception:  # never let a logging problem unwind through TensorRT
                    pass

        _LOGGERS[trt.__name__] = found = _Logger()
        return found


def make_logger(trt, log_line, label: str, max_warnings: int = 20) -> LogSink:
    """A sink for one builder or runner on the library's one ILogger (`.logger`): keeps its errors (`.errors`, for
    the WanError) and passes distinct warnings to `log_line`, for the calls made inside `with sink.active():`."""
    return LogSink(_library_logger(trt), log_line, label, max_warnings)


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


