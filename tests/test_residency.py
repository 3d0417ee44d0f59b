"""Device-resident tensors and engine residency (`--memory keep|stage|auto`), on real ONNX Runtime sessions.

The Runner API keeps tensors on the engine's device (IOBinding OrtValues here, on the CPU device; CUDA memory with
onnxruntime-gpu or TensorRT), so the same host logic is tested in CI that a GPU runs. `runner.transfers` counts
every array that crosses between numpy and the device.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recording import EngineLog, check_runners_closed
from wan_rt import tokens
from wan_rt.backends import DeviceTensor, open_runner
from wan_rt.denoise import DiTStep
from wan_rt.errors import WanError
from wan_rt.manifest import load_manifest
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.residency import choose_mode, engine_size, need_bytes, stage_groups, stage_need, stages
from wan_rt.vae_stream import CACHE_IN, CACHE_OUT, decode_stream
from wan_rt.video import read_video

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early

PROMPT = "A lighthouse at dusk, waves breaking on the rocks"
DECODE_256 = """
[model]
preset = "tiny"
seed = 0
[shapes]
width = [64, 256]
height = [64, 256]
max_area = 65536
multiple = 32
frames = [1, 9]
batch = [1, 2]
default_size = "256x256"
default_frames = 5
"""


def host_round_trip_decode(first, steady, latents: np.ndarray) -> list[np.ndarray]:
    """The decode as it was before device-resident caches: every cache comes back to numpy and goes in again."""
    chunks, caches = [], {}
    for index in range(latents.shape[1]):
        feeds = {"latent": np.ascontiguousarray(latents[None, :, index:index + 1])}
        if index:
            feeds.update(caches)
        outputs = (first if index == 0 else steady).run(feeds)
        caches = {CACHE_IN + k[len(CACHE_OUT):]: v for k, v in outputs.items() if k.startswith(CACHE_OUT)}
        assert caches and all(isinstance(v, np.ndarray) for v in caches.values())
        chunks.append(outputs["pixels"][0])
    return chunks


def check_resident_decode(engines: Path, latent_frames: int, height: int, width: int) -> None:
    manifest = load_manifest(engines)
    latents = np.random.default_rng(7).standard_normal((48, latent_frames, height // 16, width // 16),
                                                       dtype=np.float32)
    with open_runner(manifest, "vae_decoder_first") as first, open_runner(manifest, "vae_decoder_step") as steady:
        expected = host_round_trip_decode(first, steady, latents)
        counter = first.transfers
        assert steady.transfers is counter  # one counter per device
        before = counter.snapshot()
        chunks = []
        written = decode_stream(first, steady, latents, lambda pixels: chunks.append(pixels.copy()), False)
        after = counter.snapshot()
    assert written == 1 + 4 * (latent_frames - 1)
    assert len(chunks) == len(expected) == latent_frames
    for got, want in zip(chunks, expected):
        assert got.dtype == want.dtype and np.array_equal(got, want)  # bit for bit
    # Only the latent frames went in and only the pixels came out: no cache crossed, either way.
    assert after["h2d_copies"] - before["h2d_copies"] == latent_frames
    assert after["h2d_bytes"] - before["h2d_bytes"] == latents.nbytes
    assert after["d2h_copies"] - before["d2h_copies"] == latent_frames
    assert after["d2h_bytes"] - before["d2h_bytes"] == sum(c.nbytes for c in expected)


def test_resident_decode_equals_host_round_trip_on_tiny(tiny_engines):
    check_resident_decode(tiny_engines, latent_frames=3, height=96, width=160)


@pytest.fixture(scope="module")
def wider_vae_engines(tmp_path_factory) -> Path:
    """Decoder graphs of a wider VAE (base widths 32/64, twice tiny's) for 256x256 frames, random weights."""
    from wan_export.build import BuildOptions, build
    from wan_export.config import TINY, ModelConfig, VAEConfig
    from wan_export.profiles import load_profile
    from wan_export.weights import WeightSource

    folder = tmp_path_factory.mktemp("wider-vae")
    profile_path = folder / "decode-256.toml"
    profile_path.write_text(DECODE_256)
    config = ModelConfig(name="wider-vae", dit=TINY.dit, vae=VAEConfig(base_dim=32, decoder_base_dim=64),
                         t5=TINY.t5, sampling=TINY.sampling)
    return build(load_profile(str(profile_path)), WeightSource(config=config, checkpoint=None, seed=0),
                 folder / "engines", BuildOptions(backend="onnxruntime", only=("vae_decoder_first", "vae_decoder_step")))


def test_resident_decode_equals_host_round_trip_on_a_wider_vae_at_256(wider_vae_engines):
    check_resident_decode(wider_vae_engines, latent_frames=2, height=256, width=256)


def test_device_tensors_feed_runners_and_come_back_on_request(tiny_engines):
    manifest = load_manifest(tiny_engines)
    latent = np.random.default_rng(1).standard_normal((1, 48, 1, 6, 10), dtype=np.float32)
    with open_runner(manifest, "vae_decoder_first") as first:
        names = [t.name for t in first.component.outputs if t.name.startswith(CACHE_OUT)]
        kept = first.run({"latent": latent}, keep=names[:1])
        host = first.run({"latent": latent})
        tensor = kept[names[0]]
        assert isinstance(tensor, DeviceTensor) and tensor.shape == host[names[0]].shape
        assert all(isinstance(kept[n], np.ndarray) for n in names[1:])
        before = first.transfers.snapshot()["d2h_bytes"]
        assert np.array_equal(tensor.numpy(), host[names[0]])
        assert first.transfers.snapshot()["d2h_bytes"] - before == tensor.nbytes  # an explicit copy is counted
        with pytest.raises(WanError, match="no such outputs"):
            first.run({"latent": latent}, keep=["velocity"])


def test_dit_step_uploads_context_and_rope_once(tiny_engines):
    manifest = load_manifest(tiny_engines)
    latent_shape = (48, 3, 6, 10)
    rng = np.random.default_rng(2)
    text_dim = manifest.model["dit"]["text_dim"]
    context, context_null = (rng.standard_normal((1, 512, text_dim), dtype=np.float32) for _ in range(2))
    latent = rng.standard_normal(latent_shape, dtype=np.float32)
    with open_runner(manifest, "dit") as dit:
        counter = dit.transfers
        start = counter.snapshot()
        step = DiTStep(dit, latent_shape, context, context_null, manifest.model["dit"]["dim"] //
                       manifest.model["dit"]["num_heads"], 48, 5.0)
        uploaded = counter.snapshot()
        cos, sin = tokens.rope_tables(step.grid, 64)
        assert uploaded["h2d_bytes"] - start["h2d_bytes"] == 2 * context.nbytes + cos.nbytes + sin.nbytes
        timesteps = step.timesteps(999.0, None)
        for _ in range(3):
            cond, uncond = step.velocities(latent, timesteps)
        done = counter.snapshot()
        # per step: the batch-2 tokens and timesteps in, the batch-2 velocity out; nothing per request again
        token_bytes = 2 * tokens.patchify(latent).nbytes
        assert done["h2d_bytes"] - uploaded["h2d_bytes"] == 3 * (token_bytes + 2 * timesteps.nbytes)
        # the same velocities as numpy feeds give
        feeds = {"tokens": np.repeat(tokens.patchify(latent)[None], 2, 0), "timesteps": np.repeat(timesteps[None], 2, 0),
                 "context": np.concatenate([context, context_null]), "rope_cos": cos, "rope_sin": sin}
        outputs = dit.run(feeds)
        velocity = outputs["velocity"]
        kept = set(getattr(step, "keep", ()))  # outputs the step leaves on the device (e.g. for step caching)
        per_call = sum(value.nbytes for name, value in outputs.items() if name not in kept)
        assert velocity.nbytes == cond.nbytes + uncond.nbytes
        assert done["d2h_bytes"] - uploaded["d2h_bytes"] == 3 * per_call
    assert np.array_equal(tokens.unpatchify(velocity[0], step.grid, 48), cond)
    assert np.array_equal(tokens.unpatchify(velocity[1], step.grid, 48), uncond)


def stages_of(events: list[tuple[str, str]]) -> list[set[str]]:
    """The sets of engines open together, after each event."""
    open_now, history = set(), []
    for action, name in events:
        (open_now.add if action == "open" else open_now.discard)(name)
        history.append(set(open_now))
    return history


def test_stage_gives_the_same_video_as_keep_and_closes_each_stage_first(tiny_engines, input_image, tmp_path,
                                                                       monkeypatch):
    videos, events = {}, {}
    for mode in ("keep", "stage"):
        engine_log = EngineLog()
        monkeypatch.setattr("wan_rt.pipeline.open_runner", engine_log.open_runner)
        with Pipeline(tiny_engines, memory=mode, show_progress=False) as pipeline:
            assert pipeline.memory == mode
            request = GenerationRequest(prompt=PROMPT, image=input_image, seed=11, frames=5, steps=3)
            result = pipeline.generate(request, tmp_path / f"{mode}.mp4")
            events[mode] = list(pipeline.engine_events)
            videos[mode] = (read_video(tmp_path / f"{mode}.mp4")[0], result.latents)
            if mode == "stage":  # closed by the end of each stage, before the pipeline closes
                check_runners_closed(engine_log, most=1)
            else:  # keep: all five stay open until the pipeline closes
                assert sorted(r.name for r in engine_log.open_now) == sorted(
                    ["text_encoder", "dit", "vae_encoder", "vae_decoder_first", "vae_decoder_step"])
        check_runners_closed(engine_log, most=1 if mode == "stage" else 5)
    assert np.array_equal(videos["keep"][1], videos["stage"][1])
    assert np.array_equal(videos["keep"][0], videos["stage"][0])
    assert events["keep"] == [("open", n) for n in ("text_encoder", "dit", "vae_encoder", "vae_decoder_first",
                                                   "vae_decoder_step")]
    assert events["stage"] == [("open", "text_encoder"), ("close", "text_encoder"), ("open", "vae_encoder"),
                               ("close", "vae_encoder"), ("open", "dit"), ("close", "dit"),
                               ("open", "vae_decoder_first"), ("close", "vae_decoder_first"),
                               ("open", "vae_decoder_step"), ("close", "vae_decoder_step")]
    assert max(len(together) for together in stages_of(events["stage"])) == 1  # one engine open at a time


def test_stage_closes_the_open_engines_when_a_stage_fails(tiny_engines, tmp_path, monkeypatch):
    engine_log = EngineLog()
    monkeypatch.setattr("wan_rt.pipeline.open_runner", engine_log.open_runner)
    with Pipeline(tiny_engines, memory="stage", show_progress=False) as pipeline:
        request = GenerationRequest(prompt=PROMPT, seed=1, frames=5, steps=2,
                                    noise=np.full((48, 2, 6, 10), 3e38, np.float32))  # the fp32 DiT overflows
        with pytest.raises(WanError, match="non-finite"):
            pipeline.generate(request, tmp_path / "out.mp4")
        assert pipeline.engine_events[-2:] == [("open", "dit"), ("close", "dit")]
        check_runners_closed(engine_log, most=1)  # the failing DiT's runner too, before the pipeline closes
        assert not (tmp_path / "out.mp4").exists()


def test_auto_is_keep_on_the_cpu_and_the_log_says_why(tiny_engines, tmp_path):
    with Pipeline(tiny_engines, show_progress=False) as pipeline:
        assert pipeline.memory == "keep"
        assert "host memory" in pipeline.memory_reason
    command = [sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines), "--prompt", PROMPT,
               "--frames", "1", "--steps", "1", "--seed", "1", "--out", str(tmp_path / "auto.mp4")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "engines: --memory keep (auto: the engines run in host memory" in result.stderr
    result = subprocess.run([*command[:-1], str(tmp_path / "stage.mp4"), "--memory", "stage"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "engines: --memory stage (as asked" in result.stderr
    assert np.array_equal(read_video(tmp_path / "auto.mp4")[0], read_video(tmp_path / "stage.mp4")[0])
    result = subprocess.run([*command, "--memory", "most"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--memory" in result.stderr


def test_auto_chooses_from_free_device_memory_and_the_manifest_sizes(tiny_engines):
    manifest = load_manifest(tiny_engines)
    engines = ("text_encoder", "dit", "vae_encoder", "vae_decoder_first", "vae_decoder_step", "vae_tiny_decoder")
    for name in engines:  # recorded at build time
        record = manifest.data["components"][name]["memory"]
        assert record["weight_bytes"] == engine_size(manifest, name).weights > 0
    # the steady decoder holds two sets of caches at once (reads one, writes the next): its I/O counts
    step = manifest.component("vae_decoder_step")
    lh, lw = step.dims["latent_height"][1], step.dims["latent_width"][1]
    caches = sum(t.shape[1] * 2 * lh * lw * 4 for t in step.outputs if t.name.startswith(CACHE_OUT))
    assert engine_size(manifest, "vae_decoder_step").io > 2 * caches
    every = need_bytes(manifest, engines)
    largest = max(stage_need(manifest, groups) for groups in stage_groups(("dit",)).values())
    assert largest < every
    assert stage_need(manifest, stage_groups(("dit",))["decode"]) < need_bytes(manifest, stages(("dit",))["decode"])
    assert choose_mode("auto", manifest, ("dit",), True, int(every / 0.9) + 1)[0] == "keep"
    mode, why = choose_mode("auto", manifest, ("dit",), True, every)
    assert mode == "stage" and "device memory free" in why
    assert choose_mode("auto", manifest, ("dit",), True, None)[0] == "keep"  # unknown: as before
    assert choose_mode("stage", manifest, ("dit",), False, None)[0] == "stage"
    with pytest.raises(WanError, match="not one of"):
        choose_mode("most", manifest, ("dit",), False, None)


def test_device_pool_never_hands_out_a_live_buffer_and_recycles_dropped_ones():
    """The TensorRT runner's pool logic (plain Python; the GPU path itself needs a GPU): a kept output gets a
    buffer no live tensor holds, so a call reading cache_in.X never writes into it; dropped tensors' buffers come
    back; a released device frees what is idle at once and the rest when their tensors go."""
    import gc

    from wan_rt.backends.device_pool import BufferPool, size_class

    live_memory: dict[int, bytearray] = {}
    freed: list[int] = []

    def malloc(nbytes: int) -> int:
        block = bytearray(nbytes)
        address = id(block)
        live_memory[address] = block
        return address

    def free(address: int) -> None:
        freed.append(address)
        del live_memory[address]

    class Holder:  # stands in for the DeviceTensor that owns a buffer
        pass

    pool = BufferPool(malloc, free)
    addresses, holders = [], []
    for _ in range(4):  # a decode loop: call i reads step i-1's caches and writes new ones
        holder, buffer = Holder(), pool.take(3 << 20)
        pool.lend(holder, buffer)
        assert all(buffer.address != h.address for h in holders)  # never the live input's buffer
        holder.address = buffer.address
        holders = [holder]  # the caller drops the caches it just read
        addresses.append(buffer.address)
        gc.collect()
    assert len(set(addresses)) == 2 and addresses[0] == addresses[2]  # two buffers alternate
    assert pool.allocated == 2 * size_class(3 << 20) and not freed
    pool.close()
    assert len(freed) == 1  # the idle one
    del holders, holder
    gc.collect()
    assert len(freed) == 2 and not live_memory and pool.allocated == 0
