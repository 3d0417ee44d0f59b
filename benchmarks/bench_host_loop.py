"""Host-loop overhead per denoising step at the 720p latent shape, without a model, on one CPU thread.

Per step, what the runtime does around the two DiT forwards (batch 2: cond, uncond):
  guidance combine  v = uncond + g*(cond - uncond)
  scheduler step    x = sched.step(v, x)
  i2v re-pin        x[:, 0] = z0          (latent frame 0 := VAE(image), after every step)
Three paths are timed:
  numpy combine + step   the combine as a numpy expression (temporaries), then sched.step(v, x, out=x)
  fused step_cfg         sched.step_cfg(cond, uncond, g, x, out=x): combine and step in one cache-blocked pass
  fused, unblocked       the same with the cache blocking off (one chunk = the whole latent), for reference

    python benchmarks/bench_host_loop.py [--steps 50] [--schedulers unipc,dpm++,euler]

Prints markdown table rows: ms per step, median over the steps of one trajectory (first step included in the
median set but it allocates the solver state), with the date, the machine and the command.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # single thread; must precede the numpy import

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))
from wan_rt.schedulers import base as sched_base  # noqa: E402
from wan_rt.schedulers import make_scheduler  # noqa: E402

LATENT = (48, 31, 44, 80)  # 1280x704, 121 frames
GUIDE = 5.0
SHIFT = 5.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, numpy {np.__version__}"


def run(name: str, steps: int, fused: bool, model_out: np.ndarray, x_init: np.ndarray, z0: np.ndarray,
        chunk: int):
    sched_base.CHUNK = chunk
    sched = make_scheduler(name, steps, SHIFT)
    x = x_init.copy()
    cond, uncond = model_out[0], model_out[1]
    times = []
    for _ in sched.timesteps:
        t0 = time.perf_counter()
        if fused:
            sched.step_cfg(cond, uncond, GUIDE, x, out=x)
        else:
            v = uncond + np.float32(GUIDE) * (cond - uncond)
            sched.step(v, x, out=x)
        x[:, 0] = z0
        times.append(time.perf_counter() - t0)
    return 1e3 * np.median(times), 1e3 * min(times), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--schedulers", default="unipc,dpm++,euler")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    model_out = rng.standard_normal((2, *LATENT), dtype=np.float32)  # stand-in for the batch-2 DiT output
    x_init = rng.standard_normal(LATENT, dtype=np.float32)
    z0 = rng.standard_normal((LATENT[0], *LATENT[2:]), dtype=np.float32)

    date = datetime.date.today().isoformat()
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"Host loop per step, latent {list(LATENT)} float32, guidance + scheduler step + frame-0 re-pin, 1 thread")
    print(f"command: `{command}`")
    print()
    print("| date | machine | scheduler | path | ms/step (median) | ms/step (min) | steps |")
    print("|---|---|---|---|---|---|---|")
    blocked = sched_base.CHUNK
    paths = [("numpy combine + step", False, blocked), ("fused step_cfg", True, blocked),
             ("fused, unblocked", True, x_init.size)]
    for name in args.schedulers.split(","):
        for path, fused, chunk in paths:
            median, best, _ = run(name, args.steps, fused, model_out, x_init, z0, chunk)
            print(f"| {date} | {machine()} | {name} | {path} | {median:.2f} | {best:.2f} | {args.steps} |")
    sched_base.CHUNK = blocked


if __name__ == "__main__":
    main()
