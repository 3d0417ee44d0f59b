"""VAE parameter names: official Wan2.2 (`WanVAE_`, file Wan2.2_VAE.pth) <-> diffusers (`AutoencoderKLWan`),
the diffusers `vae/config.json` for a VAEConfig, and size inference from an official state dict."""
from __future__ import annotations

import re

from wan_export.config import LATENTS_MEAN, LATENTS_STD, VAEConfig

# Inside a residual block: official Sequential indices -> diffusers names.
_RESIDUAL = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_ATTENTION = ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")
_RESAMPLE = ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")
_PARAM = ("weight", "bias")

# Whole names that do not depend on a stage index.
_FIXED = {
    **{f"conv1.{p}": f"quant_conv.{p}" for p in _PARAM},
    **{f"conv2.{p}": f"post_quant_conv.{p}" for p in _PARAM},
    **{f"{s}.conv1.{p}": f"{s}.conv_in.{p}" for s in ("encoder", "decoder") for p in _PARAM},
    **{f"{s}.head.2.{p}": f"{s}.conv_out.{p}" for s in ("encoder", "decoder") for p in _PARAM},
    **{f"{s}.head.0.gamma": f"{s}.norm_out.gamma" for s in ("encoder", "decoder")},
    **{f"{s}.middle.{i}.{k}": f"{s}.mid_block.resnets.{r}.{v}"
       for s in ("encoder", "decoder") for i, r in ((0, 0), (2, 1)) for k, v in _RESIDUAL.items()},
    **{f"{s}.middle.1.{k}": f"{s}.mid_block.attentions.0.{k}" for s in ("encoder", "decoder") for k in _ATTENTION},
}
_FIXED_INVERSE = {v: k for k, v in _FIXED.items()}

# Stage names: (official stage list, official inner list, diffusers block list, diffusers resampler).
_STAGES = {
    "encoder": ("downsamples", "downsamples", "down_blocks", "downsampler"),
    "decoder": ("upsamples", "upsamples", "up_blocks", "upsampler"),
}
_OFFICIAL_STAGE = re.compile(r"(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.+)")
_DIFFUSERS_RESNET = re.compile(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.resnets\.(\d+)\.(.+)")
_DIFFUSERS_RESAMPLER = re.compile(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(downsampler|upsampler)\.(.+)")


def _official_key_to_diffusers(key: str) -> str:
    if key in _FIXED:
        return _FIXED[key]
    m = _OFFICIAL_STAGE.fullmatch(key)
    if m:
        side, outer, stage, inner, index, tail = m.groups()
        stage_list, inner_list, blocks, resampler = _STAGES[side]
        if (outer, inner) == (stage_list, inner_list):
            if tail in _RESIDUAL:
                return f"{side}.{blocks}.{stage}.resnets.{index}.{_RESIDUAL[tail]}"
            if tail in _RESAMPLE:  # the Resample closes the stage, after the residual blocks
                return f"{side}.{blocks}.{stage}.{resampler}.{tail}"
    raise ValueError(f"unknown official VAE parameter {key!r}")


def official_to_diffusers(state_dict: dict) -> dict:
    """Official Wan2.2 VAE names -> diffusers AutoencoderKLWan names (same tensors, not copied)."""
    return {_official_key_to_diffusers(k): v for k, v in state_dict.items()}


def diffusers_to_official(state_dict: dict) -> dict:
    """Inverse of `official_to_diffusers`. The official index of a stage's Resample is its number of
    residual blocks, counted from the state dict itself."""
    resnets: dict[tuple[str, str], int] = {}
    for key in state_dict:
        m = _DIFFUSERS_RESNET.fullmatch(key)
        if m:
            stage = (m.group(1), m.group(3))
            resnets[stage] = max(resnets.get(stage, 0), int(m.group(4)) + 1)

    inverse_residual = {v: k for k, v in _RESIDUAL.items()}
    out = {}
    for key, value in state_dict.items():
        new = _FIXED_INVERSE.get(key)
        m = _DIFFUSERS_RESNET.fullmatch(key)
        if new is None and m:
            side, blocks, stage, index, tail = m.groups()
            stage_list, inner_list, expected_blocks, _ = _STAGES[side]
            if blocks == expected_blocks and tail in inverse_residual:
                new = f"{side}.{stage_list}.{stage}.{inner_list}.{index}.{inverse_residual[tail]}"
        m = _DIFFUSERS_RESAMPLER.fullmatch(key)
        if new is None and m:
            side, blocks, stage, resampler, tail = m.groups()
            stage_list, inner_list, expected_blocks, expected_resampler = _STAGES[side]
            if (blocks, resampler) == (expected_blocks, expected_resampler) and tail in _RESAMPLE:
                if (side, stage) not in resnets:
                    raise ValueError(f"{key!r}: stage has no residual blocks to place its resampler after")
                new = f"{side}.{stage_list}.{stage}.{inner_list}.{resnets[side, stage]}.{tail}"
        if new is None:
            raise ValueError(f"unknown diffusers VAE parameter {key!r}")
        out[new] = value
    return out


def diffusers_config(cfg: VAEConfig) -> dict:
    """`vae/config.json` for diffusers' AutoencoderKLWan (Wan2.2 layout, as in Wan-AI/Wan2.2-TI2V-5B-Diffusers)."""
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": cfg.base_dim,
        "decoder_base_dim": cfg.decoder_base_dim,
        "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(cfg.temporal_downsample),
        "dropout": 0.0,
        "latents_mean": list(cfg.latents_mean),
        "latents_std": list(cfg.latents_std),
        "is_residual": True,  # Wan2.2 blocks: AvgDown3D / DupUp3D shortcuts
        "in_channels": 12,  # 3 colors x 2 x 2 patchify
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_temporal": cfg.temporal_stride,
        "scale_factor_spatial": cfg.spatial_stride,
    }


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"not an official Wan2.2 VAE state dict: {key!r} missing")
    return tuple(sd[key].shape)


