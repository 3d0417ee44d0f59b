"""Building blocks of the Wan2.2 VAE (official wan/modules/vae2_2.py), one class per official block kind.

Parameter names and shapes are the official ones. What differs is how the causal frame cache is carried:
the official code threads a `feat_cache` list with an index cursor through every block and stores None,
1 or 2 frames, or the string "Rep". Here every block takes a `ChunkState`, made fresh for each chunk call,
that holds the caches by name; every cached conv keeps exactly CACHE_T input frames, zeros standing in for
frames that do not exist yet. `ChunkState.extend` is the only place where caches are read and written.

Which chunk is being run (the first one, or a later one) is a Python flag fixed per call, never a test on
tensor values, so each of the two cases traces to one static graph.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_T = 2  # input frames a cached causal conv keeps from the previous chunk (its time kernel is 3)
PATCH = 2  # patchify factor: 3 pixel channels become 3 * 2 * 2 = 12
PATCH_CHANNELS = 3 * PATCH * PATCH


class ChunkState:
    """The caches of one chunk call: read from `inputs` by name, written to `outputs` by name.

    `first`: the first chunk of a stream. It has no inputs; the official code pads it with zeros (or keeps
    no cache at all), which is the same as reading an all-zero cache.
    """

    def __init__(self, first: bool, inputs: dict[str, torch.Tensor] | None = None):
        self.first = first
        self.inputs = inputs or {}
        self.outputs: dict[str, torch.Tensor] = {}

    def extend(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T, H, W] with the cached CACHE_T frames in front; keeps the last CACHE_T frames of that."""
        if self.first:
            full = F.pad(x, (0, 0, 0, 0, CACHE_T, 0))
        else:
            full = torch.cat([self.inputs[name], x], dim=2)
        self._store(name, full[:, :, -CACHE_T:])
        return full

    def store_zeros(self, name: str, like: torch.Tensor) -> None:
        """An all-zero cache shaped after `like` (official "Rep": the conv did not run, it has no history)."""
        b, c, _, h, w = like.shape
        self._store(name, like.new_zeros(b, c, CACHE_T, h, w))

    def _store(self, name: str, cache: torch.Tensor) -> None:
        if name in self.outputs:
            raise RuntimeError(f"cache {name} written twice in one chunk")
        self.outputs[name] = cache

    def ordered(self, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        missing = [n for n in names if n not in self.outputs]
        if missing or len(names) != len(self.outputs):
            raise RuntimeError(f"caches not written: {missing}; unexpected: {set(self.outputs) - set(names)}")
        return tuple(self.outputs[n] for n in names)


class Streaming:
    """Marker: a block whose forward is `forward(x, state: ChunkState)`."""


def run(layers, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
    """Run layers in order, handing the chunk state to those that stream."""
    for layer in layers:
        x = layer(x, state) if isinstance(layer, Streaming) else layer(x)
    return x


def per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D layer to every frame: [B, C, T, H, W] -> [B*T, C, H, W] -> back."""
    b, c, t, h, w = x.shape
    y = layer(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).permute(0, 2, 1, 3, 4)


class CausalConv3d(nn.Conv3d, Streaming):
    """Conv3d padded with zeros only in front in time; spatial padding stays inside the conv.

    `cache_name` (set by WanVAE from the module path) marks the convs that stream with a frame cache;
    `cache_stride` is the pixel size of one cell of this conv's input grid, for cache shapes.
    """

    cache_name: str | None = None
    cache_stride: int = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pad_t, pad_h, pad_w = self.padding
        self.time_pad = 2 * pad_t
        self.padding = (0, pad_h, pad_w)

    def forward(self, x: torch.Tensor, state: ChunkState | None = None) -> torch.Tensor:
        if state is not None:
            if self.cache_name is None:
                raise RuntimeError("streaming through a conv without a cache name: build it inside WanVAE")
            x = state.extend(self.cache_name, x)  # time_pad == CACHE_T for every cached conv
        elif self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """Official RMS_norm: L2-normalize over channels, times sqrt(C) and gamma (no eps inside a root)."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 sum of squares: over 1024 channels it overflows half precision.
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """Official Upsample(scale 2, 'nearest-exact'): for an exact 2x it picks the same pixels as 'nearest'
    (floor(i/2)), which exports to a plain ONNX Resize (asymmetric, floor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Resample(nn.Module, Streaming):
    """Official Resample: per-frame 2x spatial up/down sampling, with a causal time conv in the 3d modes.

    upsample3d doubles the frame count (time_conv makes 2 frames per frame) except on the first chunk, where
    the official code skips the conv and stores "Rep" (here: a zero cache; the conv zero-pads anyway).
    downsample3d halves it with a stride-2 time conv over (last frame of the previous chunk, this chunk),
    again skipped on the first chunk, whose one frame passes through.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, state)
        x = per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, state)
        return x

    def _double_frames(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        if state.first:
            state.store_zeros(self.time_conv.cache_name, x)
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, state)  # [B, 2C, T]: channels [0, C) are the earlier frame of each pair
        return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        full = state.extend(self.time_conv.cache_name, x)
        if state.first:
            return x
        return self.time_conv(full[:, :, CACHE_T - 1:])  # only the last cached frame is context


