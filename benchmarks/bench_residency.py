"""Device-resident decoder caches and engine residency: what they save, measured on the CPU and computed at 720p.

    python benchmarks/bench_residency.py [--part decode,generate,traffic] [--before REV] [--engines DIR]

- decode: the streaming decode of seeded random latents (256x256, 17 frames) into an MP4, in a fresh process
  each, with the runtime of this checkout ("after": caches stay on the device, `run(keep=...)`) and with the
  runtime of git revision REV ("before": every cache converted to numpy and fed back), default d074e78 (the
  last commit before device-resident tensors). Seconds and peak RSS (VmHWM).
- generate: one whole text-to-video request with `--memory keep` and with `--memory stage`, and each stage alone
  (text encoder, DiT, decoder: the largest single stage is the floor for stage), peak RSS each, fresh processes.
- traffic: bytes moved host<->device for one 1280x704 x 121-frame request with 50 steps and CFG as one batch-2
  call, before and after, computed from the full-size model's tensor shapes (the decoder's caches from the
  5B VAE's cache layout).

The engines are the "small" model of bench_components_cpu.py (DiT 512 x 4 layers, umT5 512 x 4, VAE widths
32/64), built once for 256x256 into a cache folder with ONNX Runtime on the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_memory import machine, vm_hwm_mib  # noqa: E402

def peak_rss_mib() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss: Linux keeps the parent's high-water mark from
    before the exec, and the parent may have just built the engines."""
    import os

    return vm_hwm_mib(os.getpid())


DEFAULT_CACHE = Path(tempfile.gettempdir()) / "wan-deploy-bench-residency-engines"
BEFORE = "d074e78"
PROMPT = "A red fox trots through fresh snow at sunrise"
PROFILE = """# bench_residency.py: the small model at 256x256
[model]
preset = "tiny"
seed = 0
[shapes]
width = [64, 256]
height = [64, 256]
max_area = 65536
multiple = 32
frames = [1, 17]
batch = [1, 2]
default_size = "256x256"
default_frames = 17
[sampling]
steps = 4
"""


def build_engines(folder: Path) -> Path:
    if (folder / "manifest.json").is_file():
        return folder
    from bench_components_cpu import SMALL

    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import WeightSource

    folder.parent.mkdir(parents=True, exist_ok=True)
    profile_path = folder.parent / "bench-residency-256.toml"
    profile_path.write_text(PROFILE)
    return build(load_profile(str(profile_path)), WeightSource(config=SMALL, checkpoint=None, seed=0), folder,
                 BuildOptions(backend="onnxruntime"))


# -- children: one measurement per fresh process ---------------------------------------------------------------
def child_decode(engines: Path, out: Path) -> dict:
    import numpy as np

    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest
    from wan_rt.vae_stream import decode_stream
    from wan_rt.video import open_video_writer

    latents = np.random.default_rng(0).standard_normal((48, 5, 16, 16), dtype=np.float32)  # 17 frames, 256x256
    manifest = load_manifest(engines)
    with open_runner(manifest, "vae_decoder_first") as first, open_runner(manifest, "vae_decoder_step") as step:
        started = time.perf_counter()
        with open_video_writer(out, 24, 256, 256) as writer:
            written = decode_stream(first, step, latents, writer.write, show_progress=False)
        seconds = time.perf_counter() - started
        moved = getattr(first, "transfers", None)
    return {"seconds": seconds, "frames": written, "peak_rss_mib": peak_rss_mib(),
            "transfers": moved.snapshot() if moved is not None else None}


def child_generate(engines: Path, memory: str, out: Path) -> dict:
    from wan_rt.pipeline import GenerationRequest, Pipeline

    with Pipeline(engines, memory=memory, show_progress=False) as pipeline:
        started = time.perf_counter()
        pipeline.generate(GenerationRequest(prompt=PROMPT, seed=1), out)
        return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(),
                "events": pipeline.engine_events}


