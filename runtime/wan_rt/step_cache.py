"""Step caching: which denoising steps run the whole DiT and which reuse the last block-stack residual.

On a skipped step the `dit_skip` graph applies the residual cached at the last full step to this step's tokens
(patch embedding + residual -> head), so the block stack, nearly all of the DiT's work, does not run.
Both rules decide from numbers known before the first step, so a request's plan is made up front:

- MagCache (Zehong-Ma/MagCache, MagCache4Wan2.2): calibrated ratios of the residual's magnitude between
  consecutive steps, one per guidance branch. Past the first `retention` share of the DiT calls, a branch
  multiplies the ratios since its last full step, adds |1 - product| to an error, and skips while that error
  stays under the threshold and it has skipped at most K steps in a row; otherwise it runs and starts over.
  Tables of another length are resampled to the step count by nearest index, per branch, as the source does.
- TeaCache (ali-vilab/TeaCache; TI2V-5B coefficients of ModelTC/LightX2V): the relative L1 change of the
  time embedding from one step to the next, rescaled by a fitted polynomial, is accumulated; a step is skipped
  while the sum stays under the threshold, and runs (sum reset) once it reaches it. The first and last steps
  always run. The time embedding depends on the timesteps alone, so both branches decide alike.

The sources decide per guidance branch; here a step is skipped only when every branch would skip it, so one
batch-2 call serves both branches (a full step restarts every branch's count). For the published 5B tables
at 10, 20 and 50 steps both branches always agree, so the plans are the sources' own (tests/test_step_cache.py).
Threshold 0 turns skipping off (TeaCache's polynomial goes negative for very small changes: the source would
skip there at any threshold).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wan_rt.errors import WanError
from wan_rt.request_checks import check_number

log = logging.getLogger("wan_rt")

METHODS = ("none", "magcache", "teacache", "easycache")  # easycache: wan_rt.easycache
DATA = Path(__file__).parent / "data"
MAGCACHE_FILE = "magcache_ti2v5b.json"
TEACACHE_FILE = "teacache_ti2v5b_720p.json"
MAX_THRESHOLD = 1.0  # the sources' settings are 0.02..0.3; past 1 every eligible step is skipped


@dataclass(frozen=True)
class CachePlan:
    """Per step: True where the whole DiT runs, False where the cached residual is reused."""
    method: str
    threshold: float
    full: tuple[bool, ...]

    @property
    def full_steps(self) -> int:
        return sum(self.full)

    def describe(self) -> str:
        return f"full DiT on {self.full_steps} of {len(self.full)} steps"

    def runs_full(self, index: int, latent: np.ndarray) -> bool:
        return self.full[index]

    def record(self, latent: np.ndarray, predictions: list[np.ndarray]) -> None:
        """A plan made up front learns nothing from a full step (wan_rt.easycache does)."""

    def skipped(self, step, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """A skipped step's velocities: `dit_skip` over the residual the last full step kept on the device."""
        return step.cached_velocities(latent, timesteps)


def load_calibration(name: str) -> dict:
    with open(DATA / name, encoding="utf-8") as handle:
        return json.load(handle)


def check_cache_request(method: str | None, threshold, solver: str | None = None) -> tuple[str, float | None]:
    """(method, threshold or None for the source's default); one WanError line for anything else."""
    method = "none" if method is None else method
    if method not in METHODS:
        raise WanError(f"unknown step cache {method!r}; choose from {', '.join(METHODS)}")
    if method != "none" and solver == "dmd":
        raise WanError(f"--cache {method} is tuned for 50-step sampling; the few-step dmd solver runs every one "
                       f"of its 3-4 distilled steps, use --cache none")
    if threshold is None:
        return method, None
    if method == "none":
        raise WanError("--cache-threshold needs --cache magcache, teacache or easycache")
    return method, check_number("cache threshold", threshold, minimum=0.0, maximum=MAX_THRESHOLD)


# -- MagCache -------------------------------------------------------------------------------------------------
def nearest_resample(values: np.ndarray, length: int) -> np.ndarray:
    """`values` at `length` evenly spread indices, first and last kept (numpy rounding: half to even)."""
    if length == 1:
        return values[-1:]
    positions = np.arange(length) * ((len(values) - 1) / (length - 1))
    return values[np.round(positions).astype(int)]


def magcache_ratios(table: list[float], steps: int) -> np.ndarray:
    """[steps, 2] ratios (cond, uncond) for `steps`: the calibrated table with step 0's 1.0 in front."""
    per_step = np.concatenate([[1.0, 1.0], np.asarray(table, np.float64)]).reshape(-1, 2)
    if len(per_step) == steps:
        return per_step
    return np.stack([nearest_resample(per_step[:, branch], steps) for branch in range(2)], axis=1)


