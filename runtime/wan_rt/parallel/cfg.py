"""CFG parallelism: the conditional and unconditional DiT branches on two processes (one GPU each, batch 1 each).

Per step each rank runs its branch's whole `dit` call, the two exchange their velocity (float32, ~21 MB at 720p:
`TorchComm.exchange_branch`) and both advance the same solver on the same numbers, so their latents stay equal
without any other traffic. Rank 0 (the conditional branch) is a normal `Pipeline` (text and image encoders,
decoder, writer) that broadcasts each request's DiT inputs first; rank 1 follows until told to stop.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wan_rt.backends import open_runner
from wan_rt.denoise import DiTStep, denoise
from wan_rt.manifest import load_manifest
from wan_rt.pipeline import Pipeline

log = logging.getLogger("wan_rt")


class BranchDiTStep(DiTStep):
    """One guidance branch's batch-1 DiT call; `velocities` returns [cond, uncond] after the exchange."""

    def __init__(self, runner, latent_shape, branch_context: np.ndarray, head_dim: int, out_channels: int,
                 guide_scale: float, comm):
        super().__init__(runner, latent_shape, branch_context, branch_context, head_dim, out_channels, 1.0)
        self.guide_scale, self.comm = guide_scale, comm  # guide 1 above: one context, one call per step

    def guidance_note(self) -> str:
        return "split over two processes (CFG parallel), one batch-1 call each, velocities exchanged"

    def velocities(self, latent: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        return self.comm.exchange_branch(super().velocities(latent, timesteps)[0])


def denoise_branch(runner, job: dict, comm, head_dim: int, out_channels: int, show_progress: bool) -> np.ndarray:
    context = job["context"] if comm.branch == 0 else job["context_null"]
    step = BranchDiTStep(runner, job["latent_shape"], context, head_dim, out_channels, job["guide"], comm)
    return denoise(step, job["scheduler"], job["latent"], job["first_frame"], show_progress)


class CFGPipeline(Pipeline):
    """Rank 0: the whole pipeline, its DiT calls the conditional branch of a two-process CFG split."""

    def __init__(self, engines: str | Path, comm, show_progress: bool = True, memory: str = "auto"):
        super().__init__(engines, verify=False, show_progress=show_progress, memory=memory)
        self.comm = comm

    def run_denoise(self, latent_shape, context, context_null, latent, first_frame, scheduler, guide):
        job = {"kind": "denoise", "latent_shape": tuple(latent_shape), "context": context,
               "context_null": context_null, "latent": np.asarray(latent, np.float32), "first_frame": first_frame,
               "scheduler": scheduler, "guide": float(guide)}
        job = self.comm.broadcast_object(job)
        return denoise_branch(self.runner("dit"), job, self.comm, self.head_dim, self.z_dim, self.show_progress)

    def stop_followers(self) -> None:
        self.comm.broadcast_object({"kind": "stop"})


def follow_branch(engines: str | Path, comm) -> int:
    """Rank 1: the unconditional branch of every request rank 0 broadcasts; returns the request count."""
    manifest = load_manifest(engines, verify=False)  # the launcher verified the folder once
    dit = manifest.model["dit"]
    served = 0
    with open_runner(manifest, "dit") as runner:
        while True:
            job = comm.broadcast_object(None)
            if job["kind"] == "stop":
                return served
            denoise_branch(runner, job, comm, dit["dim"] // dit["num_heads"], manifest.model["vae"]["z_dim"], False)
            served += 1
