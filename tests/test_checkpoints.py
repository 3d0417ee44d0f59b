"""Checkpoint loaders and the random-checkpoint writer, on real files in both layouts.

The tiny checkpoint is written once per layout (module fixtures) and then read back by our loaders, by the
official Wan2.2 loaders (`WanModel.from_pretrained`, `WanVAE_` / `T5Encoder` + `torch.load(weights_only=True)`)
and by diffusers / transformers (`WanTransformer3DModel`, `AutoencoderKLWan`, `UMT5EncoderModel`), which proves
the files are what those loaders expect. Broken files (missing, unexpected or misshaped tensors, garbage bytes,
truncation, pickled objects, a missing shard) must each give one single-line WanError naming the file and keys.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import oracle
from wan_export.checkpoints import tensors
from wan_export.checkpoints.checkpoint import open_checkpoint
from wan_export.checkpoints.writer import random_component_weights, write_random_checkpoint
from wan_export.config import TINY
from wan_export.model.dit import WanDiT
from wan_export.model.loading import load_module
from wan_export.model.t5 import UMT5Encoder
from wan_export.model.vae import WanVAE
from wan_export.weights import weight_source
from wan_rt import tokens
from wan_rt.errors import WanError

SEED = 7
LAYOUTS = ("official", "diffusers")
LATENT_SHAPE = (48, 2, 4, 6)  # 2 latent frames, 2x3 tokens per frame
TEXT_LEN = 7
CLIP_SHAPE = (1, 3, 5, 32, 48)  # 5 frames -> 2 latent frames of 2x3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

OFFICIAL_LAYOUT = {
    "config.json", "diffusion_pytorch_model.safetensors", "Wan2.2_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth",
    *(f"google/umt5-xxl/{name}" for name in TOKENIZER_FILES),
}
DIFFUSERS_LAYOUT = {
    "model_index.json",
    "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "scheduler/scheduler_config.json",
    *(f"tokenizer/{name}" for name in TOKENIZER_FILES),
}


# -- fixtures and helpers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """The TINY checkpoint, same seed, in each layout."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {layout: write_random_checkpoint(TINY, root / layout, layout=layout, seed=SEED) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def state_dicts(written) -> dict[str, dict[str, dict]]:
    """{layout: {part: state dict}} as our loaders hand them out."""
    out = {}
    for layout, path in written.items():
        ckpt = open_checkpoint(path)
        out[layout] = {"dit": ckpt.dit_state_dict(), "vae": ckpt.vae_state_dict(), "t5": ckpt.t5_state_dict()}
    return out


@pytest.fixture(scope="module")
def official():
    return oracle.load_official()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return {
        "latent": torch.randn(LATENT_SHAPE, generator=generator),
        "context": torch.randn(TEXT_LEN, TINY.dit.text_dim, generator=generator),
        "clip": torch.rand(CLIP_SHAPE, generator=generator) * 2 - 1,
        "z": torch.randn(1, TINY.vae.z_dim, 2, 2, 3, generator=generator),
    }


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def padded(context: torch.Tensor) -> torch.Tensor:
    """[L, text_dim] -> [1, 512, text_dim], zero-padded as WanModel.forward does."""
    return torch.cat([context, context.new_zeros(512 - context.shape[0], context.shape[1])])[None]


def dit_timesteps(latent: torch.Tensor) -> torch.Tensor:
    grid = tokens.token_grid(latent.shape)
    return torch.from_numpy(tokens.token_timesteps(grid, 937.0, 0.0))[None]  # per token, i2v style (two values)


