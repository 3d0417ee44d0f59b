"""Cost model of sequence-parallel (Ulysses) generation with the DiT segments, N = 1, 2, 4, 8.

    python benchmarks/sp_cost_model.py                # the model from counted FLOPs/bytes and stated rates
    python benchmarks/sp_cost_model.py --measure      # + PyTorch-reference segment timings on this CPU and the
                                                      #   replicated host work per step, measured here
    python benchmarks/sp_cost_model.py --json out.json

Workload: Wan2.2 TI2V-5B (dim 3072, 24 heads of 128, FFN 14336, 30 layers), 1280x704 x 121 frames -> latent
48 x 31 x 44 x 80 -> 31 x 22 x 40 = 27280 tokens, classifier-free guidance as ONE batch-2 call, 50 steps.

Per step and rank the model adds, with no overlap of communication and compute (conservative):
- compute: FLOPs of this rank's segments (formulas below; `--measure` checks them against
  torch.utils.flop_counter on the reference segments) / a sustained rate per kind (GEMM, attention);
- elementwise traffic: bytes the token-local norms / modulation / RoPE / residual chains move (explicit per-token
  list below, one read + one write per fused chain) / sustained HBM bandwidth;
- weight binding: the per-layer block weights arrive as float32 graph inputs and are cast in the graph
  (8 bytes of traffic per parameter per call, docs/sequence_parallel.md);
- all-to-all: exact bytes each rank sends, q/k/v (one fused call) and the attention output, bf16, per block, plus
  a float32 all-gather of head-output size (the final latent rows are gathered once per request; counted every
  step, conservatively), / the sustained link rate;
- launches: engine enqueues and NCCL calls times a per-call host cost;
- host: the numpy work per step on this rank's token rows (fill the input rows, head -> input channel order for
  cond and uncond, fused CFG + UniPC step): the solver state is sharded by tokens, so it is 1/N of N = 1's.
End to end adds the serial part rank 0 does alone (text encoder, streaming VAE decode: its FLOPs counted with
torch.utils.flop_counter on the reference decoder, fp32 -> TF32 on tensor cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A checkout without `pip install -e .`: add the packages' folders, but only when needed (runtime/ also holds a
# `triton` model repository folder that would shadow the `triton` package torch probes for).
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):
    if importlib.util.find_spec(package) is None:
        sys.path.append(str(path))

from wan_export.config import TI2V_5B  # noqa: E402

CFG = TI2V_5B.dit
GRID = (31, 22, 40)  # 1280x704, 121 frames
TOKENS = math.prod(GRID)  # 27280
BATCH = 2  # CFG: cond + uncond in one call
STEPS = 50
TEXT = CFG.text_len
WIRE_BYTES = 2  # bf16 q/k/v/attention output on the wire
VAE_DECODE_FLOPS = 2.011e15  # reference decoder, 704x1280, 31 latent frames (torch.utils.flop_counter, see --measure)
TEXT_ENCODER_S = 0.1  # umT5-XXL, 2 x 512 tokens, bf16: ~12 TFLOP
OFFICIAL_4090 = {1: 534.7, 4: 231.3, 8: 157.2}  # Wan2.2 README, TI2V-5B 720p, RTX 4090 (s per video)
HOST_S = 0.035  # sharded host work per step at N = 1 without --measure: measured on the CPU VM (2026-11-25)


@dataclasses.dataclass(frozen=True)
class Machine:
    name: str
    peak_tflops: float  # dense bf16 tensor-core peak
    gemm_eff: float  # sustained fraction of peak for the large GEMMs
    attn_eff: float  # ... for the attention core (flash-attention class kernels, head_dim 128, non-causal)
    hbm_tbs: float
    hbm_eff: float
    link: str
    link_gbs: float  # per direction per GPU
    link_eff: float  # sustained fraction for all-to-all / all-gather at these message sizes
    tf32_tflops: float  # dense TF32 peak (the fp32 VAE decoder)
    launch_us: float = 8.0  # host cost per engine enqueue
    nccl_us: float = 25.0  # per NCCL call (launch + latency)


H100 = Machine("H100 SXM5, NVLink 4 + NVSwitch", 989.0, 0.60, 0.55, 3.35, 0.80,
               "NVLink 4: 900 GB/s bidirectional = 450 GB/s per direction per GPU", 450.0, 0.75, 495.0)
H100_PCIE = dataclasses.replace(H100, name="H100 PCIe, no NVLink bridge", peak_tflops=756.0, hbm_tbs=2.0,
                                link="PCIe Gen5 x16: 64 GB/s per direction", link_gbs=64.0, link_eff=0.6,
                                tf32_tflops=378.0)
RTX4090 = Machine("RTX 4090 (official multi-GPU numbers)", 165.2, 0.60, 0.55, 1.008, 0.80,
                  "PCIe 4.0 x16, no P2P on GeForce: ~16 GB/s effective through host memory", 16.0, 1.0, 82.6)


# -- counts ------------------------------------------------------------------------------------------------
def shard(ranks: int) -> tuple[int, int]:
    local = -(-TOKENS // ranks)
    return local, local * ranks


def segment_flops(ranks: int, local: int | None = None, batch: int = BATCH) -> dict:
    """FLOPs (2 x multiply-adds) of one DiT call on one rank, by segment (all layers); GEMM vs attention split."""
    d, f, heads = CFG.dim, CFG.ffn_dim, CFG.num_heads
    if local is None:
        local, padded = shard(ranks)
    else:
        padded = local * ranks
    layers = CFG.num_layers
    embed = batch * (2 * local * CFG.patch_channels * d  # patch embedding
                     + 2 * GRID[0] * (CFG.freq_dim * d + d * d)  # time embedding, per latent frame
                     + 2 * GRID[0] * d * 6 * d  # time projection, per latent frame
                     + 2 * TEXT * (CFG.text_dim * d + d * d))  # text embedding: every rank, all 512 tokens
    pre = layers * batch * 3 * 2 * local * d * d  # q, k, v
    attn = layers * batch * 2 * 2 * padded * padded * (heads // ranks) * CFG.head_dim  # QK^T and PV, my heads
    post_gemm = layers * batch * (2 * local * d * d  # output projection
                                  + 2 * 2 * local * d * d  # cross-attention q, o
                                  + 2 * 2 * TEXT * d * d  # cross-attention k, v on the text (every rank)
                                  + 2 * 2 * local * d * f)  # FFN
    post_attn = layers * batch * 2 * 2 * local * TEXT * d  # cross-attention scores and values
    head = batch * 2 * local * d * CFG.out_patch_channels
    return {"embed": embed, "pre_attention": pre, "attention": attn, "post_attention": post_gemm + post_attn,
            "head": head, "gemm": embed + pre + post_gemm + head, "attention_core": attn + post_attn}


# Bytes per token per block moved by the token-local elementwise chains (C = dim, F = ffn_dim), each fused chain
# reading its inputs and writing its output once: fp32 residual stream x, fp32 per-token modulation, bf16 GEMM I/O.
def elementwise_bytes_per_token(d: int = CFG.dim, f: int = CFG.ffn_dim) -> dict:
    return {
        "pre: LN(x)*(1+scale)+shift": 4 * d + 8 * d + 2 * d,  # x, 2 modulation rows, bf16 out
        "pre: qkv GEMM in/out": 2 * d + 3 * 2 * d,
        "pre: RMSNorm + RoPE of q, k": 2 * (2 * d + 2 * d),
        "attention in/out": 3 * 2 * d + 2 * d,
        "post: o GEMM + gated residual": 2 * d + 4 * d + 4 * d + 4 * d + 4 * d,
        "post: norm3 + cross q": 4 * d + 2 * d + 2 * d + 2 * d,
        "post: cross attention + o + residual": 2 * d + 2 * d + 2 * d + 4 * d + 4 * d + 4 * d,
        "post: LN*(1+scale)+shift": 4 * d + 8 * d + 2 * d,
        "post: FFN in/out + GELU": 2 * d + 2 * f + 2 * f + 4 * d,
        "post: gated residual": 4 * d + 4 * d + 4 * d + 4 * d,
    }


def weight_params_per_block() -> int:
    d, f = CFG.dim, CFG.ffn_dim
    return 8 * (d * d + d) + 2 * (d * f) + f + d + 6 * d + 4 * d + 2 * d  # attn x2, FFN, modulation, norms


def comm_bytes(ranks: int, batch: int = BATCH) -> dict:
    """Bytes each rank SENDS per DiT call (it receives as many)."""
    local, _ = shard(ranks)
    if ranks == 1:
        return {"all_to_all": 0, "all_gather": 0, "per_block_all_to_all": 0}
    tensor = batch * local * CFG.dim * WIRE_BYTES  # one of q/k/v/o on one rank
    per_block = 4 * tensor * (ranks - 1) / ranks  # q, k, v out (one fused call) + attention output back
    gather = (ranks - 1) * batch * local * CFG.out_patch_channels * 4  # float32 rows (final latent: once per request)
    return {"all_to_all": per_block * CFG.num_layers, "all_gather": gather, "per_block_all_to_all": per_block}


# -- the model -----------------------------------------------------------------------------------------------
def step_time(m: Machine, ranks: int, host_s: float) -> dict:
    """Seconds per step on one rank; `host_s` is the host work of one rank at N = 1 (it shrinks as 1/N)."""
    local, _ = shard(ranks)
    flops = segment_flops(ranks)
    t_gemm = flops["gemm"] / (m.peak_tflops * 1e12 * m.gemm_eff)
    t_attn = flops["attention_core"] / (m.peak_tflops * 1e12 * m.attn_eff)
    per_token = sum(elementwise_bytes_per_token().values())
    t_mem = per_token * local * BATCH * CFG.num_layers / (m.hbm_tbs * 1e12 * m.hbm_eff)
    t_bind = 8 * weight_params_per_block() * CFG.num_layers / (m.hbm_tbs * 1e12 * m.hbm_eff)
    comm = comm_bytes(ranks)
    t_comm = (comm["all_to_all"] + comm["all_gather"]) / (m.link_gbs * 1e9 * m.link_eff)
    launches = 2 + 3 * CFG.num_layers
    nccl = (2 * CFG.num_layers + 1) if ranks > 1 else 0
    t_launch = (launches * m.launch_us + nccl * m.nccl_us) * 1e-6
    parts = {"gemm": t_gemm, "attention": t_attn, "elementwise": t_mem, "weight_bind": t_bind, "comm": t_comm,
             "launch": t_launch, "host": host_s / ranks}
    return {**parts, "total": sum(parts.values())}


def serial_time(m: Machine) -> float:
    return TEXT_ENCODER_S + VAE_DECODE_FLOPS / (m.tf32_tflops * 1e12 * 0.5)


def table(m: Machine, host_s: float, ranks_list=(1, 2, 4, 8)) -> list[dict]:
    base = step_time(m, 1, host_s)
    serial = serial_time(m)
    rows = []
    for n in ranks_list:
        step = step_time(m, n, host_s)
        loop = STEPS * step["total"]
        e2e = loop + serial
        rows.append({
            "ranks": n, "step": step, "loop_s": loop, "e2e_s": e2e,
            "loop_efficiency": STEPS * base["total"] / (n * loop),
            "e2e_efficiency": (STEPS * base["total"] + serial) / (n * e2e),
            "comm_bytes_per_rank_per_step": comm_bytes(n)["all_to_all"] + comm_bytes(n)["all_gather"],
        })
    return rows


def official_4090_comparison(host_s: float) -> list[dict]:
    """The official multi-GPU setup on 4090s: Ulysses + FSDP (per-forward weight all-gather), CFG as 2 calls."""
    m = RTX4090
    weights_bytes = 2 * (CFG.num_layers * weight_params_per_block())  # bf16 block weights (FSDP-wrapped)
    rows = []
    for n in (1, 4, 8):
        step = step_time(m, n, host_s)
        fsdp = 0.0 if n == 1 else 2 * weights_bytes * (n - 1) / n / (m.link_gbs * 1e9 * m.link_eff)
        total = STEPS * (step["total"] + fsdp) + serial_time(m)
        rows.append({"ranks": n, "model_s": total, "official_s": OFFICIAL_4090[n], "fsdp_s_per_step": fsdp,
                     "comm_s_per_step": step["comm"]})
    return rows


# -- measurements on this CPU -----------------------------------------------------------------------------------
def measure_segments(local: int, ranks: int, repeats: int) -> list[dict]:
    """PyTorch reference segments at the full width (one block), `local` tokens per rank, batch 2, on this CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wan_export.checkpoints.random_weights import random_state_dict
    from wan_export.checkpoints.tensors import expected_shapes
    from wan_export.model.dit import WanDiT
    from wan_export.model.dit_segments import SegmentedDiT
    from wan_export.model.loading import load_module
    from wan_rt import tokens

    one_layer = dataclasses.replace(CFG, num_layers=1)
    factory = lambda: WanDiT(one_layer)  # noqa: E731
    dit = load_module(factory, random_state_dict(expected_shapes(factory), seed=0))
    seg = SegmentedDiT(dit)
    g = torch.Generator().manual_seed(0)
    d, b = CFG.dim, BATCH
    padded = local * ranks
    x = torch.randn(b, local, d, generator=g)
    frames = GRID[0]
    time_mod = 0.1 * torch.randn(b, frames, 6, d, generator=g)
    time_emb = torch.randn(b, frames, d, generator=g)
    token_frames = torch.from_numpy(tokens.token_frames(GRID, 0, local))  # rank 0's tokens
    cos, sin = torch.ones(local, CFG.head_dim // 2), torch.zeros(local, CFG.head_dim // 2)
    q = torch.randn(b, padded, CFG.num_heads // ranks, CFG.head_dim, generator=g)
    text = torch.randn(b, TEXT, CFG.text_dim, generator=g)
    context = torch.randn(b, TEXT, d, generator=g)
    attn_out = torch.randn(b, local, CFG.num_heads, CFG.head_dim, generator=g)
    calls = {
        "embed": lambda: seg.embed(torch.randn(b, local, CFG.patch_channels), torch.full((b, frames), 500.0), text),
        "pre_attention": lambda: seg.pre_attention(0, x, time_mod, token_frames, cos, sin),
        "attention": lambda: seg.attention(q, q[:, :-1], q[:, :-1]),  # one padded key cut off
        "post_attention": lambda: seg.post_attention(0, x, attn_out, time_mod, token_frames, context),
        "head": lambda: seg.head(x, time_emb, token_frames),
    }
    per_layer = {"pre_attention", "attention", "post_attention"}
    formula = segment_flops(ranks, local=local)
    rows = []
    with torch.no_grad():
        for name, call in calls.items():
            call()  # warm-up
            with FlopCounterMode(display=False) as counter:
                call()
            counted = counter.get_total_flops()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            expected = formula[name] / (CFG.num_layers if name in per_layer else 1)
            seconds = sorted(times)[len(times) // 2]
            # flop_counter has no formula for the CPU flash-attention kernel: attention FLOPs come from the formula
            rate = (counted if counted else expected) / seconds / 1e9
            rows.append({"segment": name, "tokens_local": local, "ranks": ranks, "seconds": seconds,
                         "counted_flops": counted, "formula_flops": expected, "gflops_per_s": rate})
    return rows


def measure_host(repeats: int = 7) -> dict:
    """Host work per step at 720p (numpy, this machine): the whole-graph loop (`wan_rt.denoise`: patchify,
    2 x unpatchify, fused CFG + UniPC on the latent) and the sharded loop at N = 1 (`wan_rt.parallel.step`:
    fill the input rows, 2 x head -> input channel order, fused CFG + UniPC on the token rows)."""
    import numpy as np

    from wan_rt import tokens
    from wan_rt.parallel.step import head_to_input_layout
    from wan_rt.schedulers import make_scheduler

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((48, 31, 44, 80), dtype=np.float32)
    out = rng.standard_normal((2, TOKENS, CFG.out_patch_channels), dtype=np.float32)
    rows = tokens.patchify(latent)
    buffer = np.zeros_like(rows)

    def whole(sched):
        tokens.patchify(latent)
        cond, uncond = (tokens.unpatchify(v, GRID, 48) for v in out)
        sched.step_cfg(cond, uncond, 5.0, latent, out=latent)

    def sharded(sched):
        buffer[:] = rows
        cond, uncond = head_to_input_layout(out, 48)
        sched.step_cfg(cond, uncond, 5.0, rows, out=rows)

    result = {}
    for name, work in (("whole", whole), ("sharded", sharded)):
        sched = make_scheduler("unipc", STEPS, 5.0)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work(sched)
            times.append(time.perf_counter() - started)
        result[name] = sorted(times)[len(times) // 2]
    return result


def measure_vae_flops() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wan_export.model.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(TI2V_5B.vae)
    latent = torch.zeros(1, 48, 1, 44, 80, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _, caches = vae.decode_first_chunk(latent)
    first = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.decode_chunk(latent, caches)
    return first + (GRID[0] - 1) * counter.get_total_flops()


# -- report ---------------------------------------------------------------------------------------------------
def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def report(args) -> dict:
    result = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "workload": {"tokens": TOKENS, "grid": GRID, "batch": BATCH, "steps": STEPS, "layers": CFG.num_layers,
                           "dim": CFG.dim, "heads": CFG.num_heads}}
    host_s = HOST_S
    if args.measure:
        host = measure_host()
        host_s = host["sharded"]
        result["host_s_measured"] = host
        result["vae_decode_flops_counted"] = measure_vae_flops()
        result["segments_cpu"] = measure_segments(args.tokens_local, 2, args.repeats)
    print(f"# Sequence-parallel cost model ({result['date']})\n")
    print(f"Workload: {TOKENS} tokens (grid {GRID}), batch {BATCH} (CFG), {CFG.num_layers} layers, dim {CFG.dim}, "
          f"{CFG.num_heads} heads, {STEPS} steps.\n")
    flops1 = segment_flops(1)
    print("FLOPs of one DiT call (batch 2) on one rank, N = 1: " + ", ".join(
        f"{k} {v / 1e12:.1f} T" for k, v in flops1.items() if k not in ("gemm", "attention_core")))
    print(f"(GEMM {flops1['gemm'] / 1e12:.1f} TFLOP, attention {flops1['attention_core'] / 1e12:.1f} TFLOP)\n")
    print("All-to-all bytes each rank sends per step (q, k, v and the attention output, bf16, batch 2, 30 blocks) "
          "and a float32 all-gather of head-output size (once per request in fact; counted per step):\n")
    print("| N | tokens/rank | per block | per step (a2a) | all-gather | per step total, all ranks |")
    print("|---|---|---|---|---|---|")
    for n in (2, 4, 8):
        c = comm_bytes(n)
        print(f"| {n} | {shard(n)[0]} | {c['per_block_all_to_all'] / 1e6:.1f} MB | {c['all_to_all'] / 1e9:.2f} GB | "
              f"{c['all_gather'] / 1e6:.1f} MB | {n * (c['all_to_all'] + c['all_gather']) / 1e9:.1f} GB |")
    print()
    result["tables"] = {}
    for m in (H100, H100_PCIE):
        rows = table(m, host_s)
        result["tables"][m.name] = rows
        print(f"## {m.name}\n")
        print(f"Rates: GEMM {m.gemm_eff:.0%} and attention {m.attn_eff:.0%} of {m.peak_tflops:g} TFLOP/s bf16, "
              f"HBM {m.hbm_eff:.0%} of {m.hbm_tbs:g} TB/s, {m.link}, {m.link_eff:.0%} of it sustained; "
              f"serial part (text encoder + VAE decode at 50% of {m.tf32_tflops:g} TFLOP/s TF32) "
              f"{serial_time(m):.1f} s; host {host_s * 1e3:.1f} ms/step at N = 1, / N.\n")
        print("| N | GEMM | attention | elementwise | weight bind | all-to-all + gather | launch | host | "
              "step | 50 steps | loop efficiency | end to end | e2e efficiency |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            s = r["step"]
            print(f"| {r['ranks']} | {fmt_s(s['gemm'])} | {fmt_s(s['attention'])} | {fmt_s(s['elementwise'])} | "
                  f"{fmt_s(s['weight_bind'])} | {fmt_s(s['comm'])} | {fmt_s(s['launch'])} | {fmt_s(s['host'])} | "
                  f"{fmt_s(s['total'])} | {r['loop_s']:.1f} s | {r['loop_efficiency']:.1%} | {r['e2e_s']:.1f} s | "
                  f"{r['e2e_efficiency']:.1%} |")
        print()
    rows = official_4090_comparison(host_s)
    result["official_4090"] = rows
    print("## Against the official RTX 4090 numbers (Ulysses + FSDP, CFG as two calls, PCIe)\n")
    print("| N | model | official | model: all-to-all per step | model: FSDP weight all-gather per step |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['model_s']:.0f} s | {r['official_s']} s | {fmt_s(r['comm_s_per_step'])} | "
              f"{fmt_s(r['fsdp_s_per_step'])} |")
    print()
    if args.measure:
        print(f"## Measured on this CPU ({result['machine']}, torch threads {__import__('torch').get_num_threads()})\n")
        host = result["host_s_measured"]
        print(f"Host work per step at 720p: whole-graph loop (patchify, 2 x unpatchify, CFG + UniPC on the latent) "
              f"{host['whole'] * 1e3:.1f} ms; sharded loop at N = 1 (rows, 2 x channel reorder, CFG + UniPC on the "
              f"token rows) {host['sharded'] * 1e3:.1f} ms, divided by N. VAE decode FLOPs counted: "
              f"{result['vae_decode_flops_counted'] / 1e15:.3f} P.\n")
        print("| segment (full width, batch 2) | tokens/rank | N | time | counted GFLOP | formula GFLOP | GFLOP/s |")
        print("|---|---|---|---|---|---|---|")
        for r in result["segments_cpu"]:
            counted = f"{r['counted_flops'] / 1e9:.1f}" if r["counted_flops"] else "n/a (CPU SDPA)"
            print(f"| {r['segment']} | {r['tokens_local']} | {r['ranks']} | {fmt_s(r['seconds'])} | "
                  f"{counted} | {r['formula_flops'] / 1e9:.1f} | {r['gflops_per_s']:.1f} |")
        print("\npost_attention's formula also holds its cross-attention core (4 x l x 512 x dim x batch FLOPs), "
              "which flop_counter cannot see in the CPU SDPA kernel either.\n")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="time the reference segments and host work here")
    parser.add_argument("--tokens-local", type=int, default=256, help="tokens per rank for --measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    report(parser.parse_args())


if __name__ == "__main__":
    main()
