"""Peak host memory of exporting one full-size component to ONNX (random weights in the export precision).

    python benchmarks/export_memory.py --component dit --precision bf16 --out /tmp/export-dit

Runs the same code path as `wan-export build` for one component (weights made directly in the target dtype,
fp32 islands restored, dynamo export, external data) and prints peak RSS and wall time as a markdown row.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--component", default="dit", help="text_encoder | dit | vae_encoder | vae_decoder_step ...")
    parser.add_argument("--profile", default="720p")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=None,
                        help="DiT only: this many blocks at full width (for TensorRT build-memory scaling runs)")
    parser.add_argument("--keep", action="store_true", help="keep the exported graph in --out (default: remove it)")
    args = parser.parse_args()

    from wan_export.components import RequestPoint, component_specs
    from wan_export.onnx_export import TORCH_DTYPES, cast_for_precision, export_graph
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile(args.profile)
    source = weight_source(None, profile.model_preset, profile.seed, profile.sampling)
    if args.layers is not None:
        from dataclasses import replace

        source = replace(source, config=replace(source.config, dit=replace(source.config.dit, num_layers=args.layers)))
    spec = next(s for s in component_specs(source.config, profile.limits) if s.name == args.component)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = source.load(spec.weights, TORCH_DTYPES[args.precision])
    loaded = time.perf_counter()
    cast_for_precision(model, args.precision, spec.fp32_modules)
    files = export_graph(spec, model, args.out, RequestPoint.default(profile.limits))
    finished = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = sum(p.numel() for p in model.parameters())
    sizes = {name: (args.out / name).stat().st_size / 2**30 for name in files}
    print(f"| {datetime.date.today()} | {cpu_model()}, {platform.machine()} | `{' '.join(sys.argv)}` | "
          f"{spec.name} {params / 1e9:.2f} B params {args.precision} | weights {loaded - started:.0f} s, "
          f"export {finished - loaded:.0f} s | peak RSS {peak_gib:.1f} GiB | "
          + ", ".join(f"{k} {v:.2f} GiB" for k, v in sizes.items()) + " |")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
