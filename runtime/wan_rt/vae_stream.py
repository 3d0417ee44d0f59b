"""Streaming VAE decode: one latent frame per engine call, caches carried, pixels straight to the writer.

Peak memory is one chunk's activations plus the caches, whatever the clip length. The caches stay on the
engine's device from the first chunk to the last (`run(..., keep=cache outputs)`): at 1280x704 they are 6.4 GB
per latent frame, which would otherwise cross PCIe twice per chunk. Only the latent frame goes in and the
pixels come back.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from wan_rt.backends import Runner
from wan_rt.finite import check_finite

CACHE_IN, CACHE_OUT = "cache_in.", "cache_out."


def decode_stream(first: Runner, steady, latents: np.ndarray, write, show_progress: bool = True,
                  first_caches: dict | None = None, skip_first: int = 0) -> int:
    """latents [C, F, h, w] -> pixel chunks [3, T, H, W] in [-1, 1] passed to `write`; returns frames written.

    `steady`: the steady-state runner, or a function returning it, called after the first chunk (so the caller can
    close the first-chunk engine before the steady one opens: --memory stage). `first_caches`: the caches the first
    call takes (a decoder with one graph for every call: zeros), `skip_first`: leading frames of the first chunk
    that are not part of the video (the tiny decoder, wan_rt.tiny_decode)."""
    frames = 0
    caches: dict = {}  # cache_in.* -> DeviceTensor (or numpy for runners without a device)
    for index in tqdm(range(latents.shape[1]), desc="decoding", unit="latent frame",
                      disable=not show_progress or None, leave=False):
        feeds = {"latent": np.ascontiguousarray(latents[None, :, index:index + 1], dtype=np.float32)}
        if index == 1 and not hasattr(steady, "run"):  # a function that opens it
            steady = steady()
        runner = first if index == 0 else steady
        if index:
            feeds.update(caches)
        elif first_caches:
            feeds.update(first_caches)
        outputs = runner.run(feeds, keep=_cache_outputs(runner))
        caches = {CACHE_IN + name[len(CACHE_OUT):]: value for name, value in outputs.items()
                  if name.startswith(CACHE_OUT)}
        pixels = check_finite(outputs["pixels"][0], runner.component.name, f"at latent frame {index}")
        if index == 0 and skip_first:
            pixels = pixels[:, skip_first:]
        write(pixels)
        frames += pixels.shape[1]
    return frames


def _cache_outputs(runner: Runner) -> tuple[str, ...]:
    return tuple(t.name for t in runner.component.outputs if t.name.startswith(CACHE_OUT))
