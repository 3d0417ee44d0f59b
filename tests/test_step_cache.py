"""Step caching (MagCache, TeaCache) over the tiny engines: plans against transcriptions of the sources' rules,
the skip graph against the PyTorch reference, the whole loop with and without caching, old folders, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recording import EngineLog
from wan_rt import step_cache, tokens
from wan_rt.backends import open_runner
from wan_rt.denoise import time_embeddings
from wan_rt.errors import WanError
from wan_rt.manifest import load_manifest
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.schedulers import make_scheduler

MAG = step_cache.load_calibration(step_cache.MAGCACHE_FILE)
TEA = step_cache.load_calibration(step_cache.TEACACHE_FILE)


# -- the sources' rules, transcribed on their own terms (one DiT call at a time, cond and uncond in turn) ----------
def source_nearest_interp(src_array, target_length):  # MagCache4Wan2.2 nearest_interp
    src_length = len(src_array)
    if target_length == 1:
        return np.array([src_array[-1]])
    scale = (src_length - 1) / (target_length - 1)
    mapped_indices = np.round(np.arange(target_length) * scale).astype(int)
    return src_array[mapped_indices]


def source_magcache_skips(mag_ratios, sample_steps, magcache_thresh, K, retention_ratio):
    """MagCache4Wan2.2 init_magcache + magcache_forward (ti2v: split_step None): skip flag of every call."""
    mag_ratios = np.array([1.0] * 2 + mag_ratios)
    if len(mag_ratios) != sample_steps * 2:
        mag_ratio_con = source_nearest_interp(mag_ratios[0::2], sample_steps)
        mag_ratio_ucon = source_nearest_interp(mag_ratios[1::2], sample_steps)
        mag_ratios = np.concatenate([mag_ratio_con.reshape(-1, 1), mag_ratio_ucon.reshape(-1, 1)], axis=1).reshape(-1)
    num_steps = sample_steps * 2
    accumulated_err, accumulated_steps, accumulated_ratio = [0.0, 0.0], [0, 0], [1.0, 1.0]
    skips = []
    for cnt in range(num_steps):
        use_magcache = not cnt < int(num_steps * retention_ratio)
        skip_forward = False
        if use_magcache:
            accumulated_ratio[cnt % 2] = accumulated_ratio[cnt % 2] * mag_ratios[cnt]
            accumulated_steps[cnt % 2] += 1
            accumulated_err[cnt % 2] += np.abs(1 - accumulated_ratio[cnt % 2])
            if accumulated_err[cnt % 2] < magcache_thresh and accumulated_steps[cnt % 2] <= K:
                skip_forward = True
            else:
                accumulated_err[cnt % 2] = 0
                accumulated_steps[cnt % 2] = 0
                accumulated_ratio[cnt % 2] = 1.0
        skips.append(skip_forward)
    return skips


def lightx2v_teacache_calcs(embeds, coefficients, teacache_thresh):
    """LightX2V WanTransformerInferTeaCaching.calculate_should_calc (use_ret_steps false), one branch."""
    infer_steps = len(embeds)
    ret_steps, cutoff_steps = 1, infer_steps - 1
    accumulated, previous, calcs = 0, None, []
    for step_index, modulated_inp in enumerate(embeds):
        if step_index < ret_steps or step_index >= cutoff_steps:
            should_calc = True
            accumulated = 0
        else:
            rescale_func = np.poly1d(coefficients)
            accumulated += rescale_func(np.abs(modulated_inp - previous).mean() / np.abs(previous).mean())
            if accumulated < teacache_thresh:
                should_calc = False
            else:
                should_calc = True
                accumulated = 0
        previous = modulated_inp.copy()
        calcs.append(should_calc)
    return calcs


# -- plans ------------------------------------------------------------------------------------------------------
def test_calibration_files_hold_the_published_values():
    for kind, first, last in (("t2v", [0.99505, 0.99389, 0.99441], [0.94872, 0.96949, 0.97015]),
                              ("i2v", [0.99512, 0.99559, 0.99559], [0.93552, 0.96655, 0.96616])):
        table = MAG["ratios"][kind]
        assert len(table) == 2 * (MAG["calibrated_steps"] - 1) == 98
        assert table[:3] == first and table[-3:] == last
    assert (MAG["threshold"], MAG["K"], MAG["retention_ratio"]) == (0.06, 2, 0.2)
    assert TEA["coefficients"] == [1.57472669e+05, -1.15702395e+05, 3.10761669e+04, -3.83116651e+03,
                                   2.21608777e+02, -4.81179567e+00]
    assert TEA["threshold"] == 0.26 and "wan_ti2v_tea_720p.json" in TEA["_source"]


# MagCache4Wan2.2 generate.py (Zehong-Ma/MagCache), the ti2v-5B `mag_ratios` of its t2v and i2v branches
PUBLISHED = {
    "t2v": [0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548, 0.99468, 0.9946,
            0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441, 0.99409, 0.99398, 0.99403, 0.99397,
            0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378, 0.9933, 0.99328, 0.99303, 0.99301, 0.99217, 0.99216,
            0.992, 0.99201, 0.99201, 0.99202, 0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155, 0.98958, 0.98957,
            0.98959, 0.98958, 0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561,
            0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101, 0.97981, 0.97979, 0.97849, 0.97849,
            0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917, 0.96913, 0.96511, 0.96507, 0.96263, 0.96257,
            0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936, 0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872,
            0.96949, 0.97015],
    "i2v": [0.99512, 0.99559, 0.99559, 0.99561, 0.99595, 0.99577, 0.99512, 0.99512, 0.99546, 0.99534, 0.99543, 0.99531,
            0.99496, 0.99491, 0.99504, 0.99499, 0.99444, 0.99449, 0.99481, 0.99481, 0.99435, 0.99435, 0.9943, 0.99431,
            0.99411, 0.99406, 0.99373, 0.99376, 0.99413, 0.99405, 0.99363, 0.99359, 0.99335, 0.99331, 0.99244, 0.99243,
            0.99229, 0.99229, 0.99239, 0.99236, 0.99163, 0.9916, 0.99149, 0.99151, 0.99191, 0.99192, 0.9898, 0.98981,
            0.9899, 0.98987, 0.98849, 0.98849, 0.98846, 0.98846, 0.98861, 0.98861, 0.9874, 0.98738, 0.98588, 0.98589,
            0.98539, 0.98534, 0.98444, 0.98439, 0.9831, 0.98309, 0.98119, 0.98118, 0.98001, 0.98, 0.97862, 0.97859,
            0.97555, 0.97558, 0.97392, 0.97388, 0.97152, 0.97145, 0.96871, 0.9687, 0.96435, 0.96434, 0.96129, 0.96127,
            0.95639, 0.95638, 0.95176, 0.95175, 0.94446, 0.94452, 0.93972, 0.93974, 0.93575, 0.9359, 0.93537, 0.93552,
            0.96655, 0.96616],
}


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_magcache_table_is_the_published_one_entry_by_entry(kind):
    table = MAG["ratios"][kind]
    assert len(table) == len(PUBLISHED[kind]) == 98
    for index, (ours, published) in enumerate(zip(table, PUBLISHED[kind])):
        assert ours == published, f"{kind} entry {index}: {ours} != {published}"


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("threshold", [0.04, 0.06])
def test_magcache_plan_equals_the_source_rule(kind, steps, threshold):
    calls = source_magcache_skips(MAG["ratios"][kind], steps, threshold, MAG["K"], MAG["retention_ratio"])
    cond, uncond = calls[0::2], calls[1::2]
    assert cond == uncond  # both branches agree here, so skipping a whole step is exactly the source
    plan = step_cache.plan_magcache(steps, kind == "i2v", True, threshold)
    assert plan.full == tuple(not skip for skip in cond)
    unguided = step_cache.plan_magcache(steps, kind == "i2v", False, threshold)  # conditional branch alone
    assert unguided.full == plan.full


def test_magcache_at_the_published_setting_halves_the_full_dit_calls_at_50_steps():
    t2v = step_cache.plan_magcache(50, False, True, None)
    i2v = step_cache.plan_magcache(50, True, True, None)
    assert (t2v.full_steps, i2v.full_steps) == (25, 26)
    assert all(plan.full[:10] == (True,) * 10 for plan in (t2v, i2v))  # retention 0.2: the first 10 steps run
    assert 50 / i2v.full_steps >= 1.8 and t2v.describe() == "full DiT on 25 of 50 steps"


def test_teacache_plan_equals_the_lightx2v_rule():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 16))
    # relative L1 changes of 0.03..0.2: where the fitted polynomial is negative, small and growing
    embeds = [base * (1 + 0.2 * np.sin(0.07 * k * k)) + 0.01 * k for k in range(30)]
    for threshold in (0.05, 0.26, 0.5, 1.0):
        expected = lightx2v_teacache_calcs(embeds, TEA["coefficients"], threshold)
        assert step_cache.teacache_plan(embeds, TEA["coefficients"], threshold) == tuple(expected)
    # a threshold the changes never reach: every step between the first and the last is skipped, those two run
    assert step_cache.teacache_plan(embeds, [1e-6, 0.0], 1.0) == (True,) + (False,) * 28 + (True,)
    assert not all(step_cache.teacache_plan(embeds, TEA["coefficients"], 0.26))  # some steps are skipped
    assert all(step_cache.teacache_plan(embeds, TEA["coefficients"], 0.0))  # 0: none (the polynomial dips < 0)


# -- graphs -----------------------------------------------------------------------------------------------------
def test_skip_graph_equals_the_reference_with_the_same_cached_residual(tiny_engines):
    import torch

    from wan_export.weights import weight_source_from_manifest

    manifest = load_manifest(tiny_engines, verify=False)
    spec = manifest.component("dit_skip")
    assert [t.name for t in spec.inputs] == ["tokens", "timesteps", "residual"]
    assert [t.name for t in manifest.component("dit").outputs] == ["velocity", "residual"]
    model = weight_source_from_manifest(manifest.data, None).load("dit").eval()
    rng = np.random.default_rng(3)
    grid, dim = (3, 3, 5), manifest.model["dit"]["dim"]
    count = int(np.prod(grid))
    from wan_rt import tokens

    cos, sin = tokens.rope_tables(grid, manifest.model["dit"]["dim"] // manifest.model["dit"]["num_heads"])
    context = rng.standard_normal((2, 512, manifest.model["dit"]["text_dim"])).astype(np.float32)
    step_tokens = rng.standard_normal((2, count, spec.inputs[0].shape[2])).astype(np.float32)
    later_tokens = rng.standard_normal(step_tokens.shape).astype(np.float32)
    timesteps = np.stack([tokens.frame_timesteps(grid, 900.0, None), tokens.frame_timesteps(grid, 900.0, 0.0)])
    later = np.stack([tokens.frame_timesteps(grid, 700.0, None), tokens.frame_timesteps(grid, 700.0, 0.0)])
    with open_runner(manifest, "dit") as dit, open_runner(manifest, "dit_skip") as skip:
        full = dit.run({"tokens": step_tokens, "timesteps": timesteps, "context": context,
                        "rope_cos": cos, "rope_sin": sin}, keep=("residual",))
        residual = full["residual"]
        assert residual.shape == (2, count, dim)
        same = skip.run({"tokens": step_tokens, "timesteps": timesteps, "residual": residual})["velocity"]
        skipped = skip.run({"tokens": later_tokens, "timesteps": later, "residual": residual})["velocity"]
        residual = residual.numpy()
    with torch.no_grad():
        args = [torch.from_numpy(a) for a in (step_tokens, timesteps, context, cos, sin)]
        velocity, reference_residual = model.forward_with_residual(*args)
        reference = model.velocity_from_residual(torch.from_numpy(later_tokens), torch.from_numpy(later),
                                                 torch.from_numpy(residual))
    np.testing.assert_allclose(residual, reference_residual.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(skipped, reference.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(same, full["velocity"], atol=1e-5, rtol=0)  # head(x0 + (x - x0)) = head(x)
    np.testing.assert_allclose(full["velocity"], velocity.numpy(), atol=1e-5, rtol=0)


# -- the loop ---------------------------------------------------------------------------------------------------
def _generate(engines, **request):
    with Pipeline(engines, verify=False, show_progress=False) as pipe:
        return pipe.generate(GenerationRequest(prompt="a red fox", seed=7, **request))


def test_threshold_zero_and_none_give_the_latents_of_no_cache(tiny_engines):
    plain = _generate(tiny_engines, steps=6)
    assert plain.full_dit_steps == (6, 6) and "full DiT on 6 of 6 steps" in plain.summary()
    for cache in ("none", "magcache", "teacache"):
        result = _generate(tiny_engines, steps=6, cache=cache,
                           cache_threshold=None if cache == "none" else 0.0)
        assert np.array_equal(result.latents, plain.latents), cache
        assert result.full_dit_steps == (6, 6)


def _recorded(engines, monkeypatch, **request):
    """`_generate` with every runner the pipeline opens recorded (tests/recording.py): (result, EngineLog)."""
    engine_log = EngineLog()
    monkeypatch.setattr("wan_rt.pipeline.open_runner", engine_log.open_runner)
    result = _generate(engines, **request)
    monkeypatch.undo()
    return result, engine_log


def replay(engines, result, engine_log, steps: int, first_frame=None) -> np.ndarray:
    """The request's trajectory rebuilt from the recorded DiT calls: a full step takes the recorded `dit` velocity
    and residual, a skipped step runs `dit_skip` here, on the residual of the last full step and this step's
    latent; each call's inputs are checked against the replayed latent and timestep on the way."""
    manifest = load_manifest(engines, verify=False)
    sampling = manifest.sampling
    scheduler = make_scheduler("unipc", steps, sampling["shift"])
    latent = np.random.default_rng(7).standard_normal(result.latents.shape, dtype=np.float32)
    if first_frame is not None:
        latent[:, :1] = first_frame
    grid = tokens.token_grid(latent.shape)
    calls = engine_log.engine_calls("dit", "dit_skip")
    assert len(calls) == steps  # one batch-2 call per step (guidance batched on the tiny engines)
    residual = None
    with open_runner(manifest, "dit_skip") as skip:
        for index, (t, call) in enumerate(zip(scheduler.timesteps, calls)):
            row = tokens.timesteps_for(grid, "frames", float(t), None if first_frame is None else 0.0)
            feeds = {"tokens": np.repeat(tokens.patchify(latent)[None], 2, axis=0),
                     "timesteps": np.repeat(row[None], 2, axis=0)}
            np.testing.assert_array_equal(call["feeds"]["timesteps"], feeds["timesteps"], err_msg=f"step {index}")
            np.testing.assert_allclose(call["feeds"]["tokens"], feeds["tokens"], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {index}")
            if call["engine"] == "dit":
                velocity, residual = call["outputs"]["velocity"], call["outputs"]["residual"]
            else:
                velocity = skip.run({**feeds, "residual": residual})["velocity"]
                np.testing.assert_array_equal(call["feeds"]["residual"], residual, err_msg=f"step {index}")
                np.testing.assert_allclose(call["outputs"]["velocity"], velocity, rtol=1e-5, atol=1e-5)
            cond, uncond = (tokens.unpatchify(v, grid, latent.shape[0]) for v in velocity)
            guided = uncond + sampling["guide_scale"] * (cond - uncond)
            latent = scheduler.step(guided, latent)
            if first_frame is not None:
                latent[:, :1] = first_frame
    return latent


def ran(engine_log) -> tuple[bool, ...]:
    """Per step, whether the whole DiT ran, from the engine calls (not from the plan)."""
    return tuple(call["engine"] == "dit" for call in engine_log.engine_calls("dit", "dit_skip"))


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_magcache_runs_its_plan_through_dit_skip(tiny_engines, input_image, monkeypatch, image):
    steps = 20
    extra = {"image": input_image} if image else {}
    cached, engine_log = _recorded(tiny_engines, monkeypatch, steps=steps, cache="magcache", **extra)
    plan = step_cache.plan_magcache(steps, image, True, None)
    assert not all(plan.full) and ran(engine_log) == plan.full  # the graph each step ran is the plan's
    assert cached.full_dit_steps == (sum(ran(engine_log)), steps)
    assert f"full DiT on {plan.full_steps} of {steps} steps" in cached.summary()
    first_frame = cached.latents[:, :1] if image else None
    np.testing.assert_allclose(cached.latents, replay(tiny_engines, cached, engine_log, steps, first_frame),
                               rtol=1e-5, atol=1e-5)
    if image:  # frame 0 stays the image latent: the encoder's output
        encoded = engine_log.engine_calls("vae_encoder")[0]["outputs"]["latent"][0]
        np.testing.assert_array_equal(cached.latents[:, :1], encoded)


def test_teacache_runs_its_plan_from_the_time_embedding_graph(tiny_engines, monkeypatch, tmp_path):
    """The tiny DiT's random time embedding changes by ~100% a step, where the 5B polynomial never skips: a
    calibration for it (rescale 0.5 * change) makes the plan skip about every other step."""
    steps, threshold = 8, 1.0
    calibration = {**TEA, "coefficients": [0.5, 0.0]}
    (tmp_path / step_cache.TEACACHE_FILE).write_text(json.dumps(calibration))
    monkeypatch.setattr(step_cache, "DATA", tmp_path)
    result, engine_log = _recorded(tiny_engines, monkeypatch, steps=steps, cache="teacache",
                                   cache_threshold=threshold)
    with open_runner(load_manifest(tiny_engines, verify=False), "dit_time") as time_graph:
        embeddings = time_embeddings(time_graph, result.latents.shape, make_scheduler("unipc", steps, 5.0).timesteps,
                                     False)
    plan = step_cache.teacache_plan(embeddings, calibration["coefficients"], threshold)
    assert plan[0] and plan[-1] and not all(plan)  # it skips
    assert ran(engine_log) == plan and result.full_dit_steps == (sum(ran(engine_log)), steps)
    np.testing.assert_allclose(result.latents, replay(tiny_engines, result, engine_log, steps), rtol=1e-5, atol=1e-5)


# -- old folders and bad input ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def old_engines(tiny_engines, tmp_path_factory) -> Path:
    """The tiny folder as built before step caching: no dit_skip / dit_time, no residual in the manifest."""
    folder = tmp_path_factory.mktemp("old") / "engines"
    folder.mkdir()
    for path in tiny_engines.iterdir():
        if path.name != "manifest.json" and not path.name.startswith(("dit_skip", "dit_time")):
            (folder / path.name).symlink_to(path)
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    for name in ("dit_skip", "dit_time"):
        del manifest["components"][name]
    dit = manifest["components"]["dit"]
    dit["outputs"] = [t for t in dit["outputs"] if t["name"] != "residual"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_folder_from_before_runs_without_cache_and_refuses_one(old_engines, tiny_engines):
    assert np.array_equal(_generate(old_engines, steps=3).latents, _generate(tiny_engines, steps=3).latents)
    with pytest.raises(WanError, match=r"^--cache magcache needs step-cache graphs this engines folder .* was built "
                                       r"without \(the dit output 'residual', dit_skip\); rebuild it"):
        _generate(old_engines, steps=3, cache="magcache")


def test_cache_request_refuses_numbers_out_of_range_in_one_line():
    assert step_cache.check_cache_request("magcache", 1.0) == ("magcache", 1.0)  # the bounds themselves pass
    assert step_cache.check_cache_request("teacache", 0) == ("teacache", 0.0)
    assert step_cache.check_cache_request(None, None) == ("none", None)
    for value in (1.5, -0.5, float("inf")):
        with pytest.raises(WanError, match=rf"^cache threshold must be a finite number >= 0 and <= 1, got {value}$"):
            step_cache.check_cache_request("magcache", value)
    with pytest.raises(WanError, match=r"^unknown step cache 'fastcache'; choose from none, magcache"):
        step_cache.check_cache_request("fastcache", None)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, line", [
    (["--cache", "magcache", "--cache-threshold", "nan"],
     "error: cache threshold must be a finite number >= 0 and <= 1, got nan"),
    (["--cache", "teacache", "--cache-threshold", "-0.1"],
     "error: cache threshold must be a finite number >= 0 and <= 1, got -0.1"),
    (["--cache-threshold", "0.1"], "error: --cache-threshold needs --cache magcache, teacache or easycache"),
    (["--cache", "teacache"], "error: --cache teacache needs step-cache graphs this engines folder"),
])
def test_cli_refuses_in_one_line(old_engines, tmp_path, args, line):
    result = _cli("--engines", old_engines, "--prompt", "x", "--steps", "2", "--out", tmp_path / "v.mp4", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert not (tmp_path / "v.mp4").exists()
