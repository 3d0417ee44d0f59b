"""numpy flow-matching solvers (wan_rt.schedulers) vs the official Wan2.2 schedulers and diffusers' UniPC.

Parity is checked over whole trajectories: the model output depends on the current sample
(v = 0.8*x + a fixed noise field), so a difference at one step carries into the next ones as in real use.
Measured (x86-64 AVX-512, torch 2.13 CPU), final-sample max relative error vs the official schedulers on these
trajectories: 0 up to 2-3 steps, <= 1.6e-7 at 10 steps, <= 3.1e-7 at 50 steps (over 5 seeds: <= 6.3e-7 at 50
steps, dpm++ shift 1). It is not 0 because torch computes the scalar log/exp of the solver coefficients with
SLEEF, which differs from the correctly rounded float32 value in the last bit for ~8% of log inputs; with torch's
scalars injected, the elementwise float32 operations here reproduce the official results bit for bit.
"""
import importlib.util

import numpy as np
import pytest
import torch

import oracle
from requires import require
from wan_rt.errors import WanError
from wan_rt.schedulers import base as sched_base
from wan_rt.schedulers import make_scheduler

SHAPE = (4, 3, 5, 6)  # [C, F, H, W]: small, frame axis 1 as in the real latent
STEPS = (1, 2, 3, 10, 50)
SHIFTS = (1.0, 5.0, 3.0)
TOL = 1e-6


def trajectory_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)


def model(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.float32(0.8) * x + noise


@pytest.fixture(scope="module")
def official():
    return oracle.load_official()


def official_scheduler(official, name: str, steps: int, shift: float):
    """Set up exactly as wan/textimage2video.py does."""
    if name == "unipc":
        sched = official.unipc.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1,
                                                            use_dynamic_shifting=False)
        sched.set_timesteps(steps, device="cpu", shift=shift)
        return sched, sched.timesteps
    sched = official.dpm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1,
                                                          use_dynamic_shifting=False)
    sigmas = official.dpm.get_sampling_sigmas(steps, shift)
    timesteps, _ = official.dpm.retrieve_timesteps(sched, device="cpu", sigmas=sigmas)
    return sched, timesteps


def run_torch(sched, timesteps, x: np.ndarray, noise: np.ndarray, z0=None) -> np.ndarray:
    """The official loop: latents[0][None] in, step(...)[0], i2v re-pin as (1 - mask)*z + mask*latent."""
    latent, noise_t = torch.from_numpy(x.copy()), torch.from_numpy(noise)
    if z0 is not None:
        mask = torch.ones(SHAPE)
        mask[:, 0] = 0
        z = torch.from_numpy(z0)[:, None]
    for t in timesteps:
        v = 0.8 * latent + noise_t
        latent = sched.step(v[None], t, latent[None], return_dict=False)[0][0]
        if z0 is not None:
            latent = (1.0 - mask) * z + mask * latent
    return latent.numpy()


def run_ours(sched, x: np.ndarray, noise: np.ndarray, z0=None, in_place=False) -> np.ndarray:
    x = x.copy()
    for _ in sched.timesteps:
        x = sched.step(model(x, noise), x, out=x if in_place else None)
        if z0 is not None:
            x[:, 0] = z0
    return x


# ------------------------------------------------------------------ official parity
@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_matches_official(official, name, steps, shift):
    x, noise = trajectory_inputs()
    ours = make_scheduler(name, steps, shift)
    sched, timesteps = official_scheduler(official, name, steps, shift)

    assert ours.timesteps.dtype == np.int64 and ours.timesteps.shape == (steps,)
    np.testing.assert_array_equal(ours.timesteps, timesteps.numpy())
    assert ours.sigmas.dtype == np.float32 and ours.sigmas.shape == (steps + 1,) and ours.sigmas[-1] == 0
    assert np.abs(ours.sigmas.astype(np.float64) - sched.sigmas.numpy()).max() <= 1e-7

    err = oracle.max_rel_error(run_ours(ours, x, noise), run_torch(sched, timesteps, x, noise))
    assert err <= TOL, f"{name} steps={steps} shift={shift}: max rel error {err:.3g}"


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_matches_official_with_i2v_repin(official, name):
    """Frame 0 overwritten between steps, in place: the solver state must not alias the caller's arrays."""
    x, noise = trajectory_inputs(1)
    z0 = np.random.default_rng(2).standard_normal((SHAPE[0], *SHAPE[2:])).astype(np.float32)
    sched, timesteps = official_scheduler(official, name, 10, 5.0)
    expected = run_torch(sched, timesteps, x, noise, z0=z0)
    for in_place in (False, True):
        got = run_ours(make_scheduler(name, 10, 5.0), x, noise, z0=z0, in_place=in_place)
        assert oracle.max_rel_error(got, expected) <= TOL


def test_default_grids():
    """Official 50 steps / shift 5: UniPC starts at shift(0.999) -> t 999 and ends at t 92 (REFERENCE.md 6);
    DPM++ starts at sigma 1.0 exactly -> t 1000."""
    unipc = make_scheduler("unipc", 50, 5.0)
    assert unipc.timesteps[0] == 999 and unipc.timesteps[-1] == 92
    sigma_max = float(np.float32(0.999))  # the official float32 training grid's first sigma, read back as a double
    assert unipc.sigmas[0] == np.float32(5 * sigma_max / (1 + 4 * sigma_max))
    dpm = make_scheduler("dpm++", 50, 5.0)
    assert dpm.timesteps[0] == 1000 and dpm.sigmas[0] == 1.0
    assert np.all(np.diff(unipc.sigmas) < 0) and np.all(np.diff(dpm.sigmas) < 0)


