"""`--preview-every N`: during a long run, the current x0 estimate decoded by the tiny decoder into a preview file.

After every N-th denoising step (not the last: the video itself follows), x0 = x - sigma * v with the guided
velocity v of that step (the flow-matching prediction of the clean latent; the image's latent pinned on frame 0
for image-to-video) goes through the tiny (TAEHV) decoder into the preview file, which is replaced atomically, so a
player can reload it at any time. Cost: one tiny decode of the whole clip per preview, logged with its seconds
(docs/tiny_decoder.md has measured figures); the denoising itself is unchanged (previews only read the latents).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from wan_rt.errors import WanError
from wan_rt.tiny_decode import tiny_decode_stream
from wan_rt.video import open_video_writer

log = logging.getLogger("wan_rt")


def default_preview_path(out: str | Path) -> Path:
    """`fox.mp4` -> `fox.preview.mp4` (always MP4: a player can show it)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.preview.mp4")


def check_preview_every(every) -> int | None:
    if every is None or every == 0:
        return None
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
        raise WanError(f"preview_every must be a whole number of steps >= 1 (0: off), got {every!r}")
    return int(every)


def check_preview_path(path: str | Path) -> Path:
    """Refused before the run, not at the first preview after minutes of denoising."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".npy"):
        raise WanError(f"preview file {path} must end in .mp4 (or .npy)")
    if not path.parent.is_dir():
        raise WanError(f"cannot write the preview {path}: folder {path.parent} does not exist")
    return path


class Previewer:
    """Called by the sampling loop after each step's prediction, before the solver moves the latent on."""

    def __init__(self, runner, path: Path, every: int, scheduler, guide: float, first_frame: np.ndarray | None,
                 fps: int, width: int, height: int):
        self.runner, self.path, self.every = runner, Path(path), every
        self.sigmas, self.steps, self.guide = scheduler.sigmas, scheduler.steps, guide
        self.first_frame, self.fps, self.size = first_frame, fps, (width, height)
        self.written = 0
        self.seconds = 0.0

    def __call__(self, index: int, latent: np.ndarray, predictions: list[np.ndarray]) -> None:
        step = index + 1
        if step % self.every or step == self.steps:
            return
        started = time.perf_counter()
        velocity = predictions[0] if len(predictions) == 1 else (
            predictions[1] + np.float32(self.guide) * (predictions[0] - predictions[1]))
        x0 = latent - np.float32(self.sigmas[index]) * velocity
        if self.first_frame is not None:
            x0[:, :1] = self.first_frame
        with open_video_writer(self.path, self.fps, *self.size) as writer:
            tiny_decode_stream(self.runner(), x0, writer.write, show_progress=False)
        seconds = time.perf_counter() - started
        self.written += 1
        self.seconds += seconds
        log.info("preview after step %d of %d: %s (tiny decode %.2f s)", step, self.steps, self.path, seconds)
