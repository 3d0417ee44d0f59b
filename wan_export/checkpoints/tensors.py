"""Reading weight files: safetensors (single or sharded with an index) and `.pth` state dicts.

`.pth` files are untrusted input: always `weights_only=True`, memory-mapped so the 11 GB T5 file is not
read twice. Tensors keep their stored dtype (bf16 stays bf16) until a caller converts them.
"""
from __future__ import annotations

import json
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


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def load_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WanError(f"{path}: unreadable safetensors file ({exc})") from None
    return tensors


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WanError(f"missing checkpoint file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a corrupt zip or a pickle with code in it
        raise WanError(f"{path}: cannot load as a weights-only state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WanError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def check_state_dict(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]], source: str) -> None:
    """One error naming the file and every missing, unexpected or misshaped tensor."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    misshaped = sorted(
        f"{key} {tuple(actual[key])} (expected {tuple(expected[key])})"
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
