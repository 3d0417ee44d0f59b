"""Engine builds from the exported ONNX graphs: TensorRT (on a GPU) and TensorRT for RTX (ahead of time, on CPU).

`library.py` holds every difference between the two libraries; `builder.py` is the one build path for both.
"""
from wan_export.trt.builder import (
    EngineRequest,
    build_engine,
    check_can_build,
    engine_header_info,
    gpu_compute_capability,
    inspect_engine,
    library_available,
)

__all__ = ["EngineRequest", "build_engine", "check_can_build", "engine_header_info", "gpu_compute_capability",
           "inspect_engine", "library_available"]
