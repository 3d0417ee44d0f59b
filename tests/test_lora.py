"""LoRAs merged into the DiT at build time (wan_export.lora), in the three key formats in circulation.

Each format's random LoRA on the tiny DiT is merged by us and, independently, loaded by diffusers itself
(WanPipeline.lora_state_dict -> WanTransformer3DModel.load_lora_adapter -> fuse_lora, PEFT backend); the fused
weights must agree to 1e-5. A `wan-export build --lora` DiT engine must then run exactly like one built from a
checkpoint holding the pre-merged weights, and the manifest / resume keys must name each file's sha256 and scale.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from requires import needs
from wan_export.checkpoints import dit_keys
from wan_export.checkpoints.writer import random_component_weights
from wan_export.config import TINY
from wan_export.lora import LoraSpec, merged_weights, parse_lora, with_loras
from wan_rt.errors import WanError

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early

# only the comparison with diffusers needs peft: the rest of this file, and tests/test_refit.py, which imports it,
# run without it
needs_peft = needs(importlib.util.find_spec("peft") is not None,
                   "diffusers' LoRA loading needs peft (in the test extra)")

RANK, SCALE = 4, 0.7
BLOCK_LINEARS = [f"self_attn.{o}" for o in "qkvo"] + [f"cross_attn.{o}" for o in "qkvo"] + ["ffn.0", "ffn.2"]


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    return random_component_weights(TINY, 3)["dit"]


def block_modules() -> list[str]:
    return [f"blocks.{i}.{name}" for i in range(TINY.dit.num_layers) for name in BLOCK_LINEARS]


def random_lora(base, fmt: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every block linear, with alphas and some bias deltas, in key format `fmt`."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for n, module in enumerate(block_modules()):
        out_f, in_f = base[f"{module}.weight"].shape
        down = torch.randn(RANK, in_f, generator=g) * 0.2
        up = torch.randn(out_f, RANK, generator=g) * 0.2
        alpha = torch.tensor(float(2 + n % 7))
        if fmt == "diffusers":
            name = "transformer." + dit_keys.rename(f"{module}.weight", True).removesuffix(".weight")
            lora[f"{name}.lora_A.weight"], lora[f"{name}.lora_B.weight"] = down, up
            if n % 3 == 0:
                lora[f"{name}.lora_B.bias"] = torch.randn(out_f, generator=g) * 0.1
        elif fmt == "original":
            name = f"diffusion_model.{module}"
            lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
            lora[f"{name}.alpha"] = alpha
            if n % 3 == 0:
                lora[f"{name}.diff_b"] = torch.randn(out_f, generator=g) * 0.1
        else:  # musubi / kohya
            name = "lora_unet_" + module.replace(".", "_")
            lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
            lora[f"{name}.alpha"] = alpha
    return lora


def diffusers_fused(base, path: Path, scale: float) -> dict[str, torch.Tensor]:
    """diffusers' own loading and fusing of the LoRA file, back in official key names."""
    from diffusers import WanPipeline, WanTransformer3DModel

    config = {k: v for k, v in dit_keys.diffusers_config(TINY.dit).items() if not k.startswith("_")}
    model = WanTransformer3DModel(**config)
    model.load_state_dict(dit_keys.official_to_diffusers(base))
    state_dict, metadata = WanPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    model.load_lora_adapter(state_dict, prefix="transformer", adapter_name="test", metadata=metadata)
    model.fuse_lora(lora_scale=scale)
    model.unload_lora()
    return dit_keys.diffusers_to_official(model.state_dict())


def save_with_diffusers(lora: dict[str, torch.Tensor], folder: Path, alpha: float) -> Path:
    """A diffusers-format LoRA written by diffusers itself (WanPipeline.save_lora_weights), its PEFT config
    (lora_alpha, r) in the safetensors header as `lora_adapter_metadata`."""
    from diffusers import WanPipeline

    layers = {key.removeprefix("transformer."): value for key, value in lora.items()}
    modules = sorted(key.removesuffix(".lora_A.weight") for key in layers if key.endswith(".lora_A.weight"))
    config = {"r": RANK, "lora_alpha": alpha, "target_modules": modules,
              "lora_bias": any(key.endswith(".lora_B.bias") for key in layers)}
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config)
    return folder / "pytorch_lora_weights.safetensors"


