"""The sampling loop over the DiT engine: classifier-free guidance, per-frame timesteps, I2V re-pinning.

Exactly the official WanTI2V.t2v / .i2v loop (wan/textimage2video.py) with the model replaced by an engine:
- the engine is conditioned on the solver's int64 timesteps (as float), the solver uses its exact sigmas;
- image-to-video conditions latent frame 0's tokens on t=0 and re-pins frame 0 to the image latent after
  every solver step (the solver still updates it, as official, before the re-pin);
- guidance runs as one batch-2 call when the engine takes batch 2, else as two calls.
"""
from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from wan_rt import tokens
from wan_rt.backends import Runner
from wan_rt.finite import check_finite
from wan_rt.schedulers import FlowScheduler

log = logging.getLogger("wan_rt")


class DiTStep:
    """Inputs that stay the same over a request (RoPE tables, context batch), and one guided call.

    They are uploaded to the engine's device once per request (`Runner.to_device`); per step only the tokens
    and timesteps go in and the velocity comes back."""

    def __init__(self, runner: Runner, latent_shape: tuple[int, ...], context: np.ndarray, context_null: np.ndarray,
                 head_dim: int, out_channels: int, guide_scale: float):
        self.runner = runner
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
        log.info("DiT: %d tokens, guidance %s", tokens.num_tokens(latent_shape),
                 "off (guide scale 1)" if not self.guided else
                 "as one batch-2 call" if self.batched else "as two batch-1 calls")

    def timesteps(self, t: float, first_frame_t: float | None) -> np.ndarray:
        """The engine's `timesteps` row for solver timestep `t` (`first_frame_t` on latent frame 0 for I2V)."""
        return tokens.timesteps_for(self.grid, self.timesteps_per, t, first_frame_t)

    def velocities(self, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """Engine predictions in latent layout: [cond, uncond] (or [cond] when guidance is off)."""
        token_input = tokens.patchify(latent)[None]
        outputs = []
        for context in self.contexts:
            batch = context.shape[0]
            feeds = {"tokens": np.repeat(token_input, batch, axis=0),
                     "timesteps": np.repeat(timesteps[None], batch, axis=0),
                     "context": context, **self.rope}
            outputs.extend(self.runner.run(feeds)["velocity"])
        return [tokens.unpatchify(v, self.grid, self.out_channels) for v in outputs]


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
            show_progress: bool = True) -> np.ndarray:
    """Run every solver step from `latent` (the initial noise, frame 0 already pinned for I2V)."""
    latent = np.array(latent, dtype=np.float32, copy=True)
    for t in tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not show_progress or None, leave=False):
        timesteps = step.timesteps(float(t), 0.0 if first_frame is not None else None)
        latent = advance(scheduler, step.velocities(latent, timesteps), step.guide_scale, latent)
        if first_frame is not None:
            latent[:, :1] = first_frame
    return latent
