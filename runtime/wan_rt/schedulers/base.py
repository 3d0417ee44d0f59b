"""Shared parts of the flow-matching solvers: sigma grids, float32 scalar math, the step loop.

Sigma grids match the official Wan2.2 code (github Wan-Video/Wan2.2, wan/utils/):
- `unipc_sigmas`: fm_solvers_unipc.py, FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)
  .set_timesteps(steps, shift=shift): linspace(sigma_max, 0, steps + 1)[:-1] with sigma_max = float32(0.999)
  read back as a double (`self.sigmas[0].item()` of the float32 training grid), then shifted in float64.
- `dpm_sigmas`: fm_solvers.py, get_sampling_sigmas(steps, shift) = linspace(1, 0, steps + 1)[:steps] shifted;
  FlowDPMSolverMultistepScheduler(shift=1).set_timesteps(sigmas=...) shifts again with shift 1, an exact no-op.
Both then append a final sigma 0 and store float32 sigmas; the model is conditioned on int64(sigma * 1000)
(truncation, computed from the float64 sigmas).

Solver coefficients replay the official float32 scalar arithmetic (torch 0-d float32 tensors: alpha = 1 - sigma,
lambda = log(alpha) - log(sigma), h = lambda_t - lambda_s, ...), with log/exp/expm1 rounded correctly to float32.
torch's float32 log/exp (SLEEF) differ from the correctly rounded value in the last bit for a few percent of the
inputs, so the runtime agrees with the official solvers to float32 rounding, not bit for bit.

Elementwise work runs on flat float32 views in cache-sized chunks, so a whole step reads and writes each
latent-sized buffer once; a 720p latent is 5.2 M elements and the host loop has to stay in a few milliseconds.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import WanError

NUM_TRAIN_TIMESTEPS = 1000
# Elements per chunk (256 KiB of float32): the ~10 chunk-sized operands of a step stay in L2 cache
CHUNK = 65536

_F32 = np.float32


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Wan's timestep shift, float64: shift*s / (1 + (shift-1)*s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unipc_sigmas(steps: int, shift: float) -> np.ndarray:
    """Official UniPC grid (float64, length steps): starts at shift(0.999), not at 1."""
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))  # float32(0.999) as a double
    return shift_sigmas(np.linspace(sigma_max, 0.0, steps + 1).copy()[:-1], shift)


def dpm_sigmas(steps: int, shift: float) -> np.ndarray:
    """Official DPM++ grid (float64, length steps): starts at exactly 1."""
    return shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)


def f32(x) -> np.float32:
    return _F32(x)


def log32(x: np.float32) -> np.float32:
    """float32 log, correctly rounded (log(0) = -inf, no warning)."""
    x = float(x)
    return _F32(math.log(x)) if x > 0.0 else _F32(-np.inf)


def exp32(x: np.float32) -> np.float32:
    return _F32(math.exp(float(x)))


def expm1_32(x: np.float32) -> np.float32:
    return _F32(math.expm1(float(x)))


def lambda32(sigma: np.float32) -> np.float32:
    """log-SNR of a flow sigma as the official code computes it on float32 scalars.

    alpha = 1 - sigma; lambda = log(alpha) - log(sigma); sigma 0 -> +inf, sigma 1 -> -inf.
    """
    sigma = _F32(sigma)
    alpha = _F32(1.0) - sigma
    with np.errstate(invalid="ignore", over="ignore"):
        return log32(alpha) - log32(sigma)


def check_steps(steps, prefix: str = "") -> int:
    """`steps` as an int in 1..NUM_TRAIN_TIMESTEPS, or one WanError line (starting with `prefix`)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise WanError(f"{prefix}steps must be an integer >= 1, got {steps!r}")
    if steps > NUM_TRAIN_TIMESTEPS:  # past the training grid the timesteps repeat: hours of work for nothing
        raise WanError(f"{prefix}steps {steps} is more than the schedule's {NUM_TRAIN_TIMESTEPS} training timesteps; "
                       f"use at most {NUM_TRAIN_TIMESTEPS} (the official default is 50)")
    return int(steps)


def check_args(name: str, steps, shift) -> tuple[int, float]:
    steps = check_steps(steps, f"scheduler {name!r}: ")
    try:
        shift = float(shift)
    except (TypeError, ValueError):
        raise WanError(f"scheduler {name!r}: shift must be a number > 0, got {shift!r}") from None
    if not math.isfinite(shift) or shift <= 0:
        raise WanError(f"scheduler {name!r}: shift must be a finite number > 0, got {shift!r}")
    return int(steps), shift


