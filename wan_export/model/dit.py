"""Export-friendly reference of the Wan2.2 TI2V-5B diffusion transformer (official wan/modules/model.py).

Differences from the official `WanModel`, none of them numerical:
- it takes patchified tokens [B, L, C*1*2*2] (host-side `wan_rt.tokens.patchify`) and returns head output
  tokens [B, L, 1*2*2*C] (host-side `unpatchify`); L is dynamic, one graph serves every shape;
- RoPE arrives as real cos/sin tables [L, head_dim/2] (host float64 -> float32) applied to interleaved pairs,
  instead of complex float64 math on a [1024] frequency table;
- timesteps are per token [B, L] (the official form) or per latent frame [B, F] (the engines' form: the same
  numbers without a [B, L, 6, C] fp32 modulation tensor per block; see `modulate`);
- attention is `scaled_dot_product_attention` (the official code requires flash-attn).
Parameter names and shapes are the official ones, so official checkpoints load with strict=True.

Precision follows the official autocast regions: matmuls run in the weights' dtype, while the time
embedding, modulation, norms, gated residual stream and the head stay float32 (`FP32_MODULES`).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from wan_export.config import DiTConfig

# Parameters the official code keeps (or computes) in float32 under bf16 autocast; a bf16 export keeps them fp32.
FP32_MODULES = ("time_embedding", "time_projection", "modulation", "norm_q", "norm_k", "norm3", "head")


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear run in its weight dtype (autocast-like: bf16 weights mean a bf16 matmul)."""
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


def layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    """WanLayerNorm: float32 math; affine only for norm3."""
    return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps)


