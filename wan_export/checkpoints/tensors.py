"""Reading weight files: safetensors (single or sharded with an index) and `.pth` state dicts.

`.pth` files are untrusted input: always `weights_only=True`, memory-mapped so the 11 GB T5 file is not
read twice. Tensors keep their stored dtype (bf16 stays bf16) until a caller converts them.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from wan_rt.errors import WanError


def safetensors_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards named by `stem.safetensors.index.json`."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise WanError(f"{index}: not a safetensors index ({exc}); re-download the checkpoint") from None
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(path) for path in shards if not path.is_file()]
        if missing:
            raise WanError(f"{index} names missing shard files: {', '.join(missing)}")
        return shards
    raise WanError(f"no {stem}.safetensors (or .safetensors.index.json) in {folder}")


def _reason(exc: BaseException) -> str:
    """The informative part of a library's error message, on one line (torch's weights-only errors span
    paragraphs and advise `weights_only=False` or allow-listing globals, advice that must not reach users)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")
    for line in (line.strip() for line in text.splitlines()):
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if not line or line.startswith(boilerplate):
            continue
        return re.split(r"(?<=\.)\s", " ".join(line.split()))[0]  # first sentence: drops allow-listing advice
    return type(exc).__name__


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WanError(f"{path}: unreadable safetensors file ({_reason(exc)}); re-download the checkpoint") from None
    return shapes


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                      "I32": "int32", "U8": "uint8", "BOOL": "bool"}


def load_safetensors(files: list[Path], shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the files; with shapes_only, meta tensors of the right shape and dtype (no data read)."""
    tensors = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if shapes_only:
                        view = handle.get_slice(key)
                        dtype = getattr(torch, SAFETENSORS_DTYPES.get(view.get_dtype(), "float32"))
                        tensors[key] = torch.empty(view.get_shape(), dtype=dtype, device="meta")
                    else:
                        tensors[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WanError(f"{path}: unreadable safetensors file ({_reason(exc)}); re-download the checkpoint") from None
    return tensors


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WanError(f"missing checkpoint file {path}")
    try:
        # Memory-map the zip format torch.save has written since 1.6; a legacy (non-zip) file cannot be mapped.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:  # not a plain pickle of tensors: objects, code, or garbage bytes
        raise WanError(f"{path}: refused by the weights-only loader ({_reason(exc)}); a checkpoint .pth must be a "
                       "plain state dict of tensors: the file is corrupt or holds pickled objects, re-download it") from None
    except Exception as exc:  # a corrupt or truncated zip archive
        raise WanError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)}); the file is corrupt or "
                       "incomplete, re-download it") from None
    state = _unwrap(state)
    if not isinstance(state, dict):
        raise WanError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        shown = ", ".join(not_tensors[:8]) + (f", ... ({len(not_tensors)} in all)" if len(not_tensors) > 8 else "")
        raise WanError(f"{path}: expected a state dict of tensors; these entries are not tensors: {shown}")
    return state


# Training checkpoints keep the weights one level down: {"state_dict": ...}, or Self-Forcing's {"generator": ...,
# "generator_ema": ...} (the EMA weights are the ones to run).
WRAPPER_KEYS = ("state_dict", "generator_ema", "generator", "model", "module")


def _unwrap(state):
    if not isinstance(state, dict) or all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    return next((state[key] for key in WRAPPER_KEYS if isinstance(state.get(key), dict)), state)


def check_state_dict(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]], source: str,
                     display=None) -> None:
    """One error naming the file and every missing, unexpected or misshaped tensor.

    `display(key)` turns a (model) key into the name the file uses, for files stored under other names."""
    def name(key: str) -> str:
        if display is None:
            return key
        try:
            return display(key)
        except ValueError:
            return key

    missing = sorted(name(key) for key in set(expected) - set(actual))
    unexpected = sorted(name(key) for key in set(actual) - set(expected))
    misshaped = sorted(
        f"{name(key)} {tuple(actual[key])} (expected {tuple(expected[key])})"
        for key in set(expected) & set(actual) if tuple(actual[key]) != tuple(expected[key])
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WanError(f"{source}: checkpoint does not match the model; " + "; ".join(problems))


def shapes_of(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def expected_shapes(module_factory) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a model built on the meta device (no memory)."""
    with torch.device("meta"):
        module = module_factory()
    return shapes_of(module.state_dict())
