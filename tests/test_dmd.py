"""The `dmd` solver of the few-step distilled checkpoints (FastWan2.2-TI2V-5B, Wan2.2-TI2V-5B-Turbo).

The trajectory is compared with an independent float64 transcription of the sources' update rule
(FastVideo DmdDenoisingStage / mlx_runtime.wan22_sample: warp onto the shifted 1000-entry training grid, sigma by
nearest-timestep lookup, x0 = x - sigma*v, add_noise (1-sigma')*x0 + sigma'*eps); the generate tests run the tiny
engines through onnxruntime with the DiT and text-encoder runners wrapped in a call counter (real calls, real
outputs), and replay the recorded DiT outputs through that transcription.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wan_rt import tokens
from wan_rt.errors import WanError
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.schedulers import make_scheduler

FASTWAN = [1000, 757, 522]
TURBO = [1000, 750, 500, 250]
PROMPT = "A red fox trots through fresh snow at sunrise"


# -- an independent transcription of the sources --------------------------------------------------------------
def fastvideo_grid(shift: float) -> tuple[np.ndarray, np.ndarray]:
    """FlowMatchEulerDiscreteScheduler(shift).timesteps / .sigmas (1000 entries, float64 here)."""
    t = np.linspace(1, 1000, 1000)[::-1] / 1000
    sigmas = shift * t / (1 + (shift - 1) * t)
    return sigmas * 1000, sigmas


def source_schedule(listed: list[int], shift: float, warp: bool) -> tuple[list[float], list[float]]:
    """(model timesteps, sigmas): warp = cat(grid.timesteps, [0])[1000 - s]; sigma = nearest grid entry's."""
    grid_t, grid_sigma = fastvideo_grid(shift)
    model_t = [float(np.concatenate([grid_t, [0.0]])[1000 - s]) for s in listed] if warp else [float(s) for s in listed]
    if warp:
        sigmas = [float(grid_sigma[np.argmin(np.abs(grid_t - t))]) for t in model_t]
    else:
        sigmas = [t / 1000 for t in model_t]
    return model_t, sigmas


def reference_trajectory(x, velocity, listed, shift, warp, seed):
    """float64 replay; eps from the documented stream default_rng(SeedSequence(seed, spawn_key=(1,)))."""
    model_t, sigmas = source_schedule(listed, shift, warp)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    x = x.astype(np.float64)
    samples = [x]
    for i, (t, sigma) in enumerate(zip(model_t, sigmas)):
        x0 = x - sigma * velocity(x, t, i)
        if i == len(listed) - 1:
            x = x0
        else:
            eps = rng.standard_normal(x.size, dtype=np.float32).reshape(x.shape).astype(np.float64)
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * eps
        samples.append(x)
    return samples


def toy_velocity(x, t, i):
    """A deterministic stand-in for the model: depends on the sample, the timestep and the step."""
    return np.tanh(0.7 * np.asarray(x, np.float64) + t / 1000.0) - 0.1 * i


def run_ours(sched, x):
    x = np.array(x, dtype=np.float32)
    out = [x.astype(np.float64)]
    seen = []
    for t in sched.timesteps:
        seen.append(float(t))
        x = sched.step(toy_velocity(x, float(t), len(seen) - 1).astype(np.float32), x)
        out.append(x.astype(np.float64))
    return out, seen


# -- the solver ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("listed,warp,shape", [
    (FASTWAN, True, (48, 2, 4, 6)),
    (TURBO, False, (48, 2, 4, 6)),
    (FASTWAN, True, (48, 3, 24, 40)),  # more than one 65536-element chunk
])
def test_trajectory_equals_float64_transcription(listed, warp, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    sched = make_scheduler("dmd", len(listed), 5.0, timesteps=listed, warp=warp, seed=42)
    ours, seen = run_ours(sched, x)
    model_t, _ = source_schedule(listed, 5.0, warp)
    np.testing.assert_allclose(seen, model_t, rtol=1e-6)
    expected = reference_trajectory(x, toy_velocity, listed, 5.0, warp, 42)
    for step, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"after step {step}")
    assert np.abs(ours[1] - ours[0]).max() > 0.1  # the solver moved


def test_fastwan_warped_timesteps_are_the_documented_ones():
    sched = make_scheduler("dmd", 3, 5.0, timesteps=FASTWAN, warp=True, seed=0)
    np.testing.assert_allclose(sched.timesteps, [1000.0, 939.672, 845.207], atol=1e-3)
    np.testing.assert_allclose(sched.timesteps, warped_by_formula(FASTWAN, 5.0), rtol=1e-6)
    np.testing.assert_allclose(make_scheduler("dmd", 3, 3.0, timesteps=FASTWAN, seed=0).timesteps,
                               warped_by_formula(FASTWAN, 3.0), rtol=1e-6)  # the shift is used, not a table
    assert list(sched.sigmas[-1:]) == [0.0]


