"""umT5-XXL encoder as used by Wan2.2 (wan/modules/t5.py: umt5_xxl(encoder_only=True) + T5EncoderModel.__call__).

The state dict has exactly the official key names and shapes, so `models_t5_umt5-xxl-enc-bf16.pth` loads with
`strict=True`:

    token_embedding.weight                       [vocab, dim]
    blocks.{i}.norm1.weight                      [dim]
    blocks.{i}.attn.{q,k,v}.weight               [dim_attn, dim]
    blocks.{i}.attn.o.weight                     [dim, dim_attn]
    blocks.{i}.norm2.weight                      [dim]
    blocks.{i}.ffn.gate.0.weight                 [dim_ffn, dim]
    blocks.{i}.ffn.fc1.weight                    [dim_ffn, dim]
    blocks.{i}.ffn.fc2.weight                    [dim, dim_ffn]
    blocks.{i}.pos_embedding.embedding.weight    [num_buckets, num_heads]   (one per block: UMT5 style)
    norm.weight                                  [dim]

Math, as in the official code:
- RMS norm without mean or bias: x * rsqrt(mean(x.float()^2) + eps), cast back to the weight dtype when that is
  fp16/bf16, times weight.
- Attention without 1/sqrt(head_dim) scaling; bias = the block's own bidirectional relative-position bias, replaced
  by finfo(dtype).min where the key is padding; softmax in fp32, then back to the activation dtype.
- FFN: fc2(fc1(x) * gelu_tanh(gate.0(x))) with the official explicit tanh formula (HF 'gelu_new').
- No embedding scaling; dropout is a no-op at inference and is not modelled.

Difference to the official forward, by design: `forward` returns the context already in the form the DiT consumes.
The official `T5EncoderModel.__call__` trims each prompt's output to its real token count and the DiT zero-pads it
back to 512 (REFERENCE.md gotcha 4); here that is one in-graph select on the attention mask (mask 0 -> 0.0), and
the result is float32 (the official bf16 context values are exactly representable in fp32).

Export notes (torch.onnx dynamo export): no data-dependent Python control flow; the relative-position bucket comes
from an `arange` and integer tensor ops plus a small constant table (the official float32 log formula evaluated
once, at construction, for distances 0..max_distance; every larger distance is the last bucket), so no `log` or
float->int cast of -inf ends up in the graph; a row whose mask is all zero gives finite scores (finfo.min, never
-inf) and a zero output row, never NaN.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import T5Config

__all__ = ["UMT5Encoder", "relative_position_bucket_table"]


def relative_position_bucket_table(num_buckets: int = 32, max_distance: int = 128) -> list[int]:
    """Bucket of |k_pos - q_pos| = 0..max_distance for one direction of the bidirectional T5 bucketing.

    Evaluated with the official formula (wan/modules/t5.py T5RelativeEmbedding._relative_position_bucket, same as
    HF UMT5) in float32 torch on CPU, so the integer results are exactly the official ones. Distances beyond
    max_distance all map to the last bucket (the formula saturates there), so callers clamp the distance to
    max_distance and look it up here. The sign half (`(rel > 0) * num_buckets // 2`) is added by the caller.
    """
    half = num_buckets // 2
    max_exact = half // 2
    distance = torch.arange(max_distance + 1, dtype=torch.long, device="cpu")
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = torch.min(large, torch.full_like(large, half - 1))
    bucket = torch.where(distance < max_exact, distance, large)
    return [int(b) for b in bucket.tolist()]


class RMSNorm(nn.Module):
    """T5LayerNorm: RMS only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class GELUTanh(nn.Module):
    """The official GELU module (tanh approximation, written out op by op as wan/modules/t5.py does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class RelativePositionBias(nn.Module):
    """T5RelativeEmbedding(num_buckets, num_heads, bidirectional=True, max_dist): [1, heads, L, L] bias."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)
        # A Python constant (not a buffer): survives meta-device construction and `assign=True` loading, and is
        # captured by the exporter as a tiny int64 initializer.
        self._table = relative_position_bucket_table(num_buckets, max_distance)

    def buckets(self, length: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(length, device=device)
        relative = positions.unsqueeze(0) - positions.unsqueeze(1)  # [Lq, Lk]: key - query
        table = torch.tensor(self._table, dtype=torch.long, device=device)
        distance = torch.clamp(torch.abs(relative), max=self.max_distance)
        return (relative > 0).long() * (self.num_buckets // 2) + table[distance]

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        bias = self.embedding(self.buckets(length, device))  # [L, L, heads]
        return bias.permute(2, 0, 1).unsqueeze(0)  # [1, heads, L, L]


class Attention(nn.Module):
    """T5Attention (self-attention only): no bias in the projections, no score scaling."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; bias [B, heads, L, L] in x's dtype (position bias with padded keys at finfo.min)."""
        b, length = x.shape[0], x.shape[1]
        n, c = self.num_heads, self.head_dim
        q = self.q(x).view(b, length, n, c).transpose(1, 2)  # [B, n, L, c]
        k = self.k(x).view(b, length, n, c).transpose(1, 2)
        v = self.v(x).view(b, length, n, c).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # T5: no 1/sqrt(c)
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, length, n * c)
        return self.o(out)


class FeedForward(nn.Module):
    """T5FeedForward: fc2(fc1(x) * gelu_tanh(gate.0(x)))."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELUTanh())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Official fp16_clamp without Python control flow: clamp everything when any value is inf (fp16 only)."""
    if x.dtype != torch.float16:  # static dtype check, not data-dependent
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return torch.where(torch.isinf(x).any(), torch.clamp(x, min=-limit, max=limit), x)


class Block(nn.Module):
    """T5SelfAttention(shared_pos=False): pre-norm attention and FFN with their own relative position bias."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.max_distance)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """key_padding: bool [B, 1, 1, L], True where the key is padding."""
        position_bias = self.pos_embedding(x.shape[1], x.device)  # [1, n, L, L], embedding dtype
        bias = torch.where(key_padding, torch.finfo(x.dtype).min, position_bias.to(x.dtype))
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        x = _fp16_clamp(x + self.ffn(self.norm2(x)))
        return x


class UMT5Encoder(nn.Module):
    """umT5 encoder with the official Wan key layout; forward returns the zero-padded context the DiT consumes."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The official T5Encoder.forward: [B, L, dim] in the weights' dtype, padded positions NOT zeroed."""
        x = self.token_embedding(input_ids)
        key_padding = (attention_mask == 0).view(attention_mask.shape[0], 1, 1, attention_mask.shape[1])
        for block in self.blocks:
            x = block(x, key_padding)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: int64 [B, L] -> context float32 [B, L, dim], zero where the mask is 0.

        Equals the official `T5EncoderModel.__call__` output trimmed to each prompt's real length and zero-padded
        back to L, as WanModel.forward does before `text_embedding`.
        """
        x = self.encode(input_ids, attention_mask)
        # A select rather than a multiply: exact zeros (no -0.0), and a non-finite value in a padded slot (an fp16
        # engine turning finfo(float32).min into -inf on an all-padding row) cannot leak through as NaN.
        return torch.where(attention_mask.unsqueeze(-1) != 0, x.float(), 0.0)
