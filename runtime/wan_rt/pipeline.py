"""Text-to-video and image-to-video over an engines folder: the official WanTI2V pipeline, torch-free.

    with Pipeline("./engines") as pipe:
        result = pipe.generate(GenerationRequest(prompt="a cat surfing"), "out.mp4")
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wan_rt import shapes
from wan_rt.backends import open_runner
from wan_rt.denoise import DiTStep, denoise, time_embeddings
from wan_rt.errors import WanError
from wan_rt.finite import check_finite
from wan_rt.image import load_image, prepare_image
from wan_rt.manifest import Manifest, load_manifest
from wan_rt.request_checks import check_request
from wan_rt.residency import choose_mode, device_free_bytes, stages
from wan_rt.schedulers import make_scheduler
from wan_rt.easycache import plan_easycache
from wan_rt.step_cache import (CACHE_GRAPHS, CachePlan, check_cache_engines, check_cache_request, engines_for,
                                plan_magcache, plan_teacache)
from wan_rt.text import PromptTokenizer
from wan_rt.tiny_decode import FULL_DECODER, TINY_DECODER, check_decoder, tiny_decode_stream
from wan_rt.vae_stream import decode_stream
from wan_rt.video import open_video_writer

log = logging.getLogger("wan_rt")


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None  # None or "": the official default negative prompt
    image: str | Path | None = None  # image-to-video when given
    size: tuple[int, int] | None = None  # (width, height); for I2V the area bound (official max_area)
    frames: int | None = None
    steps: int | None = None
    shift: float | None = None
    guide_scale: float | None = None
    solver: str | None = None
    timesteps: list[int] | None = None  # the "dmd" solver's explicit list, e.g. [1000, 757, 522]
    warp_timesteps: bool | None = None  # dmd: map the list onto the shifted grid (default: the manifest's, else on)
    seed: int | None = None
    noise: np.ndarray | None = None  # [48, F_latent, H/16, W/16] float32, the official layout
    fps: int | None = None
    cache: str | None = None  # step caching: none (default) | magcache | teacache | easycache (wan_rt.step_cache)
    cache_threshold: float | None = None  # None: the source's calibrated default
    decoder: str | None = None  # full (default) | tiny: TAEHV's tiny decoder, when the engines have it
    preview_every: int | None = None  # decode the x0 estimate with the tiny decoder every N steps (wan_rt.preview)
    preview: str | Path | None = None  # the preview file; generate() defaults it to OUT.preview.mp4


@dataclass
class GenerationResult:
    latents: np.ndarray  # final denoised latents [48, F_latent, h, w]
    width: int
    height: int
    frames: int
    seed: int | None
    timings: dict = field(default_factory=dict)
    full_dit_steps: tuple[int, int] | None = None  # (steps that ran the whole DiT, steps)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.timings.items())
        full = "" if self.full_dit_steps is None else "; full DiT on {} of {} steps".format(*self.full_dit_steps)
        return f"{self.frames} frames {self.width}x{self.height}; {parts}{full}"


def _resolve_noise(request: GenerationRequest, latent_shape: tuple[int, ...]) -> tuple[np.ndarray, int | None]:
    if request.noise is not None:
        noise = np.asarray(request.noise)
        if noise.shape != latent_shape or noise.dtype != np.float32:
            raise WanError(f"noise has shape {noise.shape} {noise.dtype}; this request needs float32 {latent_shape} "
                           f"([channels, latent frames, height/16, width/16])")
        return noise, request.seed
    seed = request.seed if request.seed is not None and request.seed >= 0 else secrets.randbelow(2**31)
    return np.random.default_rng(seed).standard_normal(latent_shape, dtype=np.float32), seed


def _make_solver(request: GenerationRequest, sampling: dict, shift: float, seed: int | None):
    """The request's scheduler and seed. --timesteps implies the dmd solver; dmd takes the manifest's timestep list
    unless the request gives its own list or another step count, and needs a seed for its re-noise draws (random
    and logged when the initial noise came from a file without one)."""
    solver = request.solver or ("dmd" if request.timesteps is not None else sampling["solver"])
    timesteps = request.timesteps
    if solver != "dmd":
        steps = request.steps if request.steps is not None else sampling["steps"]  # 0: refused, not the default
        return make_scheduler(solver, steps, shift, timesteps=timesteps), seed
    listed = sampling.get("timesteps") if sampling.get("solver") == "dmd" else None
    if timesteps is None and listed and request.steps in (None, len(listed)):
        timesteps = list(listed)
    steps = len(timesteps) if timesteps is not None else (
        request.steps if request.steps is not None else sampling["steps"])
    if timesteps is not None and request.steps is not None and request.steps != len(timesteps):
        raise WanError(f"--steps {request.steps} but --timesteps lists {len(timesteps)}; give one timestep per "
                       f"step (or drop --steps)")
    warp = request.warp_timesteps if request.warp_timesteps is not None else sampling.get("warp_timesteps", True)
    if seed is None:
        seed = secrets.randbelow(2**31)
    return make_scheduler("dmd", steps, shift, timesteps=timesteps, warp=bool(warp), seed=seed), seed


def _timesteps_note(scheduler) -> str:
    if scheduler.name != "dmd":
        return ""
    return (f" at t={', '.join(f'{t:g}' for t in scheduler.timesteps)}"
            f" ({'warped from ' + ','.join(map(str, scheduler.listed)) if scheduler.warp else 'not warped'})")


class Pipeline:
    # opened up front by generate() (the step-cache graphs only for a request that caches); subclasses running
    # other graphs change it
    denoise_engines: tuple[str, ...] = ("dit", *CACHE_GRAPHS)

    def __init__(self, engines: str | Path, verify: bool = True, show_progress: bool = True,
                 gpu_memory_budget: float | None = None, memory: str = "auto"):
        """`memory`: keep | stage | auto, which engines stay open (see wan_rt.residency)."""
        self.manifest: Manifest = load_manifest(engines, verify=verify)
        # what every engine is opened with (open_runner's options): the weight-streaming budget, GB per engine
        self.runner_options = {"gpu_memory_budget": gpu_memory_budget}
        self.tokenizer = PromptTokenizer.from_folder(self.manifest.tokenizer_dir)
        self.show_progress = show_progress
        # on_progress(stage, done, total) after each denoise step ("denoise") and decoded latent frame ("decode"):
        # what wan_rt.service reports as a job's progress; an exception it raises stops the request
        self.on_progress = None
        self._runners = {}
        self.engine_events: list[tuple[str, str]] = []  # ("open" | "close", component) in the order they happened
        self.memory, self.memory_reason = choose_mode(memory, self.manifest, self.denoise_engines,
                                                      *device_free_bytes(self.manifest))
        model = self.manifest.model
        self.z_dim = model["vae"]["z_dim"]
        self.head_dim = model["dit"]["dim"] // model["dit"]["num_heads"]
        # debug, not info: a request refused later must leave exactly one line (the error) on stderr
        log.debug("engines %s: %s, backend %s", self.manifest.root, model["name"],
                  sorted({c.backend for c in self.manifest.components.values()}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.close_engines(list(self._runners))

    def runner(self, name: str):
        """Open a component's engine on first use; it stays open until `close_engines` (end of its stage with
        --memory stage) or `close`."""
        if name not in self._runners:
            runner = open_runner(self.manifest, name, **self.runner_options)
            self._runners[name] = runner.__enter__()
            self.engine_events.append(("open", name))
            log.debug("%s: engine open", name)
        return self._runners[name]

    def close_engines(self, names) -> None:
        errors = []
        for name in names:
            runner = self._runners.pop(name, None)
            if runner is None:
                continue
            try:
                runner.__exit__(None, None, None)
            except WanError as exc:  # close the others anyway
                errors.append(exc)
            self.engine_events.append(("close", name))
            log.debug("%s: engine closed", name)
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def stage(self, name: str):
        """One stage of a request; with --memory stage its engines close when it ends (also on failure)."""
        try:
            yield
        finally:
            if self.memory == "stage":
                self.close_engines(stages(self.denoise_engines)[name])

    def check_engines(self, names) -> None:
        """Refuse an engine this machine cannot run before any work: keep opens them now (they stay open); stage
        runs each backend's cheap checks (GPU, library, build target) without loading weights."""
        for name in names:
            if self.memory == "keep" or name in self._runners:
                self.runner(name)
            else:
                open_runner(self.manifest, name, **self.runner_options).preflight()

    # -- stages ---------------------------------------------------------------------------------------------
    def encode_text(self, prompt: str, negative_prompt: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(context, context_null); negative_prompt None (no guidance) encodes the prompt alone: context_null None."""
        texts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
        ids, mask, truncated = self.tokenizer.encode(texts, return_truncated=True)
        for label, cut in zip(("prompt", "negative prompt"), truncated):
            if cut:
                log.warning("%s is longer than %d tokens; truncated like the official code", label, ids.shape[1])
        runner = self.runner("text_encoder")
        if runner.component.dims["batch"][2] >= 2:
            context = check_finite(runner.run({"input_ids": ids, "attention_mask": mask})["context"], "text_encoder",
                                   "for the prompts")
            return context[:1], context[1:] if len(texts) == 2 else None
        contexts = [runner.run({"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]})["context"]
                    for i in range(len(texts))]
        check_finite(contexts, "text_encoder", "for the prompts")
        return contexts[0], contexts[1] if len(texts) == 2 else None

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """[3, 1, H, W] in [-1, 1] -> normalized latent [z, 1, H/16, W/16]."""
        return check_finite(self.runner("vae_encoder").run({"image": pixels[None]})["latent"][0], "vae_encoder",
                            "for the image")

    # -- the whole request ----------------------------------------------------------------------------------
    def plan(self, request: GenerationRequest):
        """Validate the request against the engines; returns (width, height, frames, image pixels or None)."""
        check_request(request)  # numbers: finite and in range (guide scale, shift, fps, steps, noise)
        limits = self.manifest.limits
        frames = request.frames if request.frames is not None else limits.default_frames  # 0 is an error
        limits.check_frames(frames)
        image_pixels = None
        if request.image is not None:
            bound_w, bound_h = request.size or limits.default_size
            image_pixels, (width, height) = prepare_image(load_image(request.image), bound_w * bound_h)
        else:
            width, height = request.size or limits.default_size
        limits.check_size(width, height)
        if image_pixels is not None:  # logged once the size is known to be good (errors stay one line)
            log.info("image-to-video: %s resized and cropped to %dx%d", request.image, width, height)
        return width, height, frames, image_pixels

    def prepare(self, request: GenerationRequest, decode: bool = True) -> "PreparedRequest":
        """Everything a request needs resolved and checked against the engines, before any engine runs."""
        sampling = self.manifest.sampling
        width, height, frames, image_pixels = self.plan(request)
        latent_shape = (self.z_dim, shapes.latent_frames(frames), height // shapes.SPATIAL_STRIDE,
                        width // shapes.SPATIAL_STRIDE)
        noise, seed = _resolve_noise(request, latent_shape)
        shift = request.shift if request.shift is not None else sampling["shift"]
        guide = request.guide_scale if request.guide_scale is not None else sampling["guide_scale"]
        scheduler, seed = _make_solver(request, sampling, shift, seed)
        cache, cache_threshold = self.check_cache(request, scheduler.name)
        decoder, preview_every = self.check_decoding(request)
        unused = set(CACHE_GRAPHS) - set(engines_for(cache))
        engines = ["text_encoder", *(n for n in self.denoise_engines if n not in unused)] + (
            ["vae_encoder"] if image_pixels is not None else []) + (
            ([TINY_DECODER] if decoder == "tiny" else list(FULL_DECODER)) if decode else []) + (
            [TINY_DECODER] if preview_every else [])
        return PreparedRequest(request, width, height, frames, image_pixels, latent_shape, noise, seed, scheduler,
                               shift, guide, request.fps or sampling["fps"], cache, cache_threshold,
                               list(dict.fromkeys(engines)), decoder, preview_every)

    def check_decoding(self, request: GenerationRequest) -> tuple[str, int | None]:
        """(decoder, preview every N steps or None), refused in one line where these engines cannot do them."""
        from wan_rt.preview import check_preview_every, check_preview_path

        decoder = check_decoder(self.manifest, request.decoder)
        every = check_preview_every(request.preview_every)
        if every:
            check_decoder(self.manifest, "tiny", "--preview-every")
            if request.preview is None:
                raise WanError("--preview-every needs a preview file (--preview FILE.mp4, or an output to name it "
                               "after)")
            check_preview_path(request.preview)
            if type(self).run_denoise is not Pipeline.run_denoise:
                raise WanError("--preview-every runs over the whole-graph dit engine; sequence-parallel runs (--sp N) "
                               "do not preview, drop --preview-every")
        return decoder, every

    def describe(self, prep: "PreparedRequest") -> None:
        request, scheduler = prep.request, prep.scheduler
        log.info("%s %dx%d, %d frames, %s %d steps%s, shift %g, guide scale %g, seed %s",
                 "i2v" if prep.image_pixels is not None else "t2v", prep.width, prep.height, prep.frames,
                 scheduler.name, scheduler.steps, _timesteps_note(scheduler), prep.shift, prep.guide,
                 f"{prep.seed} (re-noise; initial noise from file)" if request.noise is not None and
                 scheduler.name == "dmd" else "from noise file" if request.noise is not None else prep.seed)

    # -- the phases of a request (generate runs them in turn; wan_rt.batch runs each across many requests) ---
    def text_phase(self, prep: "PreparedRequest") -> tuple[np.ndarray, np.ndarray | None]:
        # guide scale 1 is the conditional prediction alone: the negative prompt is never encoded
        negative = (None if prep.guide == 1 else
                    prep.request.negative_prompt or self.manifest.sampling["negative_prompt"])
        return self.encode_text(prep.request.prompt, negative)

    def image_phase(self, prep: "PreparedRequest") -> tuple[np.ndarray, np.ndarray]:
        """Image-to-video: (first-frame latent, the initial latent with frame 0 pinned to it)."""
        first_frame = self.encode_image(prep.image_pixels)
        latent = prep.noise.copy()
        latent[:, :1] = first_frame
        return first_frame, latent

    def denoise_phase(self, prep: "PreparedRequest", context, context_null, latent, first_frame):
        """(final latents, how many steps ran the whole DiT)."""
        args = (prep.latent_shape, context, context_null, latent, first_frame, prep.scheduler, prep.guide)
        plan = self.cache_plan(prep.cache, prep.cache_threshold, *args)
        self._preview = self.previewer(prep, first_frame)
        try:
            latents = self.run_denoise(*args) if plan is None else self.run_denoise(*args, cache=plan)
        finally:
            prep.preview_seconds = self._preview.seconds if self._preview is not None else 0.0
            self._preview = None
        return latents, plan.full_steps if plan is not None else prep.scheduler.steps

    def decode_phase(self, prep: "PreparedRequest", latents: np.ndarray, writer) -> None:
        if self.memory == "stage":  # a batch's previous video left the steady decoder open: one decoder at a time
            self.close_engines(["vae_decoder_step"])

        def steady():
            if self.memory == "stage":  # the first-chunk engine's weights make room for the second cache set
                self.close_engines(["vae_decoder_first"])
            return self.runner("vae_decoder_step")

        chunks = [0]

        def write(pixels):
            writer.write(pixels)
            chunks[0] += 1
            if self.on_progress is not None:
                self.on_progress("decode", chunks[0], latents.shape[1])

        if prep.decoder == "tiny":
            written = tiny_decode_stream(self.runner(TINY_DECODER), latents, write, self.show_progress)
        else:
            written = decode_stream(self.runner("vae_decoder_first"), steady, latents, write, self.show_progress)
        if written != prep.frames:
            raise WanError(f"decoder produced {written} frames, expected {prep.frames}; the engines folder is "
                           f"inconsistent, rebuild it")

    def generate(self, request: GenerationRequest, out: str | Path | None = None,
                 save_latents: str | Path | None = None) -> GenerationResult:
        # Every check before the output is opened: a refused request leaves one error line and no file (an MP4
        # writer aborted before its first frame makes ffmpeg log a warning of its own).
        if request.preview_every and request.preview is None and out is not None:
            from dataclasses import replace

            from wan_rt.preview import default_preview_path

            request = replace(request, preview=default_preview_path(out))
        return self.generate_prepared(self.prepare(request, decode=out is not None), out, save_latents)

    def generate_prepared(self, prep: "PreparedRequest", out: str | Path | None = None,
                          save_latents: str | Path | None = None) -> GenerationResult:
        """`generate` for a request `prepare` already resolved (a batch prepares every request up front)."""
        self.check_engines(prep.engines)  # an engine this machine cannot run is refused before the output is opened
        writer = open_video_writer(out, prep.fps, prep.width, prep.height) if out is not None else None
        with writer if writer is not None else contextlib.nullcontext():
            timings = {}
            self.describe(prep)
            log.info("engines: --memory %s (%s)", self.memory, self.memory_reason)
            with self.stage("text"), timed(timings, "text"):
                context, context_null = self.text_phase(prep)
            first_frame, latent = None, prep.noise
            if prep.image_pixels is not None:
                with self.stage("image"), timed(timings, "image"):
                    first_frame, latent = self.image_phase(prep)
            with self.stage("denoise"), timed(timings, "denoise"):
                latents, full_steps = self.denoise_phase(prep, context, context_null, latent, first_frame)
            if prep.preview_seconds:  # stated apart: what the previews cost
                timings["denoise"] -= prep.preview_seconds
                timings["preview"] = prep.preview_seconds
            if save_latents is not None:
                save_npy_atomic(save_latents, latents)
            if writer is not None:
                with self.stage("decode"), timed(timings, "decode"):
                    self.decode_phase(prep, latents, writer)
        return prep.result(latents, timings, full_steps)

    def generate_many(self, jobs, show_progress: bool | None = None) -> list:
        """Many requests with engines loaded once: `jobs` are (request, out[, save_latents]) tuples or
        `wan_rt.requests_file.Job`s; returns a `wan_rt.batch.Outcome` per job (result or error), in order.
        With memory="stage" each stage runs across all requests (see wan_rt.batch)."""
        from wan_rt.batch import run_batch
        from wan_rt.requests_file import Job

        def as_job(number: int, job) -> Job:
            if isinstance(job, Job):
                return job
            request, out, *rest = job
            latents = rest[0] if rest else None
            return Job(number, request, Path(out), Path(latents) if latents is not None else None)

        jobs = [as_job(number, job) for number, job in enumerate(jobs, 1)]
        return run_batch(self, jobs, self.show_progress if show_progress is None else show_progress)

    def check_cache(self, request: GenerationRequest, solver: str | None = None) -> tuple[str, float | None]:
        """The request's step cache and threshold, refused in one line where these engines (or the solver,
        `solver`) cannot run it."""
        cache, threshold = check_cache_request(request.cache, request.cache_threshold, solver)
        if cache != "none" and type(self).run_denoise is not Pipeline.run_denoise:
            raise WanError(f"--cache {cache} runs over the whole-graph dit engine; sequence-parallel runs (--sp N) "
                           f"do not cache steps, use --cache none")
        check_cache_engines(self.manifest, cache)
        return cache, threshold

    def cache_plan(self, cache: str, threshold: float | None, latent_shape, context, context_null, latent,
                   first_frame, scheduler, guide):
        """Which steps run the whole DiT (None: every step, no cache)."""
        if cache == "magcache":
            return plan_magcache(scheduler.steps, first_frame is not None, guide != 1.0, threshold)
        if cache == "teacache":
            embeddings = time_embeddings(self.runner("dit_time"), latent_shape, scheduler.timesteps,
                                         first_frame is not None)
            return plan_teacache(embeddings, threshold)
        if cache == "easycache":
            return plan_easycache(scheduler.steps, threshold)
        return None

    def run_denoise(self, latent_shape: tuple[int, ...], context: np.ndarray, context_null: np.ndarray,
                    latent: np.ndarray, first_frame: np.ndarray | None, scheduler, guide: float,
                    cache: CachePlan | None = None) -> np.ndarray:
        """The sampling loop over the DiT; `wan_rt.parallel` overrides it to run the sequence-parallel segments.
        `cache`: the step cache's plan (wan_rt.step_cache), None to run the whole DiT on every step."""
        skip = self.runner("dit_skip") if cache is not None else None
        step = DiTStep(self.runner("dit"), latent_shape, context, context_null, self.head_dim, self.z_dim, guide,
                       skip_runner=skip)
        on_step = None if self.on_progress is None else lambda done, total: self.on_progress("denoise", done, total)
        return denoise(step, scheduler, latent, first_frame, self.show_progress, cache, on_step,
                       on_prediction=getattr(self, "_preview", None))

    def previewer(self, prep: "PreparedRequest", first_frame):
        """The --preview-every hook of a request (None when it does not preview)."""
        if not prep.preview_every:
            return None
        from wan_rt.preview import Previewer

        return Previewer(lambda: self.runner(TINY_DECODER), Path(prep.request.preview), prep.preview_every,
                         prep.scheduler, prep.guide, first_frame, prep.fps, prep.width, prep.height)


@dataclass
class PreparedRequest:
    """A request resolved against the engines (`Pipeline.prepare`): sizes, noise, solver, engines to open."""
    request: GenerationRequest
    width: int
    height: int
    frames: int
    image_pixels: np.ndarray | None
    latent_shape: tuple[int, ...]
    noise: np.ndarray
    seed: int | None
    scheduler: object
    shift: float
    guide: float
    fps: int
    cache: str
    cache_threshold: float | None
    engines: list[str]
    decoder: str = "full"
    preview_every: int | None = None
    preview_seconds: float = 0.0  # the previews' share of the denoise time

    def result(self, latents: np.ndarray, timings: dict, full_steps: int) -> GenerationResult:
        return GenerationResult(latents=latents, width=self.width, height=self.height, frames=self.frames,
                                seed=self.seed, timings=timings, full_dit_steps=(full_steps, self.scheduler.steps))


@contextlib.contextmanager
def timed(timings: dict, name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise WanError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WanError(f"cannot write {path}: {exc.strerror or exc}") from None
