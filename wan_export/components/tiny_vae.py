"""The tiny (TAEHV) streaming decoder graph: one latent frame in, 4 frames out, its memory as named caches.

One graph serves every call: its caches are zeros on the first call (upstream's empty memory) and the runtime
keeps the last of that call's 4 frames (wan_export.model.taehv: the first-frame convention).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.components.vae import _latent_dims, _scaled
from wan_export.model.taehv import TinyDecoder, TinyVAEConfig
from wan_rt.shapes import SPATIAL_STRIDE, ShapeLimits

NAME = "vae_tiny_decoder"


class TinyDecoderGraph(nn.Module):
    def __init__(self, decoder: TinyDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, latent, caches):
        pixels, new_caches = self.decoder.decode_chunk(latent, tuple(caches))
        return (pixels, *new_caches)


def cache_layout(cfg: TinyVAEConfig) -> tuple[tuple[str, int, int], ...]:
    with torch.device("meta"):
        return TinyDecoder(cfg).cache_layout()


def _caches(cfg: TinyVAEConfig, prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}.{name}", "float32",
                            (1, channels, _scaled("latent_height", k), _scaled("latent_width", k)))
                 for name, channels, k in cache_layout(cfg))


def tiny_vae_spec(limits: ShapeLimits, cfg: TinyVAEConfig) -> ComponentSpec:
    latent = TensorSpec("latent", "float32", (1, cfg.latent_channels, 1, "latent_height", "latent_width"))
    frames = cfg.frames_per_latent
    pixels = TensorSpec("pixels", "float32", (1, 3, frames, f"latent_height*{SPATIAL_STRIDE}",
                                              f"latent_width*{SPATIAL_STRIDE}"))

    def sample(point: RequestPoint, rng: np.random.Generator) -> dict:
        lh, lw = point.height // SPATIAL_STRIDE, point.width // SPATIAL_STRIDE
        feeds = {"latent": rng.standard_normal((1, cfg.latent_channels, 1, lh, lw)).astype(np.float32)}
        for name, channels, k in cache_layout(cfg):  # post-ReLU memories are >= 0 in the base decoder
            feeds[f"cache_in.{name}"] = np.abs(rng.standard_normal((1, channels, lh * k, lw * k))).astype(np.float32)
        return feeds

    return ComponentSpec(
        name=NAME, weights="tiny_vae", precision_key="vae_decoder",
        inputs=(latent, *_caches(cfg, "cache_in")), outputs=(pixels, *_caches(cfg, "cache_out")),
        dims=_latent_dims(limits), graph=TinyDecoderGraph, sample=sample, packed_from=1)