def child_stage(engines: Path, stage: str, out: Path) -> dict:
    """One stage alone, as `generate` runs it (same request), to find the largest single stage."""
    import numpy as np

    from wan_rt import shapes
    from wan_rt.pipeline import Pipeline
    from wan_rt.schedulers import make_scheduler
    from wan_rt.vae_stream import decode_stream
    from wan_rt.video import open_video_writer

    with Pipeline(engines, memory="keep", show_progress=False) as pipeline:
        sampling, limits = pipeline.manifest.sampling, pipeline.manifest.limits
        width, height = limits.default_size
        shape = (48, shapes.latent_frames(limits.default_frames), height // 16, width // 16)
        rng = np.random.default_rng(1)
        if stage == "text":
            pipeline.encode_text(PROMPT, sampling["negative_prompt"])
        elif stage == "denoise":
            text_dim = pipeline.manifest.model["dit"]["text_dim"]
            context = rng.standard_normal((1, 512, text_dim), dtype=np.float32)
            pipeline.run_denoise(shape, context, context.copy(), rng.standard_normal(shape, dtype=np.float32), None,
                                 make_scheduler(sampling["solver"], sampling["steps"], sampling["shift"]),
                                 sampling["guide_scale"])
        else:
            with open_video_writer(out, 24, width, height) as writer:
                decode_stream(pipeline.runner("vae_decoder_first"), pipeline.runner("vae_decoder_step"),
                              rng.standard_normal(shape, dtype=np.float32), writer.write, show_progress=False)
    return {"peak_rss_mib": peak_rss_mib()}


def run_child(args: list[str], runtime: Path | None = None) -> dict:
    env = None
    if runtime is not None:  # another checkout's runtime first on the path
        import os

        env = {**os.environ, "PYTHONPATH": f"{runtime}/runtime:{runtime}"}
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- parts --------------------------------------------------------------------------------------------------
def part_decode(engines: Path, before: str, repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), before], check=True)
        try:
            rows = []
            for label, runtime in ((f"before ({before}): caches via numpy", tree), ("after: caches on the device", None)):
                runs = [run_child(["decode", str(engines), str(Path(folder) / "out.mp4")], runtime)
                        for _ in range(repeats)]
                seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
                moved = runs[0]["transfers"]
                rows.append(f"| {label} | {seconds:.2f} | {max(r['peak_rss_mib'] for r in runs):.0f} | "
                            f"{'n/a (not counted before)' if moved is None else _moved(moved)} |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return ["| decode, 256x256 x 17 frames, small VAE | seconds (median of %d) | peak RSS MiB | host<->device |"
            % repeats, "| --- | ---: | ---: | --- |", *rows]


def _moved(counts: dict) -> str:
    return (f"{counts['h2d_bytes'] / 2**20:.2f} MiB in ({counts['h2d_copies']} copies), "
            f"{counts['d2h_bytes'] / 2**20:.2f} MiB out ({counts['d2h_copies']} copies)")


def part_generate(engines: Path) -> list[str]:
    rows = ["| one t2v request, small model, 256x256 x 17 frames, 4 steps | peak RSS MiB | seconds |",
            "| --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.mp4")
        stages = {stage: run_child(["stage", str(engines), stage, out]) for stage in ("text", "denoise", "decode")}
        for stage, result in stages.items():
            rows.append(f"| stage alone: {stage} | {result['peak_rss_mib']:.0f} | |")
        largest = max(r["peak_rss_mib"] for r in stages.values())
        for memory in ("keep", "stage"):
            result = run_child(["generate", str(engines), memory, out])
            rows.append(f"| `--memory {memory}` | {result['peak_rss_mib']:.0f} | {result['seconds']:.1f} |")
            if memory == "stage":
                ratio = result["peak_rss_mib"] / largest
                rows.append(f"| stage / largest single stage | **{ratio:.3f}** (target <= 1.10) | |")
    return rows


