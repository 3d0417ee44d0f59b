"""Engine specs, one per exported graph, in build order."""
from __future__ import annotations

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.components.dit import dit_specs
from wan_export.components.text_encoder import text_encoder_spec
from wan_export.components.vae import vae_specs
from wan_export.config import ModelConfig
from wan_rt.shapes import ShapeLimits


def component_specs(config: ModelConfig, limits: ShapeLimits) -> list[ComponentSpec]:
    return [text_encoder_spec(config, limits), *dit_specs(config, limits), *vae_specs(config, limits)]


__all__ = ["ComponentSpec", "RequestPoint", "TensorSpec", "component_specs"]
