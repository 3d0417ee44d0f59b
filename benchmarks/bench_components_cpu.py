"""ONNX Runtime vs the PyTorch reference, per component, on the CPU, on a model larger than `tiny`.

    python benchmarks/bench_components_cpu.py [--threads 2] [--repeats 5]

Both run float32 with the same thread count on the same inputs (the profile's default request shape);
prints a markdown table (median ms per call) to paste into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from wan_export.components import RequestPoint, component_specs  # noqa: E402
from wan_export.config import TINY, DiTConfig, ModelConfig, T5Config, VAEConfig  # noqa: E402
from wan_export.onnx_export import export_graph  # noqa: E402
from wan_export.weights import WeightSource  # noqa: E402
from wan_rt.shapes import ShapeLimits  # noqa: E402

# About 1/6 of the real widths, a few layers: big enough that kernels, not dispatch, dominate.
SMALL = ModelConfig(
    name="small",
    dit=DiTConfig(dim=512, ffn_dim=2048, text_dim=512, num_heads=4, num_layers=4),
    vae=VAEConfig(base_dim=32, decoder_base_dim=64),
    t5=T5Config(vocab_size=1024, dim=512, dim_attn=512, dim_ffn=1024, num_heads=8, num_layers=4),
    sampling=TINY.sampling,
)
LIMITS = ShapeLimits(width=(256, 256), height=(256, 256), max_area=256 * 256, multiple=32, frames=(17, 17),
                     batch=(1, 2), default_size=(256, 256), default_frames=17)


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    source = WeightSource(config=SMALL, checkpoint=None, seed=0)
    point = RequestPoint.default(LIMITS)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        models = {}
        for spec in component_specs(SMALL, LIMITS):
            model = models.setdefault(spec.weights, source.load(spec.weights))
            export_graph(spec, model, Path(folder), point)
            session = ort.InferenceSession(str(Path(folder) / f"{spec.name}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            feeds = spec.sample(point, np.random.default_rng(0))
            graph = spec.graph(model).eval()
            args_t = spec.pack([torch.from_numpy(np.array(feeds[t.name])) for t in spec.inputs])

            def run_torch():
                with torch.no_grad():
                    graph(*args_t)

            torch_ms = median_ms(run_torch, args.repeats)
            ort_ms = median_ms(lambda: session.run(None, feeds), args.repeats)
            shape = ", ".join(f"{k}={v}" for k, v in spec.dim_values(point).items())
            rows.append((spec.name, shape, torch_ms, ort_ms))
    print(f"Date {datetime.date.today()}, {cpu_model()} ({args.threads} threads), torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; command `python {' '.join(sys.argv)}`\n")
    print("| component | shape | PyTorch ms | ONNX Runtime ms | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, shape, torch_ms, ort_ms in rows:
        print(f"| {name} | {shape} | {torch_ms:.1f} | {ort_ms:.1f} | {torch_ms / ort_ms:.2f}x |")


if __name__ == "__main__":
    main()
