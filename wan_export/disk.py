"""How much disk a build will take, said before the minutes of export start (and warned about when it will not fit).

Weights dominate every file of an engines folder: each checkpoint part's weights are written once into its ONNX
graph(s) at the exported precision and once more into each engine built from them; the sequence-parallel
segments add every block's weights as float32 (`dit_sp_blocks.bin`). Graph structure, tokenizer and manifest are
small; the fp32 islands of bf16 graphs make this an estimate.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from wan_export.checkpoints.tensors import expected_shapes
from wan_export.config import ModelConfig
from wan_export.model import component_factory

log = logging.getLogger("wan_export")

BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "fp16": 2}


def parameter_counts(part: str, config: ModelConfig) -> dict[str, int]:
    """Parameter name -> element count of checkpoint part "t5", "dit" or "vae" (meta device: nothing allocated)."""
    return {name: math.prod(shape) for name, shape in expected_shapes(component_factory(part, config)).items()}


def estimate_bytes(config: ModelConfig, specs: list, precisions: dict[str, str], engines: bool,
                   sp_weights: bool = False) -> int:
    """Bytes the engines folder of `specs` will hold, roughly: each graph's embedded weights (its
    `weight_prefixes` of its part) in the ONNX file and again in its engine, plus the SP block weights file."""
    # the tiny (TAEHV) decoder's weights, a few MB not in the Wan checkpoint, are left out of the estimate
    counts = {part: parameter_counts(part, config) for part in {spec.weights for spec in specs} if part != "tiny_vae"}
    total = 0
    for spec in specs:
        prefixes = spec.weight_prefixes
        embedded = sum(n for name, n in counts.get(spec.weights, {}).items()
                       if prefixes is None or name.startswith(tuple(prefixes)))
        total += embedded * BYTES_PER_WEIGHT[precisions[spec.name]] * (2 if engines else 1)
    if sp_weights:
        blocks = sum(n for name, n in counts["dit"].items() if name.startswith("blocks."))  # SP specs: part dit
        total += blocks * BYTES_PER_WEIGHT["fp32"]  # dit_sp_blocks.bin
    return total


def say_disk_needs(folder: Path, needed: int) -> None:
    """Log what the build will write next to what `folder`'s file system has free; warn when it will not fit."""
    free = shutil.disk_usage(folder).free
    line = f"disk: the engines folder will take about {_gb(needed)}; {_gb(free)} free at {folder}"
    if needed > free:
        log.warning("%s: this build will likely run out of space; free some or choose another --out", line)
    else:
        log.info("%s", line)


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
