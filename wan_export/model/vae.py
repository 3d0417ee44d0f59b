"""Export-friendly reference of the Wan2.2 VAE (official wan/modules/vae2_2.py, `WanVAE_` inside `Wan2_2_VAE`).

Same parameters as the official `WanVAE_` (an official `Wan2.2_VAE.pth` loads with strict=True), same math in
float32. Differences, none of them numerical:
- streaming is explicit: the chunk functions take and return the frame caches as a tuple of tensors of fixed
  shape [B, C, 2, H', W'], one per cached causal conv, in the order of `encoder_cache_names` /
  `decoder_cache_names`; `*_cache_specs` give their shapes for a frame size. These are the graphs to export.
- the first chunk and later chunks are separate functions (the official code decides from its cache list);
  where the official cache holds fewer than 2 frames, "Rep" or None, the cache here holds zeros;
- latents in and out are normalized with the official per-channel mean/std (`Wan2_2_VAE.scale`);
- no einops; 'nearest-exact' 2x upsampling is written as 'nearest' (the same pixels).

Chunking (as in the official encode/decode): the encoder takes frame 0 alone, then 4 frames per chunk, each
chunk giving 1 latent frame; the decoder takes 1 latent frame per chunk, giving 1 frame first, then 4.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from wan_export.config import VAEConfig
from wan_export.model.vae_blocks import (
    CACHE_T,
    PATCH,
    CausalConv3d,
    ChunkState,
    Decoder3d,
    Encoder3d,
)

CacheSpecs = list[tuple[str, tuple[int, int, int, int, int]]]


def patchify(x: torch.Tensor, patch_size: int = PATCH) -> torch.Tensor:
    """'b c f (h q) (w r) -> b (c r q) f h w' (official order: the width offset r before the height offset q)."""
    b, c, f, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x: torch.Tensor, patch_size: int = PATCH) -> torch.Tensor:
    """'b (c r q) f h w -> b c f (h q) (w r)', the inverse of `patchify`."""
    b, cp, f, h, w = x.shape
    p = patch_size
    x = x.reshape(b, cp // (p * p), p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cp // (p * p), f, h * p, w * p)


def _cached_convs(module: nn.Module, prefix: str) -> list[tuple[str, CausalConv3d]]:
    """Convs with a time kernel > 1 (the ones the official code caches), in forward order."""
    return [(f"{prefix}.{name}", m) for name, m in module.named_modules()
            if isinstance(m, CausalConv3d) and m.kernel_size[0] > 1]


class WanVAE(nn.Module):
    """The Wan2.2 VAE (z_dim 48, 16x16 spatial and 4x temporal compression for the official config)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg.base_dim, 2 * z, cfg.dim_mult, cfg.num_res_blocks, cfg.temporal_downsample)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # -> (mu, log_var)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(cfg.decoder_base_dim, z, cfg.dim_mult, cfg.num_res_blocks, cfg.temporal_upsample)
        # Official Wan2_2_VAE.scale = [mean, 1/std]; kept in that form so the float math is the same.
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_inv_std", inv_std, persistent=False)

        convs = _cached_convs(self.encoder, "encoder") + _cached_convs(self.decoder, "decoder")
        for name, conv in convs:
            conv.cache_name = name
        self.encoder_cache_names = tuple(n for n, _ in convs if n.startswith("encoder."))
        self.decoder_cache_names = tuple(n for n, _ in convs if n.startswith("decoder."))

    # ---- cache shapes ----------------------------------------------------------------------------------

    def _specs(self, names: tuple[str, ...], height: int, width: int, batch: int) -> CacheSpecs:
        specs = []
        for name in names:
            conv = self.get_submodule(name)
            stride = conv.cache_stride
            specs.append((name, (batch, conv.in_channels, CACHE_T, height // stride, width // stride)))
        return specs

    def encoder_cache_specs(self, height: int, width: int, batch: int = 1) -> CacheSpecs:
        """(name, shape) of every encoder cache for frames of height x width pixels, in cache order."""
        return self._specs(self.encoder_cache_names, height, width, batch)

    def decoder_cache_specs(self, latent_h: int, latent_w: int, batch: int = 1) -> CacheSpecs:
        """(name, shape) of every decoder cache for a latent of latent_h x latent_w cells, in cache order."""
        s = self.cfg.spatial_stride
        return self._specs(self.decoder_cache_names, latent_h * s, latent_w * s, batch)

    # ---- streaming chunks (the graphs to export) --------------------------------------------------------

    def encode_first_chunk(self, frame: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """frame [B, 3, 1, H, W] in [-1, 1] -> (normalized latent mean [B, z, 1, H/16, W/16], caches)."""
        return self._encode_chunk(frame, ChunkState(first=True))

    def encode_chunk(self, frames: torch.Tensor, caches: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """frames [B, 3, 4, H, W], caches -> (normalized latent mean [B, z, 1, H/16, W/16], new caches)."""
        return self._encode_chunk(frames, self._state(self.encoder_cache_names, caches))

    def decode_first_chunk(self, latent: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """normalized latent [B, z, 1, h, w] -> (pixels [B, 3, 1, 16h, 16w] in [-1, 1], caches)."""
        return self._decode_chunk(latent, ChunkState(first=True))

    def decode_chunk(self, latent: torch.Tensor, caches: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """normalized latent [B, z, 1, h, w], caches -> (pixels [B, 3, 4, 16h, 16w] in [-1, 1], new caches)."""
        return self._decode_chunk(latent, self._state(self.decoder_cache_names, caches))

    @staticmethod
    def _state(names: tuple[str, ...], caches: tuple[torch.Tensor, ...]) -> ChunkState:
        if len(caches) != len(names):
            raise ValueError(f"expected {len(names)} caches, got {len(caches)}")
        return ChunkState(first=False, inputs=dict(zip(names, caches)))

    def _encode_chunk(self, x: torch.Tensor, state: ChunkState):
        moments = self.conv1(self.encoder(patchify(x), state))
        mu = moments[:, : self.cfg.z_dim]  # the official encode returns the mean only, no sampling
        return (mu - self.latents_mean) * self.latents_inv_std, state.ordered(self.encoder_cache_names)

    def _decode_chunk(self, latent: torch.Tensor, state: ChunkState):
        z = latent / self.latents_inv_std + self.latents_mean
        pixels = unpatchify(self.decoder(self.conv2(z), state)).clamp(-1.0, 1.0)
        return pixels, state.ordered(self.decoder_cache_names)

    # ---- whole clips -------------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalized latent mean [B, z, 1 + (T-1)//4, H/16, W/16].

        Frames past the last whole 4-frame chunk are ignored, as in the official code."""
        s = self.cfg.spatial_stride
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(f"frame size {tuple(video.shape[-2:])} is not a multiple of {s}")
        latent, caches = self.encode_first_chunk(video[:, :, :1])
        latents = [latent]
        for start in range(1, video.shape[2] - 3, 4):
            latent, caches = self.encode_chunk(video[:, :, start:start + 4], caches)
            latents.append(latent)
        return torch.cat(latents, dim=2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """normalized latent [B, z, f, h, w] -> video [B, 3, 1 + 4(f-1), 16h, 16w] clamped to [-1, 1]."""
        pixels, caches = self.decode_first_chunk(latent[:, :, :1])
        frames = [pixels]
        for i in range(1, latent.shape[2]):
            pixels, caches = self.decode_chunk(latent[:, :, i:i + 1], caches)
            frames.append(pixels)
        return torch.cat(frames, dim=2)
