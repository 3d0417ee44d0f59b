"""ONNX Runtime backend: one InferenceSession per component graph."""
from __future__ import annotations

import os

import numpy as np

from wan_rt.backends.base import Runner
from wan_rt.errors import WanError


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    requested = os.environ.get("WAN_RT_ORT_PROVIDERS")
    return requested.split(",") if requested else preferred


class OrtRunner(Runner):
    def _open(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=default_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WanError(f"{self.path}: ONNX Runtime cannot load this graph ({first_line}); rebuild the engines") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def _close(self):
        self.session = None
