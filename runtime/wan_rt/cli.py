"""`wan-rt`: generate videos from an engines folder (no torch needed)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import numpy as np

from wan_rt.cli_support import run_cli, setup_logging, verbose_option
from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")


def _load_noise(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WanError(f"cannot read noise file {path}: {exc}") from None


def _parse_timesteps(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1000,757,522") from None


class OneLineErrorGroup(click.Group):
    """Click's usage errors (bad option value, missing option) as one `error:` line and exit status 2, like every
    other refused input, instead of click's three-line usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            message = exc.format_message()
            if "\n" in message:  # no arguments at all: click's help text, shown as click shows it
                exc.show()
            else:
                click.echo(f"error: {message} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Run Wan2.2 TI2V-5B engines built by wan-export."""


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json).")
@click.option("--prompt", default=None, help="What the video shows (required unless --requests).")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="First frame: image-to-video.")
@click.option("--negative-prompt", default=None, help="Default: the official negative prompt.")
@click.option("--size", default=None, help="WIDTHxHEIGHT (for image-to-video: the area bound). Default: profile's.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Frame count, 4n+1. Default: profile's.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampling steps.")
@click.option("--shift", type=float, default=None, help="Flow shift.")
@click.option("--guide-scale", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--solver", type=click.Choice(["unipc", "dpm++", "euler", "dmd"]), default=None,
              help="Default: the profile's. dmd: few-step distilled checkpoints (FastWan, Turbo).")
@click.option("--timesteps", callback=_parse_timesteps, default=None,
              help="dmd timesteps, e.g. 1000,757,522 (implies --solver dmd). Default: the profile's.")
@click.option("--warp-timesteps/--no-warp-timesteps", default=None,
              help="dmd: map the timesteps onto the shifted grid (FastWan) or use them as they are (Turbo).")
@click.option("--seed", type=int, default=None,
              help="Noise seed (numpy); random when omitted (logged). dmd re-noise draws come from it too.")
@click.option("--noise", "noise_path", type=click.Path(path_type=Path), default=None,
              help="Initial noise .npy, float32 [48, (F-1)/4+1, H/16, W/16].")
@click.option("--save-latents", type=click.Path(path_type=Path), default=None,
              help="Write the final latents (.npy, same layout) before decoding.")
@click.option("--fps", type=click.IntRange(min=1), default=None, help="Output frame rate (default 24).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output .mp4 or .npy (uint8 frames) (required unless --requests).")
@click.option("--requests", "requests_path", default=None,
              help="Many videos in one run: a .jsonl file ('-': standard input), one JSON object per line with "
                   "these options' names (prompt, out, image, size, frames, steps, seed, ...); engines load once.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the engine files.")
@click.option("--sp", type=click.IntRange(min=1), default=None,
              help="Sequence parallel: run the DiT on N local processes, one per GPU (engines built with "
                   "wan-export build --sp N; needs wan-deploy[sp]).")
@click.option("--cfg-parallel", is_flag=True,
              help="Run the conditional and unconditional DiT branches on two local processes (one GPU each), "
                   "exchanging only the velocity per step (needs wan-deploy[sp]; not yet with --sp N).")
@click.option("--gpu-memory-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="GB of each TensorRT engine's weights kept on the GPU; the rest streams from host memory "
                   "(engines built with wan-export build --weight-streaming).")
@click.option("--memory", type=click.Choice(["auto", "keep", "stage"]), default="auto", show_default=True,
              help="Engines in device memory: keep (all open), stage (each stage's engines open only while it "
                   "runs: fits the 720p pipeline on a 24 GB GPU), auto (keep if everything fits the free memory).")
@click.option("--cache", type=click.Choice(["none", "magcache", "teacache", "easycache"]), default="none",
              show_default=True,
              help="Step caching: skip the DiT's block stack on the steps its rule picks and reuse the last residual "
                   "(MagCache: ~2x fewer full DiT calls at 50 steps; calibrated for the 5B base model; EasyCache: "
                   "decided during the run, no calibration, reuses the whole DiT's last output change).")
@click.option("--cache-threshold", type=float, default=None,
              help="Step cache threshold, 0..1 (0: no step skipped). Default: the source's (magcache 0.06, "
                   "teacache 0.26, easycache 0.05).")
@click.option("--decoder", type=click.Choice(["full", "tiny"]), default=None,
              help="full: the Wan2.2 VAE (default); tiny: TAEHV's taew2_2 decoder, several times faster, for a "
                   "quick look (the engines need it: wan-export build --tiny-vae FILE).")