def run_ours(model: WanDiT, latent: torch.Tensor, context: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Our WanDiT on a latent [48, F, H, W]: host patchify and RoPE tables, as the runtime feeds the engine."""
    grid = tokens.token_grid(latent.shape)
    cos, sin = (torch.from_numpy(t.copy()) for t in tokens.rope_tables(grid, model.cfg.head_dim))
    token_input = torch.from_numpy(tokens.patchify(latent.numpy()))[None]
    with torch.no_grad():
        out = model(token_input, timesteps, padded(context), cos, sin)
    return torch.from_numpy(tokens.unpatchify(out[0].numpy(), grid, model.cfg.out_dim))


def t5_batch(lengths, length: int = 32, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """ids/mask [B, length]: random tokens, </s> last, <pad> after, as the tokenizer gives."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, TINY.t5.vocab_size, (n,), generator=generator)
        ids[row, n - 1] = 1
        mask[row, :n] = 1
    return ids, mask


def ours(part: str, state: dict):
    factory = {"dit": lambda: WanDiT(TINY.dit), "vae": lambda: WanVAE(TINY.vae), "t5": lambda: UMT5Encoder(TINY.t5)}
    return load_module(factory[part], state)


def assert_state_dicts_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A private copy to break (the module fixtures stay intact)."""
    shutil.copytree(src, dst)
    return dst


def rewrite_safetensors(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    path.unlink()
    save_file(state, str(path))


def error_of(call) -> str:
    """The message of the one WanError `call` raises; it must be a single line."""
    with pytest.raises(WanError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, f"multi-line error: {message!r}"
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, WanError)
    return message


def _mark(path):
    """Would run on unpickling, were a .pth loaded with weights_only=False."""
    Path(path).write_text("code ran")
    return "pwned"


class Payload:
    """A pickled arbitrary object; with weights_only=False, unpickling it runs `_mark`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _mark, (self.marker,)


class Plain:
    """An ordinary class instance (no code on load, but not a tensor)."""

    def __init__(self):
        self.value = 3


# -- 1. file layouts ------------------------------------------------------------------------------------------------

def test_official_file_layout(written):
    root = written["official"]
    assert files_under(root) == OFFICIAL_LAYOUT
    config = json.loads((root / "config.json").read_text())
    assert config["_class_name"] == "WanModel" and config["model_type"] == "ti2v"
    assert (config["dim"], config["ffn_dim"], config["num_heads"], config["num_layers"], config["in_dim"],
            config["out_dim"]) == (128, 256, 2, 2, 48, 48)
    # written atomically: no staging folder left beside it
    assert sorted(p.name for p in root.parent.iterdir()) == sorted(LAYOUTS)


def test_diffusers_file_layout(written):
    root = written["diffusers"]
    assert files_under(root) == DIFFUSERS_LAYOUT
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["expand_timesteps"] is True
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler" and scheduler["flow_shift"] == TINY.sampling.shift
    # the HF file layout keeps the tied embedding once
    assert "shared.weight" in load_file(str(root / "text_encoder" / "model.safetensors"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_dit_loads_identically(written, state_dicts, tmp_path, layout):
    max_shard = 256 * 1024
    root = write_random_checkpoint(TINY, tmp_path / layout, layout=layout, seed=SEED, max_shard_bytes=max_shard)
    folder = root if layout == "official" else root / "transformer"
    index_path = folder / "diffusion_pytorch_model.safetensors.index.json"
    assert index_path.is_file() and not (folder / "diffusion_pytorch_model.safetensors").exists()
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards == [f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert sorted(p.name for p in folder.glob("diffusion_pytorch_model*.safetensors")) == shards
    for name in shards:  # each shard holds what the index says, and stays under the limit (or is one tensor)
        shard = load_file(str(folder / name))
        assert {k for k, v in index["weight_map"].items() if v == name} == set(shard)
        assert len(shard) == 1 or sum(t.numel() * t.element_size() for t in shard.values()) <= max_shard
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in state_dicts[layout]["dit"].values())

    ckpt = open_checkpoint(root)
    assert ckpt.dit_config == TINY.dit
    assert_state_dicts_equal(ckpt.dit_state_dict(), state_dicts[layout]["dit"])


# -- 2. layout detection and sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_detects_layout_and_infers_config(written, layout):
    ckpt = open_checkpoint(written[layout])
    assert ckpt.layout == layout
    config = ckpt.model_config()
    assert config.dit == TINY.dit
    assert config.vae == TINY.vae
    assert config.t5 == TINY.t5
    assert config.name != "ti2v-5b"  # only the real sizes are named after the real model
    expected_tokenizer = "google/umt5-xxl" if layout == "official" else "tokenizer"
    assert ckpt.tokenizer_dir == written[layout] / expected_tokenizer
    assert all((ckpt.tokenizer_dir / name).is_file() for name in TOKENIZER_FILES)


# -- 3. both layouts load to the same weights and outputs ------------------------------------------------------------

def test_layouts_load_identical_state_dicts(state_dicts):
    written_weights = random_component_weights(TINY, SEED)  # what the writer meant to store
    for part in ("dit", "vae", "t5"):
        expected_keys = set(tensors.expected_shapes(
            {"dit": lambda: WanDiT(TINY.dit), "vae": lambda: WanVAE(TINY.vae), "t5": lambda: UMT5Encoder(TINY.t5)}[part]))
        assert set(state_dicts["official"][part]) == expected_keys, part  # official key names
        assert_state_dicts_equal(state_dicts["diffusers"][part], state_dicts["official"][part])
        assert_state_dicts_equal(state_dicts["official"][part], written_weights[part])


def test_layouts_give_identical_outputs(state_dicts, inputs):
    outputs = {}
    ids, mask = t5_batch([5, 20])
    timesteps = dit_timesteps(inputs["latent"])
    for layout in LAYOUTS:
        models = {part: ours(part, state) for part, state in state_dicts[layout].items()}
        with torch.no_grad():
            outputs[layout] = {
                "dit": run_ours(models["dit"], inputs["latent"], inputs["context"], timesteps),
                "encode": models["vae"].encode(inputs["clip"]),
                "decode": models["vae"].decode(inputs["z"]),
                "t5": models["t5"](ids, mask),
            }
    for name, expected in outputs["official"].items():
        actual = outputs["diffusers"][name]
        assert torch.isfinite(expected).all() and expected.abs().max() > 0, name
        assert torch.equal(actual, expected), f"{name}: the two layouts give different outputs"


# -- 4. the official loaders and diffusers / transformers read our files ----------------------------------------------

@pytest.fixture(scope="module")
def official_4096(tmp_path_factory):
    """TINY with the DiT's text_dim at the real 4096: the official WanModel lists text_dim in
    `ignore_for_config`, so from_pretrained always builds text_embedding for 4096-wide T5 features
    whatever config.json says (the real checkpoint has 4096 too)."""
    config = dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, text_dim=4096))
    return write_random_checkpoint(config, tmp_path_factory.mktemp("text4096") / "official", seed=SEED)


def test_official_wan_model_from_pretrained(official, official_4096):
    assert "text_dim" in official.model.WanModel.ignore_for_config  # why the fixture uses text_dim 4096
    model, info = official.model.WanModel.from_pretrained(str(official_4096), output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert info["error_msgs"] == []
    model.eval()

    ckpt = open_checkpoint(official_4096)
    assert ckpt.dit_config == dataclasses.replace(TINY.dit, text_dim=4096)
    state = ckpt.dit_state_dict()
    for key, value in model.state_dict().items():  # strict: every tensor is the file's
        assert torch.equal(value, state[key]), key

    generator = torch.Generator().manual_seed(2)
    latent = torch.randn(LATENT_SHAPE, generator=generator)
    context = torch.randn(TEXT_LEN, 4096, generator=generator)
    timesteps = dit_timesteps(latent)
    with torch.no_grad():
        expected = model([latent], t=timesteps, context=[context], seq_len=timesteps.shape[1])[0]
    actual = run_ours(load_module(lambda: WanDiT(ckpt.dit_config), state), latent, context, timesteps)
    error = oracle.max_rel_error(actual, expected)
    assert error <= 1e-4, f"official WanModel.from_pretrained vs our WanDiT: max rel error {error:.2e}"


def test_official_vae_loads_pth(official, written, state_dicts, inputs):
    cfg = TINY.vae
    model = official.vae.WanVAE_(dim=cfg.base_dim, dec_dim=cfg.decoder_base_dim, z_dim=cfg.z_dim,
                                 dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
                                 temperal_downsample=list(cfg.temporal_downsample)).eval()
    model.load_state_dict(torch.load(written["official"] / "Wan2.2_VAE.pth", weights_only=True), strict=True)
    scale = [torch.tensor(cfg.latents_mean), 1.0 / torch.tensor(cfg.latents_std)]  # Wan2_2_VAE.scale
    vae = ours("vae", state_dicts["official"]["vae"])
    with torch.no_grad():
        error = oracle.max_rel_error(vae.encode(inputs["clip"]), model.encode(inputs["clip"], scale))
    assert error <= 1e-4, f"official WanVAE_ encode vs ours: max rel error {error:.2e}"


def test_official_t5_loads_pth(official, written, state_dicts):
    cfg = TINY.t5
    model = official.t5.T5Encoder(vocab=cfg.vocab_size, dim=cfg.dim, dim_attn=cfg.dim_attn, dim_ffn=cfg.dim_ffn,
                                  num_heads=cfg.num_heads, num_layers=cfg.num_layers, num_buckets=cfg.num_buckets,
                                  shared_pos=False, dropout=0.0).eval()
    model.load_state_dict(torch.load(written["official"] / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True),
                          strict=True)
    lengths = [5, 20]
    ids, mask = t5_batch(lengths)
    with torch.no_grad():
        expected = model(ids, mask)
        actual = ours("t5", state_dicts["official"]["t5"])(ids, mask)
    error = max(oracle.max_rel_error(actual[i, :n], expected[i, :n]) for i, n in enumerate(lengths))
    assert error <= 1e-4, f"official T5Encoder vs ours: max rel error {error:.2e}"


@contextlib.contextmanager
def diffusers_loadable(cls):
    """diffusers refuses `from_pretrained` for classes with `_keep_in_fp32_modules` (WanTransformer3DModel)
    unless `accelerate` is installed (it forces low_cpu_mem_usage). That list only matters for fp16/bf16 loads;
    this float32 load is the same without it. Everything else (config, file discovery, strict key check) is
    diffusers' own path."""
    from diffusers.utils import is_accelerate_available

    if is_accelerate_available() or cls._keep_in_fp32_modules is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "_keep_in_fp32_modules", None)
        yield


def test_diffusers_transformer_from_pretrained(official, written, state_dicts, inputs):
    from diffusers import WanTransformer3DModel

    with diffusers_loadable(WanTransformer3DModel):
        model, info = WanTransformer3DModel.from_pretrained(str(written["diffusers"] / "transformer"),
                                                            output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.eval()
    latent, context = inputs["latent"], inputs["context"]
    timesteps = dit_timesteps(latent)
    with torch.no_grad():
        expected = model(hidden_states=latent[None], timestep=timesteps, encoder_hidden_states=padded(context),
                         return_dict=False)[0][0]
    actual = run_ours(ours("dit", state_dicts["diffusers"]["dit"]), latent, context, timesteps)
    error = oracle.max_rel_error(actual, expected)
    assert error <= 1e-4, f"diffusers WanTransformer3DModel vs our WanDiT: max rel error {error:.2e}"


def test_diffusers_vae_from_pretrained(official, written, state_dicts, inputs):
    from diffusers import AutoencoderKLWan

    model, info = AutoencoderKLWan.from_pretrained(str(written["diffusers"] / "vae"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.eval()
    mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)
    vae = ours("vae", state_dicts["diffusers"]["vae"])
    with torch.no_grad():
        # pipelines: encode -> (posterior mean - mean) / std; decode(z / (1/std) + mean), output clamped
        encoded = (model.encode(inputs["clip"]).latent_dist.mean - mean) * inv_std
        decoded = model.decode(inputs["z"] / inv_std + mean).sample
        errors = {"encode": oracle.max_rel_error(vae.encode(inputs["clip"]), encoded),
                  "decode": oracle.max_rel_error(vae.decode(inputs["z"]), decoded)}
    assert max(errors.values()) <= 1e-4, f"diffusers AutoencoderKLWan vs ours: {errors}"


def test_transformers_umt5_from_pretrained(official, written, state_dicts):
    from transformers import UMT5EncoderModel

    model, info = UMT5EncoderModel.from_pretrained(str(written["diffusers"] / "text_encoder"),
                                                   output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.eval()
    lengths = [5, 20]
    ids, mask = t5_batch(lengths)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = ours("t5", state_dicts["diffusers"]["t5"])(ids, mask)
    error = max(oracle.max_rel_error(actual[i, :n], expected[i, :n]) for i, n in enumerate(lengths))
    assert error <= 1e-4, f"transformers UMT5EncoderModel vs ours on real tokens: max rel error {error:.2e}"


# -- 5. strict checks: one clear error naming the file and the keys ---------------------------------------------------

def test_missing_dit_key(written, tmp_path):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.pop("blocks.1.cross_attn.norm_k.weight"))
    message = error_of(open_checkpoint(root).dit_state_dict)
    assert str(path) in message and "missing: blocks.1.cross_attn.norm_k.weight" in message
    assert "unexpected" not in message and "misshaped" not in message


def test_missing_key_that_sizes_are_read_from(written, tmp_path):
    """Size inference reads some tensors by name: a missing one is the same kind of error, not a KeyError."""
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.pop("blocks.0.ffn.0.weight"))
    for call in (open_checkpoint(root).model_config, open_checkpoint(root).dit_state_dict):
        message = error_of(call)
        assert str(path) in message and "missing: blocks.0.ffn.0.weight" in message


def test_missing_key_in_diffusers_layout_uses_file_names(written, tmp_path):
    root = copy_checkpoint(written["diffusers"], tmp_path / "ckpt")
    path = root / "transformer" / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.pop("blocks.1.attn2.norm_k.weight"))
    message = error_of(open_checkpoint(root).dit_state_dict)
    assert str(path) in message and "missing: blocks.1.attn2.norm_k.weight" in message


def test_unexpected_dit_key(written, tmp_path):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.update({"blocks.0.self_attn.extra.weight": torch.zeros(4)}))
    message = error_of(open_checkpoint(root).dit_state_dict)
    assert str(path) in message and "unexpected: blocks.0.self_attn.extra.weight" in message
    assert "missing" not in message


