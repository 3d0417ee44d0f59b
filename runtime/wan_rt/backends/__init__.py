"""Backends that run one component graph: `open_runner(manifest, name)` picks by the manifest's backend."""
from __future__ import annotations

from wan_rt.backends.base import Runner, check_feeds
from wan_rt.errors import WanError
from wan_rt.manifest import Manifest


def open_runner(manifest: Manifest, name: str) -> Runner:
    component = manifest.component(name)
    path = manifest.path(name)
    if component.backend == "onnxruntime":
        from wan_rt.backends.ort import OrtRunner

        return OrtRunner(component, path)
    if component.backend in ("tensorrt", "tensorrt-rtx"):
        from wan_rt.backends.trt import TrtRunner

        return TrtRunner(component, path)
    raise WanError(f"{name}: unknown backend {component.backend!r} in the manifest; rebuild the engines")


__all__ = ["Runner", "check_feeds", "open_runner"]
