"""Few-step DMD sampling for distilled checkpoints (FastWan2.2-TI2V-5B, Wan2.2-TI2V-5B-Turbo), in numpy.

A DMD-distilled generator predicts the clean latent in one call; sampling evaluates it at a short, explicit list
of timesteps and re-noises in between (no classifier-free guidance: guide scale 1). Per step i, with the flow
prediction v at the current sample x:

    x0 = x - sigma_i * v                                   (pred_noise_to_pred_video)
    x  = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * eps_i      (FlowMatchEulerDiscreteScheduler.add_noise)

and the last step returns x0 (sigma_n = 0, no noise drawn). Sources: hao-ai-lab/FastVideo
fastvideo/pipelines/stages/denoising.py (DmdDenoisingStage), fastvideo/mlx_runtime/wan22_sample.py; and
quanhaol/Wan2.2-TI2V-5B-Turbo pipeline/wan22_fewstep_inference.py.

Timesteps: a list of integers 1..1000, strictly decreasing (FastWan [1000, 757, 522], Turbo [1000, 750, 500, 250]).
- warp=True (FastVideo's `warp_denoising_step`, how FastWan was trained and how its MLX runtime samples): the value
  s indexes the 1000-entry shifted training grid, sigma = shift*(s/1000) / (1 + (shift-1)*(s/1000)), so with
  shift 5 the model runs at t = 1000*sigma = 1000, 939.67, 845.21 (fractional timesteps).
- warp=False (the Turbo inference pipeline): the model runs at t = s and sigma = s/1000. (Turbo looks sigma up as
  the nearest entry of a 1000-point shift-8 grid, which is s/1000 to within half a grid step, < 0.0005.)

Re-noise noise is reproducible from the request's seed: eps_i for the intermediate steps are drawn in step order,
one standard-normal float32 latent each, from `numpy.random.default_rng(SeedSequence(seed, spawn_key=(1,)))`.
That stream is independent of the initial noise (default_rng(seed)), so `--noise FILE --seed S` re-noises exactly
like `--seed S` alone.
"""
from __future__ import annotations

import itertools
import numbers

import numpy as np

from ..errors import WanError
from .base import NUM_TRAIN_TIMESTEPS, FlowScheduler, shift_sigmas

RENOISE_SPAWN_KEY = (1,)


def renoise_generator(seed: int) -> np.random.Generator:
    """The generator the re-noise draws of a request with this seed come from."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=RENOISE_SPAWN_KEY))


def default_timesteps(steps: int) -> list[int]:
    """Evenly spaced from 1000 down: 3 -> [1000, 667, 333], 4 -> [1000, 750, 500, 250]."""
    return [round(NUM_TRAIN_TIMESTEPS * (1 - i / steps)) for i in range(steps)]


def check_timesteps(timesteps) -> list[int]:
    """A list of integers in 1..1000, strictly decreasing (one WanError line otherwise)."""
    try:
        values = list(timesteps)
    except TypeError:
        raise WanError(f"dmd timesteps must be a list of integers, got {timesteps!r}") from None
    if not values:
        raise WanError("dmd timesteps: give at least one timestep, e.g. 1000,757,522")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= NUM_TRAIN_TIMESTEPS:
            raise WanError(f"dmd timesteps must be integers in 1..{NUM_TRAIN_TIMESTEPS}, got {value!r} in {values}")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise WanError(f"dmd timesteps must be strictly decreasing, got {values}")
    return [int(v) for v in values]


def dmd_sigmas(timesteps: list[int], shift: float, warp: bool) -> np.ndarray:
    """float64 sigma per listed timestep: the shifted training grid entry (warp) or t/1000."""
    raw = np.asarray(timesteps, dtype=np.float64) / NUM_TRAIN_TIMESTEPS
    return shift_sigmas(raw, shift) if warp else raw


class DMDScheduler(FlowScheduler):
    name = "dmd"

    def __init__(self, steps: int, shift: float, timesteps: list[int] | None = None, warp: bool = True,
                 seed: int | None = None):
        timesteps = check_timesteps(default_timesteps(steps) if timesteps is None else timesteps)
        if len(timesteps) != steps:
            raise WanError(f"dmd: {steps} steps but {len(timesteps)} timesteps {timesteps}; give one timestep per step")
        if seed is None:
            raise WanError("dmd: re-noising needs a seed")
        sigmas64 = dmd_sigmas(timesteps, shift, warp)
        super().__init__(steps, shift, sigmas64)
        self.listed = timesteps
        self.warp = warp
        self.seed = int(seed)
        # The model is conditioned on 1000*sigma itself (fractional when warped), not on a truncation.
        self.timesteps = (sigmas64 * NUM_TRAIN_TIMESTEPS).astype(np.float32)
        self._rng = renoise_generator(self.seed)

    def _step_flat(self, v, x, out, uncond=None, guide_scale=None) -> None:
        i = self.step_index
        sig, sig_next = self.sigmas[i], self.sigmas[i + 1]
        final = i == self.steps - 1
        # one whole latent per intermediate step, in step order: the documented stream
        eps = None if final else self._rng.standard_normal(x.size, dtype=np.float32)
        keep = np.float32(1.0) - sig_next
        for sl, (vv, xx, O, a, b, _) in zip(self._slices, self._inputs(v, x, out, uncond, guide_scale)):
            np.multiply(vv, sig, a)
            np.subtract(xx, a, a)  # x0 = x - sigma*v
            if final:
                np.copyto(O, a)
                continue
            np.multiply(a, keep, a)
            np.multiply(eps[sl], sig_next, b)
            np.add(a, b, O)  # (1 - sigma_next)*x0 + sigma_next*eps