@click.option("--preview-every", type=click.IntRange(min=0), default=None, metavar="N",
              help="Every N denoising steps, decode the current x0 estimate with the tiny decoder into the preview "
                   "file (default off).")
@click.option("--preview", type=click.Path(path_type=Path), default=None,
              help="Preview file for --preview-every (default: OUT with .preview.mp4).")
@verbose_option
def generate(engines, prompt, image, negative_prompt, size, frames, steps, shift, guide_scale, solver, timesteps,
             warp_timesteps, seed, noise_path, save_latents, fps, out, no_verify, sp, cfg_parallel, gpu_memory_budget,
             memory,
             cache, cache_threshold, decoder, preview_every, preview, requests_path, verbose):
    """Text-to-video, or image-to-video with --image, into an MP4."""
    setup_logging(verbose)
    if requests_path is not None:
        context = click.get_current_context()
        per_request = [name for name in ("prompt", "image", "negative_prompt", "size", "frames", "steps", "shift",
                                         "guide_scale", "solver", "timesteps", "warp_timesteps", "seed",
                                         "noise_path", "save_latents", "fps", "out", "cache", "cache_threshold",
                                         "decoder", "preview_every", "preview")
                       if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if per_request:
            option = "--" + per_request[0].replace("_path", "").replace("_", "-")
            raise click.UsageError(f"{option} is a per-request option: with --requests put it in each line of the file")
        run_cli(lambda: _generate_requests(engines, requests_path, no_verify, sp, cfg_parallel, gpu_memory_budget,
                                           memory, verbose))
        return
    for name, value in (("--prompt", prompt), ("--out", out)):
        if value is None:
            raise click.UsageError(f"missing option {name} (or give --requests FILE.jsonl)")

    def work():
        from wan_rt.pipeline import GenerationRequest, Pipeline
        from wan_rt.request_checks import check_request
        from wan_rt.shapes import parse_size
        from wan_rt.step_cache import check_cache_request

        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, image=image,
            size=parse_size(size) if size else None, frames=frames, steps=steps, shift=shift,
            guide_scale=guide_scale, solver=solver, timesteps=timesteps, warp_timesteps=warp_timesteps, seed=seed,
            noise=_load_noise(noise_path), fps=fps, cache=cache, cache_threshold=cache_threshold, decoder=decoder,
            preview_every=preview_every, preview=preview)
        check_request(request)  # before the engines are hashed and loaded (Pipeline.plan checks again)
        check_cache_request(cache, cache_threshold)
        if save_latents is not None and not save_latents.parent.is_dir():
            raise WanError(f"cannot write {save_latents}: folder {save_latents.parent} does not exist")
        if (sp is not None or cfg_parallel) and gpu_memory_budget is not None:
            raise WanError("--gpu-memory-budget is not supported with --sp or --cfg-parallel (each rank holds its "
                           "own weights)")
        if sp is not None or cfg_parallel:
            from wan_rt.parallel import generate_parallel

            result = generate_parallel(engines, [(request, out, save_latents)], sp or 1, verify=not no_verify,
                                       verbose=verbose, memory=memory, cfg_parallel=cfg_parallel)[0]
        else:
            with Pipeline(engines, verify=not no_verify, gpu_memory_budget=gpu_memory_budget,
                          memory=memory) as pipeline:
                result = pipeline.generate(request, out, save_latents)
        click.echo(f"wrote {out}: {result.summary()}" + (f", seed {result.seed}" if result.seed is not None else ""))

    run_cli(work)


def _generate_requests(engines, requests_path, no_verify, sp, cfg_parallel, gpu_memory_budget, memory,
                       verbose) -> None:
    """`generate --requests FILE`: every line checked first, then one batch; exit 1 if any request failed."""
    import time

    from wan_rt.batch import run_batch, summary
    from wan_rt.pipeline import GenerationRequest, Pipeline
    from wan_rt.requests_file import read_requests

    jobs = read_requests(requests_path, GenerationRequest)
    started = time.perf_counter()
    if sp is not None or cfg_parallel:
        if gpu_memory_budget is not None:
            raise WanError("--gpu-memory-budget is not supported with --sp or --cfg-parallel (each rank holds its "
                           "own weights)")
        from wan_rt.batch import Outcome
        from wan_rt.parallel import generate_parallel

        results = generate_parallel(engines, [(job.request, job.out, job.save_latents) for job in jobs], sp or 1,
                                    verify=not no_verify, verbose=verbose, memory=memory, cfg_parallel=cfg_parallel)
        outcomes = [Outcome(job, result) for job, result in zip(jobs, results)]
    else:
        with Pipeline(engines, verify=not no_verify, gpu_memory_budget=gpu_memory_budget, memory=memory) as pipeline:
            outcomes = run_batch(pipeline, jobs)
    for outcome in outcomes:
        click.echo(outcome.line())
    click.echo(summary(outcomes, time.perf_counter() - started))
    if any(outcome.error is not None for outcome in outcomes):
        sys.exit(1)


