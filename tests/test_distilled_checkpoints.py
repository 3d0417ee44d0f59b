"""Distilled checkpoints load like the base ones: Wan2.2-TI2V-5B-Turbo's DiT as one torch file in an official
folder (`generator.pt`, keys under `model.`, possibly inside a training checkpoint's `generator_ema`), and the
FastWan2.2 diffusers layout (its own model_index.json)."""
from __future__ import annotations

import json

import torch

from wan_export.checkpoints.checkpoint import open_checkpoint
from wan_export.checkpoints.writer import TURBO_DIT_FILE, random_component_weights, write_random_checkpoint
from wan_export.config import TINY


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_turbo_layout_loads_its_torch_file_dit(tmp_path):
    folder = write_random_checkpoint(TINY, tmp_path / "turbo", layout="turbo", seed=4)
    assert next(iter(torch.load(folder / TURBO_DIT_FILE, weights_only=True))).startswith("model.")
    assert not list(folder.glob("diffusion_pytorch_model*"))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.layout == "official" and checkpoint.dit_config == TINY.dit
    assert_same(checkpoint.dit_state_dict(), random_component_weights(TINY, 4)["dit"])
    assert folder / TURBO_DIT_FILE in checkpoint.part_files("dit")


def test_training_checkpoint_wrappers_are_unwrapped_and_the_torch_file_wins(tmp_path):
    """A base official folder with a Self-Forcing style checkpoint dropped in as model.pt: the EMA weights under
    FSDP's prefix are the DiT, not the safetensors beside them."""
    folder = write_random_checkpoint(TINY, tmp_path / "base", seed=0)
    turbo = random_component_weights(TINY, 9)["dit"]
    wrapped = {f"model._fsdp_wrapped_module.{key}": value for key, value in turbo.items()}
    torch.save({"generator": {k: v * 0 for k, v in wrapped.items()}, "generator_ema": wrapped}, folder / "model.pt")
    assert_same(open_checkpoint(folder).dit_state_dict(), turbo)


def test_fastwan_diffusers_layout_loads(tmp_path):
    """FastVideo's FastWan2.2-TI2V-5B-FullAttn-Diffusers: a diffusers folder whose model_index names its own
    pipeline and scheduler (layout detection does not depend on them)."""
    folder = write_random_checkpoint(TINY, tmp_path / "fastwan", layout="diffusers", seed=2)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanDMDPipeline", "_diffusers_version": "0.33.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.layout == "diffusers" and checkpoint.model_config().dit == TINY.dit
    expected = random_component_weights(TINY, 2)
    for part in ("dit", "vae", "t5"):
        assert_same(checkpoint.state_dict(part), expected[part])
