"""Reduced-precision graphs for ONNX Runtime, and the placement of components on the CPU.

The reduced-precision graphs are the same exports the TensorRT builds use: the reference module's weights cast
to bf16/fp16 except the official fp32 islands (`cast_for_precision`: norms, modulation, RoPE, time embedding stay
fp32 and the model code computes them in fp32), exported by torch.onnx. No ONNX-level float16 converter
(onnxconverter-common) is involved: it would round the islands too, which the official code keeps fp32.

ONNX Runtime runs them on CUDA (its bf16/fp16 MatMul, Attention and convolution kernels). On the CPU provider
only fp16 graphs run (no bf16 MatMul kernel), so accuracy checks of bf16 graphs on a CPU use onnx's reference
evaluator (`ReferenceEvaluatorRunner`), slow but exact in its arithmetic.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

import numpy as np

from wan_export.profiles import PRECISION_KEYS, PRECISIONS
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")

PLACEMENTS = ("gpu", "cpu")
PLACEABLE = ("text_encoder",)  # the official t5_cpu; the DiT and VAE on a CPU would take hours per video


def parse_precision(text: str) -> dict:
    """`--precision bf16` (every component) or `--precision dit=fp16,text_encoder=bf16` -> {key: precision}."""
    wanted = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.rpartition("=")
        keys = [key] if sep else list(PRECISION_KEYS)
        if sep and key not in PRECISION_KEYS:
            raise WanError(f"--precision {text!r}: unknown component {key!r}; choose from {', '.join(PRECISION_KEYS)}")
        if value not in PRECISIONS:
            raise WanError(f"--precision {text!r}: {value!r} is not one of {', '.join(PRECISIONS)}")
        wanted.update(dict.fromkeys(keys, value))
    if not wanted:
        raise WanError("--precision needs a value, e.g. bf16 or dit=bf16,text_encoder=bf16")
    return wanted


def parse_placement(text: str) -> dict:
    """`--place text_encoder=cpu` -> {"text_encoder": "cpu"}."""
    key, sep, value = text.partition("=")
    if not sep or key not in PLACEABLE or value not in PLACEMENTS:
        raise WanError(f"--place {text!r}: write COMPONENT=DEVICE with COMPONENT in {', '.join(PLACEABLE)} and "
                       f"DEVICE in {', '.join(PLACEMENTS)} (e.g. --place text_encoder=cpu)")
    return {key: value}


def check_placement(placement: dict, source: str = "profile") -> dict:
    for key, value in placement.items():
        if key not in PLACEABLE or value not in PLACEMENTS:
            raise WanError(f"{source}: placement.{key} = {value!r}; only {', '.join(PLACEABLE)} can be placed, on "
                           f"one of {', '.join(PLACEMENTS)}")
    return dict(placement)


def on_cpu(placement: dict, key: str) -> bool:
    return placement.get(key) == "cpu"


def component_precision(wanted: str, key: str, backend: str, placement: dict) -> str:
    """The precision one component group is exported at, given the profile's wish, the backend and placement.

    - placed on the CPU: fp32 (ONNX Runtime's CPU provider has no bf16 MatMul, and fp16 overflows in umT5's
      feed-forward layers; the official t5_cpu runs bf16 in PyTorch, which ONNX Runtime's CPU cannot);
    - umT5 at fp16 on ONNX Runtime is refused: its feed-forward activations exceed fp16's range (the official
      code clamps them, losing information); bf16 keeps fp32's range.
    """
    if on_cpu(placement, key):
        if wanted != "fp32":
            log.info("%s: placed on the CPU, exported at fp32 (ONNX Runtime's CPU provider has no %s MatMul)", key,
                     wanted)
        return "fp32"
    if backend == "onnxruntime" and key == "text_encoder" and wanted == "fp16":
        raise WanError("text_encoder at fp16 overflows in umT5's feed-forward layers; use bf16 (GPU) or fp32 "
                       "(e.g. --precision text_encoder=bf16)")
    return wanted


def _normalization_ops() -> list:
    """onnx's reference RMSNormalization computes bf16 inputs in bf16 whatever `stash_type` says; the spec (and
    ONNX Runtime CUDA, and the official T5LayerNorm's `x.float()`) compute in float32 when stash_type is 1. Measured
    on the tiny bf16 umT5: 0.19 max rel vs the fp32 reference with onnx's version, 0.064 with this one (PyTorch's
    own bf16 module: 0.066)."""
    from onnx.reference.op_run import OpRun

    class RMSNormalization(OpRun):
        def _run(self, x, scale, axis=None, epsilon=None, stash_type=None):
            axis = self.axis if axis is None else axis
            epsilon = self.epsilon if epsilon is None else epsilon
            stash_type = self.stash_type if stash_type is None else stash_type
            compute = np.float32 if stash_type == 1 else x.dtype
            values = x.astype(compute)
            axes = tuple(range(axis % x.ndim, x.ndim))
            normed = values / np.sqrt(np.mean(values * values, axis=axes, keepdims=True) + epsilon)
            return ((normed * scale.astype(compute)).astype(x.dtype),)

    return [RMSNormalization]


class ReferenceEvaluatorRunner:
    """A polygraphy runner over onnx's reference evaluator: runs bf16 graphs on a CPU, where ONNX Runtime's CPU
    provider lacks the kernels. Made lazily (polygraphy's BaseRunner is imported by the caller's module)."""

    def __new__(cls, path: str, name: str):
        from polygraphy.backend.base import BaseRunner
        from polygraphy.common import TensorMetadata

        class _Runner(BaseRunner):
            def activate_impl(self):
                import onnx
                from onnx.reference import ReferenceEvaluator

                self.model = onnx.load(path)
                self.evaluator = ReferenceEvaluator(self.model, new_ops=_normalization_ops())

            def get_input_metadata_impl(self):
                import onnx.helper

                metadata = TensorMetadata()
                for tensor in self.model.graph.input:
                    kind = tensor.type.tensor_type
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
                    metadata.add(tensor.name, dtype, [d.dim_value if d.dim_value else -1 for d in kind.shape.dim])
                return metadata

            def infer_impl(self, feed_dict):
                started = time.perf_counter()
                outputs = self.evaluator.run(None, dict(feed_dict))
                self.inference_time = time.perf_counter() - started
                names = [o.name for o in self.model.graph.output]
                return OrderedDict((n, np.asarray(v)) for n, v in zip(names, outputs))

            def deactivate_impl(self):
                self.evaluator = self.model = None

        return _Runner(name=name, prefix="onnx-reference")


def cpu_graph_runner(path: str, precision: str, name: str):
    """The polygraphy runner that executes an ONNX graph on this CPU: ONNX Runtime, or for bf16 graphs (no CPU
    kernels in ONNX Runtime) onnx's reference evaluator."""
    if precision == "bf16":
        return ReferenceEvaluatorRunner(path, f"onnx-reference:{name}")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(path, providers=["CPUExecutionProvider"]), name=f"onnxruntime:{name}")


