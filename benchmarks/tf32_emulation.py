"""What TF32 costs the VAE engines, estimated on a CPU: every convolution and linear layer's inputs and weights
rounded to TF32 (10-bit mantissa, round to nearest even; accumulation stays fp32, as on the GPU), against fp32.

    python benchmarks/tf32_emulation.py [--preset ti2v-5b] [--size 128x128] [--seed 0]

An estimate, not the GPU's numbers: TensorRT's kernels also sum in another order, and attention matmuls (the
decoder's per-frame attention, decomposed in fp32 engines) run in TF32 on the GPU but are not rounded here.
Random weights (the preset's shapes), one image through vae_encoder and one latent frame through vae_decoder_first.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):
    if importlib.util.find_spec(package) is None:
        sys.path.append(str(path))

import torch  # noqa: E402


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest TF32 value (1 sign, 8 exponent, 10 mantissa bits), kept in an fp32 tensor."""
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0x0FFF + lsb) & ~0x1FFF  # round half to even on the 13 dropped bits
    return rounded.view(torch.float32)


def tf32_hooks(model: torch.nn.Module) -> list:
    """Round the inputs and weights of every Conv/Linear of `model` to TF32 while the hooks are on."""
    layers = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    handles = []
    for module in model.modules():
        if isinstance(module, layers):
            def pre(mod, args):
                mod._fp32_weight = mod.weight.data
                mod.weight.data = round_to_tf32(mod.weight.data)
                return tuple(round_to_tf32(a) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

            def post(mod, args, output):
                mod.weight.data = mod._fp32_weight
                del mod._fp32_weight

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def errors(actual: np.ndarray, expected: np.ndarray) -> dict:
    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    diff = np.abs(a - e)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / np.abs(e).max()),
            "rel_l2": float(np.linalg.norm(a - e) / np.linalg.norm(e)),
            "elementwise_rel_p99": float(np.quantile(diff / np.maximum(np.abs(e), 1e-3), 0.99))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ti2v-5b")
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT of the image / decoded frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from wan_export.components import RequestPoint, component_specs
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    width, height = (int(v) for v in args.size.split("x"))
    profile = load_profile("tiny")
    source = weight_source(None, args.preset, args.seed, profile.sampling)
    limits = profile.limits
    specs = {s.name: s for s in component_specs(source.config, limits)}
    started = time.perf_counter()
    model = source.load("vae")
    print(f"{args.preset} VAE, random weights, loaded in {time.perf_counter() - started:.0f} s; {width}x{height}")
    point = RequestPoint(width, height, 1, 1)
    for name in ("vae_encoder", "vae_decoder_first"):
        spec = specs[name]
        graph = spec.graph(model).eval()
        feeds = spec.sample(point, np.random.default_rng(args.seed))
        inputs = spec.pack([torch.from_numpy(np.array(feeds[t.name])) for t in spec.inputs])
        with torch.no_grad():
            reference = graph(*inputs)
            handles = tf32_hooks(graph)
            try:
                emulated = graph(*inputs)
            finally:
                for handle in handles:
                    handle.remove()
        first = lambda out: (out[0] if isinstance(out, (tuple, list)) else out).numpy()  # noqa: E731
        result = errors(first(emulated), first(reference))
        print(f"{name} ({spec.outputs[0].name}): " + ", ".join(f"{k} {v:.2e}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
