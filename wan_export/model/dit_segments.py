"""The DiT reference split at the communication points of Ulysses sequence parallelism.

Official wan/distributed/sequence_parallel.py runs `WanModel` on N GPUs by giving each rank 1/N of the tokens
and exchanging them twice per block around self-attention (all-to-all: sequence-sharded -> head-sharded and
back). Everything else is token-local. The segments below are exactly the pieces between those exchanges:

    embed          patch / text embedding on this rank's tokens; time embedding and projection per latent frame
    pre_attention  norm1 + modulation, q/k/v, qk-norm, RoPE, on this rank's tokens, all heads
    attention      the attention core on ALL tokens for this rank's heads, padded keys masked out
    post_attention output projection, gated residual, norm3 + cross-attention, FFN, on this rank's tokens
    head           the output head, on this rank's tokens

No weights are copied and no math is rewritten: every segment calls the methods of `wan_export.model.dit`
(`embed_tokens`, `embed_time`, `embed_text`, `AttentionBlock.attention_inputs` / `attention_outputs`, `Head`)
that `WanDiT.forward` itself is made of, on the very same parameters. `SegmentedDiT.forward` composes them,
optionally simulating N ranks in one process; tests prove it equal to `WanDiT.forward`.

Padding follows the official rule: the sequence is padded to a multiple of N (zero tokens, identity RoPE rows),
padded keys are cut off before self-attention (the official `k_lens = seq_lens` packing), and padded tokens are dropped
after the head. Every other op is token-local, so padding never reaches a real token.

Time conditioning travels per latent frame (time_emb [B, F, C], time_mod [B, F, 6, C]: the tokens of a frame share
a timestep in every Wan2.2 call, see `wan_export.model.dit.modulate`); a rank's token slice starts and ends
mid-frame, so each token-local segment picks its tokens' rows with `token_frames` [l] (the latent frame of each
of this rank's tokens; padding: the last frame) instead of receiving [B, l, 6, C] per call (2 GB at 720p, N = 2).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wan_export.model.dit import AttentionBlock, WanDiT, attention
from wan_rt.tokens import token_frames as frame_of_tokens

# Parameters of one AttentionBlock each token-local segment reads (names relative to the block).
PRE_ATTENTION_WEIGHTS = (
    "modulation",
    "self_attn.q.weight", "self_attn.q.bias", "self_attn.k.weight", "self_attn.k.bias",
    "self_attn.v.weight", "self_attn.v.bias", "self_attn.norm_q.weight", "self_attn.norm_k.weight",
)
POST_ATTENTION_WEIGHTS = (
    "modulation",
    "self_attn.o.weight", "self_attn.o.bias", "norm3.weight", "norm3.bias",
    "cross_attn.q.weight", "cross_attn.q.bias", "cross_attn.k.weight", "cross_attn.k.bias",
    "cross_attn.v.weight", "cross_attn.v.bias", "cross_attn.o.weight", "cross_attn.o.bias",
    "cross_attn.norm_q.weight", "cross_attn.norm_k.weight",
    "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
)


def block_weight_names() -> tuple[str, ...]:
    """Every parameter of a block once, in file order (pre-attention ones first)."""
    return tuple(dict.fromkeys(PRE_ATTENTION_WEIGHTS + POST_ATTENTION_WEIGHTS))


def attention_dtype(block: AttentionBlock) -> torch.dtype:
    """The dtype the self-attention core runs in: the output projection's (bf16 weights: bf16 attention)."""
    return block.self_attn.o.weight.dtype


def token_rows(per_frame: torch.Tensor, token_frames: torch.Tensor) -> torch.Tensor:
    """[B, F, ...] per latent frame -> [B, l, ...] for this rank's tokens (`token_frames` [l]: frame per token)."""
    return per_frame.index_select(1, token_frames)


