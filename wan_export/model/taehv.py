"""Export-friendly reference of TAEHV's tiny decoder for the Wan2.2 5B latent space (`taew2_2`, `taew2_2_super`).

Architecture facts from madebyollin/taehv (MIT; `taehv.py`, read, not copied): the decoder is one
`nn.Sequential` of 2D convs over frames, whose temporal context comes from `MemBlock`s (the block sees its own input
and the input it saw one frame earlier, zeros before the first frame) and `TGrow`s (a 1x1 conv that turns one frame
into `stride` frames). `taew2_2`: latent channels 48, widths 256/128/64/64, nearest 2x upsampling per stage, a
pixel shuffle of 2 at the end (16x spatially in all), time strides 1, 2, 2 (4x temporally). The `super` variant
uses ConvNeXt-style memory blocks, widths 512/256/128/64 and pixel shuffles instead of nearest upsampling.
Parameter names equal upstream's (`decoder.<index>...`), so its files load as they are.

Streaming, as an engine graph: one latent frame per call. The memory of every MemBlock is an explicit tensor
(its input at the last sub-frame of the previous call), so `decode_chunk(latent, caches)` returns 4 frames and the
caches for the next call; zeros for the first call are exactly upstream's empty memory.

Frame convention: upstream decodes F latent frames into 4F frames and drops the first 3 (`frames_to_trim`); the
Wan VAE decodes the first latent frame into 1 frame and each later one into 4. Both give the official 4(F-1)+1
frames in the same time positions: the 3 dropped frames are the first latent's 3 leading sub-frames. Values:
upstream returns [0, 1] (clamped); this module returns `2x - 1`, the full decoder's [-1, 1].
The latent goes in as the DiT makes it (TAEHV uses no latent mean/std), the same tensor the full decoder takes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("base", "super")
WIDTHS = {"base": (256, 128, 64, 64), "super": (512, 256, 128, 64)}
TIME_STRIDES = (1, 2, 2)  # the Wan VAE's 4x: upstream's decoder_time_upscale (False, True, True)
TRIM = 3  # leading frames of the first latent frame that upstream drops (t_upscale - 1)


@dataclass(frozen=True)
class TinyVAEConfig:
    variant: str = "base"
    latent_channels: int = 48
    widths: tuple[int, int, int, int] = WIDTHS["base"]
    patch_size: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TinyVAEConfig":
        return cls(variant=data["variant"], latent_channels=int(data["latent_channels"]),
                   widths=tuple(int(w) for w in data["widths"]), patch_size=int(data["patch_size"]))

    @property
    def frames_per_latent(self) -> int:
        out = 1
        for stride in TIME_STRIDES:
            out *= stride
        return out


def _conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(convs(cat(x, past)) + x): the base decoder's temporal block (input and output widths are equal)."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3(2 * n, n), nn.ReLU(), _conv3(n, n), nn.ReLU(), _conv3(n, n))

    def forward(self, x, past):
        return torch.relu(self.conv(torch.cat([x, past], 1)) + x)


class SuperMemBlock(nn.Module):
    """convs(cat(x, past)) + x with a 7x7 depthwise conv and an inverted bottleneck (the super decoder)."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2 * n, 2 * n, 7, padding=3, groups=2 * n, bias=False),
                                  nn.Conv2d(2 * n, 4 * n, 1), nn.ReLU(), nn.Conv2d(4 * n, n, 1, bias=False))

    def forward(self, x, past):
        return self.conv(torch.cat([x, past], 1)) + x


