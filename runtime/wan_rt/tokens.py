"""Host-side token math shared by the runtime and the exporter: patchify, unpatchify, RoPE tables.

The DiT engines work on patchified tokens; these functions turn the official latent layout
[C, F, H, W] (no batch axis) into tokens and back, and build the rotary tables the engines take as
inputs (computed in float64 like the official `rope_params`/`rope_apply`, handed over as float32).
Token order is frame-major with width fastest, as the official Conv3d flatten.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

PATCH = (1, 2, 2)  # (frames, height, width) of one DiT patch
ROPE_THETA = 10000.0


def token_grid(latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(frames, rows, cols) of the token grid for a latent [C, F, H, W]."""
    _, frames, height, width = latent_shape
    return frames // PATCH[0], height // PATCH[1], width // PATCH[2]


def num_tokens(latent_shape: tuple[int, ...]) -> int:
    f, h, w = token_grid(latent_shape)
    return f * h * w


def patchify(latent: np.ndarray) -> np.ndarray:
    """[C, F, H, W] -> [F*H/2*W/2, C*1*2*2], channels ordered (c, pt, ph, pw) like the patch-embedding weight."""
    c, frames, height, width = latent.shape
    pt, ph, pw = PATCH
    x = latent.reshape(c, frames // pt, pt, height // ph, ph, width // pw, pw)
    x = x.transpose(1, 3, 5, 0, 2, 4, 6)  # f, h, w, c, pt, ph, pw
    return np.ascontiguousarray(x.reshape(-1, c * pt * ph * pw))


def unpatchify(tokens: np.ndarray, grid: tuple[int, int, int], channels: int) -> np.ndarray:
    """[L, pt*ph*pw*C] head output (channels ordered (pt, ph, pw, c)) -> [C, F, H, W]."""
    f, h, w = grid
    pt, ph, pw = PATCH
    x = tokens[: f * h * w].reshape(f, h, w, pt, ph, pw, channels)
    x = x.transpose(6, 0, 3, 1, 4, 2, 5)  # c, f, pt, h, ph, w, pw
    return np.ascontiguousarray(x.reshape(channels, f * pt, h * ph, w * pw))


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs per (frame, row, col) axis: (22, 21, 21) for head_dim 128, as official `rope_apply`."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


@lru_cache(maxsize=16)
def rope_tables(grid: tuple[int, int, int], head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, float32 [L, head_dim/2], for interleaved-pair rotation of every token of `grid`.

    Each axis has its own frequency denominator (2 * its pair count), as `rope_params(1024, 2 * pairs)`.
    Cached per shape: the host loop asks for the same tables every step.
    """
    angles_per_axis = []
    for positions, pairs in zip(grid, rope_axis_pairs(head_dim)):
        axis_dim = 2 * pairs
        inv_freq = 1.0 / np.power(ROPE_THETA, np.arange(0, axis_dim, 2, dtype=np.float64) / axis_dim)
        angles_per_axis.append(np.outer(np.arange(positions, dtype=np.float64), inv_freq))
    f, h, w = grid
    frame, row, col = angles_per_axis
    angles = np.concatenate(
        [
            np.broadcast_to(frame[:, None, None, :], (f, h, w, frame.shape[1])),
            np.broadcast_to(row[None, :, None, :], (f, h, w, row.shape[1])),
            np.broadcast_to(col[None, None, :, :], (f, h, w, col.shape[1])),
        ],
        axis=-1,
    ).reshape(f * h * w, -1)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def frame_timesteps(grid: tuple[int, int, int], timestep: float, first_frame_timestep: float | None = None) -> np.ndarray:
    """Per-latent-frame timesteps [F] float32: `timestep` everywhere, `first_frame_timestep` on latent frame 0.

    Image-to-video pins latent frame 0 to the encoded image and conditions its tokens on t=0.
    """
    values = np.full(grid[0], timestep, dtype=np.float32)
    if first_frame_timestep is not None:
        values[0] = first_frame_timestep
    return values


def token_timesteps(grid: tuple[int, int, int], timestep: float, first_frame_timestep: float | None = None) -> np.ndarray:
    """Per-token timesteps [L] float32 (the official form): each frame's value on its h * w tokens."""
    return np.repeat(frame_timesteps(grid, timestep, first_frame_timestep), grid[1] * grid[2])


def token_frames(grid: tuple[int, int, int], start: int, count: int) -> np.ndarray:
    """The latent frame of tokens [start, start + count) of the (frame-major) sequence, int64 [count]. Positions
    past the last token (sequence-parallel padding) take the last frame."""
    return np.minimum(np.arange(start, start + count) // (grid[1] * grid[2]), grid[0] - 1).astype(np.int64)


def timesteps_for(grid: tuple[int, int, int], per: str, timestep: float,
                  first_frame_timestep: float | None = None) -> np.ndarray:
    """Timesteps at the granularity a DiT graph declares for its `timesteps` input: "frames" or "tokens"."""
    make = {"frames": frame_timesteps, "tokens": token_timesteps}.get(per)
    if make is None:
        raise ValueError(f"timesteps per {per!r}: expected 'frames' or 'tokens'")
    return make(grid, timestep, first_frame_timestep)
