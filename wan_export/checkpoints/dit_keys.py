"""DiT parameter names: official Wan (`WanModel`) <-> diffusers (`WanTransformer3DModel`), and size inference."""
from __future__ import annotations

import re

from wan_export.config import DiTConfig

# (official, diffusers) name fragments; block-level names are matched after the `blocks.N.` prefix.
_TOP_LEVEL = (
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
    ("patch_embedding.", "patch_embedding."),
)
_IN_BLOCK = (
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."),  # the affine cross-attention norm: official norm3 is diffusers norm2
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
)
_BLOCK = re.compile(r"^(blocks\.\d+\.)(.*)$")


def rename(key: str, to_diffusers: bool) -> str:
    src, dst = (0, 1) if to_diffusers else (1, 0)
    match = _BLOCK.match(key)
    prefix, rest, table = (match.group(1), match.group(2), _IN_BLOCK) if match else ("", key, _TOP_LEVEL)
    for pair in table:
        if rest.startswith(pair[src]):
            return prefix + pair[dst] + rest[len(pair[src]):]
    layout = "official" if to_diffusers else "diffusers"
    raise ValueError(f"unknown {layout} DiT parameter {key!r}")


def official_to_diffusers(state_dict: dict) -> dict:
    return {rename(key, True): value for key, value in state_dict.items()}


def diffusers_to_official(state_dict: dict) -> dict:
    return {rename(key, False): value for key, value in state_dict.items()}


# Wrappers that training code puts around WanModel's names: Self-Forcing's `model.` (its WanDiffusionWrapper), FSDP's
# `_fsdp_wrapped_module.`, DDP's `module.`, ComfyUI's `model.diffusion_model.` / `diffusion_model.`.
WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model._fsdp_wrapped_module.",
                    "_fsdp_wrapped_module.", "module.", "model.")


def strip_prefixes(state_dict: dict) -> dict:
    """Official Wan names from a DiT state dict whose every key carries a known wrapper prefix (repeatedly)."""
    while state_dict and "patch_embedding.weight" not in state_dict:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state_dict)), None)
        if prefix is None:
            break
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def official_config_json(cfg: DiTConfig) -> dict:
    """config.json as `WanModel.from_pretrained` reads it (official checkpoint folder)."""
    return {
        "_class_name": "WanModel", "model_type": "ti2v", "patch_size": list(cfg.patch_size),
        "text_len": cfg.text_len, "in_dim": cfg.in_dim, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim, "out_dim": cfg.out_dim, "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True,
        "eps": cfg.eps,
    }


def diffusers_config(cfg: DiTConfig) -> dict:
    """transformer/config.json for `WanTransformer3DModel` (as in Wan-AI/Wan2.2-TI2V-5B-Diffusers)."""
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim, "out_channels": cfg.out_dim, "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": cfg.eps,
        "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
    }


def dit_config_from_shapes(shapes: dict[str, tuple[int, ...]], num_heads: int | None) -> DiTConfig:
    """Sizes from official-layout parameter shapes; the head count comes from config.json (not in the tensors)."""
    dim, in_dim, *patch = shapes["patch_embedding.weight"]
    num_layers = len({key.split(".")[1] for key in shapes if key.startswith("blocks.")})
    patch_volume = patch[0] * patch[1] * patch[2]
    heads = num_heads if num_heads else max(1, dim // 128)  # the released models all use head_dim 128
    return DiTConfig(
        in_dim=in_dim, out_dim=shapes["head.head.weight"][0] // patch_volume, dim=dim,
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], freq_dim=shapes["time_embedding.0.weight"][1],
        text_dim=shapes["text_embedding.0.weight"][1], num_heads=heads, num_layers=num_layers,
        patch_size=tuple(patch),
    )
