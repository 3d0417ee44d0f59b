"""DiT reference vs the official WanModel and diffusers' WanTransformer3DModel on random weights (fp32)."""
import numpy as np
import pytest
import torch

import oracle
from wan_export.checkpoints import dit_keys
from wan_export.config import TINY
from wan_export.model.dit import WanDiT
from wan_export.model.loading import load_module
from wan_rt import tokens

CFG = TINY.dit
LATENT_SHAPE = (48, 3, 6, 10)  # 3 latent frames, h != w
TEXT_LEN = 7


def official_dit():
    official = oracle.load_official()
    model = official.model.WanModel(
        model_type="ti2v", patch_size=CFG.patch_size, text_len=512, in_dim=CFG.in_dim, dim=CFG.dim,
        ffn_dim=CFG.ffn_dim, freq_dim=CFG.freq_dim, text_dim=CFG.text_dim, out_dim=CFG.out_dim,
        num_heads=CFG.num_heads, num_layers=CFG.num_layers).eval()
    oracle.randomize_(model, seed=0, scale=0.1)
    return model


@pytest.fixture(scope="module")
def models():
    official = official_dit()
    ours = load_module(lambda: WanDiT(CFG), dict(official.state_dict()))
    return official, ours


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(LATENT_SHAPE, generator=generator)
    context = torch.randn(TEXT_LEN, CFG.text_dim, generator=generator)
    padded = torch.cat([context, torch.zeros(512 - TEXT_LEN, CFG.text_dim)])[None]
    return latent, context, padded


def run_ours(model, latent, padded_context, timesteps):
    grid = tokens.token_grid(latent.shape)
    cos, sin = (torch.from_numpy(t.copy()) for t in tokens.rope_tables(grid, CFG.head_dim))
    token_input = torch.from_numpy(tokens.patchify(latent.numpy()))[None]
    with torch.no_grad():
        out = model(token_input, timesteps, padded_context, cos, sin)
    return tokens.unpatchify(out[0].numpy(), grid, CFG.out_dim)


@pytest.mark.parametrize("first_frame_t", [None, 0.0], ids=["t2v-one-timestep", "i2v-two-timesteps"])
def test_dit_matches_official(models, inputs, first_frame_t):
    official, ours = models
    latent, context, padded = inputs
    grid = tokens.token_grid(latent.shape)
    timesteps = torch.from_numpy(tokens.token_timesteps(grid, 937.0, first_frame_t))[None]
    with torch.no_grad():
        expected = official([latent], t=timesteps, context=[context], seq_len=timesteps.shape[1])[0].numpy()
    label = "t2v" if first_frame_t is None else "i2v"
    per_frame = torch.from_numpy(tokens.frame_timesteps(grid, 937.0, first_frame_t))[None]
    for form, ours_timesteps in (("per token", timesteps), ("per frame (the engine's form)", per_frame)):
        actual = run_ours(ours, latent, padded, ours_timesteps)
        error = oracle.max_rel_error(actual, expected)
        print(f"DiT vs official ({label}, timesteps {form}): max rel error {error:.2e}")
        assert error <= 1e-4, f"{form}: max relative error {error:.2e} > 1e-4"


@pytest.mark.parametrize("first_frame_t", [None, 0.0])
def test_per_frame_timesteps_equal_per_token(models, inputs, first_frame_t):
    """Frame-grouped modulation is the per-token computation on shared rows: equal up to GEMM summation order."""
    _, ours = models
    latent, _, padded = inputs
    grid = tokens.token_grid(latent.shape)
    per_token = torch.from_numpy(tokens.token_timesteps(grid, 611.0, first_frame_t))[None]
    per_frame = torch.from_numpy(tokens.frame_timesteps(grid, 611.0, first_frame_t))[None]
    assert per_frame.shape[1] == grid[0] and per_token.shape[1] == grid[0] * grid[1] * grid[2]
    error = oracle.max_rel_error(run_ours(ours, latent, padded, per_frame), run_ours(ours, latent, padded, per_token))
    assert error <= 2e-6, f"per frame vs per token: max relative error {error:.2e}"


