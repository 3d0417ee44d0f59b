"""Step caching (MagCache, TeaCache) over the tiny engines: plans against transcriptions of the sources' rules,
the skip graph against the PyTorch reference, the whole loop with and without caching, old folders, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wan_rt import step_cache
from wan_rt.backends import open_runner
from wan_rt.errors import WanError
from wan_rt.manifest import load_manifest
from wan_rt.pipeline import GenerationRequest, Pipeline

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
    for threshold in (0.05, 0.26, 0.5):
        expected = lightx2v_teacache_calcs(embeds, TEA["coefficients"], threshold)
        assert step_cache.teacache_plan(embeds, TEA["coefficients"], threshold) == tuple(expected)
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


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_magcache_skips_steps_in_t2v_and_i2v(tiny_engines, input_image, image):
    steps = 20
    extra = {"image": input_image} if image else {}
    plain = _generate(tiny_engines, steps=steps, **extra)
    cached = _generate(tiny_engines, steps=steps, cache="magcache", **extra)
    plan = step_cache.plan_magcache(steps, image, True, None)
    assert cached.full_dit_steps == (plan.full_steps, steps) and plan.full_steps < steps
    assert f"full DiT on {plan.full_steps} of {steps} steps" in cached.summary()
    assert np.isfinite(cached.latents).all() and not np.array_equal(cached.latents, plain.latents)
    error = np.linalg.norm(cached.latents - plain.latents) / np.linalg.norm(plain.latents)
    assert error < 0.5, error  # a proxy on random weights: the cached steps stay close to the full ones
    if image:  # frame 0 stays the image latent
        np.testing.assert_array_equal(cached.latents[:, :1], plain.latents[:, :1])


def test_teacache_runs_its_plan_from_the_time_embedding_graph(tiny_engines):
    result = _generate(tiny_engines, steps=6, cache="teacache", cache_threshold=1.0)
    with open_runner(load_manifest(tiny_engines, verify=False), "dit_time") as time_graph:
        from wan_rt.denoise import time_embeddings
        from wan_rt.schedulers import make_scheduler

        embeddings = time_embeddings(time_graph, result.latents.shape, make_scheduler("unipc", 6, 5.0).timesteps,
                                     False)
    plan = step_cache.teacache_plan(embeddings, TEA["coefficients"], 1.0)
    assert result.full_dit_steps == (sum(plan), 6) and plan[0] and plan[-1]


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
