"""One DiT forward: the PyTorch reference (bf16, SDPA) against a TensorRT(-RTX) engine, in the same process.

    python benchmarks/bench_dit_gpu.py --engines ENGINES [--size 1280x704] [--frames 121] [--batch 1]
    python benchmarks/bench_dit_gpu.py --preset tiny --size 160x96 --frames 9 --device cpu   # dry run, no GPU

With --engines (a folder holding a `dit` engine, e.g. `wan-export build --profile 720p --only dit --backend
tensorrt-rtx --sm CURRENT`), the reference gets the very weights the engine was exported from (the manifest's
checkpoint or seeded random weights, cast like the export: bf16 with the official fp32 islands), so the two
outputs are compared as well as timed. Without --engines only the reference runs, on seeded random weights made
directly on the device.

Reported (markdown table and JSON):
- FLOP of one forward, counted from the shapes (matmuls and attention; 720p x 121 frames, batch 1: ~5.2e14);
- the GPU's measured bf16 matmul rate (8192^3 torch.matmul; on CPU a 1024^3 one) as the ceiling;
- PyTorch reference: median ms per forward (CUDA events), TFLOP/s, % of the matmul rate;
- engine: the first calls, each on its own (TensorRT-RTX compiles kernels just in time), then median ms per
  `run()` as the runtime calls it (host->device copies of the inputs and the copy back included), TFLOP/s, % of the
  matmul rate. TensorRT-RTX runs with eager kernel specialization (WAN_RT_TRT_SPECIALIZATION=eager, the default
  here; --specialization to change it): kernels for the shape are compiled before the first call returns, so the
  timed calls never run a lazily compiled fallback kernel while the specialized one builds in the background;
- speed-up engine vs reference (target >= 1.5x) and engine TFLOP/s vs matmul rate (target >= 60%);
- accuracy: relative L2 error, cosine and max |diff| of the engine output against the reference output.
A stage that cannot run (no GPU, no library, out of memory) is recorded with its one-line reason; the script
still writes its report and exits 0 unless --strict.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))

import torch  # noqa: E402

from wan_rt import tokens  # noqa: E402
from wan_rt.shapes import TOKEN_STRIDE, latent_frames, parse_size  # noqa: E402

TARGET_SPEEDUP = 1.5
TARGET_MATMUL_FRACTION = 0.60


def dit_flops(cfg, num_tokens: int, batch: int) -> float:
    """Multiply-adds x2 of one DiT forward: projections, self/cross attention, FFN, embeddings and head."""
    d, f, text, length = cfg.dim, cfg.ffn_dim, cfg.text_len, num_tokens
    per_layer = (4 * 2 * length * d * d  # self-attention q, k, v, o
                 + 2 * 2 * length * length * d  # q @ k^T and attention @ v
                 + 2 * 2 * length * d * d  # cross-attention q, o
                 + 2 * 2 * text * d * d  # cross-attention k, v on the text tokens
                 + 2 * 2 * length * text * d  # cross-attention scores and values
                 + 2 * 2 * length * d * f)  # FFN
    embeddings = (2 * length * cfg.patch_channels * d  # patch embedding
                  + 2 * length * (cfg.freq_dim * d + d * d + d * 6 * d)  # per-token time embedding and projection
                  + 2 * text * (cfg.text_dim * d + d * d)  # text embedding
                  + 2 * length * d * cfg.out_patch_channels)  # head
    return float(batch * (cfg.num_layers * per_layer + embeddings))


def sample_inputs(cfg, width: int, height: int, frames: int, batch: int, seed: int = 0) -> dict:
    grid = (latent_frames(frames), height // TOKEN_STRIDE, width // TOKEN_STRIDE)
    count = grid[0] * grid[1] * grid[2]
    rng = np.random.default_rng(seed)
    cos, sin = tokens.rope_tables(grid, cfg.head_dim)
    context = rng.standard_normal((batch, cfg.text_len, cfg.text_dim), dtype=np.float32)
    context[:, 64:] = 0.0  # a 64-token prompt, zero padding after it (what the text encoder gives)
    timesteps = np.stack([tokens.frame_timesteps(grid, 500.0, None)] * batch).astype(np.float32)  # engine form
    return {"tokens": rng.standard_normal((batch, count, cfg.patch_channels), dtype=np.float32),
            "timesteps": timesteps, "context": context,
            "rope_cos": np.ascontiguousarray(cos, dtype=np.float32),
            "rope_sin": np.ascontiguousarray(sin, dtype=np.float32)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, iters: int) -> tuple[list[float], object]:
    """Seconds per call (CUDA events on a GPU, perf_counter on CPU) and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - started)
    return times, result


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype`: the practical ceiling the targets are measured against."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times, _ = _timed(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * n ** 3 / statistics.median(times)


def reference_model(cfg, manifest, ckpt_dir, precision: str, device: torch.device, seed: int):
    """The export's DiT with the engine's own weights (from the manifest), or seeded random ones on `device`."""
    from wan_export.model.dit import FP32_MODULES, WanDiT
    from wan_export.onnx_export import cast_for_precision

    if manifest is not None:
        from wan_export.weights import weight_source_from_manifest

        model = weight_source_from_manifest(manifest.data, ckpt_dir).load("dit")  # fp32, then cast like build()
        cast_for_precision(model, precision, FP32_MODULES)
        return model.to(device).eval()
    from wan_export.checkpoints.random_weights import _scale_and_offset

    with torch.device("meta"):
        model = WanDiT(cfg)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale, offset = _scale_and_offset(name, tuple(param.shape))
            param.normal_(0.0, scale, generator=generator).add_(offset)
    cast_for_precision(model, precision, FP32_MODULES)
    return model.eval()


def run_reference(model, feeds: dict, device: torch.device, warmup: int, iters: int) -> tuple[list[float], np.ndarray]:
    # The reference is timed in the official per-token form (time embedding and modulation for every token)
    feeds = {**feeds, "timesteps": np.repeat(feeds["timesteps"], feeds["tokens"].shape[1] // feeds["timesteps"].shape[1],
                                             axis=1)}
    args = [torch.from_numpy(np.array(feeds[name])).to(device) for name in ("tokens", "timesteps", "context", "rope_cos",
                                                                  "rope_sin")]
    with torch.inference_mode():
        times, out = _timed(lambda: model(*args), device, warmup, iters)
    return times, out.float().cpu().numpy()


def run_engine(manifest, feeds: dict, warmup: int, iters: int) -> dict:
    from wan_rt.backends import open_runner

    with open_runner(manifest, "dit") as runner:
        first_calls = []  # each warm-up call on its own: JIT compilation shows here, not in the median
        for _ in range(max(warmup, 1)):
            started = time.perf_counter()
            out = runner.run(feeds)["velocity"]
            first_calls.append(time.perf_counter() - started)
        first = first_calls[0]
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            out = runner.run(feeds)["velocity"]  # run() returns after the stream synchronizes
            times.append(time.perf_counter() - started)
    component = manifest.component("dit")
    return {"first_call_s": first, "first_calls_s": first_calls, "times": times, "output": out,
            "specialization": os.environ.get("WAN_RT_TRT_SPECIALIZATION") or "library default (lazy)",
            "library": f"{component.backend} {component.target.get('version', '?')}",
            "targets": component.target.get("compute_capabilities")}


def accuracy(actual: np.ndarray, expected: np.ndarray) -> dict:
    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(e)
    return {"rel_l2": float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30)),
            "cosine": float(a @ e / denominator) if denominator else float("nan"),
            "max_abs": float(np.abs(a - e).max()), "ref_max_abs": float(np.abs(e).max())}


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} (SM{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    return f"CPU {platform.processor() or platform.machine()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, help="engines folder with a dit engine (TensorRT or TensorRT-RTX)")
    parser.add_argument("--ckpt-dir", type=Path, help="checkpoint the engines were built from (default: manifest's)")
    parser.add_argument("--preset", default="ti2v-5b", help="model preset without --engines (ti2v-5b, tiny)")
    parser.add_argument("--size", default="1280x704", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--batch", type=int, default=1, help="1 = one forward; 2 = one guided step")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                        help="reference precision without --engines (with --engines: the engine's)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="time the engine only")
    parser.add_argument("--specialization", default="eager", choices=["eager", "lazy", "none"],
                        help="TensorRT-RTX kernel specialization to new shapes (WAN_RT_TRT_SPECIALIZATION)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a stage fails or a target is missed")
    args = parser.parse_args(argv)

    from wan_export.config import ModelConfig, preset
    from wan_rt.manifest import load_manifest

    device = torch.device(args.device)
    os.environ["WAN_RT_TRT_SPECIALIZATION"] = args.specialization  # read by the runner when the engine opens
    width, height = parse_size(args.size)
    manifest = load_manifest(args.engines) if args.engines else None
    if manifest is not None:
        cfg = ModelConfig.from_dict(manifest.model).dit
        precision = manifest.component("dit").precision
    else:
        cfg, precision = preset(args.preset).dit, args.precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    feeds = sample_inputs(cfg, width, height, args.frames, args.batch, args.seed)
    count = feeds["tokens"].shape[1]
    flops = dit_flops(cfg, count, args.batch)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
               "device": device_name(device), "torch": torch.__version__, "precision": precision,
               "shape": {"width": width, "height": height, "frames": args.frames, "batch": args.batch,
                         "tokens": count}, "flop_per_call": flops, "failures": []}

    try:
        matmul_dtype = torch.bfloat16 if device.type == "cuda" else dtype
        results["matmul_dtype"] = str(matmul_dtype).removeprefix("torch.")
        results["matmul_flops"] = matmul_rate(device, matmul_dtype)
    except Exception as exc:
        results["failures"].append(f"matmul rate: {_reason(exc)}")
    reference_out = None
    if not args.skip_reference:
        try:
            started = time.perf_counter()
            model = reference_model(cfg, manifest, args.ckpt_dir, precision, device, args.seed)
            results["reference_load_s"] = time.perf_counter() - started
            times, reference_out = run_reference(model, feeds, device, args.warmup, args.iters)
            results["reference"] = {"median_s": statistics.median(times), "times": times}
            del model
        except Exception as exc:
            results["failures"].append(f"PyTorch reference: {_reason(exc)}")
            traceback.print_exc()
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if manifest is not None:
        try:
            engine = run_engine(manifest, feeds, args.warmup, args.iters)
            output = engine.pop("output")
            results["engine"] = {**engine, "median_s": statistics.median(engine["times"])}
            if reference_out is not None:
                results["accuracy"] = accuracy(output, reference_out)
        except Exception as exc:
            results["failures"].append(f"engine: {_reason(exc)}")
            if not type(exc).__name__ == "WanError":
                traceback.print_exc()

    table = markdown(results)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    missed = [row for row in results.get("verdicts", []) if not row[1]]
    return 1 if args.strict and (results["failures"] or missed) else 0


def markdown(results: dict) -> str:
    shape = results["shape"]
    flops = results["flop_per_call"]
    rate = results.get("matmul_flops")
    rows = [("device", f"{results['device']}, torch {results['torch']}"),
            ("shape", f"{shape['width']}x{shape['height']}x{shape['frames']}, batch {shape['batch']}, "
                      f"{shape['tokens']} tokens, {results['precision']}"),
            ("FLOP per call", f"{flops:.3g}")]
    if rate:
        rows.append((f"{results['matmul_dtype']} matmul rate (measured)", f"{rate / 1e12:.3g} TFLOP/s"))

    def speed(seconds: float) -> str:
        text = f"{seconds * 1e3:.1f} ms, {flops / seconds / 1e12:.3g} TFLOP/s"
        return text + (f", {flops / seconds / rate:.0%} of the matmul rate" if rate else "")

    reference, engine = results.get("reference"), results.get("engine")
    if reference:
        rows.append(("PyTorch reference (SDPA), median", speed(reference["median_s"])))
    if engine:
        firsts = ", ".join(f"{t:.2f} s" for t in engine.get("first_calls_s", [engine["first_call_s"]]))
        rows.append((f"engine ({engine['library']}, {engine['targets']}), first calls (not timed; specialization "
                     f"{engine.get('specialization', '?')})", firsts))
        rows.append((f"engine ({engine['library']}), median per run()", speed(engine["median_s"])))
    verdicts = []
    if reference and engine:
        speedup = reference["median_s"] / engine["median_s"]
        verdicts.append((f"speed-up vs reference {speedup:.2f}x (target >= {TARGET_SPEEDUP}x)",
                         speedup >= TARGET_SPEEDUP))
    if engine and rate:
        fraction = flops / engine["median_s"] / rate
        verdicts.append((f"engine at {fraction:.0%} of the matmul rate (target >= {TARGET_MATMUL_FRACTION:.0%})",
                         fraction >= TARGET_MATMUL_FRACTION))
    results["verdicts"] = verdicts
    for text, passed in verdicts:
        rows.append(("target", f"{text}: {'met' if passed else 'MISSED'}"))
    if "accuracy" in results:
        acc = results["accuracy"]
        rows.append(("engine vs reference output", f"rel L2 {acc['rel_l2']:.2e}, cosine {acc['cosine']:.6f}, "
                                                   f"max |diff| {acc['max_abs']:.3g} (max |ref| {acc['ref_max_abs']:.3g})"))
    for failure in results["failures"]:
        rows.append(("not run", failure))
    lines = ["| what | result |", "| --- | --- |"] + [f"| {a} | {str(b).replace('|', '/')} |" for a, b in rows]
    return "\n".join(lines + ["", f"`{results['command']}` ({results['date']})"])


if __name__ == "__main__":
    sys.exit(main())
