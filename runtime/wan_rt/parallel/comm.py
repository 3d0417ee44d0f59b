"""The exchanges of Ulysses sequence parallelism, over torch.distributed (imported here, lazily, and nowhere else).

Arrays come in and go out as numpy (what the runners take); on the wire they are torch tensors on the process
group's device (CPU for gloo, the rank's GPU for NCCL), in the wire dtype (bf16 builds: bfloat16, a lossless
round trip since the segments already rounded those values to it).

Layouts (B batch, l tokens per rank, N ranks, H heads = N * h, d head_dim):
- `heads_to_tokens`: q, k, v [B, l, H, d] on every rank -> [B, N*l, h, d]: rank r keeps heads [r*h, (r+1)*h)
  of every token. One fused all_to_all_single for the three tensors.
- `tokens_to_heads`: attention output [B, N*l, h, d] -> [B, l, H, d]: this rank's tokens, every head.
- `gather_tokens`: [B, l, P] -> [B, N*l, P] on every rank (float32: the final latent rows, never rounded).
- `exchange_branch` (CFG parallel): this rank's velocity -> [cond, uncond] from the two ranks that hold the same
  tokens in the two guidance branches (float32, per step; ~21 MB at 720p without SP).

With CFG parallelism the world is 2 x N ranks: ranks [0, N) run the conditional branch, [N, 2N) the
unconditional one; `rank` / `size` are the position within the branch's sequence-parallel group (what the token
split reads), `global_rank` the process's rank in the world.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import numpy as np

from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")

TIMEOUT_S = float(os.environ.get("WAN_RT_SP_TIMEOUT", 1800))


class LocalComm:
    """One rank: every exchange is the identity (`--sp 1` runs the segments in this process, without torch)."""

    rank = 0
    size = 1
    branch = None  # no CFG parallelism

    def broadcast_object(self, obj):
        return obj

    def heads_to_tokens(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return arrays

    def tokens_to_heads(self, array: np.ndarray) -> np.ndarray:
        return array

    def gather_tokens(self, array: np.ndarray) -> np.ndarray:
        return array

    def close(self) -> None:
        pass


def _import_torch():
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise WanError("--sp needs torch for torch.distributed (gloo on CPU, NCCL on GPUs): "
                       "pip install 'wan-deploy[sp]'") from None
    return torch, dist


class TorchComm:
    """This process's rank in a torch.distributed group set up from the environment (MASTER_ADDR/PORT, RANK, ...)."""

    def __init__(self, wire_dtype: str = "float32", backend: str | None = None, cfg_parallel: bool = False):
        torch, dist = _import_torch()
        self.torch, self.dist = torch, dist
        backend = backend or os.environ.get("WAN_RT_SP_BACKEND") or (
            "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo")
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", 0))
            index = local if torch.cuda.device_count() > local else 0  # one visible GPU per worker: cuda:0
            torch.cuda.set_device(index)
            self.device = torch.device("cuda", index)
        else:
            self.device = torch.device("cpu")
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))
        self.backend = backend
        self.global_rank, world = dist.get_rank(), dist.get_world_size()
        self.sp_group = self.pair_group = None  # None: the whole world (torch.distributed's default group)
        self.branch = None
        if cfg_parallel:
            self._split_groups(world)
        else:
            self.rank, self.size = self.global_rank, world
        self.wire = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[wire_dtype]
        log.debug("rank %d of %d: torch.distributed %s on %s, wire dtype %s", self.rank, self.size, backend,
                  self.device, wire_dtype)

    def _split_groups(self, world: int) -> None:
        """Every rank creates every group, in the same order (torch.distributed's rule), and keeps its own."""
        size = world // 2
        self.branch, self.rank, self.size = self.global_rank // size, self.global_rank % size, size
        for branch in range(2):
            group = self.dist.new_group(list(range(branch * size, (branch + 1) * size)))
            if branch == self.branch:
                self.sp_group = group
        for position in range(size):
            group = self.dist.new_group([position, size + position])
            if position == self.rank:
                self.pair_group = group

    # -- helpers ---------------------------------------------------------------------------------------------
    def _to_wire(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.wire)

    def _to_numpy(self, tensor) -> np.ndarray:
        return tensor.to("cpu", self.torch.float32).contiguous().numpy()

    # -- exchanges -------------------------------------------------------------------------------------------
    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (pickled; for per-request data, not per-step tensors)."""
        box = [obj if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def heads_to_tokens(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        n = self.size
        stacked = self._to_wire(np.stack(arrays))  # [3, B, l, H, d]
        count, batch, local, heads, dim = stacked.shape
        send = stacked.reshape(count, batch, local, n, heads // n, dim).permute(3, 0, 1, 2, 4, 5).contiguous()
        recv = self.torch.empty_like(send)  # [N (source rank = token block), 3, B, l, h, d]
        self.dist.all_to_all_single(recv, send, group=self.sp_group)
        out = recv.permute(1, 2, 0, 3, 4, 5).reshape(count, batch, n * local, heads // n, dim)
        return list(self._to_numpy(out))

    def tokens_to_heads(self, array: np.ndarray) -> np.ndarray:
        n = self.size
        tensor = self._to_wire(array)  # [B, N*l, h, d]
        batch, tokens, heads, dim = tensor.shape
        send = tensor.reshape(batch, n, tokens // n, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
        recv = self.torch.empty_like(send)  # [N (source rank = head group), B, l, h, d]
        self.dist.all_to_all_single(recv, send, group=self.sp_group)
        return self._to_numpy(recv.permute(1, 2, 0, 3, 4).reshape(batch, tokens // n, n * heads, dim))

    def gather_tokens(self, array: np.ndarray) -> np.ndarray:
        """All-gather in float32 (once per request: the solver's rows of the final latent)."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(self.device)
        parts = [self.torch.empty_like(tensor) for _ in range(self.size)]
        self.dist.all_gather(parts, tensor, group=self.sp_group)
        return self._to_numpy(self.torch.cat(parts, dim=1))

    def exchange_branch(self, velocity: np.ndarray) -> list[np.ndarray]:
        """[cond, uncond]: this rank's prediction and its peer's in the other guidance branch (float32)."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(velocity, np.float32)).to(self.device)
        parts = [self.torch.empty_like(tensor) for _ in range(2)]
        self.dist.all_gather(parts, tensor, group=self.pair_group)  # group rank 0 is the conditional branch
        return [self._to_numpy(part) for part in parts]

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()
