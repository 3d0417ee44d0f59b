"""ONNX Runtime CUDA measurements for scripts/gpu_check.sh --ort (issue 24). Torch-free: the runtime side only.

    python benchmarks/ort_cuda_check.py proof ENGINES        # every component really on CUDA; kept outputs on device
    python benchmarks/ort_cuda_check.py decode ENGINES --latent-frames 31 [--size 1280x704]
    python benchmarks/ort_cuda_check.py generate ENGINES --size 1280x704 --frames 121 [--memory stage] --out X.mp4

proof: opens each component through wan_rt's ONNX Runtime runner with the CUDA provider first (the runner refuses a
session that landed on the CPU), prints the providers each session got and that a kept output (the DiT's residual,
the decoder's caches) is an OrtValue in CUDA memory, and the host<->device copies of one decoder call.
decode: the streaming decode of seeded random latents (48 channels, F latent frames) through the two decoder graphs:
seconds and peak device memory. generate: `wan-rt generate` as a child process: its per-stage seconds (summary line)
and peak device memory. Peak device memory is sampled every 20 ms from cudaMemGetInfo (device-wide: used minus the
figure before the run), so a peak shorter than that can be missed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


from wan_rt.backends.ort_providers import cuda_free_bytes  # noqa: E402


class DevicePeak:
    """Peak device memory in use above the starting figure, sampled from cudaMemGetInfo in a thread."""

    def __init__(self, period: float = 0.02):
        self.period, self.start, self.lowest = period, cuda_free_bytes(), None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            free = cuda_free_bytes()
            if free is not None:
                self.lowest = free if self.lowest is None else min(self.lowest, free)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak_gib(self) -> float:
        if self.start is None or self.lowest is None:
            return float("nan")
        return (self.start - self.lowest) / 2**30


def proof(engines: Path) -> None:
    import os

    os.environ.setdefault("WAN_RT_ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest

    manifest = load_manifest(engines)
    for name in manifest.components:
        with open_runner(manifest, name) as runner:
            print(f"{name}: {manifest.component(name).precision}, providers {runner.session.get_providers()}, "
                  f"kept outputs in {runner.memory} memory")
            if runner.memory != "cuda" and manifest.component(name).device != "cpu":
                raise SystemExit(f"error: {name} is not on CUDA")
    with open_runner(manifest, "vae_decoder_first") as first:
        component = first.component
        point = {d: v[1] for d, v in component.dims.items()}
        feeds = {t.name: np.zeros([point[a] if isinstance(a, str) else a for a in t.shape], t.dtype)
                 for t in component.inputs}
        keep = tuple(t.name for t in component.outputs if t.name.startswith("cache_out."))
        before = first.transfers.snapshot()
        outputs = first.run(feeds, keep=keep)
        after = first.transfers.snapshot()
        devices = {outputs[k].device for k in keep}
        print(f"decoder caches kept on {devices}; copies in this call: "
              f"{after['h2d_copies'] - before['h2d_copies']} host->device, "
              f"{after['d2h_copies'] - before['d2h_copies']} device->host")
        if devices != {"onnxruntime:cuda:0"}:
            raise SystemExit("error: the decoder caches did not stay in CUDA memory")


def decode(engines: Path, latent_frames: int, size: str) -> None:
    import os

    os.environ.setdefault("WAN_RT_ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest
    from wan_rt.vae_stream import decode_stream

    manifest = load_manifest(engines)
    width, height = (int(v) for v in size.split("x"))
    latents = np.random.default_rng(0).standard_normal((48, latent_frames, height // 16, width // 16),
                                                        dtype=np.float32)
    frames = []
    with DevicePeak() as peak, open_runner(manifest, "vae_decoder_first") as first, \
            open_runner(manifest, "vae_decoder_step") as steady:
        started = time.perf_counter()
        count = decode_stream(first, steady, latents, lambda chunk: frames.append(chunk.shape[1]),
                              show_progress=False)
        seconds = time.perf_counter() - started
    print(f"decode {latent_frames} latent frames at {size}: {count} frames in {seconds:.1f} s, "
          f"peak device memory {peak.peak_gib():.1f} GiB (sampled)")


def generate(engines: Path, size: str, frames: int, memory: str, out: Path, steps: int) -> None:
    command = [sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(engines), "--prompt",
               "a red fox trots through fresh snow", "--size", size, "--frames", str(frames), "--steps", str(steps),
               "--memory", memory, "--seed", "1", "--out", str(out)]
    with DevicePeak() as peak:
        result = subprocess.run(command, capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1:] + result.stderr.strip().splitlines()[-1:]
    print(f"generate {size} x {frames} frames, {steps} steps, --memory {memory}: exit {result.returncode}; "
          f"peak device memory {peak.peak_gib():.1f} GiB (sampled); {' | '.join(tail)}")
    if result.returncode:
        raise SystemExit(f"error: {tail[-1] if tail else 'generate failed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("proof").add_argument("engines", type=Path)
    d = sub.add_parser("decode")
    d.add_argument("engines", type=Path)
    d.add_argument("--latent-frames", type=int, default=31)
    d.add_argument("--size", default="1280x704")
    g = sub.add_parser("generate")
    g.add_argument("engines", type=Path)
    g.add_argument("--size", default="1280x704")
    g.add_argument("--frames", type=int, default=121)
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--memory", default="stage")
    g.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.what == "proof":
        proof(args.engines)
    elif args.what == "decode":
        decode(args.engines, args.latent_frames, args.size)
    else:
        generate(args.engines, args.size, args.frames, args.memory, args.out, args.steps)


if __name__ == "__main__":
    from wan_rt.errors import WanError

    try:
        main()
    except WanError as exc:  # the runner's refusal (e.g. the CUDA provider did not load) is the stage's error line
        raise SystemExit(f"error: {exc}") from None