@needs_peft
@pytest.mark.parametrize("fmt", ["diffusers", "original", "musubi", "diffusers with lora_alpha"])
def test_merge_equals_diffusers_fuse_lora(base, fmt, tmp_path):
    path = tmp_path / f"{fmt}.safetensors"
    if fmt == "diffusers with lora_alpha":  # diffusers reads the header's alpha too
        path = save_with_diffusers(random_lora(base, "diffusers"), tmp_path, alpha=16)
    else:
        save_file(random_lora(base, fmt), str(path))
    ours = {**base, **merged_weights(base, [LoraSpec(path, SCALE)])}
    theirs = diffusers_fused(base, path, SCALE)
    changed = [k for k in base if not torch.equal(theirs[k], base[k])]
    assert len(changed) >= len(block_modules())  # the LoRA did something in diffusers too
    for key in base:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-5, msg=key)


def test_two_loras_add_and_pt_files_load(base, tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.pt"
    save_file(random_lora(base, "original", 1), str(first))
    torch.save(random_lora(base, "musubi", 2), second)
    both = merged_weights(base, [LoraSpec(first, 0.5), LoraSpec(second, -1.0)])
    one = merged_weights(base, [LoraSpec(first, 0.5)])
    other = merged_weights(base, [LoraSpec(second, -1.0)])
    key = "blocks.1.ffn.2.weight"
    torch.testing.assert_close(both[key] - base[key], (one[key] - base[key]) + (other[key] - base[key]),
                               rtol=0, atol=1e-6)


def test_diff_keys_are_full_deltas(base, tmp_path):
    """`.diff` / `.diff_b` (ComfyUI full deltas; diffusers skips `.diff`): W += scale * diff."""
    g = torch.Generator().manual_seed(5)
    diff = torch.randn(base["blocks.0.self_attn.q.weight"].shape, generator=g)
    norm = torch.randn(base["blocks.1.self_attn.norm_k.weight"].shape, generator=g)
    bias = torch.randn(base["head.head.bias"].shape, generator=g)
    path = tmp_path / "diff.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff": diff, "diffusion_model.blocks.1.self_attn.norm_k.diff": norm,
               "diffusion_model.head.head.diff_b": bias, "diffusion_model.blocks.0.modulation.diff":
               torch.ones_like(base["blocks.0.modulation"])}, str(path))
    got = merged_weights(base, [LoraSpec(path, 0.25)])
    torch.testing.assert_close(got["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"] + 0.25 * diff)
    torch.testing.assert_close(got["blocks.1.self_attn.norm_k.weight"],
                               base["blocks.1.self_attn.norm_k.weight"] + 0.25 * norm)
    torch.testing.assert_close(got["head.head.bias"], base["head.head.bias"] + 0.25 * bias)
    torch.testing.assert_close(got["blocks.0.modulation"], base["blocks.0.modulation"] + 0.25)


def peft_lora(base) -> dict[str, torch.Tensor]:
    """The LoRA as PEFT saves it (adapter_model.safetensors): diffusers module names, lora_A / lora_B, no alphas."""
    lora = random_lora(base, "diffusers", 4)
    return {"base_model.model." + key.removeprefix("transformer."): value for key, value in lora.items()}


def expected_merge(base, lora, scale: float, alpha_over_rank: float) -> dict[str, torch.Tensor]:
    """W + scale * alpha/r * B @ A (b + scale * alpha/r * lora_B bias), in float64 here from the PEFT keys."""
    expected = {}
    for module in block_modules():
        name = "base_model.model." + dit_keys.rename(f"{module}.weight", True).removesuffix(".weight")
        down, up = lora[f"{name}.lora_A.weight"].double(), lora[f"{name}.lora_B.weight"].double()
        expected[f"{module}.weight"] = (base[f"{module}.weight"].double() + scale * alpha_over_rank * up @ down).float()
        if f"{name}.lora_B.bias" in lora:
            expected[f"{module}.bias"] = (base[f"{module}.bias"].double()  # PEFT scales lora_B's bias too
                                          + scale * alpha_over_rank * lora[f"{name}.lora_B.bias"].double()).float()
    return expected


