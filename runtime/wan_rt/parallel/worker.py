"""What each sequence-parallel rank runs.

Rank 0 is a normal `Pipeline` (text encoder, image encoder, decoder, writer) whose `run_denoise` first broadcasts
the request's DiT inputs (latent shape, contexts, initial latent, pinned first frame, the fresh scheduler, guide
scale) and then denoises like every other rank. Ranks 1..N-1 wait for such broadcasts and denoise; a `stop`
broadcast ends them. The solver state is sharded by tokens (`wan_rt.parallel.step`): each rank keeps and advances
the rows of the tokens it runs through the DiT; rank 0 gathers the final latent.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wan_rt.manifest import load_manifest
from wan_rt.parallel.layout import sp_layout
from wan_rt.parallel.step import SegmentEngines, ShardedDenoiser
from wan_rt.pipeline import Pipeline

log = logging.getLogger("wan_rt")


def denoise_job(engines: SegmentEngines, job: dict, show_progress: bool) -> np.ndarray:
    denoiser = ShardedDenoiser(engines, job["latent_shape"], job["context"], job["context_null"], job["guide"])
    return denoiser.run(job["latent"], job["first_frame"], job["scheduler"], show_progress)


class SPPipeline(Pipeline):
    """Rank 0: the whole pipeline, with the DiT run as segments across the group."""

    denoise_engines = ()  # the segments open on first use, with the group

    def __init__(self, engines: str | Path, comm, ranks: int, show_progress: bool = True, verify: bool = False,
                 memory: str = "auto"):
        # --memory stage closes rank 0's text encoder and decoder around the denoise; the segments stay open
        super().__init__(engines, verify=verify, show_progress=show_progress, memory=memory)
        self.comm = comm
        self.layout = sp_layout(self.manifest, ranks)
        self._segments = None

    def segments(self) -> SegmentEngines:
        if self._segments is None:  # opened on first use: a refused request never waits for the DiT engines
            self._segments = SegmentEngines(self.manifest, self.layout, self.comm)
        return self._segments

    def run_denoise(self, latent_shape, context, context_null, latent, first_frame, scheduler, guide):
        job = {"kind": "denoise", "latent_shape": tuple(latent_shape), "context": context,
               "context_null": context_null, "latent": np.asarray(latent, np.float32), "first_frame": first_frame,
               "scheduler": scheduler, "guide": float(guide)}
        job = self.comm.broadcast_object(job)  # rank 0 keeps its own objects; the others get copies
        return denoise_job(self.segments(), job, self.show_progress)

    def stop_followers(self) -> None:
        self.comm.broadcast_object({"kind": "stop"})

    def close(self) -> None:
        if self._segments is not None:
            self._segments.close()
            self._segments = None
        super().close()


def follow(engines: str | Path, comm, ranks: int) -> int:
    """Ranks 1..N-1: denoise every request rank 0 broadcasts until it says stop; returns the request count."""
    manifest = load_manifest(engines, verify=False)  # the launcher verified the folder once
    segments = SegmentEngines(manifest, sp_layout(manifest, ranks), comm)
    served = 0
    try:
        while True:
            job = comm.broadcast_object(None)
            if job["kind"] == "stop":
                return served
            denoise_job(segments, job, show_progress=False)
            served += 1
    finally:
        segments.close()
