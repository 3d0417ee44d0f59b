"""The official Wan2.2 code (PyPI `wan22`, import name `wan`) loaded on CPU as a test oracle.

Three shims from REFERENCE.md section 11, applied here and nowhere else:
1. `wan/__init__.py` pulls in heavy optional modules: register a bare package module first.
2. `wan/modules/t5.py` calls `torch.cuda.current_device()` in a default argument at import.
3. `flash_attention` asserts CUDA: swap in an fp32 `scaled_dot_product_attention` that honours k_lens.
torchvision is only used for `to_tensor`; a tiny stand-in is registered while the official modules import.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                          q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                          dtype=torch.bfloat16, version=None):
    out_dtype = q.dtype
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, heads, L, d]
    mask = None
    if k_lens is not None:
        positions = torch.arange(kf.shape[2])
        mask = positions[None, :] < k_lens.to(torch.long)[:, None]  # [B, Lk]
        mask = mask[:, None, None, :]
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2).to(out_dtype)


def _torchvision_standin() -> dict:
    """Modules to register while the official code imports, when the real torchvision does not load."""
    try:
        import torchvision.transforms.functional  # noqa: F401
        return {}
    except Exception:  # PyPI torchvision does not load beside the local CPU torch build
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]

    def to_tensor(pic):
        array = np.asarray(pic, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor = to_tensor
    transforms.functional = functional
    tv.transforms = transforms
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def load_official() -> types.SimpleNamespace:
    """Import the official modules; skips the calling test when `wan22` is not installed."""
    if not hasattr(sys.modules.get("wan"), "_wan_deploy_shim"):
        spec = importlib.util.find_spec("wan")
        if spec is None or spec.origin is None:
            pytest.skip("official Wan2.2 code not installed: pip install --no-deps wan22==2.2.11")
        package = types.ModuleType("wan")
        package.__path__ = [os.path.dirname(spec.origin)]
        package.__spec__ = importlib.machinery.ModuleSpec("wan", None, is_package=True)
        package.__spec__.submodule_search_locations = package.__path__
        package._wan_deploy_shim = True
        sys.modules["wan"] = package
    # Before the stand-in: diffusers and transformers record (and cache) whether torchvision is installed.
    importlib.import_module("diffusers")
    importlib.import_module("transformers.utils.import_utils").is_torchvision_available()
    # The stand-in is visible only while the official modules import (they keep their reference to it),
    # so diffusers and transformers never mistake it for the real torchvision later.
    standin = _torchvision_standin()
    sys.modules.update(standin)
    real_current_device = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"
    try:
        t5 = importlib.import_module("wan.modules.t5")
        model = importlib.import_module("wan.modules.model")
        modules = types.SimpleNamespace(
            model=model,
            t5=t5,
            vae=importlib.import_module("wan.modules.vae2_2"),
            tokenizers=importlib.import_module("wan.modules.tokenizers"),
            unipc=importlib.import_module("wan.utils.fm_solvers_unipc"),
            dpm=importlib.import_module("wan.utils.fm_solvers"),
            utils=importlib.import_module("wan.utils.utils"),
            pipeline=importlib.import_module("wan.textimage2video"),
            config=importlib.import_module("wan.configs.wan_ti2v_5B"),
        )
    finally:
        torch.cuda.current_device = real_current_device
        for name in standin:
            sys.modules.pop(name, None)
    model.flash_attention = _sdpa_flash_attention
    return modules


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Fill every parameter with seeded random values (official init zeroes the head)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


def max_rel_error(actual, expected) -> float:
    """max |a - e| / max |e|: relative to the reference's scale, stable where e crosses zero."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))
