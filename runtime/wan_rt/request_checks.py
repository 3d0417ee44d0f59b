"""The numbers of a generation request checked before any work: finite and in range, one WanError line each.

Called once by `Pipeline.plan`, so `wan-rt generate`, the Python API and the Triton models refuse the same values
with the same line. Shapes and sizes are checked against the engines there too (`ShapeLimits`); the solver name
by `make_scheduler`.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from wan_rt.errors import WanError
from wan_rt.finite import all_finite
from wan_rt.schedulers.base import check_steps

__all__ = ["check_number", "check_request"]


def check_number(name: str, value, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None) -> float:
    """`value` as a float: a real number, finite, >= minimum / > above / <= maximum where given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WanError(f"{name} must be a number, got {value!r}")
    number = float(value)
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else ""]
    wanted = " and ".join(bound for bound in bounds if bound)
    if (not math.isfinite(number) or (minimum is not None and number < minimum)
            or (above is not None and number <= above) or (maximum is not None and number > maximum)):
        raise WanError(f"{name} must be a finite number{' ' + wanted if wanted else ''}, got {value!r}")
    return number


def check_noise(noise) -> None:
    values = np.asarray(noise)
    if values.dtype.kind in "fc" and not all_finite(values):
        raise WanError(f"noise holds {int(np.isnan(values).sum())} NaN and {int(np.isinf(values).sum())} infinite "
                       f"values; give finite float32 noise (e.g. standard normal, or --seed instead of --noise)")


def check_request(request) -> None:
    """Refuse a `GenerationRequest` whose numbers no engine can use (None: the manifest's default, always good)."""
    if request.guide_scale is not None:
        check_number("guide scale", request.guide_scale, minimum=0.0)  # 1: no guidance; 0: unconditional
    if request.shift is not None:
        check_number("shift", request.shift, above=0.0)
    if request.fps is not None:
        check_number("fps", request.fps, above=0.0)
    if request.steps is not None:
        check_steps(request.steps)
    if request.noise is not None:
        check_noise(request.noise)
