"""One spec per engine graph: its I/O contract, dynamic axes and ranges, the module to export, sample inputs.

Export, build, check and the manifest all ask the same object (pattern of the TensorRT demo's BaseModel,
with one table for axes and ranges instead of several methods that can disagree).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch.nn as nn

from wan_export.config import ModelConfig
from wan_rt.shapes import ShapeLimits


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints, dim names, or "dim*k" for an axis k times a named dim

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestPoint:
    """One request shape: the size a user asks for, from which every component's dims follow."""

    width: int
    height: int
    frames: int
    batch: int

    @classmethod
    def default(cls, limits: ShapeLimits) -> "RequestPoint":
        return cls(*limits.default_size, limits.default_frames, limits.batch[1])


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # engine name in the manifest
    weights: str  # checkpoint part it is made from: "t5" | "dit" | "vae"
    precision_key: str  # key in the profile's [precision] table
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict  # dim name -> (min, opt, max)
    graph: Callable[[nn.Module], nn.Module]  # wraps the loaded model into forward(*inputs) -> outputs
    sample: Callable[[RequestPoint, np.random.Generator], dict]  # input name -> array, for a request shape
    # Parameter name prefixes kept float32 when the component is exported in bf16/fp16 (official fp32 islands).
    fp32_modules: tuple[str, ...] = field(default_factory=tuple)
    # Inputs from this index on reach `graph.forward` packed in one tuple argument (the decoder caches).
    packed_from: int | None = None
    # Parameter name prefixes of the part whose weights the graph embeds (None: all of them); sizes the build.
    weight_prefixes: tuple[str, ...] | None = None

    def pack(self, values: list) -> tuple:
        """Per-input values (tensors, dynamic-shape dicts) arranged as `graph.forward` takes them."""
        if self.packed_from is None:
            return tuple(values)
        return (*values[: self.packed_from], tuple(values[self.packed_from:]))

    def dim_values(self, point: RequestPoint) -> dict[str, int]:
        """Concrete dim values of the sample inputs at `point` (for TensorRT profiles and checks)."""
        arrays = self.sample(point, np.random.default_rng(0))
        values = {}
        for tensor in self.inputs:
            for size, dim in zip(arrays[tensor.name].shape, tensor.shape):
                if isinstance(dim, str) and "*" not in dim:
                    values[dim] = size
        return values

    def manifest_io(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "dims": {name: list(r) for name, r in self.dims.items()}}


SpecFactory = Callable[[ModelConfig, ShapeLimits], list[ComponentSpec]]
