"""Does an engine fit this machine? The TensorRT-RTX engine header (readable without a GPU), the manifest's build
target against the installed library and the GPU, and the one-line refusals with the command to rebuild."""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from wan_rt.backends.trt_library import _version_pins
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, ComponentInfo

log = logging.getLogger("wan_rt")


# --- the TensorRT-RTX engine header ------------------------------------------------------------------------
# 64 bytes (`Runtime.engine_header_size`). Not documented by NVIDIA: read off engines built with 1.7.1.116
# for every target, so only a header of exactly this layout is decoded.
#   0  b"vtrt"  magic                       8  u32 header layout (2)      16  u64 engine size in bytes
#   24 u8 x4 TensorRT-RTX major, minor, patch, build                    32  u32 compute capability bit mask
#   56 u64 weight bytes loaded onto the GPU with the engine: all the weights' bytes, 0 when built with weight
#      streaming (then the runtime's budget decides what stays on the GPU)
RTX_MAGIC = b"vtrt"
RTX_LAYOUT = 2
RTX_CC_BITS = {0x01: "SM75", 0x02: "SM80", 0x04: "SM86", 0x08: "SM89", 0x10: "SM120", 0x20: "SM121"}
HEADER_BYTES = 64


def engine_header_info(engine_path) -> dict | None:
    """What a TensorRT-RTX engine's header says, read without TensorRT or a GPU; None if not such an engine.

    {"library": "tensorrt-rtx", "version": "1.7.1.116", "compute_capabilities": ["SM89"], "size": bytes,
    "device_weight_bytes": bytes (0 for a weight-streaming engine)}.
    A default multi-target engine also sets a bit no target names; it shows as "bit6". Full TensorRT engines
    are not decoded (None): only deserializing on their GPU can judge them.
    """
    path = Path(engine_path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError:
        return None
    if len(head) < HEADER_BYTES or head[:4] != RTX_MAGIC:
        return None
    layout, = struct.unpack_from("<I", head, 8)
    declared, = struct.unpack_from("<Q", head, 16)
    if layout != RTX_LAYOUT or declared != size:
        return None
    major, minor, patch, build = head[24:28]
    mask, = struct.unpack_from("<I", head, 32)
    ccs = [name for bit, name in RTX_CC_BITS.items() if mask & bit]
    ccs += [f"bit{b}" for b in range(32) if mask & (1 << b) and (1 << b) not in RTX_CC_BITS]
    weights, = struct.unpack_from("<Q", head, 56)
    return {"library": "tensorrt-rtx", "version": f"{major}.{minor}.{patch}.{build}", "compute_capabilities": ccs,
            "size": size, "device_weight_bytes": weights}


# --- does this engine fit this machine ---------------------------------------------------------------------
def rtx_targets(trt) -> tuple[str, ...]:
    """The compute capabilities this TensorRT-RTX offers as targets, from its own enum (1.7: SM75 ... SM121)."""
    return tuple(name for name in trt.ComputeCapability.__members__ if name not in ("NONE", "CURRENT"))


def rtx_unsupported_gpu_message(installed: str, gpu: tuple[str, str], known) -> str:
    """TensorRT-RTX has no target for this GPU (an H100/H200 is SM90): say so and point to full TensorRT."""
    offered = [cc for cc in known if cc not in ("CURRENT", "NONE")]
    return (f"tensorrt-rtx {installed} has no target for this GPU ({gpu[0]}, {gpu[1]}): it builds and runs engines "
            f"for {', '.join(offered)} only (RTX-class GPUs; data-centre GPUs such as the H100/H200, SM90, are not "
            f"among them); use --backend tensorrt on this GPU instead")


def built_for(target: dict) -> list[str]:
    """Compute capabilities an engine runs on, from its manifest target ("CURRENT" resolved to the build GPU's)."""
    ccs = [str(cc).upper() for cc in target.get("compute_capabilities") or [] if cc]
    if "CURRENT" in ccs:
        here = target.get("gpu_compute_capability")
        ccs = [here.upper()] if here else []
    return ccs


def rebuild_command(component: ComponentInfo, engine_path, backend: str | None = None) -> str:
    """The `wan-export build` line that rebuilds this engines folder for this machine (best effort); for
    another backend it writes a new folder beside this one."""
    root = Path(engine_path).parent
    out = root if backend in (None, component.backend) else root.with_name(f"{root.name}-{backend}")
    backend = backend or component.backend
    profile, ckpt = "PROFILE", ""
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        profile = data.get("profile", {}).get("name") or profile
        weights = data.get("weights", {})
        if weights.get("kind") == "checkpoint" and weights.get("path"):
            ckpt = f" --ckpt-dir {weights['path']}"
    except (OSError, ValueError, AttributeError):
        pass
    sm = " --sm CURRENT" if backend == "tensorrt-rtx" else ""
    return f"wan-export build --profile {profile}{ckpt} --backend {backend}{sm} --out {out}"


def no_gpu_message(component: ComponentInfo, engine_path) -> str:
    return (f"{component.name}: {Path(engine_path).name} is a {component.backend} engine and needs an NVIDIA GPU, "
            f"but none is visible here (no CUDA driver or device); run it on a GPU machine, or build engines for "
            f"this one: {rebuild_command(component, engine_path, 'onnxruntime')}")


def check_engine_fits(component: ComponentInfo, engine_path, installed_version: str, gpu: tuple[str, str],
                      library_targets: tuple[str, ...] | None = None) -> dict:
    """Refuse (one WanError line) an engine that this library version or this GPU cannot run; returns its header
    facts. Pure: the installed version, the GPU and (TensorRT-RTX) the targets the library offers
    (`rtx_targets(trt)`) are arguments, so every refusal is testable without a GPU."""
    name, backend, file = component.name, component.backend, Path(engine_path).name
    target = component.target or {}
    rebuild = f"rebuild for this machine: {rebuild_command(component, engine_path)}"
    built_version = target.get("version")
    targets = built_for(target)
    if not built_version or not targets:
        raise WanError(f"{name}: manifest.json does not say which library version and GPU {file} was built for "
                       f"(an engines folder from an older wan-export); {rebuild}")
    if target.get("library", backend) != backend:
        raise WanError(f"{name}: manifest.json says backend {backend} but target library {target.get('library')}; "
                       f"the folder is inconsistent, {rebuild}")
    header = engine_header_info(engine_path)
    if header is not None:
        named = sorted(cc for cc in header["compute_capabilities"] if cc.startswith("SM"))
        said = f"{header['library']} {header['version']} for {', '.join(header['compute_capabilities']) or '?'}"
        if backend != "tensorrt-rtx":
            raise WanError(f"{name}: {file} is a TensorRT-RTX engine ({said}) but manifest.json says {backend}; "
                           f"the folder is inconsistent, {rebuild}")
        current = "CURRENT" in [str(cc).upper() for cc in target.get("compute_capabilities", [])]
        if header["version"] != built_version or (named and not current and named != sorted(targets)):
            raise WanError(f"{name}: {file} says it was built by {said}, manifest.json says {backend} "
                           f"{built_version} for {', '.join(targets)}; the folder is inconsistent, {rebuild}")
    elif backend == "tensorrt-rtx":
        log.debug("%s: %s has no TensorRT-RTX header this wan-rt can read; relying on manifest.json", name, file)
    if backend == "tensorrt-rtx" and library_targets is not None and gpu[1].upper() not in library_targets:
        raise WanError(f"{name}: {file} is a TensorRT-RTX engine, and "
                       f"{rtx_unsupported_gpu_message(installed_version, gpu, library_targets)}: "
                       f"{rebuild_command(component, engine_path, 'tensorrt')}")
    if installed_version != built_version:
        raise WanError(f"{name}: {file} was built with {backend} {built_version}, this machine has {backend} "
                       f"{installed_version}; engines only load in the version that built them: {rebuild}, or "
                       f"install {_version_pins(backend, built_version)}")
    gpu_name, gpu_cc = gpu
    if gpu_cc.upper() not in targets:
        built_gpu = f" ({target['gpu']})" if target.get("gpu") else ""
        raise WanError(f"{name}: {file} was built by {backend} {built_version} for {', '.join(targets)}{built_gpu}, "
                       f"but this GPU ({gpu_name}) is {gpu_cc}; {rebuild}")
    if backend == "tensorrt" and target.get("gpu") and target["gpu"] != gpu_name:
        log.warning("%s: %s was built on %s and runs on %s (same compute capability); TensorRT may run it slower "
                    "or refuse it; rebuild on this GPU if it does", name, file, target["gpu"], gpu_name)
    return header or {}




def check_weight_streaming(component: ComponentInfo, engine_path, gpu_memory_budget: float | None) -> None:
    """`--gpu-memory-budget GB` needs an engine built with weight streaming (manifest target "weight_streaming");
    refused in one line otherwise, or for a budget that is not a positive number of GB."""
    if gpu_memory_budget is None:
        return
    if not gpu_memory_budget > 0:
        raise WanError(f"--gpu-memory-budget {gpu_memory_budget:g} GB must be a positive number of GB")
    if not (component.target or {}).get("weight_streaming"):
        raise WanError(f"{component.name}: --gpu-memory-budget needs engines built with weight streaming, and "
                       f"{Path(engine_path).name} was built without it; rebuild with --weight-streaming: "
                       f"{rebuild_command(component, engine_path)} --weight-streaming")