def test_misshaped_dit_tensor(written, tmp_path):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "diffusion_pytorch_model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.update({"blocks.1.self_attn.q.weight": torch.zeros(128, 64)}))
    message = error_of(open_checkpoint(root).dit_state_dict)
    assert str(path) in message
    assert "misshaped: blocks.1.self_attn.q.weight (128, 64) (expected (128, 128))" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda sd: sd.pop("decoder.middle.1.proj.bias"), "missing: decoder.middle.1.proj.bias"),
    (lambda sd: sd.update({"decoder.extra.gamma": torch.ones(3)}), "unexpected: decoder.extra.gamma"),
    (lambda sd: sd.update({"conv1.bias": torch.zeros(5)}), "misshaped: conv1.bias (5,) (expected (96,))"),
], ids=["missing", "unexpected", "misshaped"])
def test_vae_pth_strict(written, tmp_path, edit, expected):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "Wan2.2_VAE.pth"
    state = torch.load(path, weights_only=True)
    edit(state)
    path.unlink()
    torch.save(state, path)
    message = error_of(open_checkpoint(root).vae_state_dict)
    assert str(path) in message and expected in message


def test_t5_missing_key_in_diffusers_layout(written, tmp_path):
    root = copy_checkpoint(written["diffusers"], tmp_path / "ckpt")
    path = root / "text_encoder" / "model.safetensors"
    rewrite_safetensors(path, lambda sd: sd.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight"))
    message = error_of(open_checkpoint(root).t5_state_dict)
    assert str(root / "text_encoder") in message
    assert "missing: encoder.block.1.layer.1.DenseReluDense.wo.weight" in message


@pytest.mark.parametrize("name", ["Wan2.2_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"])
def test_corrupt_pth(written, tmp_path, name):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / name
    path.write_bytes(bytes(range(256)) * 40)  # garbage, not a torch file
    ckpt = open_checkpoint(root)
    state_dict = ckpt.vae_state_dict if name.startswith("Wan") else ckpt.t5_state_dict
    for call in (ckpt.model_config, state_dict):
        message = error_of(call)
        assert str(path) in message and "re-download" in message


def test_truncated_pth(written, tmp_path):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "Wan2.2_VAE.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = error_of(open_checkpoint(root).vae_state_dict)
    assert str(path) in message and "re-download" in message


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_safetensors(written, tmp_path, layout):
    root = copy_checkpoint(written[layout], tmp_path / "ckpt")
    path = (root if layout == "official" else root / "transformer") / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    for call in (open_checkpoint(root).model_config, open_checkpoint(root).dit_state_dict):
        message = error_of(call)
        assert str(path) in message and "unreadable safetensors file" in message


def test_garbage_safetensors_header(written, tmp_path):
    root = copy_checkpoint(written["diffusers"], tmp_path / "ckpt")
    path = root / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(b"\xff" * 64)
    message = error_of(open_checkpoint(root).vae_state_dict)
    assert str(path) in message and "unreadable safetensors file" in message


def test_folder_of_neither_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "model.safetensors").write_bytes(b"")
    (tmp_path / "stuff" / "config.json").write_text("{}")  # config.json alone is not the official layout
    message = error_of(lambda: open_checkpoint(tmp_path / "stuff"))
    assert str(tmp_path / "stuff") in message and "neither" in message
    message = error_of(lambda: open_checkpoint(tmp_path / "absent"))
    assert str(tmp_path / "absent") in message and "does not exist" in message


