"""UniPC (order 2, bh2, data prediction) for flow matching, in numpy.

Matches wan/utils/fm_solvers_unipc.py, class FlowUniPCMultistepScheduler, as wan/textimage2video.py sets it up:
FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False) followed by
set_timesteps(steps, shift=shift), with the defaults solver_order=2, prediction_type='flow_prediction',
predict_x0=True, solver_type='bh2', lower_order_final=True, disable_corrector=[], final_sigmas_type='zero'.
diffusers' UniPCMultistepScheduler(use_flow_sigmas=True) runs the same updates on a different default grid.

Per step i (sigma grid s ending in 0; x0 = sample - s[i]*v, the data prediction):
- UniC corrector for i >= 1, of the order the previous predictor used (1 at i = 1, else 2):
    x_c = s_t/s_0*last - c2*m0 - c3*(rho0*(m1 - m0)/r1 + rho1*(x0 - m0))     (s_t = s[i], s_0 = s[i-1])
  (order 1: rho1 = 0.5, no m1 term); m0, m1 are the x0 of steps i-1 and i-2, `last` the previous x_c;
- UniP predictor, order 1 at the first and at the last step (warm-up, lower_order_final), else 2:
    x_t = s_t/s_0*x_c - c2*x0 - c3*(0.5*(m0 - x0)/r1)                          (s_t = s[i+1], s_0 = s[i])
  with c2 = alpha_t*expm1(-h), c3 = alpha_t*B_h = c2 (bh2), h = lambda_t - lambda_0, lambda = log(alpha/sigma).
At the last step the next sigma is 0, so the predictor returns x0 exactly; the corrector there only feeds solver
state that is never used again, and is skipped.

The elementwise operations are the official float32 ones in the official order (two intermediate terms are
shared between a predictor and the next corrector, see `_step_flat`), so with equal scalar coefficients the
result is bit-identical; the scalar coefficients come from correctly rounded log/expm1 where torch uses SLEEF
(last-bit differences, see base.py).
The official scheduler finds its first step index by looking up the first timestep and takes the second match
when the int64 timesteps start with a repeated value (long schedules with a large shift, e.g. 100 steps at
shift 12), which makes it skip a step and fail at the end; here the counter always starts at 0.
"""
from __future__ import annotations

import numpy as np

from .base import FlowScheduler, expm1_32, f32, unipc_sigmas


