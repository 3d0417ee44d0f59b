"""VAE graphs: the image encoder (image-to-video) and the streaming decoder as two chunk graphs.

Decoder caches are explicit named I/O (`cache_in.<conv path>` -> `cache_out.<conv path>`), so the runtime
streams one latent frame at a time with memory that does not grow with the clip length.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.config import ModelConfig, VAEConfig
from wan_rt.shapes import SPATIAL_STRIDE, ShapeLimits

# Which of the VAE's parameters each graph embeds (official WanVAE: encoder + conv1, conv2 + decoder).
ENCODER_WEIGHTS = ("encoder.", "conv1.")
DECODER_WEIGHTS = ("conv2.", "decoder.")


class EncoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        latent, _ = self.vae.encode_first_chunk(image)
        return latent


class DecoderFirstGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        pixels, caches = self.vae.decode_first_chunk(latent)
        return (pixels, *caches)


class DecoderStepGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent, caches):
        pixels, new_caches = self.vae.decode_chunk(latent, tuple(caches))
        return (pixels, *new_caches)


@lru_cache(maxsize=8)
def decoder_cache_layout(cfg: VAEConfig) -> tuple[tuple[str, int, int], ...]:
    """(name, channels, spatial factor relative to the latent) of every decoder cache, in cache order."""
    from wan_export.model.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(cfg)
    probe_h, probe_w = 3, 5
    return tuple((name, shape[1], shape[3] // probe_h) for name, shape in vae.decoder_cache_specs(probe_h, probe_w))


def _scaled(dim: str, factor: int):
    return dim if factor == 1 else f"{dim}*{factor}"


def _latent_dims(limits: ShapeLimits) -> dict:
    opt_w, opt_h = limits.default_size
    lh, lw = limits.latent_height_range(), limits.latent_width_range()
    return {"latent_height": (lh[0], opt_h // SPATIAL_STRIDE, lh[1]),
            "latent_width": (lw[0], opt_w // SPATIAL_STRIDE, lw[1])}


def _cache_tensors(cfg: VAEConfig, prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}.{name}", "float32",
                            (1, channels, 2, _scaled("latent_height", factor), _scaled("latent_width", factor)))
                 for name, channels, factor in decoder_cache_layout(cfg))


def vae_specs(config: ModelConfig, limits: ShapeLimits) -> list[ComponentSpec]:
    cfg = config.vae
    z = cfg.z_dim
    stride = cfg.spatial_stride
    latent = TensorSpec("latent", "float32", (1, z, 1, "latent_height", "latent_width"))
    dims = _latent_dims(limits)

    def sample_image(point: RequestPoint, rng: np.random.Generator) -> dict:
        image = rng.uniform(-1, 1, size=(1, 3, 1, point.height, point.width)).astype(np.float32)
        return {"image": image}

    def sample_latent(point: RequestPoint, rng: np.random.Generator) -> dict:
        shape = (1, z, 1, point.height // stride, point.width // stride)
        return {"latent": rng.standard_normal(shape).astype(np.float32)}

    def sample_step(point: RequestPoint, rng: np.random.Generator) -> dict:
        feeds = sample_latent(point, rng)
        lh, lw = point.height // stride, point.width // stride
        for tensor in _cache_tensors(cfg, "cache_in"):
            _, channels, _, _, _ = tensor.shape
            factor = decoder_cache_factor(cfg, tensor.name)
            feeds[tensor.name] = (0.5 * rng.standard_normal((1, channels, 2, lh * factor, lw * factor))).astype(np.float32)
        return feeds

    pixels_first = TensorSpec("pixels", "float32", (1, 3, 1, f"latent_height*{stride}", f"latent_width*{stride}"))
    pixels_step = TensorSpec("pixels", "float32", (1, 3, 4, f"latent_height*{stride}", f"latent_width*{stride}"))
    return [
        ComponentSpec(
            name="vae_encoder", weights="vae", precision_key="vae_encoder", weight_prefixes=ENCODER_WEIGHTS,
            inputs=(TensorSpec("image", "float32", (1, 3, 1, f"latent_height*{stride}", f"latent_width*{stride}")),),
            outputs=(latent,), dims=dims, graph=EncoderGraph, sample=sample_image),
        ComponentSpec(
            name="vae_decoder_first", weights="vae", precision_key="vae_decoder", weight_prefixes=DECODER_WEIGHTS,
            inputs=(latent,), outputs=(pixels_first, *_cache_tensors(cfg, "cache_out")),
            dims=dims, graph=DecoderFirstGraph, sample=sample_latent),
        ComponentSpec(
            name="vae_decoder_step", weights="vae", precision_key="vae_decoder", weight_prefixes=DECODER_WEIGHTS,
            inputs=(latent, *_cache_tensors(cfg, "cache_in")),
            outputs=(pixels_step, *_cache_tensors(cfg, "cache_out")),
            dims=dims, graph=DecoderStepGraph, sample=sample_step, packed_from=1),
    ]


def decoder_cache_factor(cfg: VAEConfig, tensor_name: str) -> int:
    conv = tensor_name.split(".", 1)[1]
    return {name: factor for name, _, factor in decoder_cache_layout(cfg)}[conv]