@pytest.mark.parametrize("layout, name", [
    ("official", "models_t5_umt5-xxl-enc-bf16.pth"),
    ("official", "config.json"),
    ("diffusers", "text_encoder/model.safetensors"),
    ("diffusers", "vae/config.json"),
])
def test_missing_component_file(written, tmp_path, layout, name):
    root = copy_checkpoint(written[layout], tmp_path / "ckpt")
    (root / name).unlink()
    message = error_of(lambda: open_checkpoint(root).model_config())
    assert str((root / name).parent) in message and Path(name).name in message


def test_missing_shard(tmp_path):
    root = write_random_checkpoint(TINY, tmp_path / "sharded", layout="official", seed=SEED, max_shard_bytes=256 * 1024)
    index_path = root / "diffusion_pytorch_model.safetensors.index.json"
    shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    (root / shards[1]).unlink()
    for call in (open_checkpoint(root).model_config, open_checkpoint(root).dit_state_dict):
        message = error_of(call)
        assert str(index_path) in message and str(root / shards[1]) in message
        assert shards[0] not in message  # only the missing one is named


# -- 6. .pth files are loaded with weights_only=True ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["Wan2.2_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"])
def test_pth_with_pickled_code_is_refused(written, tmp_path, name):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / name
    marker = tmp_path / "code-ran"
    state = torch.load(path, weights_only=True)
    state["extra"] = Payload(marker)
    path.unlink()
    torch.save(state, path)
    ckpt = open_checkpoint(root)
    message = error_of(ckpt.vae_state_dict if name.startswith("Wan") else ckpt.t5_state_dict)
    assert not marker.exists(), "unpickling ran code: the .pth was not loaded with weights_only=True"
    assert str(path) in message and "weights-only" in message and "_mark" in message
    assert "weights_only=False" not in message  # never advise the unsafe load