class FlowScheduler:
    """One denoising trajectory: `timesteps`, `sigmas` and a `step` that advances an internal counter.

    Make a fresh one per request (`wan_rt.schedulers.make_scheduler`). `step(v, x)` takes the flow
    prediction v (the guided model output) at the current sample x and returns the next sample.
    Solver state is copied into buffers owned by the scheduler, so the caller may overwrite its
    arrays (for example re-pin latent frame 0 in place) between steps.
    """

    name = "flow"

    def __init__(self, steps: int, shift: float, sigmas64: np.ndarray):
        self.steps = steps
        self.shift = shift
        # What the model is conditioned on: int64 truncation of sigma * 1000 (float64), as the official code.
        self.timesteps = (sigmas64 * NUM_TRAIN_TIMESTEPS).astype(np.int64)
        self.sigmas = np.concatenate([sigmas64, [0.0]]).astype(np.float32)
        self._lambdas = [lambda32(s) for s in self.sigmas]  # log-SNR per sigma, float32 as the official code
        self.step_index = 0
        self._shape = None
        self._scratch = None

    # ---------------------------------------------------------------- public API
    @property
    def done(self) -> bool:
        return self.step_index >= self.steps

    @property
    def timestep(self) -> int:
        """The timestep the model must be conditioned on for the next `step`."""
        if self.done:
            raise WanError(f"scheduler {self.name!r}: all {self.steps} steps are done")
        return int(self.timesteps[self.step_index])

    def step(self, model_output: np.ndarray, sample: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Advance one step. float32 in, float32 out, any shape; `out` may be `sample` (in place)."""
        v, x, out = self._prepare(model_output, sample, out)
        self._step_flat(v.reshape(-1), x.reshape(-1), out.reshape(-1))
        self.step_index += 1
        return out

    def step_cfg(self, cond: np.ndarray, uncond: np.ndarray, guide_scale: float, sample: np.ndarray, *,
                 out: np.ndarray | None = None) -> np.ndarray:
        """`step(uncond + guide_scale * (cond - uncond), sample)` with the guidance combine fused in.

        Same float32 operations as the official `noise_pred_uncond + g * (noise_pred_cond - noise_pred_uncond)`,
        done chunk by chunk so the guided prediction is never written to memory whole.
        """
        cond = self._as_f32(cond, "cond")
        uncond = self._as_f32(uncond, "uncond")
        if cond.shape != uncond.shape:
            raise WanError(f"scheduler {self.name!r}: cond {cond.shape} and uncond {uncond.shape} differ in shape")
        v, x, out = self._prepare(cond, sample, out)
        self._step_flat(v.reshape(-1), x.reshape(-1), out.reshape(-1),
                        uncond=uncond.reshape(-1), guide_scale=_F32(guide_scale))
        self.step_index += 1
        return out

    # ---------------------------------------------------------------- helpers
    def _as_f32(self, a, what: str) -> np.ndarray:
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            raise WanError(f"scheduler {self.name!r}: {what} must be a float array, got dtype {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def _prepare(self, model_output, sample, out):
        if self.done:
            raise WanError(f"scheduler {self.name!r}: step called more than steps={self.steps} times")
        v = self._as_f32(model_output, "model_output")
        x = self._as_f32(sample, "sample")
        if v.shape != x.shape:
            raise WanError(f"scheduler {self.name!r}: model_output {v.shape} and sample {x.shape} differ in shape")
        if self._shape is None:
            self._shape = x.shape
            self._allocate(x.size)
        elif x.shape != self._shape:
            raise WanError(f"scheduler {self.name!r}: sample shape changed from {self._shape} to {x.shape}")
        if out is None:
            out = np.empty_like(x)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape
              or not out.flags.c_contiguous):
            raise WanError(f"scheduler {self.name!r}: out must be a C-contiguous float32 array of shape {x.shape}")
        return v, x, out

    def _allocate(self, size: int) -> None:
        """Allocate solver state for `size` elements; subclasses add theirs with `_state`."""
        self._slices = [slice(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
        n = min(size, CHUNK)
        scratch = [np.empty(n, np.float32) for _ in range(3)]
        # per-chunk scratch views (the last chunk may be shorter)
        self._scratch = [tuple(buf[: sl.stop - sl.start] for buf in scratch) for sl in self._slices]

    def _state(self, size: int) -> list:
        """A latent-sized float32 state buffer, as its list of per-chunk views."""
        buf = np.empty(size, np.float32)
        return [buf[sl] for sl in self._slices]

    def _inputs(self, v, x, out, uncond, guide_scale):
        """Per-chunk (model_output, sample, out) views; the guidance combine is done into scratch c."""
        for sl, (a, b, c) in zip(self._slices, self._scratch):
            if uncond is None:
                yield v[sl], x[sl], out[sl], a, b, c
            else:  # official: noise_pred_uncond + guide_scale * (noise_pred_cond - noise_pred_uncond)
                u = uncond[sl]
                np.subtract(v[sl], u, c)
                np.multiply(c, guide_scale, c)
                np.add(u, c, c)
                yield c, x[sl], out[sl], a, b, c

    def _step_flat(self, v, x, out, uncond=None, guide_scale=None) -> None:
        raise NotImplementedError
