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
from dataclasses import dataclass

from wan_rt.errors import WanError
from wan_rt.manifest import Manifest

log = logging.getLogger("wan_rt")

MODES = ("keep", "stage", "auto")
HEADROOM = 0.9  # of the free memory: CUDA context growth, fragmentation, the host loop's own buffers
STAGE_ORDER = ("text", "image", "denoise", "decode")


def stages(denoise_engines: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Stage name -> the engines it runs, in the order a request runs them."""
    return {"text": ("text_encoder",), "image": ("vae_encoder",), "denoise": tuple(denoise_engines),
            "decode": ("vae_decoder_first", "vae_decoder_step")}


@dataclass(frozen=True)
class EngineSize:
    weights: int
    activations: int  # 0 when unknown


def engine_size(manifest: Manifest, name: str) -> EngineSize:
    component = manifest.component(name)
    record = manifest.data["components"][name].get("memory") or {}
    weights = record.get("weight_bytes")
    if weights is None:  # an older folder: its files are (almost all) weights
        weights = sum((manifest.root / f).stat().st_size for f in component.files if (manifest.root / f).is_file())
    activations = (record.get("activation_bytes") or {}).get("max", 0)
    return EngineSize(int(weights), int(activations))


def need_bytes(manifest: Manifest, names) -> int:
    """Device memory to hold `names` open together: their weights plus the largest activation block (the engines
    run in turn and share one block)."""
    sizes = [engine_size(manifest, n) for n in names if n in manifest.components]
    return sum(s.weights for s in sizes) + max((s.activations for s in sizes), default=0)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def choose_mode(requested: str, manifest: Manifest, denoise_engines: tuple[str, ...], on_gpu: bool,
                free_bytes: int | None) -> tuple[str, str]:
    """(mode, why). `free_bytes`: the GPU's free memory, None when it could not be read."""
    if requested not in MODES:
        raise WanError(f"memory mode {requested!r} is not one of {', '.join(MODES)}")
    groups = stages(denoise_engines)
    every = [n for names in groups.values() for n in names]
    keep_need = need_bytes(manifest, every)
    stage_need, largest = max((need_bytes(manifest, names), stage) for stage, names in groups.items())
    sizes = f"all engines {_gb(keep_need)}, largest stage ({largest}) {_gb(stage_need)}"
    if requested != "auto":
        return requested, f"as asked; {sizes}"
    if not on_gpu:
        return "keep", f"auto: the engines run in host memory; {sizes}"
    if free_bytes is None:
        return "keep", f"auto: free device memory could not be read (cuda-bindings missing); {sizes}"
    if keep_need <= HEADROOM * free_bytes:
        return "keep", f"auto: {sizes}, {_gb(free_bytes)} of device memory free"
    why = f"auto: {sizes}, only {_gb(free_bytes)} of device memory free"
    if stage_need > HEADROOM * free_bytes:
        log.warning("even the largest stage (%s, %s) may not fit the %s of free device memory; engines built with "
                    "--weight-streaming can run in less (--gpu-memory-budget)", largest, _gb(stage_need),
                    _gb(free_bytes))
    return "stage", why


def device_free_bytes(manifest: Manifest) -> tuple[bool, int | None]:
    """(the engines run on a GPU, its free memory from cudaMemGetInfo or None if it cannot be read)."""
    backends = {c.backend for c in manifest.components.values()}
    on_gpu = bool(backends & {"tensorrt", "tensorrt-rtx"})
    if not on_gpu and "onnxruntime" in backends:
        from wan_rt.backends.ort import default_providers

        on_gpu = default_providers()[:1] == ["CUDAExecutionProvider"]
    if not on_gpu:
        return False, None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return True, None  # the engines will say what is missing when they open
    error, free, _total = cudart.cudaMemGetInfo()
    return True, int(free) if error == cudart.cudaError_t.cudaSuccess else None
