"""The tiny (TAEHV) decoder at run time: `--decoder tiny`, and the x0 previews of `--preview-every N`.

The engine takes one latent frame and its memory caches and returns 4 frames; the first call takes zero caches
(TAEHV's empty memory) and keeps only the last of its 4 frames, so a clip has the official 4(F-1)+1 frames in
[-1, 1], like the full decoder's (wan_export.model.taehv explains the first-frame convention). The caches stay
on the engine's device between calls, as the full decoder's.
"""
from __future__ import annotations

import numpy as np

from wan_rt.backends import Runner
from wan_rt.errors import WanError
from wan_rt.manifest import Manifest
from wan_rt.vae_stream import CACHE_IN, decode_stream

TINY_DECODER = "vae_tiny_decoder"
DECODERS = ("full", "tiny")
FULL_DECODER = ("vae_decoder_first", "vae_decoder_step")


def check_decoder(manifest: Manifest, decoder: str | None, what: str = "--decoder tiny") -> str:
    """The request's decoder ("full" when None), refused in one line where these engines lack it."""
    decoder = decoder or "full"
    if decoder not in DECODERS:
        raise WanError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    if decoder == "tiny" and TINY_DECODER not in manifest.components:
        raise WanError(f"{what}: {manifest.root} has no tiny decoder; rebuild it with wan-export build --tiny-vae "
                       "taew2_2.pth (or --tiny-vae random for a test)")
    return decoder


def _axis(axis, values: dict) -> int:
    if isinstance(axis, int):
        return axis
    name, _, factor = str(axis).partition("*")
    return values[name] * int(factor or 1)


def zero_caches(runner: Runner, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
    values = {"latent_height": latent_h, "latent_width": latent_w}
    return {t.name: np.zeros([_axis(a, values) for a in t.shape], dtype=np.float32)
            for t in runner.component.inputs if t.name.startswith(CACHE_IN)}


def tiny_decode_stream(runner: Runner, latents: np.ndarray, write, show_progress: bool = True) -> int:
    """latents [C, F, h, w] -> frames passed to `write` ([3, T, H, W] in [-1, 1]); returns frames written."""
    frames_per_call = _axis(next(t for t in runner.component.outputs if t.name == "pixels").shape[2], {})
    return decode_stream(runner, runner, latents, write, show_progress,
                         first_caches=zero_caches(runner, latents.shape[2], latents.shape[3]),
                         skip_first=frames_per_call - 1)
