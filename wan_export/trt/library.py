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
the precision, so no FP16/BF16 builder flags are set. TF32 is allowed in fp32 engines (the VAE: convolutions, which
PyTorch runs in TF32 by default too) unless `strict_fp32`; see `precision_flags`.
"""
from __future__ import annotations

from dataclasses import dataclass

from wan_rt.backends.trt_engine_check import rtx_unsupported_gpu_message
from wan_rt.backends.trt_library import INSTALL_HINTS, LIBRARY_MODULES, _import, gpu_info, load_library  # noqa: F401
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
        name="tensorrt", module=LIBRARY_MODULES["tensorrt"], install_hint=INSTALL_HINTS["tensorrt"],
        needs_gpu_to_build=True, has_compute_capability_targets=False, timing_cache=True),
    "tensorrt-rtx": Library(
        name="tensorrt-rtx", module=LIBRARY_MODULES["tensorrt-rtx"], install_hint=INSTALL_HINTS["tensorrt-rtx"],
        needs_gpu_to_build=False, has_compute_capability_targets=True, timing_cache=False,
        default_targets=("SM89",)),  # RTX 4090, the GPU the official TI2V-5B numbers were measured on
}


def get_library(library: str) -> Library:
    try:
        return LIBRARIES[library]
    except KeyError:
        raise WanError(f"unknown engine library {library!r}; choose from {sorted(LIBRARIES)}") from None


def library_available(library: str) -> bool:
    """Whether `library` ("tensorrt" | "tensorrt-rtx") imports here."""
    return _import(get_library(library).module)[0] is not None


def load(library: str):
    """The imported module (`tensorrt` or `tensorrt_rtx_bindings`), or a WanError saying what to install."""
    get_library(library)
    return load_library(library)


def version(trt) -> str:
    return str(trt.__version__)


def strongly_typed_flag(trt) -> int | None:
    """Network creation flags for a strongly typed network, or None when this TensorRT predates them."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return None if flag is None else 1 << int(flag)


def precision_flags(trt, precision: str, strongly_typed: bool, strict_fp32: bool = False) -> tuple[list, list]:
    """(builder flags to set, builder flags to clear) for `precision`.

    Strongly typed: the graph's dtypes decide; setting FP16/BF16 is an error there. TF32 (matmul and convolution
    inputs rounded to a 10-bit mantissa, fp32 accumulation) is set for fp32 engines, as PyTorch runs convolutions
    by default (`cudnn.allow_tf32`), unless `strict_fp32` clears it; it is cleared for bf16/fp16 engines, whose
    fp32 parts are the official fp32 islands (matmuls, which PyTorch runs in true fp32 by default).
    Weakly typed (TensorRT before 9): FP16/BF16 let the builder lower precision.
    """
    flags = trt.BuilderFlag
    tf32 = [flags.TF32] if hasattr(flags, "TF32") else []
    set_, clear = (tf32, []) if precision == "fp32" and not strict_fp32 else ([], tf32)
    if strongly_typed or precision == "fp32":
        return set_, clear
    wanted = {"fp16": "FP16", "bf16": "BF16"}[precision]
    if not hasattr(flags, wanted):
        raise WanError(f"TensorRT {version(trt)} supports neither strongly typed networks nor {precision}; "
                       f"install TensorRT 10 or newer")
    return [getattr(flags, wanted)], clear


def weight_streaming_flag(trt, library: str, strongly_typed: bool):
    """BuilderFlag.WEIGHT_STREAMING (TensorRT 10, TensorRT-RTX 1.x), or one WanError line saying why not: the
    library lacks it, or the network is not strongly typed (weight streaming needs a strongly typed network)."""
    flag = getattr(trt.BuilderFlag, "WEIGHT_STREAMING", None)
    if flag is None:
        raise WanError(f"{library} {version(trt)} has no weight streaming (BuilderFlag.WEIGHT_STREAMING); "
                       f"install TensorRT 10 or newer, or build without --weight-streaming")
    if not strongly_typed:
        raise WanError(f"weight streaming needs a strongly typed network, which {library} {version(trt)} cannot "
                       f"make; install TensorRT 10 or newer, or build without --weight-streaming")
    return flag


# --- the TensorRT version floor -----------------------------------------------------------------------------
# The graphs are opset 23 and use the ONNX Attention operator, which TensorRT's ONNX parser reads from 10.14 on.
# TensorRT-RTX 1.7 parses it (tests/test_trt_build.py builds such graphs), so it has no floor here.
MIN_VERSIONS = {"tensorrt": (10, 14)}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version(library: str, installed: str) -> None:
    """Refuse (one WanError line) a `library` older than the graphs need; `installed` is its __version__."""
    floor = MIN_VERSIONS.get(get_library(library).name)
    if floor is None or _version_tuple(installed)[:len(floor)] >= floor:
        return
    needed = ".".join(map(str, floor))
    raise WanError(f"{library} {installed} is installed, and these graphs need {library} {needed} or newer (opset 23 "
                   f"with the ONNX Attention operator, which TensorRT parses from {needed} on); "
                   f"pip install 'tensorrt-cu13>={needed}' (or tensorrt-cu12)")


def target_names(trt) -> list[str]:
    """Compute capabilities this TensorRT-RTX can build for (e.g. SM75 ... SM121, CURRENT)."""
    return [name for name in trt.ComputeCapability.__members__ if name != "NONE"]


