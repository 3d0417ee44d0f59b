"""Flow-matching solvers for the torch-free runtime (numpy only), equal to the official Wan2.2 ones.

    sched = make_scheduler("unipc", steps=50, shift=5.0)
    for t in sched.timesteps:            # int64, what the model is conditioned on
        v = model(x, t)                  # flow prediction (guided)
        x = sched.step(v, x)             # or sched.step(v, x, out=x) in place

- "unipc": wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler (the official default)
- "dpm++": wan/utils/fm_solvers.py FlowDPMSolverMultistepScheduler (official --sample_solver dpm++)
- "euler": flow Euler on the UniPC grid (not an official option; a cheap baseline)
- "dmd": few-step sampling of DMD-distilled checkpoints (FastWan, Turbo): explicit timesteps, x0 and re-noise
  (make_scheduler("dmd", 3, 5.0, timesteps=[1000, 757, 522], warp=True, seed=42))
"""
from __future__ import annotations

from ..errors import WanError
from .base import FlowScheduler, check_args
from .dmd import DMDScheduler
from .dpmpp import DPMPPScheduler
from .euler import EulerScheduler
from .unipc import UniPCScheduler

SCHEDULERS = {"unipc": UniPCScheduler, "dpm++": DPMPPScheduler, "euler": EulerScheduler, "dmd": DMDScheduler}

__all__ = ["SCHEDULERS", "DMDScheduler", "DPMPPScheduler", "EulerScheduler", "FlowScheduler", "UniPCScheduler",
           "make_scheduler"]


def make_scheduler(name: str, steps: int, shift: float, *, timesteps: list[int] | None = None, warp: bool = True,
                   seed: int | None = None) -> FlowScheduler:
    """A fresh solver for one request: name in SCHEDULERS, steps >= 1, shift > 0.

    `timesteps`, `warp` and `seed` (re-noise draws) are the "dmd" solver's; the others refuse `timesteps`."""
    cls = SCHEDULERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise WanError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    steps, shift = check_args(name, steps, shift)
    if cls is DMDScheduler:
        return cls(steps, shift, timesteps=timesteps, warp=warp, seed=seed)
    if timesteps is not None:
        raise WanError(f"scheduler {name!r} takes no timestep list (only 'dmd' does); drop --timesteps or use "
                       f"--solver dmd")
    return cls(steps, shift)