@main.command()
@click.option("--repository", type=click.Path(path_type=Path), required=True,
              help="Triton model repository (wan-export triton --out).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--engines", type=click.Path(path_type=Path), default=None,
              help="Engines folder the python models open instead of the one the repository names.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None, help="Also serve gRPC (default: off).")
@verbose_option
def serve(repository, http_port, host, engines, grpc_port, verbose):
    """Run Triton (the server bundled with nvidia-pytriton) over a model repository until Ctrl-C."""
    setup_logging(verbose)

    def work():
        from wan_rt.serve import run_server

        code = run_server(repository, http_port=http_port, host=host, engines=engines, grpc_port=grpc_port,
                          echo=lambda line: click.echo(line))
        if code:
            sys.exit(code)

    run_cli(work)


def _write_text_atomic(path: Path, text: str) -> None:
    import os

    if not path.parent.is_dir():
        raise WanError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WanError(f"cannot write {path}: {exc.strerror or exc}") from None


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json).")
@click.option("--prompt", required=True, help="What the video shows.")
@click.option("--negative-prompt", default=None, help="Default: the official negative prompt.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Token file to write (.json).")
@verbose_option
def tokenize(engines, prompt, negative_prompt, out, verbose):
    """Token ids of a prompt and its negative prompt for wan-rt-cpp --token-ids (JSON)."""
    setup_logging(verbose)

    def work():
        import json

        from wan_rt.manifest import load_manifest, sha256_file
        from wan_rt.text import PromptTokenizer

        manifest = load_manifest(engines, verify=False)
        negative = negative_prompt or manifest.sampling["negative_prompt"]
        tokenizer = PromptTokenizer.from_folder(manifest.tokenizer_dir)
        ids, mask, truncated = tokenizer.encode([prompt, negative], return_truncated=True)
        for label, cut in zip(("prompt", "negative prompt"), truncated):
            if cut:
                log.warning("%s is longer than %d tokens; truncated like the official code", label, ids.shape[1])
        _write_text_atomic(out, json.dumps({
            "format": "wan-rt-tokens", "format_version": 1, "text_len": int(ids.shape[1]),
            "tokenizer_sha256": sha256_file(manifest.tokenizer_dir / "tokenizer.json"),
            "prompt": prompt, "negative_prompt": negative,
            "input_ids": ids.tolist(), "attention_mask": mask.tolist()}))
        click.echo(f"wrote {out}: {int(mask[0].sum())} prompt tokens, {int(mask[1].sum())} negative prompt tokens")

    run_cli(work)


@main.command("prepare-image")
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json).")
@click.option("--image", type=click.Path(path_type=Path), required=True, help="First frame for image-to-video.")
@click.option("--size", default=None, help="WIDTHxHEIGHT area bound, as generate --size. Default: profile's.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Pixels to write (.npy).")
@verbose_option
def prepare_image_command(engines, image, size, out, verbose):
    """The image resized, cropped and normalized like generate --image, for wan-rt-cpp --image-pixels."""
    setup_logging(verbose)

    def work():
        from wan_rt.image import load_image, prepare_image
        from wan_rt.manifest import load_manifest
        from wan_rt.pipeline import save_npy_atomic
        from wan_rt.shapes import parse_size

        manifest = load_manifest(engines, verify=False)
        bound_w, bound_h = parse_size(size) if size else manifest.limits.default_size
        pixels, (width, height) = prepare_image(load_image(image), bound_w * bound_h)
        manifest.limits.check_size(width, height)
        save_npy_atomic(out, pixels)
        click.echo(f"wrote {out}: float32 [3, 1, {height}, {width}] ({width}x{height})")

    run_cli(work)


# the video service: `wan-rt api` (OpenAI Videos API + job queue) and `wan-rt worker` (wan_rt.service)
from wan_rt.service.commands import api, worker  # noqa: E402

main.add_command(api)
main.add_command(worker)

if __name__ == "__main__":
    sys.exit(main())
