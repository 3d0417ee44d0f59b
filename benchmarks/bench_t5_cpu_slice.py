"""What the umT5-XXL text encoder costs per prompt on ONNX Runtime's CPU provider (the t5_cpu placement, issue 24).

The full encoder is 24 layers at width 4096 (FFN 10240, 64 heads) over 512 tokens, 22.7 GB at fp32: too big to
export on a small machine. Its cost is per layer, so a slice is timed instead: the encoder at full width with 1 and
with 2 layers (vocabulary cut to 1024 rows: the embedding lookup costs nothing), exported by the same component
spec as the real build, run by ONNX Runtime CPU at batch 1 (one prompt; the negative prompt is a second one). The
per-layer time is t(2) - t(1); a prompt costs t(1) + 23 x that.

    python benchmarks/bench_t5_cpu_slice.py [--threads N] [--iters 3]

Prints a markdown table: date, machine, cores, seconds for 1 and 2 layers, the per-layer figure, the extrapolated
24-layer seconds per prompt and the fp32 weight bytes of the full encoder.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np



def time_layers(layers: int, threads: int, iters: int, folder: Path) -> float:
    import onnxruntime as ort
    import torch

    from wan_export.components import RequestPoint
    from wan_export.components.text_encoder import text_encoder_spec
    from wan_export.config import TI2V_5B
    from wan_export.model.t5 import UMT5Encoder
    from wan_export.onnx_export import export_graph
    from wan_export.profiles import load_profile

    t5 = dataclasses.replace(TI2V_5B.t5, num_layers=layers, vocab_size=1024)
    config = dataclasses.replace(TI2V_5B, t5=t5)
    limits = load_profile("720p").limits
    spec = text_encoder_spec(config, limits)
    torch.manual_seed(0)
    model = UMT5Encoder(t5).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    out = folder / f"l{layers}"
    out.mkdir()
    export_graph(spec, model, out, RequestPoint.default(limits))
    del model
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(out / "text_encoder.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = spec.sample(RequestPoint(1280, 704, 121, 1), np.random.default_rng(0))
    session.run(None, feeds)  # warm-up
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    from wan_export.config import TI2V_5B

    with tempfile.TemporaryDirectory() as tmp:
        one = time_layers(1, args.threads, args.iters, Path(tmp))
        two = time_layers(2, args.threads, args.iters, Path(tmp))
    per_layer = two - one
    layers = TI2V_5B.t5.num_layers
    full = one + (layers - 1) * per_layer
    t5 = TI2V_5B.t5
    params = (t5.vocab_size * t5.dim + layers * (4 * t5.dim * t5.dim_attn + 3 * t5.dim * t5.dim_ffn + 2 * t5.dim)
              + t5.dim)
    print(f"| date | machine | cores | 1 layer s | 2 layers s | per layer s | {layers} layers s per prompt (extrapolated)"
          f" | full encoder fp32 weights |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {datetime.date.today()} | {platform.processor() or platform.machine()} | "
          f"{args.threads or os.cpu_count()} | {one:.2f} | {two:.2f} | {per_layer:.2f} | {full:.1f} | "
          f"{params * 4 / 1e9:.1f} GB |")


if __name__ == "__main__":
    main()
