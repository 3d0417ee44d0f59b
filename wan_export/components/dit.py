"""dit: patchified latent tokens + per-frame timesteps + context + RoPE tables -> velocity tokens (and the block
stack's residual); dit_skip and dit_time: the small graphs of a step cache (runtime/wan_rt/step_cache.py).

The token count L and the latent frame count F are dynamic: one graph serves every resolution and frame count
of the profile. Timesteps come one per latent frame (the L/F tokens of a frame share it; image-to-video gives
frame 0 t=0), which the official per-token form equals value for value (tests/test_dit.py).

Step caching (MagCache, TeaCache) skips the block stack on some steps and reuses the last residual (blocks output
minus blocks input): `dit` returns it per batch row (= per guidance branch), `dit_skip` turns tokens + a cached
residual into the velocity (patch embedding, time embedding, head: a few % of the DiT's work), and `dit_time`
gives TeaCache the time embedding its indicator reads, for the whole schedule before the first step.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.config import ModelConfig
from wan_export.model.dit import FP32_MODULES, WanDiT
from wan_rt import tokens
from wan_rt.shapes import TOKEN_STRIDE, ShapeLimits, latent_frames


class DiTGraph(nn.Module):
    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, tokens, timesteps, context, rope_cos, rope_sin):
        return self.dit.forward_with_residual(tokens, timesteps, context, rope_cos, rope_sin)


class _DiTParts(nn.Module):
    """Only the DiT modules a small graph reads (so its weight count and export see those alone), with the very
    `WanDiT` methods that use them."""

    def __init__(self, dit: WanDiT):
        super().__init__()
        self.cfg = dit.cfg
        self.patch_embedding, self.time_embedding, self.head = dit.patch_embedding, dit.time_embedding, dit.head

    embed_tokens = WanDiT.embed_tokens
    embed_time_only = WanDiT.embed_time_only


class DiTSkipGraph(_DiTParts):
    forward = WanDiT.velocity_from_residual  # (tokens, timesteps, residual) -> velocity


class DiTTimeGraph(_DiTParts):
    def forward(self, timesteps):
        return self.embed_time_only(timesteps)


def token_grid_for(point: RequestPoint) -> tuple[int, int, int]:
    return latent_frames(point.frames), point.height // TOKEN_STRIDE, point.width // TOKEN_STRIDE


SKIP_PARTS = ("patch_embedding", "time_embedding", "head")


def dit_specs(config: ModelConfig, limits: ShapeLimits) -> list[ComponentSpec]:
    """dit, dit_skip, dit_time: one set of weights, one batch/tokens/frames table."""
    whole = dit_spec(config, limits)
    cfg = config.dit

    def sample_skip(point: RequestPoint, rng: np.random.Generator) -> dict:
        feeds = whole.sample(point, rng)
        residual = rng.standard_normal((*feeds["tokens"].shape[:2], cfg.dim)).astype(np.float32)
        return {"tokens": feeds["tokens"], "timesteps": feeds["timesteps"], "residual": residual}

    def sample_time(point: RequestPoint, rng: np.random.Generator) -> dict:
        return {"timesteps": whole.sample(point, rng)["timesteps"]}

    inputs = {tensor.name: tensor for tensor in whole.inputs}
    common = dict(weights="dit", precision_key="dit", dims=whole.dims, fp32_modules=FP32_MODULES)
    skip = ComponentSpec(
        name="dit_skip", inputs=(inputs["tokens"], inputs["timesteps"], residual_spec(cfg)),
        outputs=whole.outputs[:1], graph=DiTSkipGraph, sample=sample_skip, weight_prefixes=SKIP_PARTS, **common)
    time = ComponentSpec(
        name="dit_time", inputs=(inputs["timesteps"],),
        outputs=(TensorSpec("time_embedding", "float32", ("batch", "frames", cfg.dim)),),
        graph=DiTTimeGraph, sample=sample_time, weight_prefixes=("time_embedding",), **common)
    return [whole, skip, time]


def residual_spec(cfg) -> TensorSpec:
    """The block stack's output minus its input, per batch row, float32 (the residual stream's dtype)."""
    return TensorSpec("residual", "float32", ("batch", "tokens", cfg.dim))


def dit_spec(config: ModelConfig, limits: ShapeLimits) -> ComponentSpec:
    cfg = config.dit
    pairs = cfg.head_dim // 2

    def sample(point: RequestPoint, rng: np.random.Generator) -> dict:
        grid = token_grid_for(point)
        count = grid[0] * grid[1] * grid[2]
        cos, sin = tokens.rope_tables(grid, cfg.head_dim)
        timesteps = np.stack([tokens.frame_timesteps(grid, float(rng.integers(1, 1000)), 0.0)] * point.batch)
        context = rng.standard_normal((point.batch, cfg.text_len, cfg.text_dim)).astype(np.float32)
        context[:, rng.integers(1, cfg.text_len):] = 0.0  # zero padding past the prompt, as the text encoder gives
        return {
            "tokens": rng.standard_normal((point.batch, count, cfg.patch_channels)).astype(np.float32),
            "timesteps": timesteps.astype(np.float32), "context": context,
            "rope_cos": np.ascontiguousarray(cos), "rope_sin": np.ascontiguousarray(sin),
        }

    low, high = limits.token_range()
    return ComponentSpec(
        name="dit", weights="dit", precision_key="dit",
        inputs=(TensorSpec("tokens", "float32", ("batch", "tokens", cfg.patch_channels)),
                TensorSpec("timesteps", "float32", ("batch", "frames")),
                TensorSpec("context", "float32", ("batch", cfg.text_len, cfg.text_dim)),
                TensorSpec("rope_cos", "float32", ("tokens", pairs)),
                TensorSpec("rope_sin", "float32", ("tokens", pairs))),
        outputs=(TensorSpec("velocity", "float32", ("batch", "tokens", cfg.out_patch_channels)), residual_spec(cfg)),
        dims={"batch": (limits.batch[0], limits.batch[1], limits.batch[1]),
              "tokens": (low, limits.default_tokens(), high),
              # one timestep per latent frame: per-token modulation [B, L, 6, C] fp32 is 4 GB at 720p batch 2,
              # and TensorRT keeps all 30 blocks' copies alive at once (126.7 GB asked for at build time)
              "frames": (latent_frames(limits.frames[0]), latent_frames(limits.default_frames),
                         latent_frames(limits.frames[1]))},
        graph=DiTGraph, sample=sample, fp32_modules=FP32_MODULES,
    )
