"""Write seeded random checkpoints in the official or the diffusers layout (tests and the `tiny` default).

The files are laid out exactly as the real Wan2.2-TI2V-5B downloads, so they exercise the same loaders.
The tokenizer is trained locally (no download) and saved where a real checkpoint keeps it.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_export.checkpoints import dit_keys, t5_keys, tensors, vae_keys
from wan_export.checkpoints.checkpoint import OFFICIAL_FILES
from wan_export.checkpoints.random_weights import random_state_dict
from wan_export.checkpoints.tokenizer import write_tokenizer
from wan_export.config import ModelConfig
from wan_export.model import PARTS, component_factory

# "turbo": the official layout with the DiT as one torch file (`generator.pt`, keys `model.*`), as
# Wan2.2-TI2V-5B-Turbo's inference script loads it
LAYOUTS = ("official", "diffusers", "turbo")
TURBO_DIT_FILE = "generator.pt"


def random_component_weights(config: ModelConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Official-layout state dicts {"dit", "vae", "t5"} of seeded random values."""
    return {part: random_state_dict(tensors.expected_shapes(component_factory(part, config)), seed, dtype)
            for part in PARTS}


def _save_sharded(state_dict: dict, folder: Path, stem: str, max_shard_bytes: int | None) -> None:
    """One safetensors file, or shards plus `stem.safetensors.index.json` like Hugging Face writes."""
    folder.mkdir(parents=True, exist_ok=True)
    contiguous = {key: value.contiguous() for key, value in state_dict.items()}
    if max_shard_bytes is None:
        save_file(contiguous, str(folder / f"{stem}.safetensors"))
        return
    shards, current, size = [], {}, 0
    for key in sorted(contiguous):
        nbytes = contiguous[key].numel() * contiguous[key].element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = contiguous[key]
        size += nbytes
    shards.append(current)
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in contiguous.values())},
             "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _write_official(root: Path, config: ModelConfig, weights: dict, max_shard_bytes: int | None,
                    turbo: bool = False) -> None:
    _write_json(root / "config.json", dit_keys.official_config_json(config.dit))
    if turbo:  # Wan2.2-TI2V-5B-Turbo's form: the DiT alone, keys under its wrapper's `model.`
        torch.save({f"model.{key}": value for key, value in weights["dit"].items()}, root / TURBO_DIT_FILE)
    else:
        _save_sharded(weights["dit"], root, OFFICIAL_FILES["dit"], max_shard_bytes)
    torch.save(weights["vae"], root / OFFICIAL_FILES["vae"])
    torch.save(weights["t5"], root / OFFICIAL_FILES["t5"])
    write_tokenizer(root / OFFICIAL_FILES["tokenizer"], config.t5.vocab_size)


def _write_diffusers(root: Path, config: ModelConfig, weights: dict, max_shard_bytes: int | None) -> None:
    _write_json(root / "model_index.json", {
        "_class_name": "WanPipeline", "_diffusers_version": "0.35.0", "boundary_ratio": None,
        "expand_timesteps": True, "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"]})
    _write_json(root / "transformer" / "config.json", dit_keys.diffusers_config(config.dit))
    _save_sharded(dit_keys.official_to_diffusers(weights["dit"]), root / "transformer", "diffusion_pytorch_model",
                  max_shard_bytes)
    _write_json(root / "vae" / "config.json", vae_keys.diffusers_config(config.vae))
    _save_sharded(vae_keys.official_to_diffusers(weights["vae"]), root / "vae", "diffusion_pytorch_model", None)
    _write_json(root / "text_encoder" / "config.json", t5_keys.hf_config(config.t5))
    _save_sharded(t5_keys.official_to_hf(weights["t5"], tied=False), root / "text_encoder", "model", None)
    write_tokenizer(root / "tokenizer", config.t5.vocab_size)
    _write_json(root / "scheduler" / "scheduler_config.json", {
        "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "flow_shift": config.sampling.shift, "solver_order": 2, "solver_type": "bh2",
        "predict_x0": True, "lower_order_final": True, "final_sigmas_type": "zero"})


def write_random_checkpoint(config: ModelConfig, out_dir: str | Path, layout: str = "official", seed: int = 0,
                            dtype: torch.dtype = torch.float32, max_shard_bytes: int | None = None) -> Path:
    """Write a complete checkpoint folder atomically (temp folder, then rename); returns its path."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = random_component_weights(config, seed, dtype)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if layout == "diffusers":
            _write_diffusers(staging, config, weights, max_shard_bytes)
        else:
            _write_official(staging, config, weights, max_shard_bytes, turbo=layout == "turbo")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
