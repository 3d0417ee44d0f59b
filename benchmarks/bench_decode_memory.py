"""Peak memory of the streaming VAE decode: 17 vs 121 frames, decoded into a real MP4.

The runtime decodes one latent frame per engine call with the causal-conv caches carried between calls and hands
each chunk of pixels straight to the video writer (`wan_rt.vae_stream.decode_stream`), so its peak memory should
not depend on the clip length. This measures that: each frame count runs in a fresh subprocess that opens the two
decoder engines with ONNX Runtime, decodes seeded random latents through `decode_stream` into
`open_video_writer(... .mp4)` (H.264 through ffmpeg), and reports `resource.getrusage` ru_maxrss of itself (the
Python process: engines, decode, writer). ffmpeg, its child, is reported apart for information (its /proc VmHWM,
sampled after every chunk: the last frames' encode at close is not seen).

The tiny engines only accept up to 192x192, where the decoder's activations are small next to the fixed cost
(interpreter, ONNX Runtime, ~70 MB of decoder weights) and even a decoder that kept the whole clip in memory
would stay under the 1.15 target. So by default the tiny model's VAE decoder is built for a larger frame,
384x224 (`--size`), into a cache folder (decoder graphs only, ~20 s, needs the export extras), and a control row
is measured too: the same decode with every chunk of pixels also kept in a list, i.e. what a non-streaming
decode would hold at least. The control shows that the measurement can see clip-length growth at this size.

    python benchmarks/bench_decode_memory.py [--engines DIR] [--size 384x224] [--frames 17,121] [--no-control]

Prints a markdown table (date, machine, command, per-run peak RSS) and the 121/17 peak-RSS ratio (target <= 1.15).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))

TARGET_RATIO = 1.15
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "wan-deploy-bench-decode-engines"

PROFILE = """# bench_decode_memory.py: the tiny model's VAE decoder for frames up to {width}x{height}
[model]
preset = "tiny"
seed = 0

[build]
backend = "onnxruntime"

[shapes]
width = [64, {max_side}]
height = [64, {max_side}]
max_area = {area}
multiple = 32
frames = [1, 121]
batch = [1, 2]
default_size = "{width}x{height}"
default_frames = 121

[sampling]
steps = 4
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    memory = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
                    break
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.machine()}, "
            f"onnxruntime {onnxruntime.__version__}")


def maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def vm_hwm_mib(pid: int) -> float:
    """Peak RSS of a running process (/proc VmHWM). Used for ffmpeg: its getrusage ru_maxrss would report the
    Python process's RSS at fork time (Linux keeps the pre-exec high-water mark), not ffmpeg's own."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- child: one decode ------------------------------------------------------------------------------------------
def child(engines: Path, frames: int, width: int, height: int, hold: bool, out: Path) -> None:
    import numpy as np

    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest
    from wan_rt.shapes import latent_frames
    from wan_rt.vae_stream import decode_stream
    from wan_rt.video import open_video_writer

    z_dim = 48
    latents = np.random.default_rng(0).standard_normal((z_dim, latent_frames(frames), height // 16, width // 16),
                                                       dtype=np.float32)
    manifest = load_manifest(engines)
    held = []
    with open_runner(manifest, "vae_decoder_first") as first, open_runner(manifest, "vae_decoder_step") as step:
        loaded = maxrss_mib()
        started = time.perf_counter()
        ffmpeg_peak = [0.0]
        with open_video_writer(out, 24, width, height) as writer:
            ffmpeg = getattr(writer, "_proc", None)  # the writer's ffmpeg process (a private attribute)

            def write(pixels):
                writer.write(pixels)
                if hold:  # control: keep every chunk, as a decode that returns the whole clip would
                    held.append(pixels.copy())
                if ffmpeg is not None:
                    ffmpeg_peak[0] = max(ffmpeg_peak[0], vm_hwm_mib(ffmpeg.pid))

            written = decode_stream(first, step, latents, write, show_progress=False)
        seconds = time.perf_counter() - started
    if written != frames:
        raise SystemExit(f"decoded {written} frames, expected {frames}")
    print(json.dumps({"frames": frames, "latent_frames": int(latents.shape[1]), "peak_mib": maxrss_mib(),
                      "loaded_mib": loaded, "ffmpeg_mib": ffmpeg_peak[0],
                      "seconds": seconds, "mp4_bytes": out.stat().st_size}))


# -- parent -----------------------------------------------------------------------------------------------------
def build_engines(folder: Path, width: int, height: int) -> None:
    side = max(width, height)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "bench-decode.toml"
        profile.write_text(PROFILE.format(width=width, height=height, max_side=side, area=width * height))
        command = [sys.executable, "-m", "wan_export.cli", "build", "--profile", str(profile), "--out", str(folder),
                   "--only", "vae_decoder_first", "--only", "vae_decoder_step"]
        print(f"building decoder engines: {shlex.join(command)}", file=sys.stderr)
        subprocess.run(command, check=True, cwd=ROOT)


def run_child(engines: Path, frames: int, width: int, height: int, hold: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, __file__, "--child", "--engines", str(engines), "--frames", str(frames),
                   "--size", f"{width}x{height}", "--out", str(Path(tmp) / "video.mp4")] + (["--hold"] if hold else [])
        result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, default=None,
                        help=f"engines folder with vae_decoder_first/step (default: build into {DEFAULT_CACHE})")
    parser.add_argument("--size", default="384x224", help="WIDTHxHEIGHT of the decoded frames")
    parser.add_argument("--frames", default="17,121", help="comma-separated frame counts (4n+1)")
    parser.add_argument("--no-control", action="store_true", help="skip the keep-every-frame control runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    frame_counts = [int(v) for v in args.frames.split(",")]

    if args.child:
        child(args.engines, frame_counts[0], width, height, args.hold, args.out)
        return

    engines = args.engines
    if engines is None:
        engines = DEFAULT_CACHE / f"{width}x{height}"
        if not (engines / "manifest.json").is_file():
            build_engines(engines, width, height)
    command = "python " + shlex.join(["benchmarks/bench_decode_memory.py", *sys.argv[1:]])
    date = datetime.date.today().isoformat()
    where = machine()

    rows, peaks = [], {}
    for hold in ([False] if args.no_control else [False, True]):
        mode = "control: every chunk kept" if hold else "streaming"
        for frames in frame_counts:
            result = run_child(engines, frames, width, height, hold)
            peaks[(hold, frames)] = result["peak_mib"]
            rows.append(f"| {date} | {where} | `{command}` | {mode} | {frames} ({result['latent_frames']} latent) | "
                        f"{width}x{height} | **{result['peak_mib']:.0f} MiB** | {result['loaded_mib']:.0f} MiB | "
                        f"{result['peak_mib'] - result['loaded_mib']:.0f} MiB | {result['ffmpeg_mib']:.0f} MiB | "
                        f"{result['seconds']:.1f} s |")
            print(f"{mode}, {frames} frames: peak {result['peak_mib']:.0f} MiB", file=sys.stderr)

    print("| date | machine | command | decode | frames | size | peak RSS | RSS after engines load | "
          "decode increment | ffmpeg peak RSS (apart) | decode time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    low, high = min(frame_counts), max(frame_counts)
    print()
    for hold in ([False] if args.no_control else [False, True]):
        ratio = peaks[(hold, high)] / peaks[(hold, low)]
        growth = peaks[(hold, high)] - peaks[(hold, low)]
        label = "control (every chunk kept)" if hold else "streaming decode"
        verdict = (f"target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}" if not hold else
                   f"the {high - low} extra float32 frames alone are "
                   f"{(high - low) * width * height * 3 * 4 / 2**20:.0f} MiB: the measurement sees such growth")
        print(f"- {label}: peak RSS {high}/{low} frames = **{ratio:.3f}**, {growth:+.0f} MiB ({verdict})")


if __name__ == "__main__":
    main()
