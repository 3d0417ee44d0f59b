"""Streaming VAE decode: one latent frame per engine call, caches carried, pixels straight to the writer.

Peak memory is one chunk's activations plus the caches, whatever the clip length.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from wan_rt.backends import Runner
from wan_rt.finite import check_finite

CACHE_IN, CACHE_OUT = "cache_in.", "cache_out."


def decode_stream(first: Runner, steady: Runner, latents: np.ndarray, write, show_progress: bool = True) -> int:
    """latents [C, F, h, w] -> pixel chunks [3, T, H, W] in [-1, 1] passed to `write`; returns frames written."""
    frames = 0
    caches: dict[str, np.ndarray] = {}
    for index in tqdm(range(latents.shape[1]), desc="decoding", unit="latent frame",
                      disable=not show_progress or None, leave=False):
        feeds = {"latent": np.ascontiguousarray(latents[None, :, index:index + 1], dtype=np.float32)}
        runner = first if index == 0 else steady
        if index:
            feeds.update(caches)
        outputs = runner.run(feeds)
        caches = {CACHE_IN + name[len(CACHE_OUT):]: value for name, value in outputs.items()
                  if name.startswith(CACHE_OUT)}
        pixels = check_finite(outputs["pixels"][0], runner.component.name, f"at latent frame {index}")
        write(pixels)
        frames += pixels.shape[1]
    return frames
