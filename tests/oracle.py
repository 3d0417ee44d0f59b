"""The official Wan2.2 code (PyPI `wan22`, import name `wan`) loaded on CPU as a test oracle.

Three shims from REFERENCE.md section 11, applied here and nowhere else:
1. `wan/__init__.py` pulls in heavy optional modules: register a bare package module first.
2. `wan/modules/t5.py` calls `torch.cuda.current_device()` in a default argument at import.
3. `flash_attention` asserts CUDA: swap in an fp32 `scaled_dot_product_attention` that honours k_lens.
torchvision is only used for `to_tensor` and (by `save_video`) `make_grid`; where the real torchvision does not
load, a stand-in with those two is registered while the official modules import.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from requires import require


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

    def make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None, scale_each=False, pad_value=0.0):
        """torchvision.utils.make_grid for what save_video passes: one [1, 3, H, W] image, normalize with a range
        (its code path: clone, clamp_, sub_(low).div_(max(high - low, 1e-5)), squeeze(0)). Anything else raises,
        and save_video's writer then receives nothing (official_uint8_frames says so)."""
        if not (tensor.dim() == 4 and tensor.size(0) == 1 and tensor.size(1) == 3 and normalize is True
                and value_range is not None and not scale_each):
            raise NotImplementedError("the torchvision stand-in's make_grid covers one normalized RGB image only")
        tensor = tensor.clone()
        low, high = value_range
        tensor.clamp_(min=low, max=high)
        tensor.sub_(low).div_(max(high - low, 1e-5))
        return tensor.squeeze(0)

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor = to_tensor
    transforms.functional = functional
    tv.transforms = transforms
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = make_grid
    tv.utils = utils
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
            "torchvision.utils": utils}


def load_official() -> types.SimpleNamespace:
    """Import the official modules; a missing `wan22` skips the calling test (fails it under CI)."""
    if not hasattr(sys.modules.get("wan"), "_wan_deploy_shim"):
        spec = importlib.util.find_spec("wan")
        require(spec is not None and spec.origin is not None,
                "official Wan2.2 code not installed: pip install --no-deps wan22==2.2.11")
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


def official_uint8_frames(official, video: torch.Tensor) -> np.ndarray:
    """The uint8 frames [T, H, W, 3] the official `wan.utils.utils.save_video` hands to its video writer for
    `save_video(tensor=video[None], save_file=..., fps=..., nrow=1, normalize=True, value_range=(-1, 1))`, the call
    in the official generate.py; `video` is [3, T, H, W]. Captured at `imageio.get_writer`, so no file is encoded.
    save_video turns any error into a log line: that line is raised here instead of returning nothing."""
    frames, failures = [], []

    class CapturingWriter:
        def append_data(self, frame):
            frames.append(np.array(frame, copy=True))

        def close(self):
            pass

    class LogCapture(logging.Handler):
        def emit(self, record):
            failures.append(record.getMessage())

    utils = official.utils
    real_imageio, handler = utils.imageio, LogCapture(logging.INFO)
    utils.imageio = types.SimpleNamespace(get_writer=lambda *args, **kwargs: CapturingWriter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        utils.save_video(tensor=video[None], save_file="never-written.mp4", fps=24, nrow=1, normalize=True,
                         value_range=(-1, 1))
    finally:
        utils.imageio = real_imageio
        root.removeHandler(handler)
        root.setLevel(level)
    failed = [line for line in failures if "save_video failed" in line]
    if failed or len(frames) != video.shape[1]:
        raise AssertionError(f"official save_video handed {len(frames)} of {video.shape[1]} frames to its writer: "
                             f"{failed}")
    return np.stack(frames)


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
