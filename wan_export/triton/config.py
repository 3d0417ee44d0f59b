"""Triton model configurations (config.pbtxt, protobuf text format) for the wan_video pipeline and the engines.

Written as text (no protobuf needed to write a repository); `check_config` parses one back with Triton's
model-config protobuf when `tritonclient` is installed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from wan_rt.errors import WanError
from wan_rt.manifest import ComponentInfo, TensorInfo

TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}

# platform option -> (platform line or None, backend, instance kind, default model file name)
PLATFORMS = {
    "python": (None, "python", "KIND_CPU"),
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime", "KIND_AUTO"),
    "tensorrt": ("tensorrt_plan", "tensorrt", "KIND_GPU"),
}


def quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = (str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


@dataclass
class Tensor:
    name: str
    data_type: str  # TYPE_*
    dims: list
    optional: bool = False
    comment: str = ""

    def render(self, indent: str) -> str:
        lines = [f"{indent}{{"]
        if self.comment:
            lines.append(f"{indent}  # {self.comment}")
        lines += [f"{indent}  name: {quote(self.name)}", f"{indent}  data_type: {self.data_type}",
                  f"{indent}  dims: [ {', '.join(str(d) for d in self.dims)} ]"]
        if self.optional:
            lines.append(f"{indent}  optional: true")
        lines.append(f"{indent}}}")
        return "\n".join(lines)


@dataclass
class ModelConfig:
    name: str
    backend: str
    inputs: list
    outputs: list
    platform: str | None = None
    instances: int = 1
    kind: str = "KIND_CPU"
    default_model_filename: str | None = None
    parameters: dict = field(default_factory=dict)
    header: list = field(default_factory=list)  # comment lines at the top

    def render(self) -> str:
        lines = [f"# {line}" if line else "#" for line in self.header]
        lines.append(f"name: {quote(self.name)}")
        if self.platform:
            lines.append(f"platform: {quote(self.platform)}")
        lines.append(f"backend: {quote(self.backend)}")
        lines.append("max_batch_size: 0  # the batch axis, where there is one, is part of the dims")
        if self.default_model_filename:
            lines.append(f"default_model_filename: {quote(self.default_model_filename)}")
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{key} [")
            lines.append(",\n".join(tensor.render("  ") for tensor in tensors))
            lines.append("]")
        lines.append(f"instance_group [ {{ count: {self.instances} kind: {self.kind} }} ]")
        for key, value in self.parameters.items():
            lines.append(f"parameters: {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}")
        return "\n".join(lines) + "\n"


def triton_dtype(tensor: TensorInfo, component: str) -> str:
    if tensor.dtype not in TRITON_DTYPES:
        raise WanError(f"{component}: tensor {tensor.name} has dtype {tensor.dtype}, which Triton has no type for")
    return TRITON_DTYPES[tensor.dtype]


def dims_of(tensor: TensorInfo) -> list:
    """Triton dims: fixed axes as they are, dynamic ones (named in the manifest) as -1."""
    return [axis if isinstance(axis, int) else -1 for axis in tensor.shape]


def _range_text(axis, dims: dict) -> str:
    if isinstance(axis, int):
        return str(axis)
    name, _, factor = axis.partition("*")
    factor = int(factor or 1)
    low, opt, high = dims[name]
    return f"{axis}={low * factor}..{high * factor} (opt {opt * factor})"


def component_tensors(component: ComponentInfo, which: str) -> list:
    tensors = component.inputs if which == "input" else component.outputs
    return [Tensor(t.name, triton_dtype(t, component.name), dims_of(t),
                   comment=f"{t.dtype} [{', '.join(_range_text(a, component.dims) for a in t.shape)}]")
            for t in tensors]


def component_config(component: ComponentInfo, platform: str, instances: int, parameters: dict,
                     model_name: str | None = None, default_model_filename: str | None = None) -> ModelConfig:
    platform_line, backend, kind = PLATFORMS[platform]
    ranges = ", ".join(f"{name} {low}..{high} (opt {opt})" for name, (low, opt, high) in component.dims.items())
    parameters = {**parameters,
                  "wan_dims": json.dumps({name: list(value) for name, value in component.dims.items()}),
                  "wan_shapes": json.dumps({t.name: list(t.shape) for t in (*component.inputs, *component.outputs)})}
    return ModelConfig(
        name=model_name or component.name, backend=backend, platform=platform_line, instances=instances, kind=kind,
        inputs=component_tensors(component, "input"), outputs=component_tensors(component, "output"),
        default_model_filename=default_model_filename, parameters=parameters,
        header=[f"wan-deploy engine {component.name}: {component.backend}, {component.precision}, file "
                f"{component.file}",
                f"dynamic axes (min..max, opt): {ranges or 'none'}; a shape outside them is refused",
                "-1 in dims: a dynamic axis; its range is in the wan_dims parameter, each tensor's symbolic "
                "shape in wan_shapes"])


def pipeline_config(name: str, instances: int, parameters: dict, limits, sampling: dict) -> ModelConfig:
    scalar = [1]
    inputs = [
        Tensor("prompt", "TYPE_STRING", scalar, comment="UTF-8 text"),
        Tensor("negative_prompt", "TYPE_STRING", scalar, optional=True, comment="default: the official one"),
        Tensor("image", "TYPE_UINT8", [-1, -1, 3], optional=True,
               comment="RGB [H, W, 3]: image-to-video (resized and cropped to the area width*height)"),
        Tensor("seed", "TYPE_INT64", scalar, optional=True, comment="default: random (returned in seed_used)"),
        Tensor("steps", "TYPE_INT32", scalar, optional=True, comment=f"default {sampling.get('steps')}"),
        Tensor("width", "TYPE_INT32", scalar, optional=True,
               comment=f"{limits.width[0]}..{limits.width[1]}, multiple of {limits.multiple}, default "
                       f"{limits.default_size[0]}"),
        Tensor("height", "TYPE_INT32", scalar, optional=True,
               comment=f"{limits.height[0]}..{limits.height[1]}, area <= {limits.max_area}, default "
                       f"{limits.default_size[1]}"),
        Tensor("frames", "TYPE_INT32", scalar, optional=True,
               comment=f"4n+1 in {limits.frames[0]}..{limits.frames[1]}, default {limits.default_frames}"),
        Tensor("guide_scale", "TYPE_FP32", scalar, optional=True, comment=f"default {sampling.get('guide_scale')}"),
        Tensor("shift", "TYPE_FP32", scalar, optional=True, comment=f"default {sampling.get('shift')}"),
        Tensor("solver", "TYPE_STRING", scalar, optional=True,
               comment=f"unipc | dpm++ | euler, default {sampling.get('solver')}"),
        Tensor("fps", "TYPE_INT32", scalar, optional=True, comment=f"of the mp4, default {sampling.get('fps')}"),
        Tensor("cache", "TYPE_STRING", scalar, optional=True,
               comment="step caching: none | magcache | teacache | easycache, default none"),
        Tensor("cache_threshold", "TYPE_FP32", scalar, optional=True,
               comment="0..1, default the cache's calibrated one (magcache 0.06, teacache 0.26, easycache 0.05)"),
        Tensor("decoder", "TYPE_STRING", scalar, optional=True,
               comment="full | tiny (the TAEHV decoder, when the engines have one), default full"),
    ]
    outputs = [
        Tensor("video", "TYPE_UINT8", [-1, -1, -1, 3], comment="frames [F, H, W, 3] RGB"),
        Tensor("mp4", "TYPE_STRING", scalar, comment="the H.264 MP4 file's bytes"),
        Tensor("seed_used", "TYPE_INT64", scalar, comment="the noise seed (-1: none)"),
    ]
    return ModelConfig(name=name, backend="python", inputs=inputs, outputs=outputs, instances=instances,
                       kind="KIND_CPU", parameters=parameters,
                       header=["wan-deploy pipeline: prompt (+ optional image) -> video, the wan-rt host loop",
                               "scalars are shape [1]; a missing optional input takes the engines' default"])


def check_config(text: str, where: str = "config.pbtxt"):
    """Parse with Triton's ModelConfig protobuf (tritonclient); returns the message, or None without tritonclient."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise WanError(f"{where}: not a valid Triton model config ({exc}); this is a wan-export bug") from None
