"""WanVAE (wan_export.model.vae) against the official Wan2.2 VAE and diffusers' AutoencoderKLWan, on a tiny
randomized config: whole clips, streaming chunks with explicit caches, cache contents, key mapping."""
from __future__ import annotations

import pytest
import torch

from oracle import load_official, max_rel_error, randomize_
from wan_export.checkpoints.vae_keys import (
    diffusers_config,
    diffusers_to_official,
    official_to_diffusers,
    vae_config_from_state_dict,
)
from wan_export.config import TINY, VAEConfig
from wan_export.model.vae import WanVAE, patchify, unpatchify
from wan_export.model.vae_blocks import Upsample2x

CFG = TINY.vae
HEIGHT, WIDTH = 48, 80  # latent 3 x 5: odd, not square
CLIP_FRAMES = 13  # 4 encoder chunks: the first, then 3 steady ones (every cache fully warm by the last)
LATENT_FRAMES = 4  # 4 decoder chunks, likewise


def official_vae(official, cfg: VAEConfig):
    return official.vae.WanVAE_(dim=cfg.base_dim, dec_dim=cfg.decoder_base_dim, z_dim=cfg.z_dim,
                                dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
                                temperal_downsample=list(cfg.temporal_downsample))


@pytest.fixture(scope="module")
def official():
    return load_official()


@pytest.fixture(scope="module")
def reference(official):
    model = official_vae(official, CFG).eval()
    randomize_(model, seed=0)
    return model


@pytest.fixture(scope="module")
def scale(official, reference):
    """[mean, 1/std] as the official wrapper `Wan2_2_VAE` holds them (its own constants, not ours); its model
    loader is swapped for the randomized reference, so no checkpoint is read."""
    loader = official.vae._video_vae
    official.vae._video_vae = lambda **kwargs: reference
    try:
        wrapper = official.vae.Wan2_2_VAE(z_dim=CFG.z_dim, c_dim=CFG.base_dim, dim_mult=list(CFG.dim_mult),
                                          temperal_downsample=list(CFG.temporal_downsample), dtype=torch.float32,
                                          device="cpu")
    finally:
        official.vae._video_vae = loader
    assert wrapper.model is reference
    return wrapper.scale


def test_latent_normalization_constants_are_official(scale):
    mean, inv_std = scale
    assert torch.equal(torch.tensor(CFG.latents_mean, dtype=torch.float32), mean)
    assert torch.equal(1.0 / torch.tensor(CFG.latents_std, dtype=torch.float32), inv_std)
    model = WanVAE(CFG)  # the buffers our graphs bake in
    assert torch.equal(model.latents_mean.flatten(), mean) and torch.equal(model.latents_inv_std.flatten(), inv_std)


@pytest.fixture(scope="module")
def vae(reference):
    model = WanVAE(CFG).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, CLIP_FRAMES, HEIGHT, WIDTH, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def latent():
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, CFG.z_dim, LATENT_FRAMES, HEIGHT // 16, WIDTH // 16, generator=g)


