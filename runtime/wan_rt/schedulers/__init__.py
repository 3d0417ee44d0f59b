"""Flow-matching solvers for the torch-free runtime (numpy only), equal to the official Wan2.2 ones.

    sched = make_scheduler("unipc", steps=50, shift=5.0)
    for t in sched.timesteps:            # int64, what the model is conditioned on
        v = model(x, t)                  # flow prediction (guided)
        x = sched.step(v, x)             # or sched.step(v, x, out=x) in place

- "unipc": wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler (the official default)
- "dpm++": wan/utils/fm_solvers.py FlowDPMSolverMultistepScheduler (official --sample_solver dpm++)
- "euler": flow Euler on the UniPC grid (not an official option; a cheap baseline)
"""
from __future__ import annotations

from ..errors import WanError
from .base import FlowScheduler, check_args
from .dpmpp import DPMPPScheduler
from .euler import EulerScheduler
from .unipc import UniPCScheduler

SCHEDULERS = {"unipc": UniPCScheduler, "dpm++": DPMPPScheduler, "euler": EulerScheduler}

__all__ = ["FlowScheduler", "SCHEDULERS", "make_scheduler", "UniPCScheduler", "DPMPPScheduler", "EulerScheduler"]


def make_scheduler(name: str, steps: int, shift: float) -> FlowScheduler:
    """A fresh solver for one request: name in {"unipc", "dpm++", "euler"}, steps >= 1, shift > 0."""
    cls = SCHEDULERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise WanError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    steps, shift = check_args(name, steps, shift)
    return cls(steps, shift)