class UniPCScheduler(FlowScheduler):
    name = "unipc"

    def __init__(self, steps: int, shift: float):
        super().__init__(steps, shift, unipc_sigmas(steps, shift))

    def _allocate(self, size: int) -> None:
        super()._allocate(size)
        self._m0 = self._state(size)  # x0 of the previous step
        self._spare = self._state(size)  # x0 of this step is written here
        self._p = self._state(size)  # previous predictor's x_t_ = s_t/s_0*x_c - c2*x0
        self._d1 = self._state(size)  # previous predictor's D1 = (m0 - x0)/r1 (order 2)

    # -------------------------------------------------------------- coefficients
    def _base(self, t: int, s: int):
        """Official float32 scalars for an update from sigma index s to t."""
        sig_t, sig_s = self.sigmas[t], self.sigmas[s]
        alpha_t = f32(1.0) - sig_t
        h = self._lambdas[t] - self._lambdas[s]
        hh = -h
        h_phi_1 = expm1_32(hh)
        b_h = h_phi_1  # bh2: B_h = expm1(hh)
        return h, hh, h_phi_1, b_h, sig_t / sig_s, alpha_t * h_phi_1, alpha_t * b_h

    def _corrector_coefs(self, i: int, order: int):
        """rho0, rho1, c3 of UniC at step i (update from sigma i-1 to i)."""
        h, hh, h_phi_1, b_h, c1, c2, c3 = self._base(i, i - 1)
        if order == 1:
            return None, None, f32(0.5) * c3  # official rhos_c = [0.5]: c3*(0.5*D1_t) == (0.5*c3)*D1_t
        rk = (self._lambdas[i - 2] - self._lambdas[i - 1]) / h
        h_phi_k = h_phi_1 / hh - f32(1.0)
        b0 = h_phi_k * f32(1.0) / b_h
        h_phi_k = h_phi_k / hh - f32(0.5)
        b1 = h_phi_k * f32(2.0) / b_h
        # torch.linalg.solve([[1, 1], [rk, 1]], [b0, b1]) in float32 there; solved exactly here, then rounded.
        rho0 = (float(b0) - float(b1)) / (1.0 - float(rk))
        rho1 = float(b0) - rho0
        return f32(rho0), f32(rho1), c3

    def _predictor_coefs(self, i: int, order: int):
        """c1, c2, r1, 0.5*c3 of UniP at step i (update from sigma i to i+1)."""
        h, hh, h_phi_1, b_h, c1, c2, c3 = self._base(i + 1, i)
        if order == 1:
            return c1, c2, None, None
        rk = (self._lambdas[i - 1] - self._lambdas[i]) / h
        return c1, c2, rk, f32(0.5) * c3  # c3*(0.5*D1) == (0.5*c3)*D1 exactly

    # -------------------------------------------------------------- step
    def _step_flat(self, v, x, out, uncond=None, guide_scale=None) -> None:
        """One step; the corrector reuses two terms of the previous predictor.

        The corrector at step i and the predictor at step i-1 both update from sigma i-1 to sigma i with the same
        x0 (m0) and, for order 2, the same older x0 and r1: their `x_t_ = s_t/s_0*last - c2*m0` and
        `D1 = (m1 - m0)/r1` are the same float32 operations on the same operands. Both are kept from the
        predictor instead of recomputed. The predictor's D1 = (m0 - x0)/r1 is computed as (x0 - m0)/(-r1) from
        the corrector's D1_t = x0 - m0 (equal: negation is exact). 14 elementwise passes over the latent per
        step instead of the official 21 (+3 for the guidance combine of step_cfg).
        """
        i, n_steps = self.step_index, self.steps
        sig = self.sigmas[i]
        final = i == n_steps - 1
        corrector = 0 if (i == 0 or final) else (1 if i == 1 else 2)
        if corrector:
            rho0, rho1, cc3 = self._corrector_coefs(i, corrector)
        if not final:
            pc1, pc2, prk, pc3h = self._predictor_coefs(i, 1 if i == 0 else 2)
            nprk = -prk if prk is not None else None
        sub, mul, div, add = np.subtract, np.multiply, np.divide, np.add
        chunks = zip(self._inputs(v, x, out, uncond, guide_scale), self._m0, self._spare, self._p, self._d1)
        for (vv, xx, O, a, b, c), M0, X0, P, D in chunks:
            mul(vv, sig, a)  # x0 = sample - sigma*v
            if final:  # sigma_next = 0: x_t = x0
                sub(xx, a, O)
                continue
            sub(xx, a, X0)
            if corrector:  # x_c = x_t_ - c3*(rho0*D1 + rho1*(x0 - m0))
                sub(X0, M0, c)  # D1_t = x0 - m0
                if rho0 is not None:
                    mul(D, rho0, b)  # corr_res, from the previous D1
                div(c, nprk, D)  # this predictor's D1 = (m0 - x0)/r1
                if rho0 is None:
                    mul(c, cc3, c)  # (0.5*c3)*D1_t
                else:
                    mul(c, rho1, c)
                    add(b, c, c)
                    mul(c, cc3, c)
                sub(P, c, a)  # x_c
                mul(a, pc1, a)
            else:  # first step: no corrector, last_sample = sample; predictor of order 1
                mul(xx, pc1, a)
            mul(X0, pc2, b)
            sub(a, b, P)  # x_t_ = s_t/s_0*x_c - c2*x0
            if prk is None:
                np.copyto(O, P)
                continue
            mul(D, pc3h, b)
            sub(P, b, O)
        # model_outputs shift: newest x0 first
        self._m0, self._spare = self._spare, self._m0
