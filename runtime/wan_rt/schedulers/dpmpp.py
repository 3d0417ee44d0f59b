"""DPM-Solver++ 2M (midpoint, data prediction) for flow matching, in numpy.

Matches wan/utils/fm_solvers.py, class FlowDPMSolverMultistepScheduler, as wan/textimage2video.py sets it up:
FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False) and
retrieve_timesteps(scheduler, sigmas=get_sampling_sigmas(steps, shift)), with the defaults
algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint', lower_order_final=True,
euler_at_final=False, final_sigmas_type='zero'.

Grid: linspace(1, 0, steps + 1)[:steps] shifted (starts at sigma 1.0 exactly, unlike UniPC's 0.999), final sigma 0.
set_timesteps(sigmas=...) shifts again with the scheduler's own shift=1, which is an exact no-op.

Order per step i: 1 at i = 0 (warm-up) and at the last step, 2 otherwise. The last step is first order for every
step count, not only below 15 steps: the official `lower_order_final` flag of step() is true at the last step
whenever final_sigmas_type is 'zero' (the `< 15 steps` clause is or-ed with it); with sigma_next = 0 the update
returns x0 exactly. (lower_order_second only matters for solver_order 3.)
Update (x0 = sample - s_0*v, m1 = x0 of the previous step, c2 = alpha_t*(exp(-h) - 1), r0 = h_prev/h):
    order 1: x_t = s_t/s_0*x - c2*x0
    order 2: x_t = s_t/s_0*x - c2*x0 - 0.5*c2*((1/r0)*(x0 - m1))
in the official float32 operation order. sigma_0 = 1 gives lambda_0 = -inf: the first step is then
x_1 = s_1*x + alpha_1*x0 and the second step's D1 is scaled by 1/r0 = 0, as in the official arithmetic.
"""
from __future__ import annotations

import numpy as np

from .base import FlowScheduler, dpm_sigmas, exp32, f32


class DPMPPScheduler(FlowScheduler):
    name = "dpm++"

    def __init__(self, steps: int, shift: float):
        super().__init__(steps, shift, dpm_sigmas(steps, shift))

    def _allocate(self, size: int) -> None:
        super()._allocate(size)
        self._m1 = self._state(size)  # x0 of the previous step
        self._spare = self._state(size)  # x0 of this step is written here

    def _coefs(self, i: int, order: int):
        """Official float32 scalars for the update from sigma index i to i+1."""
        sig_t, sig_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = f32(1.0) - sig_t
        lam_t, lam_s0 = self._lambdas[i + 1], self._lambdas[i]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            h = lam_t - lam_s0  # +inf when sigma_0 = 1
            c1 = sig_t / sig_s0
            c2 = alpha_t * (exp32(-h) - f32(1.0))
            if order == 1:
                return c1, c2, None
            r0 = (lam_s0 - self._lambdas[i - 1]) / h
            inv_r0 = f32(1.0) / r0  # 0 when sigma_{i-1} = 1 (lambda = -inf)
        return c1, c2, (inv_r0, f32(0.5) * c2)

    def _step_flat(self, v, x, out, uncond=None, guide_scale=None) -> None:
        i, n_steps = self.step_index, self.steps
        sig = self.sigmas[i]
        final = i == n_steps - 1
        if not final:
            c1, c2, second = self._coefs(i, 1 if i == 0 else 2)
        sub, mul = np.subtract, np.multiply
        for (vv, xx, O, a, b, _), M1, X0 in zip(self._inputs(v, x, out, uncond, guide_scale), self._m1, self._spare):
            mul(vv, sig, a)  # x0 = sample - sigma*v
            if final:  # sigma_next = 0: x_t = x0
                sub(xx, a, O)
                continue
            sub(xx, a, X0)
            mul(xx, c1, a)
            mul(X0, c2, b)
            if second is None:
                sub(a, b, O)
                continue
            sub(a, b, a)
            sub(X0, M1, b)
            mul(b, second[0], b)  # D1 = (1/r0)*(x0 - m1)
            mul(b, second[1], b)  # (0.5*c2)*D1
            sub(a, b, O)
        self._m1, self._spare = self._spare, self._m1
