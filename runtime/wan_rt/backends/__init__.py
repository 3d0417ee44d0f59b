"""Backends that run one component graph: `open_runner(manifest, name)` picks by the manifest's backend."""
from __future__ import annotations

import logging

from wan_rt.backends.base import DeviceTensor, Runner, TransferCounter, check_feeds
from wan_rt.errors import WanError
from wan_rt.manifest import Manifest


log = logging.getLogger("wan_rt")
_said_ignored: set[str] = set()  # runner options already logged as ignored by ONNX Runtime (one line each)


def open_runner(manifest: Manifest, name: str, gpu_memory_budget: float | None = None) -> Runner:
    """`gpu_memory_budget` (GB): the weight-streaming budget of each TensorRT engine (built --weight-streaming)."""
    component = manifest.component(name)
    path = manifest.path(name)
    if component.backend == "onnxruntime":
        from wan_rt.backends.ort import OrtRunner

        if gpu_memory_budget is not None and "gpu_memory_budget" not in _said_ignored:
            _said_ignored.add("gpu_memory_budget")
            log.info("--gpu-memory-budget ignored: it is a TensorRT weight-streaming setting, and these are ONNX "
                     "Runtime engines")
        return OrtRunner(component, path)
    if component.backend in ("tensorrt", "tensorrt-rtx"):
        from wan_rt.backends.trt import TrtRunner

        return TrtRunner(component, path, gpu_memory_budget=gpu_memory_budget)
    raise WanError(f"{name}: unknown backend {component.backend!r} in the manifest; rebuild the engines")


__all__ = ["DeviceTensor", "Runner", "TransferCounter", "check_feeds", "open_runner"]
