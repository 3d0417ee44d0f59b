"""The export-friendly PyTorch reference of Wan2.2 TI2V-5B, one module per checkpoint part."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from wan_export.config import ModelConfig

PARTS = ("t5", "dit", "vae")


def component_factory(part: str, config: ModelConfig) -> Callable[[], nn.Module]:
    """A constructor of the reference module for checkpoint part "t5", "dit" or "vae"."""
    from wan_export.model.dit import WanDiT
    from wan_export.model.t5 import UMT5Encoder
    from wan_export.model.vae import WanVAE

    factories = {"dit": lambda: WanDiT(config.dit), "vae": lambda: WanVAE(config.vae),
                 "t5": lambda: UMT5Encoder(config.t5)}
    return factories[part]
