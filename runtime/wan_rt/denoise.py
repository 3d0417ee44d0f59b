"""The sampling loop over the DiT engine: classifier-free guidance, per-frame timesteps, I2V re-pinning.

Exactly the official WanTI2V.t2v / .i2v loop (wan/textimage2video.py) with the model replaced by an engine:
- the engine is conditioned on the solver's int64 timesteps (as float), the solver uses its exact sigmas;
- image-to-video conditions latent frame 0's tokens on t=0 and re-pins frame 0 to the image latent after
  every solver step (the solver still updates it, as official, before the re-pin);
- guidance runs as one batch-2 call when the engine takes batch 2, else as two calls;
- with a step cache (wan_rt.step_cache) the steps its plan skips run `dit_skip` on the residual the last full
  step left on the device (one per call of that step, so per guidance branch), instead of the whole DiT;
  EasyCache (wan_rt.easycache) decides step by step and reuses the whole model's last transformation.
"""
from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from wan_rt import tokens
from wan_rt.backends import Runner
from wan_rt.finite import check_finite
from wan_rt.schedulers import FlowScheduler
from wan_rt.step_cache import CachePlan

log = logging.getLogger("wan_rt")


class DiTStep:
    """Inputs that stay the same over a request (RoPE tables, context batch), and one guided call.

    They are uploaded to the engine's device once per request (`Runner.to_device`); per step only the tokens
    and timesteps go in and the velocity comes back."""

    def __init__(self, runner: Runner, latent_shape: tuple[int, ...], context: np.ndarray, context_null: np.ndarray,
                 head_dim: int, out_channels: int, guide_scale: float, skip_runner: Runner | None = None):
        """`skip_runner`: the `dit_skip` engine when a step cache may skip steps (the residuals are then kept)."""
        self.runner = runner
        self.skip_runner = skip_runner
        # engines from before step caching have no residual; newer ones leave it on the device, never copied back
        outputs = {t.name for t in getattr(runner.component, "outputs", ())}
        self.keep = ("residual",) if "residual" in outputs else ()
        self.residuals = []  # one DeviceTensor per call of the last full step
        self.grid = tokens.token_grid(latent_shape)
        self.out_channels = out_channels
        self.guide_scale = guide_scale
        self.guided = guide_scale != 1.0  # g = 1 is the conditional prediction alone: skip the second pass
        cos, sin = tokens.rope_tables(self.grid, head_dim)
        self.rope = {"rope_cos": runner.to_device(cos), "rope_sin": runner.to_device(sin)}
        self.batched = self.guided and runner.component.dims["batch"][2] >= 2
        # "frames" (one timestep per latent frame) or "tokens" (per token, as engines folders before it)
        self.timesteps_per = _timestep_granularity(runner)
        if self.batched:
            contexts = [np.concatenate([context, context_null])]
        else:
            contexts = [context, context_null] if self.guided else [context]
        self.contexts = [runner.to_device(c) for c in contexts]
        log.info("DiT: %d tokens, guidance %s", tokens.num_tokens(latent_shape), self.guidance_note())

    def guidance_note(self) -> str:
        return ("off (guide scale 1)" if not self.guided else
                "as one batch-2 call" if self.batched else "as two batch-1 calls")

    def timesteps(self, t: float, first_frame_t: float | None) -> np.ndarray:
        """The engine's `timesteps` row for solver timestep `t` (`first_frame_t` on latent frame 0 for I2V)."""
        return tokens.timesteps_for(self.grid, self.timesteps_per, t, first_frame_t)

    def velocities(self, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """Engine predictions in latent layout: [cond, uncond] (or [cond] when guidance is off)."""
        token_input = tokens.patchify(latent)[None]
        outputs, residuals = [], []
        for context in self.contexts:
            feeds = {**_per_row(token_input, timesteps, context.shape[0]), "context": context, **self.rope}
            result = self.runner.run(feeds, keep=self.keep) if self.keep else self.runner.run(feeds)
            outputs.extend(result["velocity"])
            residuals.append(result.get("residual"))
        if self.skip_runner is not None:
            self.residuals = residuals
        return [tokens.unpatchify(v, self.grid, self.out_channels) for v in outputs]

    def cached_velocities(self, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """As `velocities`, from the residuals of the last full step (`dit_skip`: no block stack)."""
        token_input = tokens.patchify(latent)[None]
        outputs = []
        for residual in self.residuals:
            feeds = {**_per_row(token_input, timesteps, residual.shape[0]), "residual": residual}
            outputs.extend(self.skip_runner.run(feeds)["velocity"])
        return [tokens.unpatchify(v, self.grid, self.out_channels) for v in outputs]


def _per_row(token_input: np.ndarray, timesteps: np.ndarray, batch: int) -> dict:
    """tokens and timesteps, the same for each of `batch` rows (guidance branches)."""
    return {"tokens": np.repeat(token_input, batch, axis=0), "timesteps": np.repeat(timesteps[None], batch, axis=0)}


def time_embeddings(time_runner: Runner, latent_shape: tuple[int, ...], solver_timesteps,
                    image: bool) -> list[np.ndarray]:
    """The time embedding of every step ([frames, dim], from `dit_time`), what TeaCache's plan reads."""
    grid = tokens.token_grid(latent_shape)
    rows = [tokens.timesteps_for(grid, "frames", float(t), 0.0 if image else None) for t in solver_timesteps]
    return [time_runner.run({"timesteps": row[None]})["time_embedding"][0] for row in rows]


def _timestep_granularity(runner: Runner) -> str:
    shape = {tensor.name: tensor.shape for tensor in runner.component.inputs}.get("timesteps", ())
    return "frames" if list(shape)[1:] == ["frames"] else "tokens"


def advance(scheduler: FlowScheduler, predictions: list[np.ndarray], guide_scale: float,
            sample: np.ndarray) -> np.ndarray:
    """One solver step in place: guided (`uncond + g * (cond - uncond)`, fused) when there are two predictions."""
    check_finite(predictions, "dit", f"at denoising step {scheduler.step_index + 1} of {scheduler.steps}")
    if len(predictions) == 2:
        return scheduler.step_cfg(predictions[0], predictions[1], guide_scale, sample, out=sample)
    return scheduler.step(predictions[0], sample, out=sample)


def denoise(step: DiTStep, scheduler: FlowScheduler, latent: np.ndarray, first_frame: np.ndarray | None,
            show_progress: bool = True, cache: CachePlan | None = None, on_step=None,
            on_prediction=None) -> np.ndarray:
    """Run every solver step from `latent` (the initial noise, frame 0 already pinned for I2V); `cache`: which
    steps run the whole DiT (None: all); `on_step(done, total)` after each step (a service's progress);
    `on_prediction(index, latent, predictions)` before the solver moves the latent on (wan_rt.preview)."""
    latent = np.array(latent, dtype=np.float32, copy=True)
    steps = tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not show_progress or None, leave=False)
    for index, t in enumerate(steps):
        timesteps = step.timesteps(float(t), 0.0 if first_frame is not None else None)
        if cache is None or cache.runs_full(index, latent):
            predictions = step.velocities(latent, timesteps)
            if cache is not None:
                cache.record(latent, predictions)
        else:
            predictions = cache.skipped(step, latent, timesteps)
        if on_prediction is not None:
            on_prediction(index, latent, predictions)
        latent = advance(scheduler, predictions, step.guide_scale, latent)
        if first_frame is not None:
            latent[:, :1] = first_frame
        if on_step is not None:
            on_step(index + 1, len(scheduler.timesteps))
    return latent