def vae_config_from_state_dict(sd: dict, latents_mean=None, latents_std=None) -> VAEConfig:
    """Infer the VAE sizes from an official-layout state dict. Latent statistics default to the official
    ones, which exist for z_dim 48 only."""
    z_dim = _shape(sd, "conv2.weight")[0]
    base_dim = _shape(sd, "encoder.conv1.weight")[0]

    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    if stages != list(range(len(stages))) or not stages:
        raise ValueError(f"encoder stages are not numbered 0..n-1: {stages}")
    dim_mult = []
    for i in stages:
        width = _shape(sd, f"encoder.downsamples.{i}.downsamples.0.residual.6.weight")[0]
        if width % base_dim:
            raise ValueError(f"encoder stage {i} width {width} is no multiple of base_dim {base_dim}")
        dim_mult.append(width // base_dim)
    first_stage_block = re.compile(r"encoder\.downsamples\.0\.downsamples\.\d+\.residual\.0\.gamma")
    num_res_blocks = sum(1 for k in sd if first_stage_block.fullmatch(k))
    temporal_downsample = tuple(f"encoder.downsamples.{i}.downsamples.{num_res_blocks}.time_conv.weight" in sd
                                for i in stages[:-1])

    # The decoder's last stage runs at decoder_base_dim * dim_mult[0] channels.
    head_width = _shape(sd, "decoder.head.0.gamma")[0]
    if head_width % dim_mult[0]:
        raise ValueError(f"decoder head width {head_width} is no multiple of dim_mult[0] {dim_mult[0]}")
    decoder_base_dim = head_width // dim_mult[0]
    if _shape(sd, "decoder.conv1.weight")[0] != decoder_base_dim * dim_mult[-1]:
        raise ValueError("decoder.conv1 width does not match decoder_base_dim * dim_mult[-1]")

    if latents_mean is None or latents_std is None:
        if z_dim != len(LATENTS_MEAN):
            raise ValueError(f"z_dim {z_dim}: give latents_mean/latents_std (official ones have {len(LATENTS_MEAN)})")
        latents_mean = LATENTS_MEAN if latents_mean is None else latents_mean
        latents_std = LATENTS_STD if latents_std is None else latents_std
    if len(latents_mean) != z_dim or len(latents_std) != z_dim:
        raise ValueError(f"latents_mean/latents_std need {z_dim} values, got {len(latents_mean)}/{len(latents_std)}")
    return VAEConfig(
        z_dim=z_dim,
        base_dim=base_dim,
        decoder_base_dim=decoder_base_dim,
        dim_mult=tuple(dim_mult),
        num_res_blocks=num_res_blocks,
        temporal_downsample=temporal_downsample,
        latents_mean=tuple(float(v) for v in latents_mean),
        latents_std=tuple(float(v) for v in latents_std),
    )