class TGrow(nn.Module):
    """One frame -> `stride` frames (a 1x1 conv to stride*C channels, split in time order)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x):
        t, c, h, w = x.shape
        return self.conv(x).reshape(t * self.stride, c, h, w)


def _base_layers(cfg: TinyVAEConfig) -> list[nn.Module]:
    n = cfg.widths
    layers: list[nn.Module] = [SoftClamp(), _conv3(cfg.latent_channels, n[0]), nn.ReLU()]
    for stage in range(3):
        layers += [MemBlock(n[stage]) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TGrow(n[stage], TIME_STRIDES[stage]),
                   _conv3(n[stage], n[stage + 1], bias=False)]
    return layers + [nn.ReLU(), _conv3(n[3], 3 * cfg.patch_size ** 2)]


def _super_layers(cfg: TinyVAEConfig) -> list[nn.Module]:
    n = cfg.widths
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, n[0], 1, bias=False)]
    for stage in range(3):
        layers += [SuperMemBlock(n[stage]) for _ in range(3)]
        layers += [_conv3(n[stage], n[stage + 1] * 4), nn.ReLU(), nn.PixelShuffle(2),
                   TGrow(n[stage + 1], TIME_STRIDES[stage])]
    return layers + [_conv3(n[3], 3 * cfg.patch_size ** 2)]


class TinyDecoder(nn.Module):
    """TAEHV decoder, streaming one latent frame per call with its memory as explicit caches (batch 1)."""

    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ValueError(f"unknown TAEHV variant {cfg.variant!r}; choose one of {VARIANTS}")
        self.cfg = cfg
        self.decoder = nn.Sequential(*(_base_layers(cfg) if cfg.variant == "base" else _super_layers(cfg)))
        self.cache_names = tuple(f"decoder.{i}" for i, m in enumerate(self.decoder)
                                 if isinstance(m, (MemBlock, SuperMemBlock)))

    def cache_layout(self) -> tuple[tuple[str, int, int], ...]:
        """(name, channels, spatial factor relative to the latent) of every cache, in cache order."""
        layout, factor = [], 1
        for i, m in enumerate(self.decoder):
            if isinstance(m, (MemBlock, SuperMemBlock)):
                layout.append((f"decoder.{i}", m.conv[0].in_channels // 2, factor))
            elif isinstance(m, (nn.Upsample, nn.PixelShuffle)):
                factor *= 2
        return tuple(layout)

    def zero_caches(self, latent_h: int, latent_w: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(1, c, latent_h * k, latent_w * k) for _, c, k in self.cache_layout())

    def decode_chunk(self, latent: torch.Tensor, caches: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """latent [1, C, 1, h, w], caches -> (pixels [1, 3, 4, 16h, 16w] in [-1, 1], new caches).

        The sub-frames a latent frame grows into run as one batch; each MemBlock's `past` is the previous
        sub-frame (the cache for the first), which is what upstream's frame-by-frame order computes."""
        if len(caches) != len(self.cache_names):
            raise ValueError(f"expected {len(self.cache_names)} caches, got {len(caches)}")
        memory = dict(zip(self.cache_names, caches))
        new_caches = []
        x, frames = latent[:, :, 0], 1  # [frames, C, H, W]; `frames` is kept static for export
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, (MemBlock, SuperMemBlock)):
                cache = memory[f"decoder.{i}"]
                past = cache if frames == 1 else torch.cat([cache, x[: frames - 1]], 0)
                new_caches.append(x[frames - 1:])
                x = layer(x, past)
            else:
                x = layer(x)
                if isinstance(layer, TGrow):
                    frames *= layer.stride
        pixels = F.pixel_shuffle(x, self.cfg.patch_size).clamp(0.0, 1.0) * 2.0 - 1.0
        return pixels.permute(1, 0, 2, 3).unsqueeze(0), tuple(new_caches)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [1, C, F, h, w] -> video [1, 3, 4(F-1)+1, 16h, 16w] in [-1, 1] (the full decoder's contract)."""
        caches = self.zero_caches(latent.shape[-2], latent.shape[-1])
        chunks = []
        for index in range(latent.shape[2]):
            pixels, caches = self.decode_chunk(latent[:, :, index:index + 1], caches)
            chunks.append(pixels[:, :, TRIM:] if index == 0 else pixels)
        return torch.cat(chunks, dim=2)
