"""Sequence parallelism (Ulysses): one video's DiT work split over N processes / GPUs, same result as one.

    wan-rt generate --engines ENGINES --sp 2 --prompt "..." --out out.mp4

`wan-rt generate --sp N` starts N local worker processes (one per GPU) that talk through torch.distributed
(gloo on CPU, NCCL on GPUs; `pip install wan-deploy[sp]`). torch is imported only inside this package, and only
in the workers: the launching process stays torch-free. Rank 0 encodes the text (and the image), decodes and
writes; every rank runs the DiT segments on its 1/N of the tokens and advances the numpy solver on those tokens'
rows of the latent (the solver state is sharded like the tokens; rank 0 gathers the final latent).
Design and costs: docs/sequence_parallel.md.
"""
from __future__ import annotations

from wan_rt.parallel.layout import SPLayout, sp_layout

__all__ = ["SPLayout", "generate_parallel", "sp_layout"]


def generate_parallel(*args, **kwargs):
    """See `wan_rt.parallel.launch.generate_parallel`."""
    from wan_rt.parallel.launch import generate_parallel as run

    return run(*args, **kwargs)