# ------------------------------------------------------------------ implementation details
@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_chunking_and_fused_guidance_are_exact(monkeypatch, name):
    """Cache blocking (tiny chunks, a ragged last one), in-place `out` and step_cfg change no bit."""
    x, noise = trajectory_inputs(3)
    cond = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    guide = 5.0
    reference = make_scheduler(name, 10, 5.0)  # one chunk: 360 elements < CHUNK
    expected = run_ours(reference, x, noise)
    monkeypatch.setattr(sched_base, "CHUNK", 7)
    assert np.array_equal(run_ours(make_scheduler(name, 10, 5.0), x, noise, in_place=True), expected)

    plain, fused = make_scheduler(name, 10, 5.0), make_scheduler(name, 10, 5.0)
    a, b = x.copy(), x.copy()
    for _ in plain.timesteps:
        uncond = model(a, noise)
        a = plain.step(uncond + np.float32(guide) * (cond - uncond), a)
        fused.step_cfg(cond, model(b, noise), guide, b, out=b)
        assert np.array_equal(a, b)


def test_euler():
    """Flow Euler on the UniPC grid: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v."""
    for steps, shift in [(1, 5.0), (3, 1.0), (10, 3.0), (50, 5.0)]:
        euler, unipc = make_scheduler("euler", steps, shift), make_scheduler("unipc", steps, shift)
        np.testing.assert_array_equal(euler.timesteps, unipc.timesteps)
        np.testing.assert_array_equal(euler.sigmas, unipc.sigmas)
        x, noise = trajectory_inputs(5)
        got = run_ours(euler, x, noise)
        exact32, exact64 = x.copy(), x.astype(np.float64)
        sig = euler.sigmas
        for i in range(steps):
            exact32 = exact32 + (sig[i + 1] - sig[i]) * model(exact32, noise)
            exact64 = exact64 + (float(sig[i + 1]) - float(sig[i])) * (0.8 * exact64 + noise)
        assert np.array_equal(got, exact32)
        assert oracle.max_rel_error(got, exact64) <= TOL


def test_errors():
    for bad in [("ddim", 10, 5.0), ("", 10, 5.0), (None, 10, 5.0), ("unipc", 0, 5.0), ("unipc", 2.5, 5.0),
                ("dpm++", 10, 0.0), ("euler", 10, -1.0), ("unipc", 10, float("nan")), ("unipc", 10, "x")]:
        with pytest.raises(WanError) as info:
            make_scheduler(*bad)
        assert "\n" not in str(info.value)
    for name in ["unipc", "dpm++", "euler"]:
        sched = make_scheduler(name, 2, 5.0)
        x = np.zeros(SHAPE, np.float32)
        with pytest.raises(WanError):
            sched.step(np.zeros((4, 3, 5, 5), np.float32), x)
        sched.step(x, x)
        sched.step(x, x)
        assert sched.done
        with pytest.raises(WanError, match="more than steps=2"):
            sched.step(x, x)


def test_float32_in_float32_out():
    sched = make_scheduler("unipc", 3, 5.0)
    x = np.ones(SHAPE, np.float64)
    out = sched.step(x, x)
    assert out.dtype == np.float32 and out.shape == SHAPE


# ------------------------------------------------------------------ diffusers' UniPC
def diffusers_unipc(steps: int, shift: float):
    """diffusers' Wan pipelines: UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True,
    flow_shift=shift), solver_order 2 / bh2 / predict_x0 / lower_order_final / final 'zero' being its defaults,
    given the official unshifted grid (diffusers applies flow_shift to it)."""
    require(importlib.util.find_spec("diffusers") is not None,
            "diffusers is not installed (it comes with the test extra: pip install -e '.[test]')")
    import diffusers

    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                              use_flow_sigmas=True, flow_shift=shift, solver_order=2,
                                              solver_type="bh2", predict_x0=True, lower_order_final=True,
                                              final_sigmas_type="zero")
    sched.set_timesteps(sigmas=np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1], device="cpu")
    return sched


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_diffusers_unipc(official, steps, shift):
    """Given the official grid, diffusers' UniPC is the official one (measured: bit-identical results, same int64
    timesteps and float32 sigmas), so it is equal to ours within the official tolerance.

    (Not tested, since it is diffusers' behaviour, not ours: its *default* grid is linspace(1, 1/1000, N+1)[:-1]
    instead of the official linspace(0.999, 0, N+1)[:-1], so a diffusers pipeline left at its defaults samples
    other timesteps (by up to 4, from 2 steps on) and ends 2e-4 .. 6.4e-3 relative away from the official result;
    measured on these trajectories.)
    """
    x, noise = trajectory_inputs()
    ours = make_scheduler("unipc", steps, shift)
    sched, timesteps = official_scheduler(official, "unipc", steps, shift)
    expected = run_torch(sched, timesteps, x, noise)

    same = diffusers_unipc(steps, shift)
    np.testing.assert_array_equal(same.timesteps.numpy(), ours.timesteps)
    np.testing.assert_array_equal(same.sigmas.numpy(), ours.sigmas)
    got = run_torch(same, same.timesteps, x, noise)
    assert oracle.max_rel_error(got, expected) <= 1e-7
    assert oracle.max_rel_error(run_ours(ours, x, noise), got) <= TOL