def validate_targets(trt, library: str, requested: tuple[str, ...], gpu: tuple[str, str] | None) -> tuple[str, ...]:
    """The build targets `requested` resolves to, or one WanError line (cheap: `check_can_build` runs it before
    any export). tensorrt: none (the engine is for the GPU the build runs on; `requested` may only name that GPU).
    tensorrt-rtx: `requested` or the default SM89; CURRENT means this machine's GPU and must stand alone."""
    spec = get_library(library)
    if not spec.has_compute_capability_targets:
        here = gpu[1] if gpu else None
        if any(cc not in ("CURRENT", here) for cc in requested):
            raise WanError(f"compute capability targets {list(requested)} are a tensorrt-rtx option; a TensorRT "
                           f"engine is built for the GPU it is built on ({here or 'none here'})")
        return ()
    targets = tuple(cc.upper() for cc in (requested or spec.default_targets))
    known = target_names(trt)
    unknown = [cc for cc in targets if cc not in known]
    if unknown:
        raise WanError(f"{library} {version(trt)} cannot target {unknown}; choose from {known}")
    if len(set(targets)) != len(targets):
        raise WanError(f"compute capabilities {list(targets)} name a target twice")
    if "CURRENT" in targets:
        if len(targets) != 1:
            raise WanError("compute capability CURRENT (this machine's GPU) cannot be combined with other targets")
        if gpu is None:
            raise WanError(f"compute capability CURRENT means this machine's GPU, and no NVIDIA GPU is visible; "
                           f"name a target instead: {[cc for cc in known if cc != 'CURRENT']}")
        if gpu[1].upper() not in known:
            raise WanError(rtx_unsupported_gpu_message(version(trt), gpu, known))
    return targets


def set_targets(trt, config, library: str, requested: tuple[str, ...], gpu: tuple[str, str] | None) -> dict:
    """Apply the build targets to `config`; returns the manifest fields describing them."""
    targets = validate_targets(trt, library, requested, gpu)
    if not get_library(library).has_compute_capability_targets:
        return {"compute_capabilities": [gpu[1] if gpu else None], "gpu": gpu[0] if gpu else None}
    fields = {"compute_capabilities": list(targets)}
    if "CURRENT" in targets:
        fields["gpu"] = gpu[0]
        fields["gpu_compute_capability"] = gpu[1]
    config.num_compute_capabilities = len(targets)
    for index, cc in enumerate(targets):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, cc), index):
            raise WanError(f"{library} {version(trt)} refused compute capability {cc}")
    return fields


BF16_FIRST_SM = 80  # bf16 math came with Ampere (SM80); Turing (SM75) has none


def _sm_number(cc: str) -> int:
    digits = "".join(ch for ch in cc if ch.isdigit())
    return int(digits) if digits else 0


def check_targets_fit(library: str, compute_capabilities: tuple[str, ...], precisions: dict[str, str]) -> None:
    """Refuse at once (before any export) engines their target GPUs cannot run: TensorRT-RTX for Turing, whose
    compiler has neither fp32 nor bf16 matrix multiplies there (every component has fp32 ones: the DiT's official
    fp32 islands, the fp32 VAE), and bf16 components for a GPU without bf16 (tensorrt on a pre-Ampere GPU).
    `compute_capabilities`: the GPUs the engines are for, as `check_can_build` returns them."""
    old = [cc for cc in compute_capabilities if _sm_number(cc) < BF16_FIRST_SM]
    if not old:
        return
    if get_library(library).has_compute_capability_targets:
        raise WanError(f"{library} cannot build these engines for {' and '.join(old)} (Turing): its compiler has no "
                       f"fp32 or bf16 matrix multiplies there, and every component has fp32 ones (the DiT's official "
                       f"fp32 time embedding, modulation and head; the fp32 VAE); target SM80 or newer, or build "
                       f"with --backend tensorrt on the Turing GPU itself")
    half = sorted(name for name, precision in precisions.items() if precision == "bf16")
    if half:
        raise WanError(f"this GPU ({' and '.join(old)}) has no bf16, and the profile asks bf16 for {', '.join(half)}; "
                       f"build from a profile whose [precision] names fp16 for them (copy profiles/720p.toml)")


# --- GPU presence: the runtime's probe (CUDA driver, then nvidia-smi), one copy for both sides ----------------
def gpu_compute_capability() -> str | None:
    """e.g. "SM90" when an NVIDIA GPU is visible, else None."""
    info = gpu_info()
    return info[1] if info else None


def check_can_build(library: str, compute_capabilities: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Fail at once (before any export or parse) when `library` cannot build here: no GPU, not installed, or
    targets it cannot build for. Returns the GPUs the engines will be for, e.g. ("SM89",) (CURRENT and tensorrt
    resolved to this machine's GPU)."""
    spec = get_library(library)
    requested = tuple(cc.upper() for cc in compute_capabilities)
    gpu = gpu_info() if spec.needs_gpu_to_build or "CURRENT" in requested else None
    if spec.needs_gpu_to_build and gpu is None:
        raise WanError(NO_GPU_MESSAGE)
    trt = load(library)
    check_version(library, version(trt))
    targets = validate_targets(trt, library, requested, gpu)
    if not targets or targets == ("CURRENT",):
        return (gpu[1],)
    return targets
