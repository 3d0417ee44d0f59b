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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Run Wan2.2 TI2V-5B engines built by wan-export."""


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json).")
@click.option("--prompt", required=True, help="What the video shows.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="First frame: image-to-video.")
@click.option("--negative-prompt", default=None, help="Default: the official negative prompt.")
@click.option("--size", default=None, help="WIDTHxHEIGHT (for image-to-video: the area bound). Default: profile's.")
@click.option("--frames", type=int, default=None, help="Frame count, 4n+1. Default: profile's.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampling steps.")
@click.option("--shift", type=float, default=None, help="Flow shift.")
@click.option("--guide-scale", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--solver", type=click.Choice(["unipc", "dpm++", "euler"]), default=None)
@click.option("--seed", type=int, default=None, help="Noise seed (numpy); random when omitted (logged).")
@click.option("--noise", "noise_path", type=click.Path(path_type=Path), default=None,
              help="Initial noise .npy, float32 [48, (F-1)/4+1, H/16, W/16].")
@click.option("--save-latents", type=click.Path(path_type=Path), default=None,
              help="Write the final latents (.npy, same layout) before decoding.")
@click.option("--fps", type=click.IntRange(min=1), default=None, help="Output frame rate (default 24).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .mp4 or .npy (uint8 frames).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the engine files.")
@verbose_option
def generate(engines, prompt, image, negative_prompt, size, frames, steps, shift, guide_scale, solver, seed,
             noise_path, save_latents, fps, out, no_verify, verbose):
    """Text-to-video, or image-to-video with --image, into an MP4."""
    setup_logging(verbose)

    def work():
        from wan_rt.pipeline import GenerationRequest, Pipeline
        from wan_rt.shapes import parse_size

        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, image=image,
            size=parse_size(size) if size else None, frames=frames, steps=steps, shift=shift,
            guide_scale=guide_scale, solver=solver, seed=seed, noise=_load_noise(noise_path), fps=fps)
        if save_latents is not None and not save_latents.parent.is_dir():
            raise WanError(f"cannot write {save_latents}: folder {save_latents.parent} does not exist")
        with Pipeline(engines, verify=not no_verify) as pipeline:
            result = pipeline.generate(request, out, save_latents)
        click.echo(f"wrote {out}: {result.summary()}" + (f", seed {result.seed}" if result.seed is not None else ""))

    run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
