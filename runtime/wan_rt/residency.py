"""Which engines stay open: `--memory keep|stage|auto`, from the sizes the manifest records.

- keep: every engine opens on first use and stays open (a server answering many requests; today's behaviour).
- stage: a request opens the engines of one stage, runs the stage, closes them before the next opens:
  text encoder (both prompts) -> VAE image encoder (image-to-video) -> DiT (all steps) -> decoder. Device memory
  is then the largest stage, not the sum: the 720p text encoder (11.4 GB) and DiT (10.2 GB) engines never share
  a 24 GB card.
- auto: keep when all the engines fit the device's free memory with headroom, else stage; engines that run on
  the CPU (ONNX Runtime's CPU provider) use host memory, where auto is keep.

Sizes: each component's `memory` record in manifest.json (`weight_bytes`, `activation_bytes` at the profile's
max shapes where the builder reported it); folders built before it was recorded fall back to the component's
file sizes, which are its weights (activations unknown, counted as 0).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from wan_rt.errors import WanError
from wan_rt.manifest import Manifest, axis_size

log = logging.getLogger("wan_rt")

MODES = ("keep", "stage", "auto")
HEADROOM = 0.9  # of the free memory: CUDA context growth, fragmentation, the host loop's own buffers
STAGE_ORDER = ("text", "image", "denoise", "decode")


def stages(denoise_engines: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Stage name -> the engines it runs, in the order a request runs them."""
    return {"text": ("text_encoder",), "image": ("vae_encoder",), "denoise": tuple(denoise_engines),
            "decode": ("vae_decoder_first", "vae_decoder_step", "vae_tiny_decoder")}


def stage_groups(denoise_engines: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Stage name -> the sets of engines open at once within it, with --memory stage. The decode stage closes the
    first-chunk decoder before the steady-state one opens (at 720p its 2.2 GB of weights are what the second set
    of 6.4 GB caches needs)."""
    groups = {name: (engines,) for name, engines in stages(denoise_engines).items()}
    groups["decode"] = (("vae_decoder_first",), ("vae_decoder_step",), ("vae_tiny_decoder",))  # tiny: --decoder tiny
    return groups


@dataclass(frozen=True)
class EngineSize:
    weights: int
    activations: int  # at the profile's default request (estimated from the build's max figure); 0 when unknown
    io: int  # its inputs and outputs at the default request, held on the device while it runs


def _elements(shape: tuple, dims: dict, which: int) -> int:
    return math.prod(axis_size(axis, dims, which) for axis in shape)


def engine_size(manifest: Manifest, name: str) -> EngineSize:
    """Weights, activations and I/O of one engine at the profile's default request (its optimization point).

    Activations: the builder reports them at the profile's max shapes only; they are scaled by the default
    request's share of the largest input (measured exact for the 720p VAE graphs, where the max corner is
    1280x1280: 0.55x; the DiT's and text encoder's max is the default request)."""
    component = manifest.component(name)
    record = manifest.data["components"][name].get("memory") or {}
    weights = record.get("weight_bytes")
    if weights is None:  # an older folder: its files are (almost all) weights
        weights = sum((manifest.root / f).stat().st_size for f in component.files if (manifest.root / f).is_file())
    tensors = (*component.inputs, *component.outputs)
    sizes = {t.name: (_elements(t.shape, component.dims, 1), _elements(t.shape, component.dims, 2)) for t in tensors}
    largest = max((t.name for t in component.inputs), key=lambda n: sizes[n][1])
    share = sizes[largest][0] / sizes[largest][1] if sizes[largest][1] else 1.0
    activations = (record.get("activation_bytes") or {}).get("max", 0) * share
    io = sum(sizes[t.name][0] * np.dtype(t.dtype).itemsize for t in tensors)
    return EngineSize(int(weights), int(activations), int(io))


def need_bytes(manifest: Manifest, names) -> int:
    """Device memory to hold `names` open together: their weights, the largest activation block (the engines run
    in turn and share one block) and the largest I/O set (the decoder reads one set of caches while it writes
    the next)."""
    sizes = [engine_size(manifest, n) for n in names if n in manifest.components and not on_host(manifest, n)]
    return (sum(s.weights for s in sizes) + max((s.activations for s in sizes), default=0)
            + max((s.io for s in sizes), default=0))


def on_host(manifest: Manifest, name: str) -> bool:
    """A component placed on the CPU (manifest `device: cpu`, the official t5_cpu) holds host memory, not device."""
    return manifest.component(name).device == "cpu"


def host_bytes(manifest: Manifest) -> int:
    """Host memory of the CPU-placed components' weights (reported beside the device figures)."""
    return sum(engine_size(manifest, n).weights for n in manifest.components if on_host(manifest, n))


def stage_need(manifest: Manifest, groups: tuple[tuple[str, ...], ...]) -> int:
    return max(need_bytes(manifest, group) for group in groups)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def choose_mode(requested: str, manifest: Manifest, denoise_engines: tuple[str, ...], on_gpu: bool,
                free_bytes: int | None) -> tuple[str, str]:
    """(mode, why). `free_bytes`: the GPU's free memory, None when it could not be read."""
    if requested not in MODES:
        raise WanError(f"memory mode {requested!r} is not one of {', '.join(MODES)}")
    every = [n for names in stages(denoise_engines).values() for n in names]
    keep_need = need_bytes(manifest, every)
    most, largest = max((stage_need(manifest, groups), stage)
                        for stage, groups in stage_groups(denoise_engines).items())
    sizes = f"all engines {_gb(keep_need)}, largest stage ({largest}) {_gb(most)}"
    if host_bytes(manifest):
        sizes += f", plus {_gb(host_bytes(manifest))} in host memory (components placed on the CPU)"
    if requested != "auto":
        return requested, f"as asked; {sizes}"
    if not on_gpu:
        return "keep", f"auto: the engines run in host memory; {sizes}"
    if free_bytes is None:
        return "keep", f"auto: free device memory could not be read (cuda-bindings missing); {sizes}"
    if keep_need <= HEADROOM * free_bytes:
        return "keep", f"auto: {sizes}, {_gb(free_bytes)} of device memory free"
    why = f"auto: {sizes}, only {_gb(free_bytes)} of device memory free"
    if most > HEADROOM * free_bytes:
        log.warning("even the largest stage (%s, %s) may not fit the %s of free device memory; engines built with "
                    "--weight-streaming can run in less (--gpu-memory-budget)", largest, _gb(most), _gb(free_bytes))
    return "stage", why


def device_free_bytes(manifest: Manifest) -> tuple[bool, int | None]:
    """(the engines run on a GPU, its free memory from cudaMemGetInfo or None if it cannot be read)."""
    backends = {c.backend for c in manifest.components.values()}
    on_gpu = bool(backends & {"tensorrt", "tensorrt-rtx"})
    device_ort = any(c.backend == "onnxruntime" and c.device != "cpu" for c in manifest.components.values())
    if not on_gpu and device_ort:
        from wan_rt.backends.ort import default_providers

        on_gpu = default_providers()[:1] == ["CUDAExecutionProvider"]
    if not on_gpu:
        return False, None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:  # onnxruntime-gpu alone: the CUDA runtime library it loads answers too
        from wan_rt.backends.ort_providers import cuda_free_bytes

        return True, cuda_free_bytes()
    error, free, _total = cudart.cudaMemGetInfo()
    return True, int(free) if error == cudart.cudaError_t.cudaSuccess else None
