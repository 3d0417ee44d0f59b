"""Cost of the NaN/Inf guard (`wan_rt.finite.check_finite`) at the 720p latent shape, one CPU thread.

The guard runs on every engine output the host gets back; per denoising step that is the cond and uncond
velocities, each [48, 31, 44, 80] float32 at 720p (5.2 M elements). Timed:
  check_finite            what wan-rt runs: a BLAS dot product of the array with itself, exact test only if not finite
  np.isfinite(a).all()    the plain elementwise test, for reference
  check_finite, huge      a finite array whose dot product overflows (values ~1e20): the slow path, worst case

    python benchmarks/bench_finite_guard.py [--repeats 200]

Prints markdown table rows: ms per call, median and min over the repeats, with the date, the machine and the command.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # single thread, like the host loop benchmark; must precede the numpy import

import argparse  # noqa: E402
import datetime  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from bench_host_loop import LATENT, machine  # noqa: E402 (also puts runtime/ on the path where needed)

from wan_rt.finite import check_finite  # noqa: E402


def timed(call, repeats: int) -> tuple[float, float]:
    call()  # warm-up: page faults, BLAS initialisation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times)), 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    velocity = np.random.default_rng(0).standard_normal(LATENT, dtype=np.float32)
    huge = np.full(LATENT, 1e20, np.float32)
    cases = [("check_finite", lambda: check_finite(velocity, "dit", "")),
             ("np.isfinite(a).all()", lambda: np.isfinite(velocity).all()),
             ("check_finite, huge values (slow path)", lambda: check_finite(huge, "dit", ""))]
    date = datetime.date.today().isoformat()
    print(f"NaN/Inf guard per call, {list(LATENT)} float32, 1 thread")
    print(f"command: `OMP_NUM_THREADS=1 python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    print()
    print("| date | machine | check | ms/call (median) | ms/call (min) | repeats |")
    print("|---|---|---|---|---|---|")
    for name, call in cases:
        median, best = timed(call, args.repeats)
        print(f"| {date} | {machine()} | {name} | {median:.2f} | {best:.2f} | {args.repeats} |")


if __name__ == "__main__":
    main()