def check(name: str, actual, expected, tol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = max_rel_error(actual, expected)
    print(f"\n{name}: max rel error {err:.3e} (tol {tol:.0e})")
    assert err <= tol, f"{name}: max rel error {err:.3e} > {tol:.0e}"


# ---- structure ----------------------------------------------------------------------------------------------

def test_state_dict_is_official(reference, vae):
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert "latents_mean" not in ours and "latents_inv_std" not in ours


def test_patchify_matches_official(official):
    x = torch.randn(2, 3, 3, 6, 10)
    assert torch.equal(patchify(x), official.vae.patchify(x, 2))
    assert torch.equal(unpatchify(patchify(x)), x)
    assert torch.equal(unpatchify(patchify(x)), official.vae.unpatchify(official.vae.patchify(x, 2), 2))


def test_our_upsample_is_the_official_nearest_exact_2x(official):
    """Upsample2x (what our decoder graphs use: 'nearest', an ONNX Resize every runtime has) == the official
    Upsample(scale 2, 'nearest-exact') as the official Resample builds it, fp32 and bf16, odd sizes."""
    theirs = official.vae.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    for shape in ((2, 3, 5, 7), (1, 4, 1, 1), (1, 2, 6, 4)):
        x = torch.randn(shape)
        assert torch.equal(Upsample2x()(x), theirs(x)), shape
        assert torch.equal(Upsample2x()(x.bfloat16()), theirs(x.bfloat16())), shape


# ---- whole clips against the official code -------------------------------------------------------------------

@torch.no_grad()
def test_encode_image_matches_official(reference, vae, clip, scale):
    image = clip[:, :, :1]
    check("encode image vs official", vae.encode(image), reference.encode(image, scale), 1e-4)


@torch.no_grad()
def test_encode_clip_matches_official(reference, vae, clip, scale):
    check(f"encode {CLIP_FRAMES} frames vs official", vae.encode(clip), reference.encode(clip, scale),
          1e-4)


@torch.no_grad()
def test_decode_matches_official(reference, vae, latent, scale):
    expected = reference.decode(latent, scale).float().clamp_(-1, 1)  # as Wan2_2_VAE.decode
    assert expected.abs().max() < 1, "random weights saturate the clamp; the comparison would be weak"
    check(f"decode {LATENT_FRAMES} latent frames vs official", vae.decode(latent), expected, 1e-4)


# ---- streaming chunks --------------------------------------------------------------------------------------

@torch.no_grad()
def test_chunked_decode_equals_whole(vae, latent):
    batch = torch.cat([latent, latent.flip(2)])  # two different clips: batch items stay independent
    pixels, caches = vae.decode_first_chunk(batch[:, :, :1])
    frames = [pixels]
    for i in range(1, LATENT_FRAMES):
        caches = tuple(c.clone() for c in caches)  # as a runtime would: fresh buffers between calls
        pixels, caches = vae.decode_chunk(batch[:, :, i:i + 1], caches)
        assert pixels.shape[2] == 4
        frames.append(pixels)
    chunked = torch.cat(frames, dim=2)
    for b in range(2):
        check(f"chunked decode item {b} vs whole decode", chunked[b:b + 1], vae.decode(batch[b:b + 1]), 1e-5)


@torch.no_grad()
def test_chunked_encode_equals_whole(vae, clip):
    batch = torch.cat([clip, clip.flip(2)])
    latent, caches = vae.encode_first_chunk(batch[:, :, :1])
    latents = [latent]
    for start in range(1, CLIP_FRAMES, 4):
        caches = tuple(c.clone() for c in caches)
        latent, caches = vae.encode_chunk(batch[:, :, start:start + 4], caches)
        latents.append(latent)
    chunked = torch.cat(latents, dim=2)
    for b in range(2):
        check(f"chunked encode item {b} vs whole encode", chunked[b:b + 1], vae.encode(batch[b:b + 1]), 1e-5)


@torch.no_grad()
def test_cache_specs_match_returned_shapes(vae):
    batch = 2
    frame = torch.zeros(batch, 3, 1, HEIGHT, WIDTH)
    _, first = vae.encode_first_chunk(frame)
    _, steady = vae.encode_chunk(torch.zeros(batch, 3, 4, HEIGHT, WIDTH), first)
    specs = vae.encoder_cache_specs(HEIGHT, WIDTH, batch=batch)
    assert [n for n, _ in specs] == list(vae.encoder_cache_names)
    assert [s for _, s in specs] == [tuple(c.shape) for c in first] == [tuple(c.shape) for c in steady]

    h, w = HEIGHT // 16, WIDTH // 16
    _, first = vae.decode_first_chunk(torch.zeros(batch, CFG.z_dim, 1, h, w))
    _, steady = vae.decode_chunk(torch.zeros(batch, CFG.z_dim, 1, h, w), first)
    specs = vae.decoder_cache_specs(h, w, batch=batch)
    assert [n for n, _ in specs] == list(vae.decoder_cache_names)
    assert [s for _, s in specs] == [tuple(c.shape) for c in first] == [tuple(c.shape) for c in steady]
    assert "decoder.upsamples.0.upsamples.1.residual.2" in vae.decoder_cache_names


def compare_with_official_caches(names, ours, theirs, label: str) -> None:
    """Our fixed 2-frame caches hold what the official cache list holds, zeros standing for what it lacks:
    "Rep" is all zeros; k < 2 official frames are our last k frames, in front of zeros (which is what the
    official conv pads with). Exception: the stride-2 downsample time conv, which reads only the last frame."""
    assert len(theirs) == len(names), f"{label}: official used {len(theirs)} caches, we have {len(names)}"
    for name, mine, other in zip(names, ours, theirs):
        if isinstance(other, str):
            assert other == "Rep" and not mine.any(), f"{label} {name}: 'Rep' must be a zero cache"
            continue
        k = other.shape[2]
        err = max_rel_error(mine[:, :, -k:], other)
        assert err <= 1e-5, f"{label} {name}: last {k} frames differ, max rel error {err:.3e}"
        if not (name.startswith("encoder.") and name.endswith(".time_conv")):
            assert not mine[:, :, :-k].any(), f"{label} {name}: frames the official cache lacks must be zero"


@torch.no_grad()
def test_decoder_caches_match_official_feat_map(reference, vae, latent, scale):
    mean, inv_std = scale
    x = reference.conv2(latent / inv_std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1))
    reference.clear_cache()
    _, caches = vae.decode_first_chunk(latent[:, :, :1])
    for i in range(LATENT_FRAMES):
        if i:
            _, caches = vae.decode_chunk(latent[:, :, i:i + 1], caches)
        idx = [0]
        reference.decoder(x[:, :, i:i + 1], feat_cache=reference._feat_map, feat_idx=idx, first_chunk=i == 0)
        compare_with_official_caches(vae.decoder_cache_names, caches, reference._feat_map[:idx[0]],
                                     f"decoder chunk {i}")
    reference.clear_cache()