def part_traffic() -> list[str]:
    """Bytes per 720p request, before and after, from the full-size shapes (no model is run)."""
    from wan_export.components.vae import decoder_cache_layout
    from wan_export.config import TI2V_5B

    steps, batch, frames, height, width = 50, 2, 121, 704, 1280
    lf, lh, lw = (frames - 1) // 4 + 1, height // 16, width // 16
    tokens, patch = lf * (lh // 2) * (lw // 2), 48 * 4
    f32 = 4
    dit = TI2V_5B.dit
    head_dim = dit.dim // dit.num_heads
    latent = 48 * lf * lh * lw * f32
    pixels = 3 * frames * height * width * f32  # float32 chunks from the decoder (uint8 in the MP4)
    per_step_tokens = batch * tokens * patch * f32 + batch * lf * f32  # tokens + per-frame timesteps
    velocity = batch * tokens * patch * f32
    context = batch * 512 * dit.text_dim * f32  # umT5 output, zero-padded to 512 tokens
    rope = 2 * tokens * (head_dim // 2) * f32
    caches = sum(channels * 2 * (lh * factor) * (lw * factor) * f32
                 for _, channels, factor in decoder_cache_layout(TI2V_5B.vae))
    text = 2 * 2 * 512 * 8 + context  # ids + mask in (int64), contexts out (both prompts)
    per_request_before = {
        "text encoder (ids in, context out)": text,
        "DiT: tokens + timesteps in, per step": steps * per_step_tokens,
        "DiT: velocity out, per step": steps * velocity,
        "DiT: context + RoPE tables in, per step": steps * (context + rope),
        "decoder: latent frames in": latent,
        "decoder: caches in and out, per latent frame": 2 * (lf - 1) * caches + caches,  # first chunk: out only
        "decoder: pixels out": pixels,
    }
    per_request_after = dict(per_request_before)
    per_request_after["DiT: context + RoPE tables in, per step"] = context + rope  # once per request
    per_request_after["decoder: caches in and out, per latent frame"] = 0
    gb = 1e9
    rows = ["| 1280x704 x 121 frames, 50 steps, CFG batch 2 (float32) | before GB | after GB |",
            "| --- | ---: | ---: |"]
    for key in per_request_before:
        rows.append(f"| {key} | {per_request_before[key] / gb:.3f} | {per_request_after[key] / gb:.3f} |")
    total_b, total_a = sum(per_request_before.values()), sum(per_request_after.values())
    rows.append(f"| **total** | **{total_b / gb:.1f}** | **{total_a / gb:.2f}** |")
    rows.append(f"| total besides the pixels | {(total_b - pixels) / gb:.1f} | {(total_a - pixels) / gb:.2f} |")
    rows.append(f"\nOne latent frame's decoder caches: {caches / gb:.2f} GB ({len(decoder_cache_layout(TI2V_5B.vae))} "
                f"tensors). At ~25 GB/s (pinned PCIe 4.0 x16) the after total is {total_a / 25e9:.2f} s of copying "
                f"per request; the caches alone were {per_request_before['decoder: caches in and out, per latent frame'] / 12e9:.0f} s "
                f"at ~12 GB/s (pageable).")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="decode,generate,traffic")
    parser.add_argument("--before", default=BEFORE, help="git revision whose runtime is 'before' (decode part)")
    parser.add_argument("--engines", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        kind, *rest = json.loads(args.child)
        function = {"decode": child_decode, "generate": child_generate, "stage": child_stage}[kind]
        print(json.dumps(function(Path(rest[0]), *rest[1:-1], Path(rest[-1]))))
        return
    parts = args.part.split(",")
    print(f"Date {datetime.date.today()}, {machine()}; command `python benchmarks/bench_residency.py "
          f"{' '.join(sys.argv[1:])}`\n")
    if "traffic" in parts:
        print("\n".join(part_traffic()), "\n")
    if {"decode", "generate"} & set(parts):
        engines = build_engines(args.engines)
        if "decode" in parts:
            print("\n".join(part_decode(engines, args.before, args.repeats)), "\n")
        if "generate" in parts:
            print("\n".join(part_generate(engines)), "\n")


if __name__ == "__main__":
    main()