def test_turbo_sigmas_match_its_nearest_grid_lookup():
    """Turbo's FlowMatchScheduler(shift=8, sigma_min=0, extra_one_step) .set_timesteps(1000, training=True) grid."""
    grid = np.linspace(1.0, 0.0, 1001)[:-1]
    grid = 8 * grid / (1 + 7 * grid)
    sched = make_scheduler("dmd", 4, 5.0, timesteps=TURBO, warp=False, seed=0)
    looked_up = [grid[np.argmin(np.abs(grid * 1000 - t))] for t in TURBO]
    np.testing.assert_allclose(sched.sigmas[:-1], looked_up, atol=5e-4)
    assert list(sched.timesteps) == TURBO


def test_renoise_is_reproducible_from_the_seed():
    x = np.random.default_rng(0).standard_normal((48, 2, 4, 6)).astype(np.float32)
    runs = [run_ours(make_scheduler("dmd", 3, 5.0, timesteps=FASTWAN, seed=seed), x)[0][-1] for seed in (5, 5, 6)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_default_timesteps_follow_the_step_count():
    assert list(make_scheduler("dmd", 4, 5.0, warp=False, seed=0).timesteps) == TURBO
    assert list(make_scheduler("dmd", 3, 5.0, warp=False, seed=0).timesteps) == [1000, 667, 333]


@pytest.mark.parametrize("kwargs,match", [
    ({"timesteps": [757, 1000, 522]}, "strictly decreasing"),
    ({"timesteps": [1000, 500, 0]}, "integers in 1..1000"),
    ({"timesteps": [1001, 500, 1]}, "integers in 1..1000"),
    ({"timesteps": [1000, 757.5, 522]}, "integers in 1..1000"),
    ({"timesteps": [1000, 757]}, "3 steps but 2 timesteps"),
])
def test_bad_timesteps_are_one_line(kwargs, match):
    with pytest.raises(WanError, match=match) as info:
        make_scheduler("dmd", 3, 5.0, seed=0, **kwargs)
    assert "\n" not in str(info.value)


def test_other_solvers_refuse_a_timestep_list():
    with pytest.raises(WanError, match="only 'dmd'"):
        make_scheduler("unipc", 3, 5.0, timesteps=FASTWAN)


# -- generate over the tiny engines ----------------------------------------------------------------------------
class CountingRunner:
    """The real runner, with every `run` call's batch, feeds and outputs recorded."""

    def __init__(self, runner):
        self._runner = runner
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, feeds, keep=()):
        outputs = self._runner.run(feeds, keep=keep)
        self.calls.append({"batch": next(iter(feeds.values())).shape[0], "feeds": feeds, "outputs": outputs})
        return outputs


class CountingPipeline(Pipeline):
    def runner(self, name):
        if name not in self._runners:
            runner = super().runner(name)
            self._runners[name] = CountingRunner(runner) if name in ("dit", "text_encoder") else runner
        return self._runners[name]


def replay(pipe, result, dit_calls, noise, listed, seed, shift=5.0, warp=True):
    """The recorded DiT outputs through the transcription; checks each call's input sample on the way."""
    grid = tokens.token_grid(result.latents.shape)
    velocities = [tokens.unpatchify(c["outputs"]["velocity"][0], grid, pipe.z_dim) for c in dit_calls]
    fed = [c["feeds"]["tokens"][0] for c in dit_calls]

    def velocity(x, t, i):
        np.testing.assert_allclose(fed[i], tokens.patchify(x.astype(np.float32)), rtol=1e-5, atol=1e-5,
                                   err_msg=f"DiT input at step {i}")
        return velocities[i]

    return reference_trajectory(noise, velocity, listed, shift, warp, seed)


def test_three_step_generate_makes_three_batch1_dit_calls(tiny_engines):
    seed = 123
    with CountingPipeline(tiny_engines, show_progress=False) as pipe:
        result = pipe.generate(GenerationRequest(prompt=PROMPT, solver="dmd", timesteps=FASTWAN, guide_scale=1.0,
                                                 seed=seed, frames=5))
        dit, text = pipe.runner("dit").calls, pipe.runner("text_encoder").calls
        assert [c["batch"] for c in dit] == [1, 1, 1]
        assert [c["batch"] for c in text] == [1]  # the negative prompt is never encoded
        np.testing.assert_allclose([c["feeds"]["timesteps"][0, 0] for c in dit], [1000, 939.672, 845.207], atol=1e-3)
        noise = np.random.default_rng(seed).standard_normal(result.latents.shape, dtype=np.float32)
        expected = replay(pipe, result, dit, noise, FASTWAN, seed)
        np.testing.assert_allclose(result.latents, expected[-1], rtol=1e-5, atol=1e-5)


def test_noise_file_renoises_like_its_seed(tiny_engines):
    request = {"prompt": PROMPT, "solver": "dmd", "timesteps": FASTWAN, "guide_scale": 1.0, "frames": 5}
    with Pipeline(tiny_engines, show_progress=False) as pipe:
        by_seed = pipe.generate(GenerationRequest(**request, seed=9))
        noise = np.random.default_rng(9).standard_normal(by_seed.latents.shape, dtype=np.float32)
        by_file = pipe.generate(GenerationRequest(**request, seed=9, noise=noise))
        other = pipe.generate(GenerationRequest(**request, seed=10, noise=noise))
    assert np.array_equal(by_seed.latents, by_file.latents)
    assert not np.allclose(by_file.latents, other.latents)