@torch.no_grad()
def test_encoder_caches_match_official_feat_map(official, reference, vae, clip):
    x = official.vae.patchify(clip, 2)
    reference.clear_cache()
    _, caches = vae.encode_first_chunk(clip[:, :, :1])
    for i, start in enumerate(range(0, CLIP_FRAMES, 4)):
        chunk = slice(0, 1) if i == 0 else slice(start - 3, start + 1)
        if i:
            _, caches = vae.encode_chunk(clip[:, :, chunk], caches)
        idx = [0]
        reference.encoder(x[:, :, chunk], feat_cache=reference._enc_feat_map, feat_idx=idx)
        compare_with_official_caches(vae.encoder_cache_names, caches, reference._enc_feat_map[:idx[0]],
                                     f"encoder chunk {i}")
    reference.clear_cache()


# ---- diffusers ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_diffusers_matches(reference, vae, clip, latent):
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan(**diffusers_config(CFG)).eval()
    model.load_state_dict(official_to_diffusers(reference.state_dict()), strict=True)
    mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)

    # WanImageToVideoPipeline.prepare_latents: argmax latent (the posterior mean), then (z - mean) * (1/std).
    encoded = (model.encode(clip).latent_dist.mean - mean) * inv_std
    check("encode vs diffusers", vae.encode(clip), encoded, 1e-4)
    # WanPipeline: latents / (1/std) + mean before vae.decode, whose output diffusers already clamps.
    decoded = model.decode(latent / inv_std + mean).sample
    check("decode vs diffusers", vae.decode(latent), decoded, 1e-4)


def test_key_mapping_round_trips(reference):
    sd = reference.state_dict()
    converted = official_to_diffusers(sd)
    assert len(converted) == len(sd)
    back = diffusers_to_official(converted)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)


def test_key_mapping_covers_full_size_model(official):
    """Every key of the real-size official VAE maps onto diffusers' real-size model (shapes only, meta device)."""
    from diffusers import AutoencoderKLWan

    full = VAEConfig()
    with torch.device("meta"):
        sd = official_vae(official, full).state_dict()
        target = AutoencoderKLWan(**diffusers_config(full)).state_dict()
    converted = official_to_diffusers(sd)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in target.items()}
    assert set(diffusers_to_official(target)) == set(sd)


def test_unknown_keys_raise(reference):
    sd = dict(reference.state_dict())
    sd["encoder.downsamples.0.downsamples.0.residual.4.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="residual.4.weight"):
        official_to_diffusers(sd)
    with pytest.raises(ValueError, match="decoder.up_blocks.0.attn.weight"):
        diffusers_to_official({"decoder.up_blocks.0.attn.weight": torch.zeros(1)})


@pytest.mark.parametrize("cfg", [
    CFG,
    VAEConfig(),
    VAEConfig(base_dim=8, decoder_base_dim=24, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, False)),
], ids=["tiny", "ti2v-5b", "other"])
def test_config_from_state_dict(official, cfg):
    with torch.device("meta"):  # shapes only
        sd = official_vae(official, cfg).state_dict()
    assert vae_config_from_state_dict(sd) == cfg
