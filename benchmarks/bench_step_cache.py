"""Step caching on the CPU: full DiT calls, denoise time and fidelity cost of MagCache, TeaCache and EasyCache vs
no caching.

A model larger than tiny (bench_components_cpu.SMALL: DiT dim 512, 4 layers) from seeded random weights, built
for ONNX Runtime at 256x256, 17 frames (1280 tokens), and the real sampling: UniPC, 50 steps, guide scale 5
(one batch-2 DiT call per full step). Each cache at the sources' default threshold, T2V and I2V. Calls to `dit`
and `dit_skip` are counted on the real runners.

Fidelity here is a proxy only: the weights are random, so how far the cached run drifts from the uncached one
(relative L2 error of the latents, PSNR of the decoded video) says nothing certain about the real model's
quality cost, and TeaCache's indicator reads the time embedding, whose step-to-step change on random weights is
far outside the range its coefficients were fitted on (it then skips nothing). MagCache's plan comes from its
calibrated table alone, so its call counts are those of the real model.

    python benchmarks/bench_step_cache.py --out /tmp/small-engines [--repeats 1]

Prints markdown table rows with the date, the machine and the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("wan_rt") is None:  # a checkout without pip install (appended: runtime/ has `triton`)
    sys.path.append(str(ROOT / "runtime"))
sys.path.append(str(ROOT / "benchmarks"))
import numpy as np  # noqa: E402

from wan_rt.demo_image import landscape  # noqa: E402
from wan_rt.pipeline import GenerationRequest, Pipeline  # noqa: E402

CACHES = ("none", "magcache", "teacache", "easycache")


class CallCounter:
    """A runner that counts its calls (the real engine runs them)."""

    def __init__(self, runner):
        self._runner, self.calls = runner, 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, feeds, keep=()):
        self.calls += 1
        return self._runner.run(feeds, keep=keep)


class CountingPipeline(Pipeline):
    def runner(self, name):
        if name not in self._runners and name in ("dit", "dit_skip"):
            self._runners[name] = CallCounter(super().runner(name))
        return super().runner(name)


def build_engines(out: Path) -> Path:
    from bench_components_cpu import LIMITS, SMALL
    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import WeightSource

    if (out / "manifest.json").is_file():
        return out
    profile = dataclasses.replace(load_profile("tiny"), name="small-bench", limits=LIMITS)
    return build(profile, WeightSource(config=SMALL, checkpoint=None, seed=0), out, BuildOptions(backend="onnxruntime"))


def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((video.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="engines folder (built here when missing)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--caches", default=",".join(CACHES), help="comma-separated, 'none' first (the reference)")
    args = parser.parse_args()
    engines = build_engines(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, CountingPipeline(engines, show_progress=False) as pipe:
        image = Path(tmp) / "image.png"
        landscape(256, 256).save(image)  # the engines take 256x256 only
        for mode, extra in (("t2v", {}), ("i2v", {"image": image})):
            reference = None
            for cache in args.caches.split(","):
                times = []
                for repeat in range(args.repeats):
                    dit, skip = pipe.runner("dit"), pipe.runner("dit_skip")
                    before = dit.calls, skip.calls
                    frames = Path(tmp) / f"{mode}-{cache}.npy"
                    result = pipe.generate(GenerationRequest(
                        prompt="A red fox trots through fresh snow at sunrise", seed=0, steps=args.steps,
                        guide_scale=5.0, solver="unipc", cache=cache, **extra), frames)
                    times.append(result.timings["denoise"])
                calls = (dit.calls - before[0], skip.calls - before[1])
                video = np.load(frames)
                if reference is None:
                    reference = (result.latents, video)
                error = float(np.linalg.norm(result.latents - reference[0]) / np.linalg.norm(reference[0]))
                rows.append((mode, cache, result.full_dit_steps, calls, statistics.median(times), error,
                             psnr(video, reference[1])))
    print(f"{datetime.date.today()} · `python {' '.join(shlex.quote(a) for a in sys.argv)}` · SMALL DiT "
          f"(dim 512, 4 layers, random weights), {result.width}x{result.height}, {result.frames} frames, "
          f"unipc {args.steps} steps, guide 5, median of {args.repeats}")
    print("| request | cache | full DiT steps | dit / dit_skip calls | fewer full calls | denoise s | speed-up | "
          "latent rel. error | video PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {}
    for mode, cache, (full, steps), (dit_calls, skip_calls), seconds, error, video_psnr in rows:
        base.setdefault(mode, (dit_calls, seconds))
        print(f"| {mode} | {cache} | {full} of {steps} | {dit_calls} / {skip_calls} | "
              f"{base[mode][0] / dit_calls:.2f}x | {seconds:.2f} | {base[mode][1] / seconds:.2f}x | {error:.4f} | "
              f"{video_psnr:.1f} |")


if __name__ == "__main__":
    main()
