"""Build a reference module and fill it with a checked state dict without holding two copies in memory."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def load_module(factory: Callable[[], nn.Module], state_dict: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """Construct on the meta device, then adopt the checkpoint tensors (`assign=True`), then cast if asked.

    Buffers the checkpoint does not hold (none in the DiT or T5; the VAE's latent statistics) are
    rebuilt by constructing that one module normally and copying them over.
    """
    with torch.device("meta"):
        module = factory()
    module.load_state_dict(state_dict, strict=True, assign=True)
    meta_buffers = [name for name, buffer in module.named_buffers() if buffer.is_meta]
    if meta_buffers:
        fresh = dict(factory().named_buffers())
        for name in meta_buffers:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[leaf] = fresh[name]
    if dtype is not None:
        module = module.to(dtype)
    return module.eval()
