"""Export one component graph to ONNX (torch.onnx dynamo exporter) with its dynamic axes.

Weights past `external_data_threshold` bytes go to `<name>.onnx.data` beside the graph (protobuf files
cannot exceed 2 GB). The dynamo exporter is the one NVIDIA's TensorRT demo uses for Wan transformers.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")

# 23: scaled_dot_product_attention exports as the ONNX Attention op, which TensorRT turns into a fused
# flash-attention kernel; decomposed MatMul-Softmax-MatMul would materialize [B, heads, L, L] (71 GB at 720p).
OPSET = 23
PROTOBUF_LIMIT = 2**31 - 1  # bytes
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_for_precision(module: nn.Module, precision: str, fp32_modules: tuple[str, ...]) -> nn.Module:
    """Weights to `precision`, except parameters under any of `fp32_modules` (the official fp32 islands)."""
    dtype = TORCH_DTYPES[precision]
    if dtype == torch.float32:
        return module.float()
    for name, param in module.named_parameters():
        keep_fp32 = any(part in fp32_modules for part in name.split("."))
        param.data = param.data.to(torch.float32 if keep_fp32 else dtype)
    return module


def torch_dynamic_shapes(spec: ComponentSpec) -> tuple:
    """Per-input {axis: Dim} for torch.export, "dim*k" axes as derived dims k*Dim."""
    # A dim whose range is one value is exported static (torch.export cannot make it dynamic).
    dims = {name: torch.export.Dim(name, min=low, max=high) for name, (low, _, high) in spec.dims.items()
            if low < high}
    shapes = []
    for tensor in spec.inputs:
        axes = {}
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, str) and dim.partition("*")[0] in dims:
                name, _, factor = dim.partition("*")
                axes[axis] = dims[name] * int(factor) if factor else dims[name]
        shapes.append(axes)
    return spec.pack(shapes)


def _as_tensor(array) -> torch.Tensor:
    """The sample input as a tensor sharing its memory (a copy only when read-only): the 720p decoder step's
    sample caches are 6.4 GB, which a copy would hold twice."""
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(spec: ComponentSpec, model: nn.Module, out_dir: Path, point: RequestPoint,
                 external_data_threshold: int = PROTOBUF_LIMIT) -> list[str]:
    """Write `<spec.name>.onnx` (+ `.onnx.data` when large) into out_dir; returns the file names written."""
    graph = spec.graph(model).eval()
    feeds = spec.sample(point, np.random.default_rng(0))
    args = spec.pack([_as_tensor(feeds[t.name]) for t in spec.inputs])
    path = out_dir / f"{spec.name}.onnx"
    external = weight_bytes(graph) > external_data_threshold
    if not log.isEnabledFor(logging.DEBUG):  # "torchvision is not installed" per export: noise for our graphs
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    chatter = io.StringIO()  # the exporter prints its steps; keep them for debug logging
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph, args, dynamo=True, dynamic_shapes=torch_dynamic_shapes(spec), opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                verbose=False)
        except Exception as exc:
            raise WanError(f"{spec.name}: ONNX export failed ({type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    log.debug("%s exporter output:\n%s", spec.name, chatter.getvalue())
    program.save(str(path), external_data=external)
    files = [path.name]
    data_file = path.with_name(path.name + ".data")
    if external and data_file.exists():
        files.append(data_file.name)
    log.info("%s: exported %s (%.1f MB of weights%s)", spec.name, path.name, weight_bytes(graph) / 1e6,
             ", external data" if external else "")
    return files
