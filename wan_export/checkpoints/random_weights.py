"""Seeded random weights for every parameter of a component (tests, the `tiny` default, full-size dry runs).

Every parameter is random, including the ones the official init zeroes (the head), so a comparison can
never pass on zeros. Scales keep activations bounded through a few layers: weights ~ N(0, 1/fan_in),
biases small, norm gains near 1, modulation tables ~ N(0, 1/dim) as the official init.
Each tensor's values depend only on (seed, name), not on the order parameters are visited.
"""
from __future__ import annotations

import zlib

import torch


def _scale_and_offset(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name and leaf in ("weight", "gamma") or leaf == "gamma":
        return 0.1, 1.0
    if "modulation" in name:
        return shape[-1] ** -0.5, 0.0
    if leaf == "bias" or len(shape) == 1:
        return 0.02, 0.0
    if "token_embedding" in name or "pos_embedding" in name:
        return 0.5, 0.0
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return fan_in ** -0.5, 0.0


def random_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    scale, offset = _scale_and_offset(name, shape)
    return (torch.randn(shape, generator=generator) * scale + offset).to(dtype)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32) -> dict:
    return {name: random_tensor(name, shape, seed, dtype) for name, shape in shapes.items()}
