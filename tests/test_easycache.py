"""EasyCache (wan_rt.easycache): its decisions and reused outputs against a transcription of the source's
forward (EasyCache4Wan2.1 `easycache_forward`, one DiT call at a time, cond and uncond in turn), and the whole
loop over the tiny engines: threshold 0 equals no caching, skipped steps run no DiT call, dmd is refused."""
from __future__ import annotations

import numpy as np
import pytest

from wan_rt.easycache import EasyCache
from wan_rt.errors import WanError
from wan_rt.pipeline import GenerationRequest, Pipeline


class SourceEasyCache:
    """easycache_forward's bookkeeping on its own terms: `cnt` counts calls (2 per step), decisions on even
    calls, ret_steps = 10 * 2 calls and cutoff_steps = 2 * steps - 2 as its generate script sets them."""

    def __init__(self, steps, thresh, ret_steps):
        self.num_steps, self.thresh, self.cnt = 2 * steps, thresh, 0
        self.ret_steps, self.cutoff_steps = 2 * ret_steps, 2 * steps - 2
        self.k = self.previous_raw_input_even = self.previous_raw_output_even = self.prev_prev_raw_input_even = None
        self.previous_raw_output_odd = None
        self.accumulated_error_even = 0.0
        self.computed = []

    def forward(self, raw_input, model):
        is_even = self.cnt % 2 == 0
        if is_even:
            if self.cnt < self.ret_steps or self.cnt >= self.cutoff_steps:
                self.should_calc_current_pair = True
                self.accumulated_error_even = 0
            elif self.previous_raw_input_even is not None and self.previous_raw_output_even is not None:
                raw_input_change = np.abs(raw_input - self.previous_raw_input_even).mean()
                if self.k is not None:
                    output_norm = np.abs(self.previous_raw_output_even).mean()
                    self.accumulated_error_even += self.k * (raw_input_change / output_norm)
                    if self.accumulated_error_even < self.thresh:
                        self.should_calc_current_pair = False
                    else:
                        self.should_calc_current_pair = True
                        self.accumulated_error_even = 0
                else:
                    self.should_calc_current_pair = True
            else:
                self.should_calc_current_pair = True
            self.previous_raw_input_even = raw_input.copy()
            self.computed.append(self.should_calc_current_pair)
        if is_even and not self.should_calc_current_pair and self.previous_raw_output_even is not None:
            self.cnt += 1
            return raw_input + self.cache_even
        if not is_even and not self.should_calc_current_pair and self.previous_raw_output_odd is not None:
            self.cnt += 1
            return raw_input + self.cache_odd
        output = model(raw_input, is_even)
        if is_even:
            if self.previous_raw_output_even is not None and self.prev_prev_raw_input_even is not None:
                output_change = np.abs(output - self.previous_raw_output_even).mean()
                input_change = np.abs(self.previous_raw_input_even - self.prev_prev_raw_input_even).mean()
                self.k = output_change / input_change
            self.prev_prev_raw_input_even = self.previous_raw_input_even
            self.previous_raw_output_even = output.copy()
            self.cache_even = output - raw_input
        else:
            self.previous_raw_output_odd = output.copy()
            self.cache_odd = output - raw_input
        self.cnt += 1
        return output


def toy_model(weights):
    """A smooth nonlinear stand-in for the DiT: a different velocity field per branch."""
    def model(x, cond):
        return np.tanh(x @ weights[0 if cond else 1]) - 0.5 * x
    return model


def euler_run(velocity_of, steps, x):
    sigmas = np.linspace(1.0, 0.0, steps + 1)
    for index in range(steps):
        x = x + (sigmas[index + 1] - sigmas[index]) * velocity_of(index, x)
    return x


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.2])
def test_decisions_and_reused_outputs_equal_the_source(threshold):
    rng = np.random.default_rng(0)
    steps, guide = 50, 5.0
    weights = rng.standard_normal((2, 16, 16)) / 4
    model = toy_model(weights)
    x0 = rng.standard_normal((8, 16))

    source = SourceEasyCache(steps, threshold, ret_steps=10)

    def source_velocity(index, x):
        cond, uncond = source.forward(x, model), source.forward(x, model)
        return uncond + guide * (cond - uncond)

    ours = EasyCache(threshold, steps)

    def our_velocity(index, x):
        if ours.runs_full(index, x):
            predictions = [model(x, True), model(x, False)]
            ours.record(x, predictions)
        else:
            predictions = ours.predictions(x)
        return predictions[1] + guide * (predictions[0] - predictions[1])

    expected, result = euler_run(source_velocity, steps, x0), euler_run(our_velocity, steps, x0)
    assert ours.full == source.computed
    assert 10 < ours.full_steps < steps  # the warm-up runs, something is skipped, the last step runs
    assert all(ours.full[:10]) and ours.full[-1]
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_threshold_zero_skips_nothing():
    cache = EasyCache(0.0, 20)
    x = np.ones((4, 4))
    for index in range(20):
        assert cache.runs_full(index, x * (1 - index / 20))
        cache.record(x, [x * 0.5, x * 0.25])


def _generate(engines, **request):
    with Pipeline(engines, verify=False, show_progress=False) as pipe:
        return pipe.generate(GenerationRequest(prompt="a red fox", seed=7, **request))


class DiTCallCounter:
    def __init__(self, runner):
        self._runner, self.calls = runner, 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, feeds, keep=()):
        self.calls += 1
        return self._runner.run(feeds, keep=keep)


class CountingPipeline(Pipeline):
    def runner(self, name):
        if name == "dit" and name not in self._runners:
            self._runners[name] = DiTCallCounter(super().runner(name))
        return super().runner(name)


def test_the_loop_over_the_tiny_engines(tiny_engines):
    plain = _generate(tiny_engines, steps=20)
    zero = _generate(tiny_engines, steps=20, cache="easycache", cache_threshold=0.0)
    assert np.array_equal(zero.latents, plain.latents) and zero.full_dit_steps == (20, 20)
    with CountingPipeline(tiny_engines, verify=False, show_progress=False) as pipe:
        cached = pipe.generate(GenerationRequest(prompt="a red fox", seed=7, steps=20, cache="easycache",
                                                 cache_threshold=0.5))
        calls = pipe.runner("dit").calls
    full, steps = cached.full_dit_steps
    assert steps == 20 and full < 20, cached.full_dit_steps  # random weights: the rate k still lets steps skip
    assert calls == full  # one batch-2 call per full step, none on a skipped one
    assert f"full DiT on {full} of 20 steps" in cached.summary()
    error = np.linalg.norm(cached.latents - plain.latents) / np.linalg.norm(plain.latents)
    assert np.isfinite(cached.latents).all() and 0 < error < 0.5, error


def test_step_caching_is_refused_with_the_dmd_solver(tiny_engines):
    for cache in ("easycache", "magcache"):
        with pytest.raises(WanError, match=rf"^--cache {cache} is tuned for 50-step sampling; the few-step dmd "
                                           r"solver .* use --cache none$"):
            _generate(tiny_engines, solver="dmd", timesteps=[1000, 757, 522], cache=cache)