def test_pth_with_class_instance_is_refused(written, tmp_path):
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "Wan2.2_VAE.pth"
    torch.save({"conv1.weight": Plain()}, path.with_suffix(".tmp"))
    path.unlink()
    path.with_suffix(".tmp").rename(path)
    message = error_of(open_checkpoint(root).vae_state_dict)
    assert str(path) in message and "Plain" in message


def test_pth_of_non_tensors_is_refused(written, tmp_path):
    """weights_only still allows plain containers and numbers: they are not a state dict of tensors."""
    root = copy_checkpoint(written["official"], tmp_path / "ckpt")
    path = root / "models_t5_umt5-xxl-enc-bf16.pth"
    state = torch.load(path, weights_only=True)
    state["note"] = {"epoch": 3}
    path.unlink()
    torch.save(state, path)
    message = error_of(open_checkpoint(root).t5_state_dict)
    assert str(path) in message and "note" in message and "not tensors" in message
    path.unlink()
    torch.save([1, 2, 3], path)
    message = error_of(open_checkpoint(root).t5_state_dict)
    assert str(path) in message and "list" in message


# -- 7. dtype is kept -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_checkpoint_loads_bf16(state_dicts, tmp_path, layout):
    root = write_random_checkpoint(TINY, tmp_path / layout, layout=layout, seed=SEED, dtype=torch.bfloat16)
    ckpt = open_checkpoint(root)
    assert ckpt.model_config().dit == TINY.dit
    for part, load in (("dit", ckpt.dit_state_dict), ("vae", ckpt.vae_state_dict), ("t5", ckpt.t5_state_dict)):
        state = load()
        assert {value.dtype for value in state.values()} == {torch.bfloat16}, part
        for key, value in state.items():  # the same numbers, rounded once
            assert torch.equal(value, state_dicts[layout][part][key].to(torch.bfloat16)), key
        module = load_module({"dit": lambda: WanDiT(TINY.dit), "vae": lambda: WanVAE(TINY.vae),
                              "t5": lambda: UMT5Encoder(TINY.t5)}[part], state)
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, part