@pytest.mark.parametrize("where", ["adapter_config.json", "safetensors header", "rslora"])
def test_peft_lora_alpha_is_read_from_its_config(base, tmp_path, where):
    """PEFT keeps lora_alpha outside the tensors (adapter_config.json, or diffusers' `lora_adapter_metadata` header):
    the merge scales by lora_alpha / r (rsLoRA: / sqrt(r)), not by 1."""
    lora, path = peft_lora(base), tmp_path / "adapter_model.safetensors"
    config = {"r": RANK, "lora_alpha": 16, "target_modules": ["to_q"], "use_rslora": where == "rslora"}
    if where == "safetensors header":  # the same tensors as diffusers' save_lora_weights writes them, with the
        path = save_with_diffusers(random_lora(base, "diffusers", 4), tmp_path, alpha=16)  # "transformer.r", ...
    else:
        save_file(lora, str(path))
        (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    got = merged_weights(base, [LoraSpec(path, SCALE)])
    alpha_over_rank = 16 / RANK ** 0.5 if where == "rslora" else 16 / RANK
    expected = expected_merge(base, lora, SCALE, alpha_over_rank)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)


def test_peft_lora_without_config_is_alpha_rank_and_patterns_are_refused(base, tmp_path):
    lora, path = peft_lora(base), tmp_path / "adapter_model.safetensors"
    save_file(lora, str(path))
    got = merged_weights(base, [LoraSpec(path, SCALE)])  # diffusers' rule without a config: alpha = rank
    for key, value in expected_merge(base, lora, SCALE, 1.0).items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": 8,
                                                              "alpha_pattern": {"blocks.0.attn1.to_q": 32}}))
    with pytest.raises(WanError, match="alpha_pattern / rank_pattern are not supported") as info:
        merged_weights(base, [LoraSpec(path, SCALE)])
    assert "\n" not in str(info.value) and "adapter_config.json" in str(info.value)


def test_keys_matching_nothing_are_one_line(base, tmp_path):
    lora = random_lora(base, "original")
    lora["diffusion_model.blocks.0.img_attn.q.lora_down.weight"] = torch.zeros(RANK, 8)
    lora["diffusion_model.blocks.9.self_attn.q.lora_down.weight"] = torch.zeros(RANK, 8)
    path = tmp_path / "wrong.safetensors"
    save_file(lora, str(path))
    with pytest.raises(WanError, match=r"2 LoRA keys match no DiT weight \(first: diffusion_model.blocks.0.img_attn") as info:
        merged_weights(base, [LoraSpec(path)])
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_shapes_that_do_not_fit_are_one_line(base, tmp_path):
    lora = random_lora(base, "musubi")
    lora["lora_unet_blocks_0_ffn_0.lora_down.weight"] = torch.zeros(RANK, 7)  # ffn.0 takes dim=128 inputs
    path = tmp_path / "misfit.safetensors"
    save_file(lora, str(path))
    with pytest.raises(WanError, match=r"LoRA shapes do not fit the DiT: lora_unet_blocks_0_ffn_0") as info:
        merged_weights(base, [LoraSpec(path)])
    assert "\n" not in str(info.value)


def test_lora_argument_parsing(tmp_path):
    path = tmp_path / "x:y.safetensors"
    path.write_bytes(b"")
    assert parse_lora(f"{path}:0.5") == LoraSpec(path, 0.5)
    assert parse_lora(str(path)) == LoraSpec(path, 1.0)
    with pytest.raises(WanError, match="does not exist"):
        parse_lora(str(tmp_path / "missing.safetensors:2"))


# -- through the build --------------------------------------------------------------------------------------
DIT_SHAPE, DIT_T = (48, 2, 4, 6), 700.0


def dit_inputs() -> tuple[np.ndarray, np.ndarray]:
    """(context, latent) the DiT comparisons below feed, seeded."""
    rng = np.random.default_rng(0)
    context = rng.standard_normal((1, TINY.dit.text_len, TINY.dit.text_dim)).astype(np.float32)
    return context, rng.standard_normal(DIT_SHAPE).astype(np.float32)


