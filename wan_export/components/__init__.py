"""Engine specs, one per exported graph, in build order."""
from __future__ import annotations

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.components.dit import dit_specs
from wan_export.components.text_encoder import text_encoder_spec
from wan_export.components.vae import vae_specs
from wan_export.config import ModelConfig
from wan_rt.shapes import ShapeLimits


def component_specs(config: ModelConfig, limits: ShapeLimits, tiny_vae=None) -> list[ComponentSpec]:
    """`tiny_vae`: the TinyVAEConfig of a TAEHV decoder to export too (`--tiny-vae`), or None."""
    specs = [text_encoder_spec(config, limits), *dit_specs(config, limits), *vae_specs(config, limits)]
    if tiny_vae is not None:
        from wan_export.components.tiny_vae import tiny_vae_spec

        specs.append(tiny_vae_spec(limits, tiny_vae))
    return specs


__all__ = ["ComponentSpec", "RequestPoint", "TensorSpec", "component_specs"]
