"""Flow-matching Euler, in numpy: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v.

Not one of the official Wan2.2 solvers (wan/textimage2video.py offers 'unipc' and 'dpm++'); it is the cheapest
baseline and the update of diffusers' FlowMatchEulerDiscreteScheduler.step (float32:
dt = sigma_next - sigma, prev = sample + dt * model_output). Grid choice: the official UniPC grid
(wan/utils/fm_solvers_unipc.py, FlowUniPCMultistepScheduler.set_timesteps(steps, shift=shift)), so the model sees
the same timesteps as with the default solver and the two can be swapped per request; the grid ends at sigma 0, so
the last step lands on x0 = x - sigma*v.
"""
from __future__ import annotations

import numpy as np

from .base import FlowScheduler, unipc_sigmas


class EulerScheduler(FlowScheduler):
    name = "euler"

    def __init__(self, steps: int, shift: float):
        super().__init__(steps, shift, unipc_sigmas(steps, shift))

    def _step_flat(self, v, x, out, uncond=None, guide_scale=None) -> None:
        i = self.step_index
        dt = self.sigmas[i + 1] - self.sigmas[i]  # float32, as torch on float32 sigmas
        for vv, xx, O, a, _, _ in self._inputs(v, x, out, uncond, guide_scale):
            np.multiply(vv, dt, a)
            np.add(xx, a, O)
