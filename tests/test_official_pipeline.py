"""End to end against the official pipeline: `WanTI2V.t2v` / `WanTI2V.i2v` (wan/textimage2video.py) on CPU, fp32,
vs `wan_rt.Pipeline` over the tiny engines, both from the same official-layout checkpoint and the same noise.

The official object is made without its __init__ (which wants CUDA and the full-size T5/VAE): every attribute
t2v/i2v read is set by hand, and its T5EncoderModel / Wan2_2_VAE / WanModel are the official classes, loaded
from the checkpoint files, at the tiny sizes. Two loader details of the official code do not scale down, so the
test works around them (the math is untouched):
- `T5EncoderModel` always builds `umt5_xxl`: the factory is swapped for one with the tiny widths while it runs.
- `Wan2_2_VAE` passes no `dec_dim` (WanVAE_ default 256): `_video_vae` is wrapped to pass the tiny one.
- `WanModel.from_pretrained` ignores `text_dim` from config.json (it is in `ignore_for_config`; the real model
  uses the default 4096), so the model is built from config.json and its safetensors loaded strictly instead.

Compared: the final latents (captured at the input of the official `vae.decode`), the decoded float video (the
official decode vs our streaming decoder engines on our latents) and the uint8 frames (what the official
`save_video` hands its writer, tests/oracle.py) against our .npy output, within one level; the MP4 PSNR is printed
for information (H.264 is lossy).
"""
from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import oracle
from wan_export.config import TINY
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.vae_stream import decode_stream
from wan_rt.video import open_video_writer, read_video

PROMPT = "A red fox trots through fresh snow at sunrise"
STEPS = 5
FRAMES = 9
T2V_SIZE = (192, 64)  # (width, height): not the engines' default point, latent 4 x 12
I2V_AREA = (160, 96)  # area bound; the 240x128 input image becomes 160x96 (resize to 180x96, crop)
LATENT_TOLERANCE = 1e-3
VIDEO_TOLERANCE = 1e-3  # max |ours - official| of the decoded float video, in [-1, 1]
PSNR_FLOOR = 40.0

# the official VAE wrapper uses the deprecated torch.cuda.amp.autocast (a no-op on CPU tensors)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")


