"""EasyCache (H-EmbodVis/EasyCache, EasyCache4Wan2.1): a training-free step cache decided while the run goes.

Unlike MagCache and TeaCache it needs no calibration table and no extra graph: it watches the DiT's input
(the latent x) and output (the velocity v) and reuses the whole model's last transformation `v - x`:

- after a full step at input x with conditional output v, the transformation rate k = mean|v - v_last| /
  mean|x - x_last| is measured against the previous full step (x_last, v_last);
- at a later step with input x', the predicted relative output change k * mean|x' - x_prev| / mean|v_last|
  (x_prev: the previous step's input, full or not) is accumulated; while the sum stays under the threshold
  the step is skipped, each branch's velocity being x' + (v_last - x_last) of that branch; otherwise the whole
  DiT runs and the sum starts over;
- the first `warm-up` share of the steps and the last step always run.

As in the source, the conditional branch decides for both (here one batch-2 call serves both anyway). The
source hard-codes 10 warm-up steps for its 50-step runs; that is kept as a share (0.2), so other step counts
warm up alike. Threshold 0 skips nothing (the sum is never below 0). Default threshold 0.05: the source's
default (its help text: 0.1 for about 2x, 0.2 for about 3x on Wan2.1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("wan_rt")

DEFAULT_THRESHOLD = 0.05
WARMUP_SHARE = 0.2  # the source's 10 warm-up steps of 50


def mean_abs(array: np.ndarray) -> float:
    return float(np.abs(array, dtype=np.float64).mean())


def mean_abs_change(current: np.ndarray, previous: np.ndarray) -> float:
    return float(np.abs(current.astype(np.float64) - previous).mean())


@dataclass
class EasyCache:
    """The runtime-adaptive cache of one request; `full` fills in as the steps run."""
    threshold: float
    steps: int
    method: str = "easycache"
    full: list = field(default_factory=list)
    _accumulated: float = 0.0
    _rate: float | None = None  # k
    _previous_input: np.ndarray | None = None  # x of the previous step, full or skipped
    _full_input: np.ndarray | None = None  # x of the last full step
    _full_outputs: list | None = None  # every branch's v of the last full step

    @property
    def warmup(self) -> int:
        return int(self.steps * WARMUP_SHARE)

    @property
    def full_steps(self) -> int:
        return sum(self.full)

    def describe(self) -> str:
        return f"full DiT on {self.full_steps} of {len(self.full)} steps"

    def runs_full(self, index: int, latent: np.ndarray) -> bool:
        """Whether step `index` (input `latent`) runs the whole DiT; call once per step, in order."""
        full = True
        if self.warmup <= index < self.steps - 1 and self._rate is not None:
            change = self._rate * mean_abs_change(latent, self._previous_input) / mean_abs(self._full_outputs[0])
            self._accumulated += change
            full = not self._accumulated < self.threshold
        if full:
            self._accumulated = 0.0
        self._previous_input = np.array(latent, copy=True)
        self.full.append(full)
        return full

    def record(self, latent: np.ndarray, predictions: list[np.ndarray]) -> None:
        """After a full step: the branches' outputs, and the transformation rate against the last full step."""
        if self._full_outputs is not None:
            input_change = mean_abs_change(latent, self._full_input)
            self._rate = mean_abs_change(predictions[0], self._full_outputs[0]) / input_change if input_change \
                else None  # an unchanged input says nothing about the rate: the next step runs in full
        self._full_input = self._previous_input
        self._full_outputs = [np.array(v, copy=True) for v in predictions]

    def predictions(self, latent: np.ndarray) -> list[np.ndarray]:
        """A skipped step's velocities: each branch's last transformation applied to this step's input."""
        return [latent + (output - self._full_input) for output in self._full_outputs]

    def skipped(self, step, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """The denoise loop's hook (wan_rt.step_cache.CachePlan has the same): no graph runs on a skipped step."""
        return self.predictions(latent)


def plan_easycache(steps: int, threshold: float | None) -> EasyCache:
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    cache = EasyCache(threshold, steps)
    log.info("step cache: easycache (runtime-adaptive, no calibration), threshold %g, warm-up %d of %d steps",
             threshold, cache.warmup, steps)
    return cache
