"""The tiny (TAEHV taew2_2) decoder: the reference equals upstream's decode, its files load, its streaming engine
equals the reference, and `wan-rt generate --decoder tiny --preview-every N` writes the official frame count.

Upstream parity runs on a fixture recorded once from madebyollin/taehv's own code by scripts/make_taehv_fixture.py
(seeded random full-size weights, made again here and checked by sha256; a small latent; upstream's output).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_export.checkpoints.taehv_file import TinyVAESource, random_state, state_sha256
from wan_export.model.loading import load_module
from wan_export.model.taehv import WIDTHS, TinyDecoder, TinyVAEConfig
from wan_rt.errors import WanError

FIXTURES = Path(__file__).parent / "fixtures" / "taehv"
NARROW = (32, 16, 16, 16)


def _decoder(cfg: TinyVAEConfig, seed: int) -> TinyDecoder:
    return load_module(lambda: TinyDecoder(cfg), random_state(cfg, seed))


@pytest.mark.parametrize("variant", ["base", "super"])
def test_reference_equals_upstream_taehv_decode(variant):
    recorded = np.load(FIXTURES / f"{variant}.npz")
    cfg = TinyVAEConfig(variant, 48, WIDTHS[variant], 2)
    state = random_state(cfg, int(recorded["seed"]))
    assert state_sha256(state) == str(recorded["weights_sha256"]), (
        "the random weights differ from those the fixture was recorded with: run scripts/make_taehv_fixture.py")
    model = load_module(lambda: TinyDecoder(cfg), state)
    latent = torch.from_numpy(recorded["latent"])
    with torch.no_grad():
        video = model.decode(latent)
    assert video.shape[2] == 4 * (latent.shape[2] - 1) + 1  # the official 4n+1 frames
    for mode in ("parallel", "sequential"):  # upstream's two decode paths, [0, 1] NTCHW
        upstream = torch.from_numpy(recorded[mode]).transpose(1, 2) * 2 - 1
        assert 0.3 < ((upstream > -1) & (upstream < 1)).float().mean()  # not a comparison of clamped values
        torch.testing.assert_close(video, upstream, atol=2e-5, rtol=0)


@pytest.mark.parametrize("variant", ["base", "super"])
def test_taehv_files_load_pth_and_safetensors(variant, tmp_path):
    from safetensors.torch import save_file

    cfg = TinyVAEConfig(variant, 48, NARROW, 2)
    state = random_state(cfg, 3)
    # as upstream's files: encoder tensors beside the decoder's, the first TGrow stored with time stride 2
    stored = {"encoder.0.weight": torch.randn(64, 12, 3, 3), **state}
    stored["decoder.7.conv.weight"] = torch.cat([torch.randn_like(state["decoder.7.conv.weight"]),
                                                 state["decoder.7.conv.weight"]])
    torch.save(stored, tmp_path / "taew2_2.pth")
    save_file(stored, str(tmp_path / "taew2_2.safetensors"))
    latent = torch.randn(1, 48, 2, 2, 3)
    with torch.no_grad():
        expected = _decoder(cfg, 3).decode(latent)
        for name in ("taew2_2.pth", "taew2_2.safetensors"):
            source = TinyVAESource(tmp_path / name)
            assert source.config == cfg
            assert torch.equal(source.load().decode(latent), expected)


def test_bad_taehv_files_are_one_line(tmp_path):
    torch.save({"decoder.1.weight": torch.zeros(8, 48, 3, 3)}, tmp_path / "partial.pth")
    torch.save({"weights": object()}, tmp_path / "pickled.pth")
    (tmp_path / "taew2_2.bin").write_bytes(b"x")
    cases = {"partial.pth": "not a TAEHV decoder", "pickled.pth": "not a weights-only torch file",
             "taew2_2.bin": "unknown file type", "missing.pth": "no such file"}
    for name, message in cases.items():
        with pytest.raises(WanError, match=message) as caught:
            TinyVAESource(tmp_path / name).load()
        assert "\n" not in str(caught.value)


def test_tiny_decoder_engine_streams_the_reference(tiny_engines):
    from wan_export.weights import weight_source_from_manifest
    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest
    from wan_rt.tiny_decode import TINY_DECODER, tiny_decode_stream

    manifest = load_manifest(tiny_engines, verify=False)
    latents = np.random.default_rng(5).standard_normal((48, 3, 6, 10)).astype(np.float32)
    chunks = []
    with open_runner(manifest, TINY_DECODER) as runner:
        written = tiny_decode_stream(runner, latents, chunks.append, show_progress=False)
    model = weight_source_from_manifest(manifest.data, None).load("tiny_vae")
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(latents[None]))[0].numpy()
    assert written == 9 == expected.shape[1]
    assert [c.shape[1] for c in chunks] == [1, 4, 4]  # the first latent frame gives one frame, as the full decoder
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), expected, atol=1e-4, rtol=0)


def test_generate_decoder_tiny_with_previews(tiny_engines, tmp_path):
    """CLI run with the tiny decoder and a preview every 2 steps: 4n+1 frames equal to the reference's decode of the
    saved latents, a preview file of the same length, and the latents unchanged by previewing."""
    from wan_export.weights import weight_source_from_manifest
    from wan_rt.manifest import load_manifest
    from wan_rt.pipeline import GenerationRequest, Pipeline
    from wan_rt.video import read_video, to_uint8_frames

    out, latents_file = tmp_path / "fox.npy", tmp_path / "latents.npy"
    command = [sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines), "--prompt", "a fox",
               "--seed", "3", "--steps", "4", "--decoder", "tiny", "--preview-every", "2", "--out", str(out),
               "--save-latents", str(latents_file), "--no-verify"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "preview after step 2 of 4" in result.stderr and "preview" in result.stdout
    video, _ = read_video(out)
    preview, _ = read_video(tmp_path / "fox.preview.mp4")
    manifest = load_manifest(tiny_engines, verify=False)
    frames = manifest.limits.default_frames
    assert video.shape[0] == preview.shape[0] == frames
    latents = np.load(latents_file)
    model = weight_source_from_manifest(manifest.data, None).load("tiny_vae")
    with torch.no_grad():
        expected = to_uint8_frames(model.decode(torch.from_numpy(latents[None]))[0].numpy())
    assert np.abs(video.astype(int) - expected.astype(int)).max() <= 1
    with Pipeline(tiny_engines, verify=False, show_progress=False) as pipeline:  # no preview, full decoder
        plain = pipeline.generate(GenerationRequest(prompt="a fox", seed=3, steps=4))
    np.testing.assert_array_equal(plain.latents, latents)


def test_decoder_and_preview_refusals(tiny_engines, tmp_path):
    from wan_rt.manifest import load_manifest
    from wan_rt.pipeline import GenerationRequest, Pipeline
    from wan_rt.requests_file import read_requests
    from wan_rt.tiny_decode import TINY_DECODER, check_decoder

    manifest = load_manifest(tiny_engines, verify=False)
    assert check_decoder(manifest, None) == "full" and check_decoder(manifest, "tiny") == "tiny"
    with pytest.raises(WanError, match="not one of full, tiny"):
        check_decoder(manifest, "small")
    del manifest.components[TINY_DECODER]  # an engines folder built without --tiny-vae
    with pytest.raises(WanError, match="has no tiny decoder; rebuild it with wan-export build --tiny-vae"):
        check_decoder(manifest, "tiny")
    with Pipeline(tiny_engines, verify=False, show_progress=False) as pipeline:
        with pytest.raises(WanError, match="needs a preview file"):
            pipeline.prepare(GenerationRequest(prompt="a fox", preview_every=2), decode=False)
        with pytest.raises(WanError, match="preview_every must be"):
            pipeline.prepare(GenerationRequest(prompt="a fox", preview_every=-1, preview=tmp_path / "p.mp4"))
        with pytest.raises(WanError, match="folder .*missing does not exist"):
            pipeline.prepare(GenerationRequest(prompt="a fox", preview_every=2, preview=tmp_path / "missing" / "p.mp4"))
    lines = tmp_path / "requests.jsonl"
    lines.write_text(json.dumps({"prompt": "a", "out": str(tmp_path / "a.mp4"), "decoder": "tiny",
                                 "preview_every": 5}) + "\n", encoding="utf-8")
    job = read_requests(lines, GenerationRequest)[0]
    assert job.request.decoder == "tiny" and job.request.preview == tmp_path / "a.preview.mp4"
    lines.write_text(json.dumps({"prompt": "a", "out": str(tmp_path / "a.mp4"), "decoder": "small"}) + "\n",
                     encoding="utf-8")
    with pytest.raises(WanError, match="requests line 1: field 'decoder'"):
        read_requests(lines, GenerationRequest)
