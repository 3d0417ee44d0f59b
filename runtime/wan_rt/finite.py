"""The NaN/Inf guard: an engine output with a NaN or an infinity stops the request with one line.

An fp16 (or, rarely, bf16) engine can overflow on real weights where fp32 does not; carrying its NaNs on would
turn the whole video into garbage. `check_finite` runs on every host array an engine hands back (text context,
each DiT step's velocities, each decoded pixel chunk), so it has to be cheap: for float32 one BLAS dot product
of the array with itself (NaN and Inf propagate into it; about 1 ms at the 720p latent shape, docs/benchmarks.md),
and only when that is not finite (also the case for huge finite values) the exact elementwise test.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wan_rt.errors import WanError

__all__ = ["all_finite", "check_finite"]


def all_finite(array: np.ndarray) -> bool:
    """True when every element is finite (integer arrays always are)."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc" or array.size == 0:
        return True
    if array.dtype in (np.float32, np.float64):
        flat = array.reshape(-1)  # a copy only for non-contiguous arrays
        with np.errstate(over="ignore", invalid="ignore"):  # huge finite values overflow the sum: exact test below
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(array).all())


def _precision_key(component: str) -> str:
    """The profile's [precision] entry a component is built with."""
    for group in ("vae_decoder", "dit"):
        if component.startswith(group):
            return group
    return component


def check_finite(arrays: np.ndarray | Sequence[np.ndarray], component: str, where: str):
    """Raise one WanError line when `arrays` (one array or a list) holds NaN or Inf; returns `arrays` unchanged.

    `component` is the engine that produced them, `where` says when ("at denoising step 3 of 50").
    """
    for array in [arrays] if isinstance(arrays, np.ndarray) else arrays:
        if not all_finite(array):
            values = np.asarray(array)
            nans, infs = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            key = _precision_key(component)
            raise WanError(
                f"{component} returned non-finite values {where} ({nans} NaN, {infs} Inf of {values.size}): "
                f"usually a float16 overflow on these weights; rebuild {key} at fp32 or bf16 ([precision] "
                f"{key} = \"bf16\" in the profile, then wan-export build)")
    return arrays