class RMSNorm(nn.Module):
    """WanRMSNorm over the full width (all heads), float32 math, result in the input dtype times weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) of x [B, L, heads, d] by tables [L, d/2]; float32 result."""
    b, length, heads, d = x.shape
    pairs = x.float().reshape(b, length, heads, d // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.reshape(b, length, heads, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Non-causal attention over [B, L, heads, d] in `dtype` (the official flash-attention casts to bf16)."""
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`x * (1 + scale) + shift` with x [B, L, C] and scale/shift [B, G, C]: row g modulates the g-th run of L/G
    consecutive tokens. G = L is the official per-token form; G = latent frames gives the same numbers when the
    tokens of a frame share a timestep (always, in Wan2.2) without materializing [B, L, 6, C] per block."""
    grouped = x.unflatten(1, (scale.shape[1], -1))
    return (grouped * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).flatten(1, 2)


def gate(y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """`y * gates`, gates [B, G, C] grouped as in `modulate`."""
    return (y.unflatten(1, (gates.shape[1], -1)) * gates.unsqueeze(2)).flatten(1, 2)


def timestep_sinusoid(timesteps: torch.Tensor, freq_dim: int) -> torch.Tensor:
    """sinusoidal_embedding_1d: [cos | sin] of t * 10000^(-k/half), float32 [..., freq_dim]."""
    half = freq_dim // 2
    inv_freq = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half).to(torch.float32)
    angles = timesteps.float().unsqueeze(-1) * inv_freq.to(timesteps.device)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class SelfAttention(nn.Module):
    """Projections and qk-norms of self-attention; `AttentionBlock` runs them around the attention core, so the
    sequence-parallel segments can cut between them."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))


class CrossAttention(SelfAttention):
    """Text cross-attention: qk-norm, no RoPE, no mask (padded context slots are attended, as official)."""

    def forward(self, x, context):
        q = self.split_heads(self.norm_q(linear(self.q, x)))
        k = self.split_heads(self.norm_k(linear(self.k, context)))
        v = self.split_heads(linear(self.v, context))
        return linear(self.o, attention(q, k, v, self.o.weight.dtype))


class AttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(linear(self.ffn[0], x), approximate="tanh")
        return linear(self.ffn[2], hidden)

    def modulation_terms(self, time_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, float32 [B, G, C] each (G: timestep
        groups, see `modulate`)."""
        return (self.modulation.float() + time_mod).unbind(dim=2)

    def attention_inputs(self, x, terms, cos, sin):
        """Token-local: q, k, v [B, L, heads, d] for the attention core, RoPE applied, in the attention dtype."""
        shift_msa, scale_msa = terms[:2]
        attn = self.self_attn
        hidden = modulate(layer_norm(x, self.eps), scale_msa, shift_msa)
        q = attn.split_heads(attn.norm_q(linear(attn.q, hidden)))
        k = attn.split_heads(attn.norm_k(linear(attn.k, hidden)))
        v = attn.split_heads(linear(attn.v, hidden))
        dtype = attn.o.weight.dtype  # the official flash-attention casts q, k, v to bf16
        return apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype), v.to(dtype)

    def attention_outputs(self, x, attn_out, terms, context):
        """Token-local: output projection, gated residual, cross-attention and FFN; attn_out [B, L, heads, d]."""
        gate_msa, shift_mlp, scale_mlp, gate_mlp = terms[2:]
        y = linear(self.self_attn.o, attn_out.flatten(2))
        x = x + gate(y.float(), gate_msa)
        normed = layer_norm(x, self.eps, self.norm3.weight.float(), self.norm3.bias.float())
        x = x + self.cross_attn(normed, context).float()
        y = self.feed_forward(modulate(layer_norm(x, self.eps), scale_mlp, shift_mlp))
        return x + gate(y.float(), gate_mlp)

    def forward(self, x, time_mod, context, cos, sin):
        """x [B, L, C] float32 residual stream; time_mod [B, G, 6, C] float32 (G: timestep groups)."""
        terms = self.modulation_terms(time_mod)
        q, k, v = self.attention_inputs(x, terms, cos, sin)
        attn_out = attention(q, k, v, q.dtype).unflatten(-1, q.shape[-2:])
        return self.attention_outputs(x, attn_out, terms, context)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_patch_channels)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x, time_emb):
        """time_emb [B, G, C] is the embedding before time_projection (official Head uses e, not e0)."""
        shift, scale = (self.modulation.float().unsqueeze(0) + time_emb.unsqueeze(2)).unbind(dim=2)
        normed = modulate(layer_norm(x, self.eps), scale, shift)
        return F.linear(normed, self.head.weight.float(), self.head.bias.float())


class WanDiT(nn.Module):
    """forward(tokens [B,L,P], timesteps [B,G], context [B,512,text_dim], rope_cos/sin [L,d/2]) -> [B,L,P_out].

    timesteps: one per token (G = L, the official form) or one per latent frame (G = F, each frame's L/F tokens
    share it, as in every Wan2.2 TI2V call): the same numbers, with the time embedding and the per-block
    modulation computed per frame instead of per token (the whole-graph engine uses the frame form)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(AttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The (1,2,2)-stride Conv3d patch embedding as a matmul on host-patchified tokens."""
        weight = self.patch_embedding.weight.flatten(1)
        return F.linear(tokens.to(weight.dtype), weight, self.patch_embedding.bias).float()

    def embed_time_only(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The time embedding [B, G, C] float32 alone (the head's modulation; TeaCache's indicator)."""
        sinusoid = timestep_sinusoid(timesteps, self.cfg.freq_dim)
        return linear(self.time_embedding[2], F.silu(linear(self.time_embedding[0], sinusoid))).float()

    def embed_time(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding [B, G, C] and block modulation [B, G, 6, C], float32, for timesteps [B, G]."""
        emb = self.embed_time_only(timesteps)
        modulation = linear(self.time_projection[1], F.silu(emb)).float()
        return emb, modulation.unflatten(-1, (6, self.cfg.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(linear(self.text_embedding[0], context), approximate="tanh")
        return linear(self.text_embedding[2], hidden)

    def forward(self, tokens, timesteps, context, rope_cos, rope_sin):
        return self.forward_with_residual(tokens, timesteps, context, rope_cos, rope_sin)[0]

    def forward_with_residual(self, tokens, timesteps, context, rope_cos, rope_sin):
        """(velocity, residual): residual [B, L, C] float32 is the block stack's output minus its input, what a
        step cache (MagCache, TeaCache) reuses on the steps it skips (`velocity_from_residual`)."""
        embedded = self.embed_tokens(tokens)
        time_emb, time_mod = self.embed_time(timesteps)
        context = self.embed_text(context)
        x = embedded
        for block in self.blocks:
            x = block(x, time_mod, context, rope_cos, rope_sin)
        return self.head(x, time_emb), x - embedded

    def velocity_from_residual(self, tokens, timesteps, residual):
        """A step without the block stack: head(patch embedding + cached residual), the time embedding of this
        step's timesteps modulating the head as in `forward`."""
        time_emb = self.embed_time_only(timesteps)
        return self.head(self.embed_tokens(tokens) + residual.float(), time_emb)
