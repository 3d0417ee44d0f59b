"""Where a build's weights come from: a checkpoint folder, or seeded random values of a preset model."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from wan_export.checkpoints.checkpoint import Checkpoint, open_checkpoint
from wan_export.checkpoints.random_weights import random_state_dict
from wan_export.checkpoints.tensors import expected_shapes
from wan_export.checkpoints.tokenizer import write_tokenizer
from wan_export.checkpoints.tokenizer_files import check_tokenizer_folder, copy_tokenizer
from wan_export.config import ModelConfig, SamplingDefaults, preset
from wan_export.model import component_factory
from wan_export.model.loading import load_module
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")


@dataclass
class WeightSource:
    config: ModelConfig
    checkpoint: Checkpoint | None
    seed: int
    tiny_vae: object | None = None  # TinyVAESource of a TAEHV decoder to export too (--tiny-vae), or None

    @property
    def description(self) -> str:
        if self.checkpoint is None:
            return f"random weights (preset {self.config.name}, seed {self.seed})"
        return f"checkpoint {self.checkpoint.root} ({self.checkpoint.layout} layout)"

    def load(self, part: str, dtype: torch.dtype = torch.float32) -> nn.Module:
        """One component's reference module. Random weights are made directly in `dtype` (a full-size bf16
        model never exists in fp32); checkpoint weights keep their stored dtype."""
        if part == "tiny_vae":
            return self.tiny_vae.load()
        factory = component_factory(part, self.config)
        if self.checkpoint is None:
            state = random_state_dict(expected_shapes(factory), self.seed, dtype)
        else:
            state = {"dit": self.checkpoint.dit_state_dict, "vae": self.checkpoint.vae_state_dict,
                     "t5": self.checkpoint.t5_state_dict}[part]()
        return load_module(factory, state)

    def manifest_record(self) -> dict:
        """How `wan-export check` rebuilds this reference later."""
        tiny = {"tiny_vae": self.tiny_vae.record()} if self.tiny_vae is not None else {}
        if self.checkpoint is None:
            return {"kind": "random", "preset": self.config.name, "seed": self.seed, **tiny}
        return {"kind": "checkpoint", "path": str(self.checkpoint.root.resolve()), "layout": self.checkpoint.layout,
                **tiny}

    def check_tokenizer(self) -> None:
        """A tokenizer folder the runtime could not load is refused now, before any export."""
        if self.checkpoint is not None:
            check_tokenizer_folder(self.checkpoint.tokenizer_dir)

    def write_tokenizer(self, folder: Path) -> None:
        if self.checkpoint is None:
            write_tokenizer(folder, self.config.t5.vocab_size)
        else:  # tokenizer.json converted from spiece.model when the folder has only that
            copy_tokenizer(self.checkpoint.tokenizer_dir, folder)


def weight_source_from_manifest(manifest_data: dict, ckpt_dir: str | Path | None) -> WeightSource:
    """The reference weights an engines folder was built from (or `ckpt_dir` when given)."""
    from wan_export.lora import with_loras

    return with_loras(base_source_from_manifest(manifest_data, ckpt_dir),
                      recorded_loras(manifest_data["weights"].get("loras", [])))


def base_source_from_manifest(manifest_data: dict, ckpt_dir: str | Path | None) -> WeightSource:
    """The base weights (no LoRAs) an engines folder was built from, or `ckpt_dir` when given."""
    record = manifest_data["weights"]
    config = ModelConfig.from_dict(manifest_data["model"])
    tiny_vae = None
    if "tiny_vae" in record:
        from wan_export.checkpoints.taehv_file import TinyVAESource

        tiny_vae = TinyVAESource.from_record(record["tiny_vae"])
    if ckpt_dir is None and record["kind"] == "random":
        return WeightSource(config=config, checkpoint=None, seed=int(record["seed"]), tiny_vae=tiny_vae)
    checkpoint = open_checkpoint(ckpt_dir or record["path"])
    return WeightSource(config=config, checkpoint=checkpoint, seed=0, tiny_vae=tiny_vae)


def recorded_loras(records: list[dict]) -> list:
    """The LoRAs a manifest's `weights.loras` names, each file checked against its recorded sha256 (the reference
    must be the weights the engines hold, not whatever the file holds now)."""
    from wan_export.lora import LoraSpec, sha256

    specs = []
    for record in records:
        path = Path(record["path"])
        fix = ("put the file the engines were built with back there, or give the engines new weights with "
               "wan-export refit --lora")
        if not path.is_file():
            raise WanError(f"LoRA file {path} named in the manifest (weights.loras) is missing; {fix}")
        digest = sha256(path)
        if digest != record["sha256"]:
            raise WanError(f"LoRA file {path} changed since the engines were built (sha256 {digest[:12]}..., the "
                           f"manifest records {record['sha256'][:12]}...); {fix}")
        specs.append(LoraSpec(path=path, scale=float(record["scale"])))
    return specs


def weight_source(ckpt_dir: str | Path | None, model_preset: str, seed: int, sampling: dict) -> WeightSource:
    if ckpt_dir is None:
        config = preset(model_preset)
        checkpoint = None
    else:
        checkpoint = open_checkpoint(ckpt_dir)
        config = checkpoint.model_config()
    known = {k: v for k, v in sampling.items() if k in SamplingDefaults.__dataclass_fields__}
    config = replace(config, sampling=replace(config.sampling, **known))
    return WeightSource(config=config, checkpoint=checkpoint, seed=seed)