def test_i2v_pins_frame0_and_conditions_it_on_t0(tiny_engines, input_image):
    with CountingPipeline(tiny_engines, show_progress=False) as pipe:
        result = pipe.generate(GenerationRequest(prompt=PROMPT, image=input_image, solver="dmd", timesteps=TURBO,
                                                 warp_timesteps=False, guide_scale=1.0, seed=4, frames=5))
        dit = pipe.runner("dit").calls
        first = pipe.encode_image(pipe.plan(GenerationRequest(prompt=PROMPT, image=input_image))[3])
    assert [c["batch"] for c in dit] == [1] * 4
    for call, t in zip(dit, TURBO):
        assert call["feeds"]["timesteps"][0, 0] == 0.0 and np.all(call["feeds"]["timesteps"][0, 1:] == t)
    np.testing.assert_array_equal(result.latents[:, :1], first)


def warped_by_formula(listed: list[int], shift: float) -> list[float]:
    """FastVideo's shift applied to the listed points of the 1000-step linspace: 1000 * shift*s / (1 + (shift-1)*s)
    with s = t/1000 (e.g. 1000, 939.67, 845.21 for [1000, 757, 522] at shift 5)."""
    return [1000 * shift * (t / 1000) / (1 + (shift - 1) * (t / 1000)) for t in listed]


def dmd_folder(tiny_engines: Path, folder: Path, listed: list[int], warp: bool) -> Path:
    """The tiny folder (files linked) with a manifest that samples with dmd, as fastwan-720p / turbo-720p write it."""
    folder.mkdir()
    for path in tiny_engines.iterdir():
        if path.name != "manifest.json":
            (folder / path.name).symlink_to(path)
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    manifest["sampling"].update(solver="dmd", steps=len(listed), timesteps=listed, warp_timesteps=warp,
                                guide_scale=1.0)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("listed, warp", [(FASTWAN, True), (TURBO, False)], ids=["fastwan", "turbo"])
def test_manifest_dmd_defaults_are_used(tiny_engines, tmp_path, listed, warp):
    """With no options a dmd folder feeds the DiT exactly its listed timesteps (warped by the shift formula for
    FastWan, as listed for Turbo), and the latents are the replay of the recorded DiT outputs."""
    folder = dmd_folder(tiny_engines, tmp_path / "engines", listed, warp)
    shift = json.loads((folder / "manifest.json").read_text())["sampling"]["shift"]
    with CountingPipeline(folder, show_progress=False) as pipe:
        result = pipe.generate(GenerationRequest(prompt=PROMPT, seed=1, frames=5))
        dit = list(pipe.runner("dit").calls)
        assert len(pipe.runner("text_encoder").calls) == 1  # guide scale 1: no negative prompt
        fed = [c["feeds"]["timesteps"][0, 0] for c in dit]
        assert len(fed) == len(listed)
        np.testing.assert_allclose(fed, warped_by_formula(listed, shift) if warp else listed, rtol=1e-6)
        noise = np.random.default_rng(1).standard_normal(result.latents.shape, dtype=np.float32)
        expected = replay(pipe, result, dit, noise, listed, 1, shift=shift, warp=warp)
        np.testing.assert_allclose(result.latents, expected[-1], rtol=1e-5, atol=1e-5)
        pipe.generate(GenerationRequest(prompt=PROMPT, seed=1, frames=5, steps=len(listed) + 1))  # even grid
        assert len(pipe.runner("dit").calls) == 2 * len(listed) + 1


def test_steps_and_timesteps_disagree_is_one_line(tiny_engines):
    with Pipeline(tiny_engines, show_progress=False) as pipe, \
            pytest.raises(WanError, match="--steps 4 but --timesteps lists 3"):
        pipe.generate(GenerationRequest(prompt=PROMPT, timesteps=FASTWAN, steps=4, seed=0, frames=5))


def test_profiles_write_dmd_sampling_into_the_manifest():
    from wan_export.profiles import load_profile

    fastwan, turbo = load_profile("fastwan-720p"), load_profile("turbo-720p")
    assert fastwan.dmd_sampling() == {"timesteps": FASTWAN, "warp_timesteps": True}
    assert turbo.dmd_sampling() == {"timesteps": TURBO, "warp_timesteps": False}
    for profile in (fastwan, turbo):
        assert profile.limits.batch == (1, 1) and profile.sampling["guide_scale"] == 1.0
        assert profile.sampling["steps"] == len(profile.sampling["timesteps"])


def test_profile_with_bad_timesteps_is_refused(tmp_path):
    from wan_export.profiles import load_profile

    base = Path(load_profile("tiny").source).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace('solver = "unipc"', 'solver = "dmd"\ntimesteps = [1000, 1000]'))
    with pytest.raises(WanError, match="strictly decreasing"):
        load_profile(str(bad))