def magcache_plan(ratios: np.ndarray, threshold: float, max_skips: int, retention: float,
                  branches: int = 2) -> tuple[bool, ...]:
    """The full/skip plan for `ratios` [steps, 2]; `branches` 1 when guidance is off (conditional only).

    DiT calls are counted as the source counts them, cond and uncond of each step in turn (call 2s + b), also for
    the retention share, so guidance off keeps the same retained steps."""
    steps = len(ratios)
    retained_calls = int(2 * steps * retention)
    product, error, skipped = [1.0] * branches, [0.0] * branches, [0] * branches
    plan = []
    for step in range(steps):
        skip = step > 0 and threshold > 0  # step 0 has nothing cached
        for branch in range(branches):
            if 2 * step + branch < retained_calls:
                skip = False
                continue
            product[branch] *= ratios[step, branch]
            skipped[branch] += 1
            error[branch] += abs(1.0 - product[branch])
            skip = skip and error[branch] < threshold and skipped[branch] <= max_skips
        if not skip:  # the whole DiT runs for every branch: each one's residual is fresh
            product, error, skipped = [1.0] * branches, [0.0] * branches, [0] * branches
        plan.append(not skip)
    return tuple(plan)


# -- TeaCache -------------------------------------------------------------------------------------------------
def relative_l1(current: np.ndarray, previous: np.ndarray) -> float:
    previous = previous.astype(np.float64)
    return float(np.abs(current.astype(np.float64) - previous).mean() / np.abs(previous).mean())


def teacache_plan(embeddings: list[np.ndarray], coefficients: list[float], threshold: float, first: int = 1,
                  last: int = 1) -> tuple[bool, ...]:
    """The full/skip plan from each step's time embedding (any shape; per latent frame here, the mean over
    tokens is the same since every frame has as many tokens)."""
    steps = len(embeddings)
    accumulated = 0.0
    plan = []
    for step, embedding in enumerate(embeddings):
        if step < first or step >= steps - last or threshold == 0:
            full, accumulated = True, 0.0
        else:
            accumulated += float(np.polyval(coefficients, relative_l1(embedding, embeddings[step - 1])))
            full = accumulated >= threshold
            if full:
                accumulated = 0.0
        plan.append(full)
    return tuple(plan)


# -- the request's plan ---------------------------------------------------------------------------------------
def plan_magcache(steps: int, image: bool, guided: bool, threshold: float | None) -> CachePlan:
    calibration = load_calibration(MAGCACHE_FILE)
    threshold = calibration["threshold"] if threshold is None else threshold
    ratios = magcache_ratios(calibration["ratios"]["i2v" if image else "t2v"], steps)
    plan = CachePlan("magcache", threshold, magcache_plan(ratios, threshold, calibration["K"],
                                                          calibration["retention_ratio"], 2 if guided else 1))
    log.info("step cache: magcache, %s table (%s, %d steps), threshold %g, K %d, retention %g: %s",
             "I2V" if image else "T2V", calibration["model"], calibration["calibrated_steps"], threshold,
             calibration["K"], calibration["retention_ratio"], plan.describe())
    return plan


def plan_teacache(embeddings: list[np.ndarray], threshold: float | None) -> CachePlan:
    calibration = load_calibration(TEACACHE_FILE)
    threshold = calibration["threshold"] if threshold is None else threshold
    plan = CachePlan("teacache", threshold, teacache_plan(embeddings, calibration["coefficients"], threshold,
                                                          calibration["first_steps_computed"],
                                                          calibration["last_steps_computed"]))
    log.info("step cache: teacache, coefficients of %s at %dx%d, threshold %g: %s", calibration["model"],
             *calibration["calibrated_size"], threshold, plan.describe())
    return plan


CACHE_GRAPHS = ("dit_skip", "dit_time")


def engines_for(method: str) -> tuple[str, ...]:
    """The graphs a step cache runs besides `dit`."""
    return {"none": (), "magcache": ("dit_skip",), "teacache": CACHE_GRAPHS, "easycache": ()}[method]


def check_cache_engines(manifest, method: str) -> None:
    """Refuse, in one line, a step cache the engines folder was built without (folders from before it)."""
    if not engines_for(method):  # easycache reuses the whole output: any dit engine serves
        return
    components = manifest.components
    has_residual = "dit" in components and any(t.name == "residual" for t in components["dit"].outputs)
    missing = [name for name in engines_for(method) if name not in components]
    if not has_residual or missing:
        lacks = ", ".join((["the dit output 'residual'"] if not has_residual else []) + missing)
        raise WanError(f"--cache {method} needs step-cache graphs this engines folder ({manifest.root}) was built "
                       f"without ({lacks}); rebuild it with this wan-export, or use --cache none")