def override_profile(profile, precision_text: str | None, placements: tuple[str, ...]):
    """The profile with `--precision` and `--place` applied (logged: the manifest records the result)."""
    import dataclasses

    precision = {**profile.precision, **(parse_precision(precision_text) if precision_text else {})}
    placement = dict(profile.placement)
    for text in placements:
        placement.update(parse_placement(text))
    placement = {key: value for key, value in placement.items() if value != "gpu"}
    log.info("precision %s; placement %s", precision, placement or "all on the build's backend")
    return dataclasses.replace(profile, precision=precision, placement=placement)


def graph_weight_bytes(config, spec, precision: str) -> int:
    """Bytes of one graph's weights at `precision`, from the config's parameter shapes (nothing allocated): what
    `cast_for_precision` keeps fp32 (the spec's islands) counts 4 bytes, the rest 2 (bf16/fp16) or 4 (fp32)."""
    from wan_export.disk import parameter_counts

    counts = parameter_counts(spec.weights, config)
    prefixes = spec.weight_prefixes
    islands = tuple(getattr(spec, "fp32_modules", ()) or ())
    total = 0
    for name, count in counts.items():
        if prefixes is not None and not name.startswith(tuple(prefixes)):
            continue
        keep_fp32 = precision == "fp32" or any(part in islands for part in name.split("."))
        total += count * (4 if keep_fp32 else 2)
    return total