class ResidualBlock(nn.Module, Streaming):
    """Official ResidualBlock: (RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 shortcut if widths differ."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Identity(),  # official Dropout(0.0); keeps the next conv at index 6
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        shortcut = self.shortcut(x)
        return run(self.residual, x, state) + shortcut


class AttentionBlock(nn.Module):
    """Official AttentionBlock: single-head self-attention over the pixels of each frame (not temporal)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        q, k, v = self.to_qkv(y).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, HW, C]
        y = self.proj(y.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x


class AvgDown3D(nn.Module):
    """Official AvgDown3D, the parameter-free shortcut of a down stage: fold time/space into channels, then
    average groups of channels. The first chunk (1 frame) is zero-padded in front to `factor_t` frames."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels = out_channels
        self.factor_t = factor_t
        self.factor_s = factor_s
        factor = factor_t * factor_s * factor_s
        if in_channels * factor % out_channels:
            raise ValueError(f"AvgDown3D: {in_channels} * {factor} channels do not split into {out_channels}")
        self.group_size = in_channels * factor // out_channels

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        if first_chunk and ft > 1:
            x = F.pad(x, (0, 0, 0, 0, ft - 1, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Official DupUp3D, the parameter-free shortcut of an up stage: repeat channels, unfold them into
    time/space. The first chunk keeps only the last of its `factor_t` frames."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels = out_channels
        self.factor_t = factor_t
        self.factor_s = factor_s
        factor = factor_t * factor_s * factor_s
        if out_channels * factor % in_channels:
            raise ValueError(f"DupUp3D: {out_channels} * {factor} channels are no multiple of {in_channels}")
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, c, t, h, w = x.shape
        x = x.unsqueeze(2).expand(b, c, self.repeats, t, h, w)  # = repeat_interleave(repeats, dim=1)
        x = x.reshape(b, self.out_channels, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownResidualBlock(nn.Module, Streaming):
    """Official Down_ResidualBlock: residual blocks, then a Resample if the stage downsamples, plus AvgDown3D."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal_down: bool, spatial_down: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal_down else 1, 2 if spatial_down else 1)
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks)]
        if spatial_down:
            blocks.append(Resample(out_dim, "downsample3d" if temporal_down else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        return run(self.downsamples, x, state) + self.avg_shortcut(x, state.first)


class UpResidualBlock(nn.Module, Streaming):
    """Official Up_ResidualBlock: residual blocks, then a Resample if the stage upsamples, plus DupUp3D."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, temporal_up: bool, spatial_up: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal_up else 1, 2) if spatial_up else None
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_blocks)]
        if spatial_up:
            blocks.append(Resample(out_dim, "upsample3d" if temporal_up else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        main = run(self.upsamples, x, state)
        if self.avg_shortcut is None:
            return main
        return main + self.avg_shortcut(x, state.first)


def _set_cache_stride(module: nn.Module, stride: int) -> None:
    for m in module.modules():
        if isinstance(m, CausalConv3d):
            m.cache_stride = stride


class Encoder3d(nn.Module, Streaming):
    """Official Encoder3d: patchified frames [B, 12, T, H/2, W/2] -> [B, z_dim, T', H/16, W/16]."""

    def __init__(self, dim: int, z_dim: int, dim_mult, num_res_blocks: int, temporal_downsample):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(PATCH_CHANNELS, dims[0], 3, padding=1)
        stages = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            t_down = temporal_downsample[i] if i < len(temporal_downsample) else False
            stages.append(DownResidualBlock(in_dim, out_dim, num_res_blocks, t_down, i != len(dim_mult) - 1))
        self.downsamples = nn.Sequential(*stages)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], z_dim, 3, padding=1))

        # Pixel size of each conv's grid: stage i works at 2 * 2**i; its time conv runs after the 2x down.
        _set_cache_stride(self, PATCH * 2 ** (len(dim_mult) - 1))
        self.conv1.cache_stride = PATCH
        for i, stage in enumerate(stages):
            _set_cache_stride(stage, PATCH * 2**i)
            for m in stage.modules():
                if isinstance(m, Resample) and hasattr(m, "time_conv"):
                    m.time_conv.cache_stride = PATCH * 2 ** (i + 1)

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        return run((self.conv1, *self.downsamples, *self.middle, *self.head), x, state)


class Decoder3d(nn.Module, Streaming):
    """Official Decoder3d: latent [B, z_dim, 1, h, w] per chunk -> patchified pixels [B, 12, 1 or 4, 8h, 8w]."""

    def __init__(self, dim: int, z_dim: int, dim_mult, num_res_blocks: int, temporal_upsample):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        stages = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            t_up = temporal_upsample[i] if i < len(temporal_upsample) else False
            stages.append(UpResidualBlock(in_dim, out_dim, num_res_blocks + 1, t_up, i != len(dim_mult) - 1))
        self.upsamples = nn.Sequential(*stages)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], PATCH_CHANNELS, 3, padding=1))

        # Pixel size of each conv's grid: stage i works at latent/2**i (its time conv runs before the 2x up).
        latent_stride = PATCH * 2 ** (len(dim_mult) - 1)
        _set_cache_stride(self, latent_stride)
        for i, stage in enumerate(stages):
            _set_cache_stride(stage, latent_stride // 2**i)
        _set_cache_stride(self.head, PATCH)

    def forward(self, x: torch.Tensor, state: ChunkState) -> torch.Tensor:
        return run((self.conv1, *self.middle, *self.upsamples, *self.head), x, state)
