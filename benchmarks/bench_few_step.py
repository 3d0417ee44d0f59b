"""DiT calls and denoise time: the base 50-step UniPC with guidance vs the 3- and 4-step distilled (dmd) sampling.

Same engines folder, same request (prompt, size, frames, seed); only the sampling differs:
  base     unipc, 50 steps, guide scale 5  (two predictions per step: one batch-2 call, or two batch-1 calls)
  fastwan  dmd [1000, 757, 522] warped, guide scale 1 (one batch-1 call per step, no negative prompt)
  turbo    dmd [1000, 750, 500, 250] not warped, guide scale 1
The DiT calls are counted on the real runner; the ratio of denoise times is what a GPU user sees too, since the
DiT dominates a step there as here.

    wan-export build --profile tiny --ckpt-dir CKPT --out /tmp/tiny-engines      (or any engines folder)
    python benchmarks/bench_few_step.py --engines /tmp/tiny-engines [--size 160x96 --frames 9 --repeats 3]

Prints markdown table rows with the date, the machine and the command.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("wan_rt") is None:  # a checkout without pip install (appended: runtime/ has `triton`)
    sys.path.append(str(ROOT / "runtime"))
from wan_rt.pipeline import GenerationRequest, Pipeline  # noqa: E402
from wan_rt.shapes import parse_size  # noqa: E402

SAMPLINGS = {
    "base unipc 50 steps, guide 5": {"solver": "unipc", "steps": 50, "guide_scale": 5.0},
    "fastwan dmd 3 steps, guide 1": {"solver": "dmd", "timesteps": [1000, 757, 522], "warp_timesteps": True,
                                     "guide_scale": 1.0},
    "turbo dmd 4 steps, guide 1": {"solver": "dmd", "timesteps": [1000, 750, 500, 250], "warp_timesteps": False,
                                   "guide_scale": 1.0},
}


class CallCounter:
    def __init__(self, runner):
        self._runner, self.calls, self.batches = runner, 0, []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, feeds):
        self.calls += 1
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self._runner.run(feeds)


class CountingPipeline(Pipeline):
    def runner(self, name):
        if name not in self._runners and name == "dit":
            self._runners[name] = CallCounter(super().runner(name))
        return super().runner(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the profile's)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with CountingPipeline(args.engines, show_progress=False) as pipe:
        for label, sampling in SAMPLINGS.items():
            times, calls, batches = [], 0, set()
            for _ in range(args.repeats):
                dit = pipe.runner("dit")
                before = dit.calls
                result = pipe.generate(GenerationRequest(
                    prompt="A red fox trots through fresh snow at sunrise", seed=0, frames=args.frames,
                    size=parse_size(args.size) if args.size else None, **sampling))
                times.append(result.timings["denoise"])
                calls = dit.calls - before
                batches |= set(dit.batches[before:])
            rows.append((label, calls, sorted(batches), statistics.median(times)))
    base = rows[0][3]
    print(f"{datetime.date.today()} · {platform.processor() or platform.machine()} · "
          f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` · {result.width}x{result.height}, "
          f"{result.frames} frames, median of {args.repeats}")
    print("| sampling | DiT calls | batch | denoise s | vs base |")
    print("|---|---|---|---|---|")
    for label, calls, batches, seconds in rows:
        print(f"| {label} | {calls} | {','.join(map(str, batches))} | {seconds:.3f} | {base / seconds:.1f}x |")


if __name__ == "__main__":
    main()
