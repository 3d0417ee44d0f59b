"""Many requests over one `Pipeline`: engines loaded once per batch (`wan-rt generate --requests FILE.jsonl`).

- keep (`--memory keep`, or auto where everything fits): the requests run one after another with every engine open.
- stage: each stage runs across all requests before the next opens (every prompt encoded, then every image, then
  every video denoised, then every video decoded), so each engine is loaded once per batch, not once per video.
  The contexts and latents of the waiting requests stay in host memory; the batch says how much before it starts
  and is refused when that would not fit the memory available.

Every request is prepared (sizes, images, noise, solver, engines) before any engine runs: a request the engines
cannot serve refuses the whole batch in one line. A failure while running (an output that cannot be written, an
engine returning NaN) fails that request only, with its line number; outputs already written stay, and the
other requests go on. Results equal running the requests one by one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from wan_rt.errors import WanError
from wan_rt.pipeline import GenerationResult, Pipeline, PreparedRequest, save_npy_atomic, timed
from wan_rt.requests_file import Job
from wan_rt.video import open_video_writer

log = logging.getLogger("wan_rt")
HOST_MEMORY_SHARE = 0.8  # of MemAvailable the held contexts and latents may take


@dataclass
class Outcome:
    job: Job
    result: GenerationResult | None = None
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"line {self.job.line}: failed: {self.error}"
        return f"line {self.job.line}: wrote {self.job.out}: {self.result.summary()}" + (
            f", seed {self.result.seed}" if self.result.seed is not None else "")


@dataclass
class _State:
    """What a staged request carries between stages."""
    prep: PreparedRequest
    timings: dict = field(default_factory=dict)
    context: np.ndarray | None = None
    context_null: np.ndarray | None = None
    first_frame: np.ndarray | None = None
    latent: np.ndarray | None = None
    latents: np.ndarray | None = None
    full_steps: int = 0


def _failure(exc: BaseException) -> str | None:
    if isinstance(exc, WanError):
        return str(exc)
    if isinstance(exc, OSError):
        from wan_rt.cli_support import disk_error_line

        return disk_error_line(exc) or f"{exc.strerror or exc}"
    return None


def host_bytes(prep: PreparedRequest, text_dim: int) -> int:
    """Host memory a waiting request holds in stage mode: both contexts, noise, latents, image pixels."""
    latent = int(np.prod(prep.latent_shape)) * 4
    pixels = prep.image_pixels.nbytes if prep.image_pixels is not None else 0
    return 2 * 512 * text_dim * 4 + 3 * latent + pixels


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_batch(pipeline: Pipeline, jobs: list[Job], show_progress: bool = True) -> list[Outcome]:
    """Run `jobs`; returns one Outcome per job, in order. Refuses the batch (WanError) before any work when a
    request cannot run on these engines."""
    preps = []
    for job in jobs:  # all of them before any engine runs
        try:
            preps.append(pipeline.prepare(job.request, decode=True))
        except WanError as exc:
            raise WanError(f"requests line {job.line}: {exc}") from None
    engines = list(dict.fromkeys(name for prep in preps for name in prep.engines))
    pipeline.check_engines(engines)
    log.info("batch of %d requests; engines: --memory %s (%s)", len(jobs), pipeline.memory, pipeline.memory_reason)
    if pipeline.memory == "stage":
        return _run_staged(pipeline, jobs, preps, show_progress)
    outcomes = []
    for job, prep in tqdm(list(zip(jobs, preps)), desc="requests", unit="video",
                          disable=not show_progress or None):
        outcome = Outcome(job)
        try:
            outcome.result = pipeline.generate_prepared(prep, job.out, job.save_latents)
        except (WanError, OSError) as exc:
            outcome.error = _failure(exc)
            if outcome.error is None:
                raise
        outcomes.append(outcome)
        log.info("%s", outcome.line())
    return outcomes


def _check_host_memory(pipeline: Pipeline, preps: list[PreparedRequest]) -> None:
    held = sum(host_bytes(prep, pipeline.manifest.model["dit"]["text_dim"]) for prep in preps)
    available = _available_memory()
    log.info("stage mode holds the contexts and latents of %d requests on the host: %.1f MB%s", len(preps),
             held / 1e6, f" of {available / 1e6:.0f} MB available" if available else "")
    if available is not None and held > HOST_MEMORY_SHARE * available:
        raise WanError(f"the batch would hold {held / 1e9:.1f} GB of contexts and latents in host memory, more than "
                       f"{HOST_MEMORY_SHARE:.0%} of the {available / 1e9:.1f} GB available; split the requests file "
                       f"or run it with --memory keep")


def _run_staged(pipeline: Pipeline, jobs: list[Job], preps: list[PreparedRequest],
                show_progress: bool) -> list[Outcome]:
    _check_host_memory(pipeline, preps)
    outcomes = [Outcome(job) for job in jobs]
    states = [_State(prep) for prep in preps]
    batch = tqdm(total=len(jobs), desc="requests", unit="video", disable=not show_progress or None)

    def each(stage: str, work, wanted=lambda state: True):
        """`work(state)` for every request still alive that the stage concerns, inside one open stage."""
        chosen = [i for i, state in enumerate(states) if outcomes[i].error is None and wanted(state)]
        if not chosen:
            return
        with pipeline.stage(stage):
            for i in tqdm(chosen, desc=f"stage {stage}", unit="request", leave=False,
                          disable=not show_progress or None):
                try:
                    with timed(states[i].timings, stage):
                        work(jobs[i], states[i])
                except (WanError, OSError) as exc:
                    outcomes[i].error = _failure(exc)
                    if outcomes[i].error is None:
                        raise
                    log.info("%s", outcomes[i].line())
                    batch.update(1)

    def text(job, state):
        pipeline.describe(state.prep)
        state.context, state.context_null = pipeline.text_phase(state.prep)
        state.latent = state.prep.noise

    def image(job, state):
        state.first_frame, state.latent = pipeline.image_phase(state.prep)

    def denoise(job, state):
        state.latents, state.full_steps = pipeline.denoise_phase(state.prep, state.context, state.context_null,
                                                                 state.latent, state.first_frame)
        state.context = state.context_null = state.latent = None  # not needed any more: free them
        if job.save_latents is not None:
            save_npy_atomic(job.save_latents, state.latents)

    def decode(job, state):
        prep = state.prep
        with open_video_writer(job.out, prep.fps, prep.width, prep.height) as writer:
            pipeline.decode_phase(prep, state.latents, writer)
        outcomes[states.index(state)].result = prep.result(state.latents, state.timings, state.full_steps)
        log.info("%s", outcomes[states.index(state)].line())
        batch.update(1)

    each("text", text)
    each("image", image, lambda state: state.prep.image_pixels is not None)
    each("denoise", denoise)
    each("decode", decode)
    batch.close()
    return outcomes


def summary(outcomes: list[Outcome], seconds: float) -> str:
    failed = sum(outcome.error is not None for outcome in outcomes)
    return (f"batch: {len(outcomes)} requests, {len(outcomes) - failed} written, {failed} failed, "
            f"{seconds:.1f} s")