def pre_attention(block: AttentionBlock, x: torch.Tensor, time_mod: torch.Tensor, token_frames: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-local: x [B, l, C] -> q, k, v [B, l, heads, head_dim], RoPE applied, in the attention dtype
    (half the bytes through the all-to-all for bf16 weights, as the official `half(q)` before it)."""
    return block.attention_inputs(x, block.modulation_terms(token_rows(time_mod, token_frames)), cos, sin)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Non-causal attention of q [B, Lq, h, d] over the real keys k, v [B, Lk, h, d] (padded keys already cut
    off, as the official flash-attention packs keys to `k_lens`): `dit.attention` itself, [B, Lq, h, d] out."""
    return attention(q, k, v, dtype).unflatten(-1, q.shape[-2:])


def post_attention(block: AttentionBlock, x: torch.Tensor, attn_out: torch.Tensor, time_mod: torch.Tensor,
                   token_frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Token-local: residual x [B, l, C] and attention output [B, l, heads, head_dim] -> the block's output."""
    return block.attention_outputs(x, attn_out, block.modulation_terms(token_rows(time_mod, token_frames)), context)


def padded_length(tokens: int, ranks: int) -> int:
    """Official SP sequence length: the token count rounded up to a multiple of the rank count."""
    return -(-tokens // ranks) * ranks


def padded_token_frames(length: int, frames: int, padded: int) -> torch.Tensor:
    """The latent frame of each token of the padded sequence [padded], int64; padding takes the last frame
    (padded tokens never reach a real one, so any frame would do)."""
    return torch.from_numpy(frame_of_tokens((frames, length // frames, 1), 0, padded))


class SegmentedDiT(nn.Module):
    """A `WanDiT` (the same module, not a copy) seen as Ulysses segments."""

    def __init__(self, dit: WanDiT):
        super().__init__()
        self.dit = dit

    @property
    def blocks(self):
        return self.dit.blocks

    def embed(self, tokens, timesteps, context):
        """tokens [B,l,P] (this rank's), timesteps [B,F] (per latent frame), context [B,512,text_dim]
        -> x [B,l,C], time_emb [B,F,C], time_mod [B,F,6,C], context [B,512,C]."""
        time_emb, time_mod = self.dit.embed_time(timesteps)
        return self.dit.embed_tokens(tokens), time_emb, time_mod, self.dit.embed_text(context)

    def pre_attention(self, layer: int, x, time_mod, token_frames, cos, sin):
        return pre_attention(self.dit.blocks[layer], x, time_mod, token_frames, cos, sin)

    def attention(self, q, k, v):
        return attention_core(q, k, v, attention_dtype(self.dit.blocks[0]))

    def post_attention(self, layer: int, x, attn_out, time_mod, token_frames, context):
        return post_attention(self.dit.blocks[layer], x, attn_out, time_mod, token_frames, context)

    def head(self, x, time_emb, token_frames):
        return self.dit.head(x, token_rows(time_emb, token_frames))

    def forward(self, tokens, timesteps, context, rope_cos, rope_sin, ranks: int = 1):
        """`WanDiT.forward` through the segments, simulating `ranks`-way Ulysses in one process.

        timesteps [B, F]: one per latent frame (`WanDiT.forward`'s per-frame form). For ranks > 1 the sequence is
        padded to a multiple of `ranks`, each shard runs the token-local segments alone, and the two all-to-alls
        per block are the concatenations / splits they stand for.
        """
        heads = self.dit.cfg.num_heads
        if heads % ranks:
            raise ValueError(f"{heads} heads cannot be split over {ranks} ranks")
        length = tokens.shape[1]
        padded = padded_length(length, ranks)
        pad = padded - length
        frames = timesteps.shape[1]
        token_frames = padded_token_frames(length, frames, padded)
        if pad:
            tokens = F.pad(tokens, (0, 0, 0, pad))
            rope_cos = torch.cat([rope_cos, rope_cos.new_ones(pad, rope_cos.shape[1])])
            rope_sin = torch.cat([rope_sin, rope_sin.new_zeros(pad, rope_sin.shape[1])])
        local = padded // ranks
        shard = [slice(r * local, (r + 1) * local) for r in range(ranks)]
        per_rank = [self.embed(tokens[:, s], timesteps, context) for s in shard]
        xs = [p[0] for p in per_rank]
        time_embs = [p[1] for p in per_rank]
        time_mods = [p[2] for p in per_rank]
        contexts = [p[3] for p in per_rank]
        group = heads // ranks
        for layer in range(len(self.dit.blocks)):
            qkv = [self.pre_attention(layer, xs[r], time_mods[r], token_frames[shard[r]], rope_cos[shard[r]],
                                      rope_sin[shard[r]]) for r in range(ranks)]
            outs = []
            for r in range(ranks):  # rank r: all tokens (gathered over ranks), heads of group r
                heads_r = slice(r * group, (r + 1) * group)
                q, k, v = (torch.cat([qkv[src][i][:, :, heads_r] for src in range(ranks)], dim=1) for i in range(3))
                outs.append(self.attention(q, k[:, :length], v[:, :length]))  # padded keys take no attention
            xs = [self.post_attention(layer, xs[r], torch.cat([o[:, shard[r]] for o in outs], dim=2),
                                      time_mods[r], token_frames[shard[r]], contexts[r]) for r in range(ranks)]
        velocity = torch.cat([self.head(xs[r], time_embs[r], token_frames[shard[r]]) for r in range(ranks)], dim=1)
        return velocity[:, :length]