# -- 8. weight sources ------------------------------------------------------------------------------------------------

def test_random_weight_source_is_seeded():
    first, again, other = (weight_source(None, "tiny", seed, {}) for seed in (1, 1, 2))
    assert first.checkpoint is None and first.config.dit == TINY.dit and "seed 1" in first.description
    for part in ("dit", "t5"):
        a, b, c = (source.load(part).state_dict() for source in (first, again, other))
        assert_state_dicts_equal(b, a)
        assert set(c) == set(a)
        assert all(not torch.equal(c[key], a[key]) for key in a), f"{part}: some tensor ignores the seed"


def test_checkpoint_weight_source(written, state_dicts, tmp_path):
    source = weight_source(written["diffusers"], "ti2v-5b", 0, {"steps": 3, "shift": 2.5, "not_a_setting": 1})
    assert source.checkpoint is not None and source.checkpoint.layout == "diffusers"
    assert str(written["diffusers"]) in source.description
    assert (source.config.dit, source.config.vae, source.config.t5) == (TINY.dit, TINY.vae, TINY.t5)
    assert (source.config.sampling.steps, source.config.sampling.shift) == (3, 2.5)
    random = weight_source(None, "tiny", SEED, {})  # the writer stores exactly the seeded random weights
    for part in ("dit", "vae", "t5"):
        loaded = source.load(part).state_dict()
        assert_state_dicts_equal(loaded, state_dicts["diffusers"][part])
        assert_state_dicts_equal(random.load(part).state_dict(), loaded)
    source.write_tokenizer(tmp_path / "tok")
    assert files_under(tmp_path / "tok") == set(TOKENIZER_FILES)
