"""Sequence-parallel (Ulysses) DiT segments: exact in torch, and `--sp 2` / `--sp 3` (ONNX Runtime segments, worker
processes over torch.distributed gloo) equal to the single-process whole `dit` graph, for text- and image-to-video.

The tiny preset has 2 heads, which 3 ranks cannot split; these tests use the tiny model with 6 heads of 32
(dim 192). Its RoPE split is valid: 16 pairs -> (6, 5, 5), the official `rope_params` dims (d - 4*(d//6),
2*(d//6), 2*(d//6)) = (12, 10, 10) for d = 32. Requests are 160x32 x 17 frames: a 5 x 1 x 5 token grid, 25 tokens,
a multiple of neither 2 nor 3, so both runs pad and mask.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import oracle
from requires import require
from wan_export.build import BuildOptions, build
from wan_export.checkpoints.random_weights import random_state_dict
from wan_export.checkpoints.tensors import expected_shapes
from wan_export.components.dit_segments import (
    SEGMENTS, WEIGHTS_FILE, AttentionCoreGraph, EmbedGraph, HeadGraph, PostAttentionGraph, PreAttentionGraph,
    block_weight_layout, segment_specs, write_block_weights)
from wan_export.config import TINY
from wan_export.model.dit import FP32_MODULES, WanDiT
from wan_export.model.dit_segments import POST_ATTENTION_WEIGHTS, PRE_ATTENTION_WEIGHTS, SegmentedDiT
from wan_export.model.loading import load_module
from wan_export.onnx_export import cast_for_precision
from wan_export.profiles import BuildProfile
from wan_export.weights import WeightSource
from wan_rt import tokens
from wan_rt.demo_image import landscape
from wan_rt.denoise import DiTStep, denoise
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest
from wan_rt.parallel import generate_parallel
from wan_rt.parallel.step import ShardedDenoiser, head_to_input_layout, input_to_latent
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.schedulers import make_scheduler
from wan_rt.shapes import ShapeLimits

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early

CONFIG = dataclasses.replace(TINY, name="tiny-6-heads", dit=dataclasses.replace(TINY.dit, dim=192, num_heads=6))
LIMITS = ShapeLimits(width=(32, 192), height=(32, 128), max_area=24576, multiple=32, frames=(1, 17), batch=(1, 2),
                     default_size=(160, 32), default_frames=17)
SIZE, FRAMES, STEPS = (160, 32), 17, 3
TOLERANCE = 1e-5  # max |a - e| / max |e| of the final latents


def profile() -> BuildProfile:
    return BuildProfile(name="sp-test", source="tests/test_sequence_parallel.py", model_preset=CONFIG.name, seed=0,
                        backend="onnxruntime", precision=dict.fromkeys(
                            ("text_encoder", "dit", "vae_encoder", "vae_decoder"), "fp32"),
                        limits=LIMITS, sampling={"steps": STEPS})


def source() -> WeightSource:
    return WeightSource(config=CONFIG, checkpoint=None, seed=0)


@pytest.fixture(scope="module")
def engines2(tmp_path_factory):
    """Whole dit + segments for 2 ranks (+ text encoder, image encoder, streaming decoder)."""
    out = tmp_path_factory.mktemp("sp") / "engines2"
    return build(profile(), source(), out, BuildOptions(backend="onnxruntime", sp=2))


@pytest.fixture(scope="module")
def engines3(engines2, tmp_path_factory):
    """Segments for 3 ranks INSTEAD of the whole dit (`--sp-only`); the text and image encoders are engines2's
    (same weights: same config and seed), copied in rather than exported a second time."""
    out = build(profile(), source(), tmp_path_factory.mktemp("sp") / "engines3",
                BuildOptions(backend="onnxruntime", sp=3, sp_only=True, only=("dit",)))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    donor = json.loads((engines2 / MANIFEST_NAME).read_text())
    for name in ("text_encoder", "vae_encoder"):
        manifest["components"][name] = donor["components"][name]
        for file in donor["components"][name]["files"]:
            shutil.copy2(engines2 / file, out / file)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp-image") / "wide.png"
    landscape(320, 64).save(path)  # 5:1 -> 160x32 at the area of SIZE
    return path


def requests(image_path) -> dict[str, GenerationRequest]:
    common = dict(prompt="A red fox trots through fresh snow at sunrise", size=SIZE, frames=FRAMES, steps=STEPS)
    return {"t2v": GenerationRequest(seed=1, **common), "i2v": GenerationRequest(seed=2, image=image_path, **common)}


@pytest.fixture(scope="module")
def reference(engines2, image_path):
    """Final latents of the single-process pipeline over the whole `dit` graph."""
    with Pipeline(engines2, show_progress=False) as pipeline:
        return {mode: pipeline.generate(request).latents for mode, request in requests(image_path).items()}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


# -- the segmented reference ---------------------------------------------------------------------------------
def test_test_config_has_a_valid_official_rope_split():
    d = CONFIG.dit.head_dim
    assert (CONFIG.dit.num_heads, d) == (6, 32)
    assert tokens.rope_axis_pairs(d) == CONFIG.dit.rope_axis_pairs == (6, 5, 5)
    official_axis_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))  # rope_params per axis in WanModel
    assert tuple(2 * p for p in tokens.rope_axis_pairs(d)) == official_axis_dims
    assert tokens.num_tokens((48, 5, 2, 10)) == 25


@pytest.mark.parametrize("ranks", [1, 2, 3, 6])
@pytest.mark.parametrize("first_frame_t", [None, 0.0], ids=["t2v", "i2v"])
def test_segments_composed_in_torch_equal_the_whole_dit(ranks, first_frame_t):
    factory = lambda: WanDiT(CONFIG.dit)  # noqa: E731
    dit = load_module(factory, random_state_dict(expected_shapes(factory), seed=3))
    grid = (5, 1, 5)
    rng = np.random.default_rng(4)
    token_input = torch.from_numpy(rng.standard_normal((2, 25, CONFIG.dit.patch_channels), dtype=np.float32))
    timesteps = torch.from_numpy(np.stack([tokens.frame_timesteps(grid, 937.0, first_frame_t)] * 2))
    context = torch.from_numpy(rng.standard_normal((2, 512, CONFIG.dit.text_dim), dtype=np.float32))
    context[:, 9:] = 0.0
    cos, sin = (torch.from_numpy(t.copy()) for t in tokens.rope_tables(grid, CONFIG.dit.head_dim))
    with torch.no_grad():
        whole = dit(token_input, timesteps, context, cos, sin)
        segmented = SegmentedDiT(dit)(token_input, timesteps, context, cos, sin, ranks=ranks)
    error = oracle.max_rel_error(segmented.numpy(), whole.numpy())
    print(f"{ranks} rank(s): bit-identical {torch.equal(segmented, whole)}, max relative error {error:.1e}")
    if ranks == 1:  # no padding: the same ops on the same values (time rows gathered per token, not grouped)
        assert torch.equal(segmented, whole)
    else:  # padded and masked: equal up to the attention kernel's summation order
        assert error <= 1e-6


def test_segments_share_the_dit_weights():
    factory = lambda: WanDiT(CONFIG.dit)  # noqa: E731
    dit = load_module(factory, random_state_dict(expected_shapes(factory), seed=0))
    segmented = SegmentedDiT(dit)
    assert {id(p) for p in segmented.parameters()} == {id(p) for p in dit.parameters()}


def test_bf16_segment_graphs_with_float32_weight_inputs_equal_the_bf16_whole_dit(tmp_path):
    """The exported graph modules in a bf16 build: weights arrive as float32 inputs (from the weights file the build
    writes) and are cast inside, q/k/v are rounded to bf16 for the exchange: still the whole bf16 model, bit for bit."""
    factory = lambda: WanDiT(CONFIG.dit)  # noqa: E731
    dit = cast_for_precision(load_module(factory, random_state_dict(expected_shapes(factory), seed=0)), "bf16",
                             FP32_MODULES)
    write_block_weights(dit, tmp_path)
    layout, layer_bytes = block_weight_layout(CONFIG)
    raw = np.fromfile(tmp_path / WEIGHTS_FILE, np.uint8)

    def layer_weights(layer, names):
        found = {e["name"]: torch.from_numpy(np.frombuffer(
            raw, np.float32, int(np.prod(e["shape"])), layer * layer_bytes + e["offset"]).reshape(e["shape"]).copy())
            for e in layout}
        return tuple(found[name] for name in names)

    grid = (5, 1, 5)
    rng = np.random.default_rng(7)
    token_input = torch.from_numpy(rng.standard_normal((2, 25, CONFIG.dit.patch_channels), dtype=np.float32))
    timesteps = torch.from_numpy(np.stack([tokens.frame_timesteps(grid, 700.0, 0.0)] * 2))
    token_frames = torch.from_numpy(tokens.token_frames(grid, 0, 25))
    context = torch.from_numpy(rng.standard_normal((2, 512, CONFIG.dit.text_dim), dtype=np.float32))
    cos, sin = (torch.from_numpy(t.copy()) for t in tokens.rope_tables(grid, CONFIG.dit.head_dim))
    with torch.no_grad():
        whole = dit(token_input, timesteps, context, cos, sin)
        x, time_emb, time_mod, context_emb = EmbedGraph(dit)(token_input, timesteps, context)
        pre, core, post = PreAttentionGraph(dit), AttentionCoreGraph(dit), PostAttentionGraph(dit)
        assert not list(pre.parameters()) and not list(post.parameters())  # the weights are inputs only
        for layer in range(CONFIG.dit.num_layers):
            q, k, v = pre(x, time_mod, token_frames, cos, sin, layer_weights(layer, PRE_ATTENTION_WEIGHTS))
            assert torch.equal(q, q.to(torch.bfloat16).float())  # bf16 values: a lossless bf16 exchange
            x = post(x, core(q, k, v), time_mod, token_frames, context_emb,
                     layer_weights(layer, POST_ATTENTION_WEIGHTS))
        segmented = HeadGraph(dit)(x, time_emb, token_frames)
    assert torch.equal(segmented, whole)


# -- the sharded solver ----------------------------------------------------------------------------------------
def test_token_layout_helpers_invert_patchify():
    rng = np.random.default_rng(5)
    latent = rng.standard_normal((48, 3, 4, 6), dtype=np.float32)
    grid = tokens.token_grid(latent.shape)
    assert np.array_equal(input_to_latent(tokens.patchify(latent), grid, 48), latent)
    head_out = rng.standard_normal((2, 18, 192), dtype=np.float32)
    expected = np.stack([tokens.patchify(tokens.unpatchify(v, grid, 48)) for v in head_out])
    assert np.array_equal(head_to_input_layout(head_out, 48), expected)


def fake_dit(token_input, timesteps, context):
    """A token-local stand-in for the DiT: input-layout tokens -> head-layout velocity, differs per context."""
    value = np.sin(token_input) * (timesteps[..., None] / 1000) + context.mean(axis=(1, 2))[:, None, None]
    return np.ascontiguousarray(value.reshape(*value.shape[:2], 48, 4).swapaxes(-1, -2).reshape(value.shape))


class FakeRunner:
    # a per-token `timesteps` input (the form of engines folders made before per-frame timesteps)
    component = SimpleNamespace(dims={"batch": (1, 2, 2)},
                                inputs=[SimpleNamespace(name="timesteps", shape=("batch", "tokens"))])

    def to_device(self, array):  # a host runner: what DiTStep uploads once per request stays a numpy array
        return array

    def run(self, feeds):
        return {"velocity": fake_dit(feeds["tokens"], feeds["timesteps"], feeds["context"])}


class FakeShardEngines:
    """Rank `rank` of `size`; its final gather returns only its own rows (zeros elsewhere)."""

    def __init__(self, rank, size):
        self.layout = SimpleNamespace(head_dim=32)
        self.max_batch = 2
        self.comm = SimpleNamespace(rank=rank, size=size, gather_tokens=self.gather)

    def gather(self, rows):
        out = np.zeros((1, rows.shape[1] * self.comm.size, rows.shape[2]), np.float32)
        out[:, self.comm.rank * rows.shape[1]:(self.comm.rank + 1) * rows.shape[1]] = rows
        return out

    def forward(self, token_input, timesteps, context, rows, key_count):
        assert timesteps.shape == (token_input.shape[0], 5)  # per latent frame, as the embed segment takes them
        return fake_dit(token_input, timesteps[:, rows["token_frames"]], context)


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_sharded_solver_is_bit_identical_to_the_whole_latent_loop(ranks, mode):
    """Each rank stepping only its token rows (CFG, UniPC, frame-0 re-pin) == `denoise` on the whole latent."""
    rng = np.random.default_rng(6)
    shape = (48, 5, 2, 10)  # 25 tokens
    latent = rng.standard_normal(shape, dtype=np.float32)
    first_frame = rng.standard_normal((48, 1, 2, 10), dtype=np.float32) if mode == "i2v" else None
    if first_frame is not None:
        latent[:, :1] = first_frame
    context, context_null = (rng.standard_normal((1, 512, 8), dtype=np.float32) for _ in range(2))
    whole = denoise(DiTStep(FakeRunner(), shape, context, context_null, 32, 48, 5.0), make_scheduler("unipc", 4, 5.0),
                    latent, first_frame, show_progress=False)
    sharded = sum(ShardedDenoiser(FakeShardEngines(rank, ranks), shape, context, context_null, 5.0).run(
        latent, first_frame, make_scheduler("unipc", 4, 5.0), show_progress=False) for rank in range(ranks))
    assert np.array_equal(sharded, whole)


# -- build ---------------------------------------------------------------------------------------------------
def test_build_records_the_segments_in_the_manifest(engines2, engines3):
    manifest = load_manifest(engines2)
    sp = manifest.data["sp"]
    assert sp["ranks"] == 2 and sp["num_layers"] == CONFIG.dit.num_layers
    assert sp["head_split"] == {**sp["head_split"], "num_heads": 6, "heads_per_rank": 3, "head_dim": 32}
    assert set(sp["segments"].values()) == set(SEGMENTS) <= set(manifest.components)
    assert "dit" in manifest.components
    weights = sp["weights"]
    assert weights["binding"] == "graph-inputs" and weights["file"] == WEIGHTS_FILE
    assert (engines2 / WEIGHTS_FILE).stat().st_size == weights["layer_bytes"] * CONFIG.dit.num_layers
    attn = manifest.component("dit_sp_attn")
    assert [t.shape for t in attn.inputs if t.name == "q"] == [("batch", "tokens_local*2", 3, 32)]
    low, high = LIMITS.token_range()
    assert manifest.component("dit_sp_pre").dims["tokens_local"] == (-(-low // 2), 13, -(-high // 2))
    only = load_manifest(engines3)
    assert "dit" not in only.components and only.data["sp"]["ranks"] == 3
    assert only.component("dit_sp_attn").inputs[0].shape == ("batch", "tokens_local*3", 2, 32)


def test_build_refuses_a_rank_count_that_does_not_divide_the_heads(tmp_path):
    with pytest.raises(WanError, match=r"--sp 4: the DiT's 6 attention heads cannot be split evenly over 4 ranks"):
        build(profile(), source(), tmp_path / "engines", BuildOptions(backend="onnxruntime", sp=4))
    assert not any(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(WanError, match="cannot be split evenly"):
        segment_specs(TINY, LIMITS, 3)  # the tiny preset's 2 heads


def test_segments_build_into_tensorrt_rtx_engines_on_cpu(engines2, tmp_path):
    """Every segment graph (weights as inputs, int64 `token_frames` gathers, the masked attention core) parses
    and builds with TensorRT-RTX for SM89 ahead of time; the manifest records each engine's target. The graphs are
    engines2's (`--onnx-from`: same weights and profile), not exported a second time."""
    from wan_export.trt import library_available

    require(library_available("tensorrt-rtx"), "the TensorRT-RTX wheels are not installed")
    out = build(profile(), source(), tmp_path / "engines",
                BuildOptions(backend="tensorrt-rtx", sp=2, sp_only=True, only=("dit",), compute_capabilities=("SM89",),
                             onnx_from=engines2))
    manifest = load_manifest(out)
    graphs = load_manifest(engines2, verify=False)
    for name in SEGMENTS:
        component = manifest.component(name)
        assert component.backend == "tensorrt-rtx" and component.file == f"{name}.engine"
        assert component.target["compute_capabilities"] == ["SM89"] and (out / component.file).stat().st_size > 0
        assert component.files[f"{name}.onnx"] == graphs.component(name).files[f"{name}.onnx"]
    assert manifest.component("dit_sp_pre").target["profile"]["token_frames"]["max"] == [-(-LIMITS.token_range()[1] // 2)]


# -- runtime -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 3])
def test_sp_ranks_equal_the_single_process_whole_graph(ranks, engines2, engines3, reference, image_path):
    engines = {2: engines2, 3: engines3}[ranks]
    jobs = [(request, None, None) for request in requests(image_path).values()]
    results = generate_parallel(engines, jobs, ranks, show_progress=False)
    for (mode, expected), result in zip(reference.items(), results):
        error = oracle.max_rel_error(result.latents, expected)
        print(f"--sp {ranks} {mode}: final latents max relative error {error:.2e} vs the whole graph")
        assert result.latents.shape == expected.shape == (48, 5, 2, 10)
        assert error <= TOLERANCE, f"--sp {ranks} {mode}: {error:.2e}"


@pytest.mark.slow
def test_cfg_parallel_equals_the_single_process_run(engines2, reference, image_path):
    """Two processes, one guidance branch each, only the velocity exchanged per step (gloo on the CPU)."""
    jobs = [(request, None, None) for request in requests(image_path).values()]
    results = generate_parallel(engines2, jobs, 1, show_progress=False, cfg_parallel=True)
    for (mode, expected), result in zip(reference.items(), results):
        error = oracle.max_rel_error(result.latents, expected)
        print(f"--cfg-parallel {mode}: final latents max relative error {error:.2e} vs one process")
        assert result.latents.shape == expected.shape and error <= 1e-6, f"{mode}: {error:.2e}"


@pytest.mark.slow
def test_cli_generate_cfg_parallel_is_one_command(engines2, reference, tmp_path):
    latents = tmp_path / "latents.npy"
    result = run_cli("--engines", engines2, "--cfg-parallel", "--prompt", "A red fox trots through fresh snow at "
                     "sunrise", "--size", "160x32", "--frames", FRAMES, "--steps", STEPS, "--seed", 1,
                     "--save-latents", latents, "--out", tmp_path / "t2v.npy")
    assert result.returncode == 0, result.stderr
    assert "CFG parallel: 2 worker processes" in result.stderr
    assert oracle.max_rel_error(np.load(latents), reference["t2v"]) <= 1e-6


def test_cfg_parallel_refusals_come_before_any_process(engines2, image_path):
    request = requests(image_path)["t2v"]
    with pytest.raises(WanError, match=r"^--cfg-parallel with --sp 2 is not supported yet"):
        generate_parallel(engines2, [(request, None, None)], 2, cfg_parallel=True)
    unguided = dataclasses.replace(request, guide_scale=1.0)
    with pytest.raises(WanError, match=r"^--cfg-parallel splits the guidance branches, but guide scale 1"):
        generate_parallel(engines2, [(unguided, None, None)], 1, cfg_parallel=True)


@pytest.mark.slow
def test_cli_generate_sp_is_one_command(engines2, reference, tmp_path):
    latents, video = tmp_path / "latents.npy", tmp_path / "t2v.npy"
    result = run_cli("--engines", engines2, "--sp", 2, "--prompt", "A red fox trots through fresh snow at sunrise",
                     "--size", "160x32", "--frames", FRAMES, "--steps", STEPS, "--seed", 1,
                     "--save-latents", latents, "--out", video)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {video}")
    error = oracle.max_rel_error(np.load(latents), reference["t2v"])
    print(f"wan-rt generate --sp 2: max relative error {error:.2e}")
    assert error <= TOLERANCE
    assert np.load(video).shape[0] == FRAMES


@pytest.mark.parametrize("case", ["heads", "no-segments", "old-format", "other-rank-count", "sp-1-segments-only"])
def test_cli_refuses_with_one_line(case, engines2, tmp_path):
    engines, ranks, expected = engines2, 2, None
    if case == "heads":
        ranks, expected = 4, "error: --sp 4: the DiT has 6 attention heads, which do not split evenly over 4 ranks"
    elif case in ("no-segments", "old-format", "sp-1-segments-only"):
        engines = tmp_path / "engines"
        shutil.copytree(engines2, engines)
        manifest = json.loads((engines / MANIFEST_NAME).read_text())
        if case == "no-segments":
            del manifest["sp"]
            expected = f"error: {engines} has no sequence-parallel DiT segments; rebuild it with wan-export build --sp 2"
        elif case == "sp-1-segments-only":  # as --sp-only builds: no whole dit graph, segments for 2 ranks
            del manifest["components"]["dit"]
            ranks, expected = 1, f"error: {engines}: the DiT segments were built for --sp 2, not 1; run with --sp 2"
        else:  # segments made before per-frame time conditioning
            manifest["sp"]["version"] = 1
            expected = (f"error: {engines}: its sequence-parallel segments have format version 1, this wan-rt runs "
                        f"version 2; rebuild them with wan-export build --sp 2")
        (engines / MANIFEST_NAME).write_text(json.dumps(manifest))
    else:
        ranks, expected = 3, f"error: {engines2}: the DiT segments were built for --sp 2, not 3"
    result = run_cli("--engines", engines, "--sp", ranks, "--prompt", "x", "--out", tmp_path / "never.npy")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # exactly one line
    assert result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "never.npy").exists()


def test_cli_sp_1_runs_the_whole_dit_graph_in_one_process(engines2, reference, tmp_path):
    """--sp 1 on a folder built with --sp 2: the whole `dit` graph it also holds, in this process (no workers)."""
    latents = tmp_path / "latents.npy"
    result = run_cli("--engines", engines2, "--sp", 1, "--prompt", "A red fox trots through fresh snow at sunrise",
                     "--size", "160x32", "--frames", FRAMES, "--steps", STEPS, "--seed", 1, "--save-latents", latents,
                     "--out", tmp_path / "t2v.npy")
    assert result.returncode == 0, result.stderr
    assert "--sp 1: the whole dit graph in this process" in result.stderr
    assert "sequence parallel: " not in result.stderr  # no worker processes were started
    np.testing.assert_allclose(np.load(latents), reference["t2v"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_an_error_inside_a_worker_ends_every_rank_with_one_line(engines2, tmp_path):
    """Rank 0 refuses the request after the workers started: the launcher stops the others, prints one line."""
    result = run_cli("--engines", engines2, "--sp", 2, "--prompt", "x", "--size", "150x32", "--out",
                     tmp_path / "never.npy")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: size 150x32 is not a multiple of 32")
    assert not (tmp_path / "never.npy").exists()


def test_the_error_written_first_is_the_one_reported(tmp_path):
    """A rank failing inside a collective because another rank failed may exit first; the launcher reports the
    root cause, the error written first, whichever process exits first (real processes, writing as workers do)."""
    from wan_rt.parallel.launch import _failure

    def worker(rank, message, after: str):
        """Writes its error file as workers do once `after` has happened, then exits with status 3."""
        temp, final = tmp_path / f".error-{rank}.tmp", tmp_path / f"error-{rank}.txt"
        code = (f"import os, sys, time\n{after}\n"
                f"open({str(temp)!r}, 'w').write(f'{{time.monotonic_ns()}}\\n{message}\\n')\n"
                f"os.replace({str(temp)!r}, {str(final)!r})\n"
                f"print('written', flush=True)\n"
                f"sys.stdin.read()\n"  # exits only when the test closes its stdin
                f"raise SystemExit(3)")
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    # Ordered by pipes and files, not sleeps: the cause writes first; the collateral writes once the cause's file
    # exists and is let go first; the cause exits last.
    cause = worker(0, "size 150x32 is not a multiple of 32", "pass")
    assert cause.stdout.readline() == "written\n"
    collateral = worker(1, "sequence-parallel rank 1 failed: RuntimeError: connection closed by peer",
                        f"while not os.path.exists({str(tmp_path / 'error-0.txt')!r}): time.sleep(0.01)")
    assert collateral.stdout.readline() == "written\n"
    collateral.stdin.close()
    assert collateral.wait(timeout=30) == 3 and cause.poll() is None  # rank 1 is the first to exit
    cause.stdin.close()  # the cause exits while the launcher is collecting the errors
    assert _failure(tmp_path, [cause, collateral], 1, 3) == "size 150x32 is not a multiple of 32"
    assert cause.wait(timeout=30) == 3


def test_check_covers_the_segment_graphs(engines2):
    from wan_export.check import check_engines

    report = check_engines(engines2, only=("dit", *SEGMENTS))  # the other graphs are tiny's (test_export.py)
    assert {row.component for row in report.rows} == {"dit", *SEGMENTS}
    assert report.passed, report.failures()
