"""Tiny (TAEHV taew2_2, taew2_2_super) vs full (Wan2.2 VAE) decoder: time and peak memory on the CPU.

    python benchmarks/bench_tiny_decode.py [--threads 2] [--decoders full,tiny,tiny-super]

Both decoders at their real sizes with seeded random weights (speed does not depend on the values), float32, the
PyTorch references (`WanVAE.decode_chunk`, `TinyDecoder.decode_chunk`: the very graphs the engines are exported
from), one latent frame per call as wan-rt streams them. Each measurement runs in a fresh process: one call with
the first latent frame (warm-up), then one steady call timed (4 frames out), with the peak resident memory of that
steady call above the memory held before it (Linux: /proc/self/clear_refs resets VmHWM), i.e. activations and
caches, the weights apart.

256x256 is measured whole, and so is 720p (1280x704, latent 80x44) for the tiny decoders. The full decoder would
need ~22 GB per call at 720p (caches in and out, activations), more than this shared machine has, so it is
measured on full-width slices of 2 and 4 latent rows (1280x32 and 1280x64 pixels) and extrapolated linearly in the
row count (the convs' work and memory are proportional to the area; the fit's intercept carries the per-call
overhead); those cells are marked ~. A 121-frame clip is 1 first call + 30 steady calls; the table's clip columns
are 31 x the steady call.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:
        sys.path.append(str(path))

DECODERS = ("full", "tiny", "tiny-super")
CLIP_CALLS = 31  # 121 frames


def _status_bytes(key: str) -> int:
    """VmRSS (resident now) or VmHWM (peak since the last reset) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(decoder: str, latent_h: int, latent_w: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    latent = torch.randn(1, 48, 1, latent_h, latent_w)
    with torch.no_grad():
        if decoder == "full":
            from wan_export.config import TI2V_5B
            from wan_export.weights import WeightSource

            model = WeightSource(config=TI2V_5B, checkpoint=None, seed=0).load("vae")
            model.encoder = None  # not part of the decode
            first = lambda: model.decode_first_chunk(latent)  # noqa: E731
            step = lambda caches: model.decode_chunk(latent, caches)  # noqa: E731
        else:
            from wan_export.checkpoints.taehv_file import random_state
            from wan_export.model.loading import load_module
            from wan_export.model.taehv import WIDTHS, TinyDecoder, TinyVAEConfig

            variant = "super" if decoder == "tiny-super" else "base"
            cfg = TinyVAEConfig(variant, 48, WIDTHS[variant], 2)
            model = load_module(lambda: TinyDecoder(cfg), random_state(cfg, 0))
            first = lambda: model.decode_chunk(latent, model.zero_caches(latent_h, latent_w))  # noqa: E731
            step = lambda caches: model.decode_chunk(latent, caches)  # noqa: E731
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        _, caches = first()
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _status_bytes("VmRSS")
        started = time.perf_counter()
        pixels, caches = step(caches)
        seconds = time.perf_counter() - started
        peak = _status_bytes("VmHWM") - before
    cache_bytes = sum(c.numel() * c.element_size() for c in caches)
    return {"seconds": seconds, "peak_bytes": peak, "weights_bytes": weights, "cache_bytes": cache_bytes,
            "frames": pixels.shape[2]}


def measure(decoder: str, latent_h: int, latent_w: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", decoder, str(latent_h), str(latent_w), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def extrapolate(low: dict, high: dict, rows: tuple[int, int], target: int, key: str) -> float:
    slope = (high[key] - low[key]) / (rows[1] - rows[0])
    return low[key] + slope * (target - rows[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--child", nargs=3, metavar=("DECODER", "LATENT_H", "LATENT_W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        decoder, latent_h, latent_w = args.child
        print(json.dumps(child(decoder, int(latent_h), int(latent_w), args.threads)))
        return
    decoders = [d for d in args.decoders.split(",") if d]
    rows = (2, 4)
    results, checks = {}, []
    for decoder in decoders:
        small = measure(decoder, 16, 16, args.threads)
        low, high = (measure(decoder, r, 80, args.threads) for r in rows)
        print(f"{decoder} slices {rows} latent rows: {json.dumps([low, high])}", file=sys.stderr)
        sliced = {key: extrapolate(low, high, rows, 44, key) for key in ("seconds", "peak_bytes", "cache_bytes")}
        if decoder == "full":
            hd = {**sliced, "weights_bytes": small["weights_bytes"], "extrapolated": True}
        else:  # measured whole; the slices say how far the extrapolation used for the full decoder is off
            hd = measure(decoder, 44, 80, args.threads)
            checks.append(f"{decoder} at 720p: measured {hd['seconds']:.1f} s, {_mb(hd['peak_bytes'])} per call; "
                          f"extrapolated from the slices {sliced['seconds']:.1f} s, {_mb(sliced['peak_bytes'])}")
        results[decoder] = {"256": small, "720p": hd}
        print(f"{decoder}: {json.dumps(results[decoder])}", file=sys.stderr)
    print(f"{datetime.date.today()}, {platform.node()} ({_cpu()}), torch threads {args.threads}, command: "
          f"python benchmarks/bench_tiny_decode.py --threads {args.threads}\n")
    print("| decoder | weights | 256x256: s / call | 256x256: 121 frames | 256x256: peak / call | 720p: s / call "
          "| 720p: 121 frames | 720p: peak / call | 720p caches |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for decoder, r in results.items():
        s, h = r["256"], r["720p"]
        x = "~" if h.get("extrapolated") else ""
        print(f"| {decoder} | {_mb(s['weights_bytes'])} | {s['seconds']:.2f} | {s['seconds'] * CLIP_CALLS:.0f} s | "
              f"{_mb(s['peak_bytes'])} | {x}{h['seconds']:.1f} | {x}{h['seconds'] * CLIP_CALLS / 60:.1f} min | "
              f"{x}{_mb(h['peak_bytes'])} | {_mb(h['cache_bytes'])} |")
    for line in checks:
        print(f"\nslice check: {line}")
    if "full" in results:
        for decoder in (d for d in results if d != "full"):
            full, tiny = results["full"], results[decoder]
            print(f"\n{decoder} vs full: {full['256']['seconds'] / tiny['256']['seconds']:.0f}x faster at 256x256, "
                  f"{full['720p']['seconds'] / tiny['720p']['seconds']:.0f}x at 720p; peak per call "
                  f"{full['720p']['peak_bytes'] / tiny['720p']['peak_bytes']:.0f}x smaller at 720p")


def _mb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