def dit_velocity(engines: Path) -> np.ndarray:
    """The engines folder's DiT velocity at `dit_inputs()`, t = 700, through the runtime's DiTStep."""
    from wan_rt.backends import open_runner
    from wan_rt.denoise import DiTStep
    from wan_rt.manifest import load_manifest

    context, latent = dit_inputs()
    with open_runner(load_manifest(engines), "dit") as runner:
        step = DiTStep(runner, DIT_SHAPE, context, None, TINY.dit.head_dim, 48, 1.0)
        return step.velocities(latent, step.timesteps(DIT_T, None))[0]


def reference_velocity(model: torch.nn.Module) -> np.ndarray:
    """The PyTorch DiT's velocity at the same inputs as `dit_velocity`."""
    from wan_rt import tokens

    context, latent = dit_inputs()
    grid = tokens.token_grid(DIT_SHAPE)
    cos, sin = tokens.rope_tables(grid, TINY.dit.head_dim)
    row = tokens.timesteps_for(grid, "frames", DIT_T, None)
    args = [torch.from_numpy(a) for a in (tokens.patchify(latent)[None], row[None], context, cos, sin)]
    with torch.no_grad():
        velocity = model.eval()(*args)
    velocity = velocity[0] if isinstance(velocity, tuple) else velocity
    return tokens.unpatchify(velocity[0].numpy(), grid, 48)


def build_dit(ckpt: Path, out: Path, loras=()) -> Path:
    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile("tiny")
    source = with_loras(weight_source(ckpt, profile.model_preset, profile.seed, profile.sampling), list(loras))
    return build(profile, source, out, BuildOptions(backend="onnxruntime", only=("dit",)))


def test_build_with_lora_equals_premerged_checkpoint(tiny_official_ckpt, tmp_path):
    from wan_export.checkpoints.checkpoint import open_checkpoint
    from wan_export.resume import weights_fingerprint
    from wan_export.weights import weight_source

    base = open_checkpoint(tiny_official_ckpt).dit_state_dict()
    lora = tmp_path / "style.safetensors"
    save_file(random_lora(base, "original", 7), str(lora))
    premerged = tmp_path / "premerged"
    shutil.copytree(tiny_official_ckpt, premerged)
    weights_file = premerged / "diffusion_pytorch_model.safetensors"
    stored = load_file(str(weights_file))
    stored.update(merged_weights(stored, [LoraSpec(lora, SCALE)]))
    save_file(stored, str(weights_file))

    with_lora = build_dit(tiny_official_ckpt, tmp_path / "with-lora", [LoraSpec(lora, SCALE)])
    assert not torch.equal(stored["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])
    # the engine runs like the PyTorch DiT loaded from the checkpoint holding the pre-merged weights (a second
    # engine built from that checkpoint, as before, exports the same graph: 1e-5 either way, half the time)
    premerged_dit = weight_source(premerged, "tiny", 0, {}).load("dit")
    engine = dit_velocity(with_lora)
    np.testing.assert_allclose(engine, reference_velocity(premerged_dit), rtol=1e-5, atol=1e-5)
    assert not np.allclose(engine, reference_velocity(weight_source(tiny_official_ckpt, "tiny", 0, {}).load("dit")),
                           rtol=1e-3, atol=1e-3)  # the LoRA changed what the DiT computes
    from wan_export.check import check_engines

    report = check_engines(with_lora)  # its reference is the base checkpoint + the manifest's LoRA
    assert report.passed and {row.component for row in report.rows} >= {"dit"}, report.table()

    record = json.loads((with_lora / "manifest.json").read_text())["weights"]["loras"]
    assert record == [{"file": lora.name, "path": str(lora.resolve()), "sha256": LoraSpec(lora).record()["sha256"],
                       "scale": SCALE}]
    source = weight_source(tiny_official_ckpt, "tiny", 0, {})
    keyed = [weights_fingerprint(with_loras(source, [LoraSpec(lora, s)]), part) for s in (SCALE, 0.5)
             for part in ("dit", "t5")]
    assert keyed[0] != keyed[2] and keyed[1] == keyed[3] == weights_fingerprint(source, "t5")
