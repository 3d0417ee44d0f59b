"""dit: patchified latent tokens + per-frame timesteps + context + RoPE tables -> velocity tokens.

The token count L and the latent frame count F are dynamic: one graph serves every resolution and frame count
of the profile. Timesteps come one per latent frame (the L/F tokens of a frame share it; image-to-video gives
frame 0 t=0), which the official per-token form equals value for value (tests/test_dit.py).
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.config import ModelConfig
from wan_export.model.dit import FP32_MODULES
from wan_rt import tokens
from wan_rt.shapes import TOKEN_STRIDE, ShapeLimits, latent_frames


class DiTGraph(nn.Module):
    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, tokens, timesteps, context, rope_cos, rope_sin):
        return self.dit(tokens, timesteps, context, rope_cos, rope_sin)


def token_grid_for(point: RequestPoint) -> tuple[int, int, int]:
    return latent_frames(point.frames), point.height // TOKEN_STRIDE, point.width // TOKEN_STRIDE


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
        outputs=(TensorSpec("velocity", "float32", ("batch", "tokens", cfg.out_patch_channels)),),
        dims={"batch": (limits.batch[0], limits.batch[1], limits.batch[1]),
              "tokens": (low, limits.default_tokens(), high),
              # one timestep per latent frame: per-token modulation [B, L, 6, C] fp32 is 4 GB at 720p batch 2,
              # and TensorRT keeps all 30 blocks' copies alive at once (126.7 GB asked for at build time)
              "frames": (latent_frames(limits.frames[0]), latent_frames(limits.default_frames),
                         latent_frames(limits.frames[1]))},
        graph=DiTGraph, sample=sample, fp32_modules=FP32_MODULES,
    )