@contextlib.contextmanager
def _swapped(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def make_official_pipeline(official, ckpt):
    """An official WanTI2V on CPU in fp32 over `ckpt`, with every attribute its t2v/i2v use."""
    from safetensors.torch import load_file

    cfg = official.config.ti2v_5B
    t5, vae = TINY.t5, TINY.vae
    cpu = torch.device("cpu")
    pipe = object.__new__(official.pipeline.WanTI2V)
    pipe.device = cpu
    pipe.config = cfg
    pipe.rank = 0
    pipe.t5_cpu = True
    pipe.init_on_cpu = False
    pipe.num_train_timesteps = cfg.num_train_timesteps
    pipe.param_dtype = cfg.param_dtype  # only used for the 'cuda' autocast, a no-op for CPU tensors
    pipe.vae_stride = cfg.vae_stride
    pipe.patch_size = cfg.patch_size
    pipe.sp_size = 1
    pipe.sample_neg_prompt = cfg.sample_neg_prompt

    umt5_xxl, video_vae = official.t5.umt5_xxl, official.vae._video_vae

    def tiny_umt5(**kwargs):
        return umt5_xxl(vocab_size=t5.vocab_size, dim=t5.dim, dim_attn=t5.dim_attn, dim_ffn=t5.dim_ffn,
                        num_heads=t5.num_heads, encoder_layers=t5.num_layers, decoder_layers=t5.num_layers,
                        num_buckets=t5.num_buckets, **kwargs)

    def tiny_video_vae(**kwargs):
        return video_vae(dec_dim=vae.decoder_base_dim, num_res_blocks=vae.num_res_blocks, **kwargs)

    with _swapped(official.t5, "umt5_xxl", tiny_umt5):
        pipe.text_encoder = official.t5.T5EncoderModel(
            text_len=cfg.text_len, dtype=torch.float32, device=cpu,
            checkpoint_path=str(ckpt / cfg.t5_checkpoint), tokenizer_path=str(ckpt / cfg.t5_tokenizer))
    with _swapped(official.vae, "_video_vae", tiny_video_vae):
        pipe.vae = official.vae.Wan2_2_VAE(
            z_dim=vae.z_dim, c_dim=vae.base_dim, vae_pth=str(ckpt / cfg.vae_checkpoint), dim_mult=list(vae.dim_mult),
            temperal_downsample=list(vae.temporal_downsample), dtype=torch.float32, device=cpu)
    config = {key: tuple(value) if isinstance(value, list) else value
              for key, value in json.loads((ckpt / "config.json").read_text()).items() if not key.startswith("_")}
    model = official.model.WanModel(**config)
    model.load_state_dict(load_file(str(ckpt / "diffusion_pytorch_model.safetensors")), strict=True)
    pipe.model = model.eval().requires_grad_(False)
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
    return pipe


@pytest.fixture(scope="module")
def official():
    return oracle.load_official()


@pytest.fixture(scope="module")
def official_pipe(official, tiny_official_ckpt):
    return make_official_pipeline(official, tiny_official_ckpt)


@pytest.fixture(scope="module")
def ours(tiny_engines):
    with Pipeline(tiny_engines, show_progress=False) as pipeline:
        yield pipeline


def run_official(pipe, official, mode, solver, seed, image_path):
    """(noise, final latents, decoded video [3, T, H, W]) of one official t2v / i2v call."""
    captured = {}
    decode = pipe.vae.decode

    def capturing_decode(zs):
        captured["latents"] = zs[0].detach().clone()
        return decode(zs)

    generator = torch.Generator(device="cpu").manual_seed(seed)  # the official draw, on CPU here
    common = dict(frame_num=FRAMES, shift=5.0, sample_solver=solver, sampling_steps=STEPS, guide_scale=5.0,
                  n_prompt="", seed=seed, offload_model=False)
    pipe.vae.decode = capturing_decode
    try:
        with torch.no_grad():
            if mode == "t2v":
                width, height = T2V_SIZE
                noise = torch.randn(48, (FRAMES - 1) // 4 + 1, height // 16, width // 16, dtype=torch.float32,
                                    generator=generator)
                video = pipe.t2v(PROMPT, size=T2V_SIZE, **common)
            else:
                img = Image.open(image_path).convert("RGB")  # as generate.py prepares it
                max_area = I2V_AREA[0] * I2V_AREA[1]
                width, height = official.utils.best_output_size(img.width, img.height, 32, 32, max_area)
                noise = torch.randn(48, (FRAMES - 1) // 4 + 1, height // 16, width // 16, dtype=torch.float32,
                                    generator=generator)
                video = pipe.i2v(PROMPT, img, max_area=max_area, **common)
    finally:
        del pipe.vae.decode  # back to the class method
    return noise.numpy(), captured["latents"].numpy(), video.numpy()


def psnr(actual: np.ndarray, expected: np.ndarray) -> float:
    mse = np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_matches_official_pipeline(mode, solver, official, official_pipe, ours, input_image, tmp_path):
    seed = {"t2v": 11, "i2v": 12}[mode] + (0 if solver == "unipc" else 100)
    started = time.perf_counter()
    noise, expected_latents, expected_video = run_official(official_pipe, official, mode, solver, seed, input_image)
    official_seconds = time.perf_counter() - started

    noise_file = tmp_path / "noise.npy"  # handed over as a file, as `wan-rt generate --noise` takes it
    np.save(noise_file, noise)
    request = GenerationRequest(prompt=PROMPT, noise=np.load(noise_file), steps=STEPS, frames=FRAMES, solver=solver,
                                shift=5.0, guide_scale=5.0,
                                size=T2V_SIZE if mode == "t2v" else I2V_AREA,
                                image=input_image if mode == "i2v" else None)
    started = time.perf_counter()
    result = ours.generate(request, tmp_path / "out.npy", save_latents=tmp_path / "latents.npy")
    our_seconds = time.perf_counter() - started

    latents = np.load(tmp_path / "latents.npy")
    np.testing.assert_array_equal(latents, result.latents)
    assert latents.shape == expected_latents.shape, (latents.shape, expected_latents.shape)
    latent_error = oracle.max_rel_error(latents, expected_latents)

    chunks = []  # our decoder engines' float output for our latents, as the video writer receives it
    decode_stream(ours.runner("vae_decoder_first"), ours.runner("vae_decoder_step"), result.latents, chunks.append,
                  show_progress=False)
    video = np.concatenate(chunks, axis=1)
    assert video.shape == expected_video.shape, (video.shape, expected_video.shape)
    video_error = float(np.abs(video.astype(np.float64) - expected_video).max())

    expected_frames = oracle.official_uint8_frames(official, torch.from_numpy(expected_video))
    frames, _ = read_video(tmp_path / "out.npy")
    assert frames.shape == expected_frames.shape == (FRAMES, result.height, result.width, 3), \
        (frames.shape, expected_frames.shape)
    frame_levels = int(np.abs(frames.astype(np.int16) - expected_frames.astype(np.int16)).max())
    npy_psnr = psnr(frames, expected_frames)

    with open_video_writer(tmp_path / "out.mp4", 24, result.width, result.height) as writer:  # the runtime's MP4 path
        writer.write(frames)
    mp4_frames, _ = read_video(tmp_path / "out.mp4")
    mp4_psnr = psnr(mp4_frames, expected_frames)

    summary = (f"{mode} {solver} {result.width}x{result.height}x{FRAMES}, {STEPS} steps: latents max rel error "
               f"{latent_error:.2e}; decoded video max abs error {video_error:.2e}; frames within {frame_levels} "
               f"level(s), PSNR {npy_psnr:.1f} dB (.npy), {mp4_psnr:.1f} dB (MP4, information); "
               f"official {official_seconds:.1f} s, ours {our_seconds:.1f} s")
    print(summary)
    assert latent_error <= LATENT_TOLERANCE, summary
    assert video_error <= VIDEO_TOLERANCE, summary
    assert frame_levels <= 1, summary
    assert npy_psnr >= PSNR_FLOOR, summary