def test_dit_matches_diffusers(models, inputs):
    from diffusers import WanTransformer3DModel

    _, ours = models
    latent, _, padded = inputs
    config = {k: v for k, v in dit_keys.diffusers_config(CFG).items() if not k.startswith("_")}
    theirs = WanTransformer3DModel(**config).eval()
    theirs.load_state_dict(dit_keys.official_to_diffusers(ours.state_dict()), strict=True)
    grid = tokens.token_grid(latent.shape)
    timesteps = torch.from_numpy(tokens.token_timesteps(grid, 500.0, 0.0))[None]
    with torch.no_grad():
        expected = theirs(hidden_states=latent[None], timestep=timesteps, encoder_hidden_states=padded,
                          return_dict=False)[0][0].numpy()
    error = oracle.max_rel_error(run_ours(ours, latent, padded, timesteps), expected)
    print(f"DiT vs diffusers: max rel error {error:.2e}")
    assert error <= 1e-4, f"max relative error {error:.2e} > 1e-4"


def test_key_maps_round_trip(models):
    state = models[1].state_dict()
    there = dit_keys.official_to_diffusers(state)
    assert set(dit_keys.diffusers_to_official(there)) == set(state)
    with pytest.raises(ValueError, match="unknown official DiT parameter"):
        dit_keys.official_to_diffusers({"blocks.0.bogus.weight": None})


def test_config_inferred_from_shapes(models):
    shapes = {k: tuple(v.shape) for k, v in models[1].state_dict().items()}
    assert dit_keys.dit_config_from_shapes(shapes, CFG.num_heads) == CFG


def test_patchify_round_trip_and_rope_tables():
    latent = np.random.default_rng(0).standard_normal((48, 2, 4, 6)).astype(np.float32)
    grid = tokens.token_grid(latent.shape)
    # unpatchify expects (pt, ph, pw, c) channel order, patchify gives (c, pt, ph, pw): reorder to compare
    token_input = tokens.patchify(latent).reshape(-1, 48, 1, 2, 2).transpose(0, 2, 3, 4, 1).reshape(-1, 192)
    np.testing.assert_array_equal(tokens.unpatchify(token_input, grid, 48), latent)
    cos, sin = tokens.rope_tables(grid, 128)
    assert cos.shape == (2 * 2 * 3, 64)
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-6)
    np.testing.assert_array_equal(cos[0], 1.0)  # position (0, 0, 0) is not rotated


@pytest.mark.parametrize("head_dim", [128, 64, 32])
def test_rope_tables_are_the_official_rope_params_per_axis(head_dim):
    """Our cos/sin tables, axis by axis, against the official complex tables: `rope_params(1024, dim)` per axis
    with WanModel's dims (d - 4*(d//6), 2*(d//6), 2*(d//6)), indexed per token as rope_apply does (frame, row,
    column of the (f, h, w) grid, tokens in f-h-w order)."""
    official = oracle.load_official().model
    d = head_dim
    axis_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    grid = (3, 4, 5)
    cos, sin = tokens.rope_tables(grid, d)
    assert cos.shape == sin.shape == (int(np.prod(grid)), d // 2)
    f, h, w = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
    positions = [axis.reshape(-1) for axis in (f, h, w)]  # per token: its frame, row and column
    start = 0
    for axis, (dim, index) in enumerate(zip(axis_dims, positions)):
        table = official.rope_params(1024, dim)[index].numpy()  # complex128 [L, dim/2]
        pairs = dim // 2
        np.testing.assert_allclose(cos[:, start:start + pairs], table.real, rtol=0, atol=1e-7, err_msg=f"axis {axis}")
        np.testing.assert_allclose(sin[:, start:start + pairs], table.imag, rtol=0, atol=1e-7, err_msg=f"axis {axis}")
        start += pairs
    assert start == d // 2
