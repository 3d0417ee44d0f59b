"""Which ONNX Runtime is installed, and whether a session asked for CUDA really runs on it.

ONNX Runtime's own behaviour is the reason for this module: when the CUDA provider cannot load (no
onnxruntime-gpu, or cuBLAS/cuDNN missing) a session asked for ["CUDAExecutionProvider", "CPUExecutionProvider"]
quietly runs on the CPU, and a 720p video then takes days. Every check here turns that into one line with the fix.
The checks take plain values (package names, provider lists, version strings), so the CPU tests run them on
what a real CPU onnxruntime reports.
"""
from __future__ import annotations

import ctypes
import importlib.metadata as md
import logging
import os
from pathlib import Path

from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
# The DiT's scaled-dot-product attention is the opset-23 Attention op. ONNX Runtime gained a CUDA kernel for it
# after 1.24 (microsoft/onnxruntime PR 27542); 1.24 places it on the CPU (issue 28025), a host round trip of q, k
# and v per block.
ATTENTION_CUDA_MIN = (1, 25)
INSTALL_CUDA = "pip uninstall -y onnxruntime && pip install 'wan-deploy[cuda]' (onnxruntime-gpu)"


def installed_runtime_packages() -> list[str]:
    """The ONNX Runtime distributions installed in this environment (both put a module named onnxruntime)."""
    names = {(dist.metadata["Name"] or "").lower().replace("_", "-") for dist in md.distributions()}
    return [name for name in RUNTIME_PACKAGES if name in names]


def check_runtime_packages(installed: list[str]) -> None:
    """Exactly one ONNX Runtime package: with both, whichever pip wrote last owns the shared `onnxruntime` folder,
    and the CPU one usually shadows the GPU one."""
    if not installed:
        raise WanError("ONNX Runtime is not installed; pip install 'wan-deploy[cpu]' (onnxruntime) or "
                       "'wan-deploy[cuda]' (onnxruntime-gpu)")
    if len(installed) > 1:
        raise WanError(f"both {' and '.join(installed)} are installed, and they overwrite each other's files; keep "
                       f"one: pip uninstall -y {' '.join(installed)} && pip install 'wan-deploy[cuda]' (GPU) or "
                       f"'wan-deploy[cpu]'")


_checked_install = False


def import_onnxruntime():
    """The onnxruntime module, after checking that exactly one ONNX Runtime package provides it."""
    global _checked_install
    if not _checked_install:
        check_runtime_packages(installed_runtime_packages())
        _checked_install = True
    try:
        import onnxruntime
    except ImportError as exc:
        raise WanError(f"onnxruntime does not import ({exc}); reinstall one package: pip install --force-reinstall "
                       f"'wan-deploy[cpu]' or 'wan-deploy[cuda]'") from None
    return onnxruntime


def version_tuple(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def check_attention_kernel(version: str) -> None:
    """The installed ONNX Runtime must run the opset-23 Attention op on CUDA (else it silently runs on the CPU)."""
    if version_tuple(version) < ATTENTION_CUDA_MIN:
        minimum = ".".join(map(str, ATTENTION_CUDA_MIN))
        raise WanError(f"onnxruntime {version} has no CUDA kernel for the opset-23 Attention op of these graphs "
                       f"(it would run attention on the CPU); pip install 'onnxruntime-gpu>={minimum}'")


def cuda_provider_library() -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def cuda_load_failure(library: Path) -> str:
    """Why the CUDA provider library does not load: the loader's own message names the missing library
    (e.g. "libcublasLt.so.13: cannot open shared object file")."""
    if not library.is_file():
        return "this onnxruntime package has no CUDA provider (it is the CPU build)"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{library.name} does not load: {str(exc).strip().splitlines()[0]}"
    return "the CUDA provider loaded but did not accept the session (see ONNX Runtime's log above)"


def check_session_providers(requested: list[str], got: list[str], why_not) -> None:
    """Refuse a session that asked for CUDA and got something else. `why_not()` explains the failure (called
    only when refusing: it loads libraries)."""
    if CUDA not in requested or (got and got[0] == CUDA):
        return
    raise WanError(f"ONNX Runtime was asked for CUDA but runs on {', '.join(got) or 'nothing'}: {why_not()}; fix: "
                   f"{INSTALL_CUDA}, with CUDA 13 cuBLAS and cuDNN 9 on the library path (a CUDA 13 PyTorch "
                   f"install has them; onnxruntime.preload_dlls() loads them from there), or run on the CPU with "
                   f"WAN_RT_ORT_PROVIDERS=CPUExecutionProvider")


def tf32_enabled() -> bool:
    """$WAN_RT_ORT_TF32=1 lets the CUDA provider's fp32 MatMuls/convolutions use TF32 (its default). Off here:
    PyTorch's fp32 matmuls, the reference `wan-export check` compares with, do not use TF32."""
    return os.environ.get("WAN_RT_ORT_TF32", "0").strip() == "1"


def cuda_provider_options() -> dict:
    return {"use_tf32": "1" if tf32_enabled() else "0"}


_preloaded = False


def preload_cuda_libraries(ort) -> None:
    """CUDA, cuBLAS and cuDNN from the pip-installed NVIDIA packages (a CUDA PyTorch install has them), so
    onnxruntime-gpu needs no system CUDA. Harmless where they are on the library path already."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # the provider check below names what is still missing
        log.debug("onnxruntime.preload_dlls(): %s", exc)


def cuda_free_bytes() -> int | None:
    """Free device memory from the CUDA runtime (cudaMemGetInfo through ctypes: no cuda-bindings needed beside
    onnxruntime-gpu); None when no CUDA runtime library loads."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
        return None
    return None
