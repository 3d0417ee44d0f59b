"""Sequence-parallel (Ulysses) DiT segments: five graphs instead of one `dit`, split where ranks communicate.

    dit_sp_embed  tokens, timesteps, context                        -> x, time_emb, time_mod, context_emb
    dit_sp_pre    x, time_mod, token_frames, rope_cos/sin, w.*       -> q, k, v   (all heads, this rank's tokens)
    dit_sp_attn   q, k, v                                            -> attn      (all tokens, this rank's heads)
    dit_sp_post   x, attn, time_mod, token_frames, context_emb, w.*  -> x_out     (this rank's tokens)
    dit_sp_head   x, time_emb, token_frames                          -> velocity

Time conditioning is per latent frame (timesteps [B, F], time_emb [B, F, C], time_mod [B, F, 6, C]); the
token-local segments pick their tokens' rows with `token_frames` [tokens_local] (int64, frame per token).

`dit_sp_pre` and `dit_sp_post` are ONE graph each for all layers: a layer's weights are graph inputs (`w.<name>`),
bound per call from `dit_sp_blocks.bin` (every block's parameters, float32, layer after layer). Why this and not an
engine per layer, or refit: docs/sequence_parallel.md. Token axes are per rank (`tokens_local` = ceil(L / N)),
the attention core sees `tokens_local*N` tokens and `num_heads / N` heads: a build serves exactly N ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.components.dit import token_grid_for
from wan_export.config import ModelConfig
from wan_export.model.dit import FP32_MODULES, WanDiT
from wan_export.model.dit_segments import (
    POST_ATTENTION_WEIGHTS, PRE_ATTENTION_WEIGHTS, SegmentedDiT, attention_core, attention_dtype, block_weight_names,
    padded_length, post_attention, pre_attention)
from wan_rt import tokens
from wan_rt.errors import WanError
from wan_rt.parallel.layout import SP_FORMAT_VERSION
from wan_rt.shapes import ShapeLimits, latent_frames

SEGMENTS = ("dit_sp_embed", "dit_sp_pre", "dit_sp_attn", "dit_sp_post", "dit_sp_head")
WEIGHTS_FILE = "dit_sp_blocks.bin"
WEIGHT_PREFIX = "w."


@dataclass(frozen=True)
class SegmentSpec(ComponentSpec):
    # Files written beside the graph: (model, folder) -> names (the per-layer weights for dit_sp_pre).
    write_extra: Callable[[nn.Module, Path], list[str]] | None = None


def check_ranks(num_heads: int, ranks: int) -> None:
    if ranks < 1:
        raise WanError(f"--sp {ranks}: the rank count must be >= 1")
    if num_heads % ranks:
        divisors = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
        raise WanError(f"--sp {ranks}: the DiT's {num_heads} attention heads cannot be split evenly over {ranks} "
                       f"ranks (Ulysses splits by heads); use one of {divisors}")


# -- graphs ------------------------------------------------------------------------------------------------
class _Call(nn.Module):
    """`fn(block, *args)` as a module, so `functional_call` can swap the block's parameters for graph inputs."""

    def __init__(self, block: nn.Module, fn):
        super().__init__()
        self.block = block
        self.fn = fn

    def forward(self, *args):
        return self.fn(self.block, *args)


class _BlockSegmentGraph(nn.Module):
    """A token-local block segment whose parameters are graph inputs (one graph serves every layer).

    The template block (the model's block 0, with this build's dtypes) is deliberately NOT a registered
    submodule: the graph owns no weights. Inputs arrive as float32 and are cast to the template's dtype
    (bf16 builds: bf16 except the official fp32 islands), as `cast_for_precision` casts the whole graph.
    """

    names: tuple[str, ...] = ()
    fn = None

    def __init__(self, dit: WanDiT):
        super().__init__()
        block = dit.blocks[0]
        object.__setattr__(self, "_call", _Call(block, type(self).fn))
        params = dict(block.named_parameters())
        self._dtypes = {name: params[name].dtype for name in self.names}

    def bind(self, weights) -> dict:
        return {f"block.{name}": w.to(self._dtypes[name]) for name, w in zip(self.names, weights)}


class PreAttentionGraph(_BlockSegmentGraph):
    names = PRE_ATTENTION_WEIGHTS
    fn = staticmethod(pre_attention)

    def forward(self, x, time_mod, token_frames, rope_cos, rope_sin, weights):
        q, k, v = torch.func.functional_call(self._call, self.bind(weights),
                                             (x, time_mod, token_frames, rope_cos, rope_sin), strict=False)
        return q.float(), k.float(), v.float()  # values already rounded to the attention dtype


class PostAttentionGraph(_BlockSegmentGraph):
    names = POST_ATTENTION_WEIGHTS
    fn = staticmethod(post_attention)

    def forward(self, x, attn, time_mod, token_frames, context_emb, weights):
        return torch.func.functional_call(self._call, self.bind(weights),
                                          (x, attn, time_mod, token_frames, context_emb), strict=False)


class AttentionCoreGraph(nn.Module):
    def __init__(self, dit: WanDiT):
        super().__init__()
        self.dtype = attention_dtype(dit.blocks[0])

    def forward(self, q, k, v):
        return attention_core(q, k, v, self.dtype).float()


def _shell(dit: WanDiT, parts: tuple[str, ...]) -> WanDiT:
    """A WanDiT holding only `parts` (the same submodules): its methods run, its graph bakes only those weights."""
    shell = WanDiT.__new__(WanDiT)
    nn.Module.__init__(shell)
    shell.cfg = dit.cfg
    for name in parts:
        setattr(shell, name, getattr(dit, name))
    return shell


EMBED_PARTS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection")
HEAD_PARTS = ("head",)


class EmbedGraph(nn.Module):
    def __init__(self, dit: WanDiT):
        super().__init__()
        self.segments = SegmentedDiT(_shell(dit, EMBED_PARTS))

    def forward(self, tokens, timesteps, context):
        return self.segments.embed(tokens, timesteps, context)


class HeadGraph(nn.Module):
    def __init__(self, dit: WanDiT):
        super().__init__()
        self.segments = SegmentedDiT(_shell(dit, HEAD_PARTS))

    def forward(self, x, time_emb, token_frames):
        return self.segments.head(x, time_emb, token_frames)


# -- specs -------------------------------------------------------------------------------------------------
def block_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one AttentionBlock (names relative to the block)."""
    with torch.device("meta"):
        block = WanDiT(replace(config.dit, num_layers=1)).blocks[0]
    return {name: tuple(p.shape) for name, p in block.named_parameters()}


def segment_specs(config: ModelConfig, limits: ShapeLimits, ranks: int) -> list[SegmentSpec]:
    cfg = config.dit
    check_ranks(cfg.num_heads, ranks)
    dim, heads, head_dim, pairs = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.head_dim // 2
    local_heads = heads // ranks
    shapes = block_weight_shapes(config)
    low, high = limits.token_range()
    dims = {"batch": (limits.batch[0], limits.batch[1], limits.batch[1]),
            "tokens_local": (math.ceil(low / ranks), math.ceil(limits.default_tokens() / ranks),
                             math.ceil(high / ranks)),
            "frames": tuple(latent_frames(f) for f in (limits.frames[0], limits.default_frames, limits.frames[1])),
            "keys": (low, limits.default_tokens(), high)}
    all_tokens = "tokens_local" if ranks == 1 else f"tokens_local*{ranks}"

    def local_count(point: RequestPoint) -> tuple[int, int]:
        grid = token_grid_for(point)
        count = grid[0] * grid[1] * grid[2]
        return count, padded_length(count, ranks) // ranks

    def frame_inputs(point: RequestPoint, rng, *per_frame: tuple[str, tuple[int, ...]]) -> dict:
        """Per-frame inputs ([B, F, *shape] each) and the last rank's `token_frames` (it holds the padding)."""
        grid = token_grid_for(point)
        _, local = local_count(point)
        feeds = {name: normal(rng, (point.batch, grid[0], *shape), 0.1) for name, shape in per_frame}
        return {**feeds, "token_frames": tokens.token_frames(grid, local * (ranks - 1), local)}

    def normal(rng, shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def weights(rng, names):
        return {WEIGHT_PREFIX + n: normal(rng, shapes[n], shapes[n][-1] ** -0.5) for n in names}

    def sample_embed(point, rng):
        _, local = local_count(point)
        context = normal(rng, (point.batch, cfg.text_len, cfg.text_dim))
        context[:, rng.integers(1, cfg.text_len):] = 0.0
        return {"tokens": normal(rng, (point.batch, local, cfg.patch_channels)),
                "timesteps": rng.uniform(0, 1000, (point.batch, token_grid_for(point)[0])).astype(np.float32),
                "context": context}

    def sample_pre(point, rng):
        grid = token_grid_for(point)
        _, local = local_count(point)
        cos, sin = tokens.rope_tables(grid, head_dim)
        return {"x": normal(rng, (point.batch, local, dim)), **frame_inputs(point, rng, ("time_mod", (6, dim))),
                "rope_cos": np.ascontiguousarray(np.resize(cos, (local, pairs))),
                "rope_sin": np.ascontiguousarray(np.resize(sin, (local, pairs))),
                **weights(rng, PRE_ATTENTION_WEIGHTS)}

    def sample_attn(point, rng):
        count, local = local_count(point)
        padded = local * ranks
        feeds = {name: normal(rng, (point.batch, padded, local_heads, head_dim)) for name in ("q", "k", "v")}
        feeds["k"], feeds["v"] = feeds["k"][:, :count].copy(), feeds["v"][:, :count].copy()  # real keys only
        return feeds

    def sample_post(point, rng):
        _, local = local_count(point)
        return {"x": normal(rng, (point.batch, local, dim)), "attn": normal(rng, (point.batch, local, heads, head_dim)),
                **frame_inputs(point, rng, ("time_mod", (6, dim))),
                "context_emb": normal(rng, (point.batch, cfg.text_len, dim)), **weights(rng, POST_ATTENTION_WEIGHTS)}

    def sample_head(point, rng):
        _, local = local_count(point)
        return {"x": normal(rng, (point.batch, local, dim)), **frame_inputs(point, rng, ("time_emb", (dim,)))}

    def weight_specs(names):
        return tuple(TensorSpec(WEIGHT_PREFIX + n, "float32", shapes[n]) for n in names)

    tok = ("batch", "tokens_local")
    x = TensorSpec("x", "float32", (*tok, dim))
    time_mod = TensorSpec("time_mod", "float32", ("batch", "frames", 6, dim))
    time_emb = TensorSpec("time_emb", "float32", ("batch", "frames", dim))
    token_frames = TensorSpec("token_frames", "int64", ("tokens_local",))
    context = TensorSpec("context_emb", "float32", ("batch", cfg.text_len, dim))
    qkv_local = tuple(TensorSpec(n, "float32", (*tok, heads, head_dim)) for n in ("q", "k", "v"))
    # q: every (padded) token; k, v: the real tokens only (the runtime cuts the padding off, official k_lens)
    qkv_all = (TensorSpec("q", "float32", ("batch", all_tokens, local_heads, head_dim)),
               *(TensorSpec(n, "float32", ("batch", "keys", local_heads, head_dim)) for n in ("k", "v")))
    common = dict(weights="dit", precision_key="dit", dims=dims, fp32_modules=FP32_MODULES, weight_prefixes=())
    return [
        SegmentSpec(name="dit_sp_embed",
                    inputs=(TensorSpec("tokens", "float32", (*tok, cfg.patch_channels)),
                            TensorSpec("timesteps", "float32", ("batch", "frames")),
                            TensorSpec("context", "float32", ("batch", cfg.text_len, cfg.text_dim))),
                    outputs=(x, time_emb, time_mod, context), graph=EmbedGraph, sample=sample_embed,
                    **{**common, "weight_prefixes": EMBED_PARTS}),
        SegmentSpec(name="dit_sp_pre",
                    inputs=(x, time_mod, token_frames, TensorSpec("rope_cos", "float32", ("tokens_local", pairs)),
                            TensorSpec("rope_sin", "float32", ("tokens_local", pairs)),
                            *weight_specs(PRE_ATTENTION_WEIGHTS)),
                    outputs=qkv_local, graph=PreAttentionGraph, sample=sample_pre, packed_from=5,
                    write_extra=write_block_weights, **common),
        SegmentSpec(name="dit_sp_attn",
                    inputs=qkv_all,
                    outputs=(TensorSpec("attn", "float32", ("batch", all_tokens, local_heads, head_dim)),),
                    graph=AttentionCoreGraph, sample=sample_attn, **common),
        SegmentSpec(name="dit_sp_post",
                    inputs=(x, TensorSpec("attn", "float32", (*tok, heads, head_dim)), time_mod, token_frames, context,
                            *weight_specs(POST_ATTENTION_WEIGHTS)),
                    outputs=(TensorSpec("x_out", "float32", (*tok, dim)),), graph=PostAttentionGraph,
                    sample=sample_post, packed_from=5, **common),
        SegmentSpec(name="dit_sp_head", inputs=(x, time_emb, token_frames),
                    outputs=(TensorSpec("velocity", "float32", (*tok, cfg.out_patch_channels)),),
                    graph=HeadGraph, sample=sample_head, **{**common, "weight_prefixes": HEAD_PARTS}),
    ]


def add_segment_specs(specs: list[ComponentSpec], config: ModelConfig, limits: ShapeLimits, ranks: int,
                      keep_dit: bool = True) -> list[ComponentSpec]:
    """The build's specs with the segments appended (and the whole `dit` dropped unless `keep_dit`)."""
    kept = [s for s in specs if keep_dit or s.name != "dit"]
    return kept + segment_specs(config, limits, ranks)


# -- the per-layer weights and the manifest section ----------------------------------------------------------
def block_weight_layout(config: ModelConfig) -> tuple[list[dict], int]:
    """[{name, shape, offset}] within one layer's record of the weights file (float32), and the record size."""
    shapes = block_weight_shapes(config)
    layout, offset = [], 0
    for name in block_weight_names():
        layout.append({"name": name, "shape": list(shapes[name]), "offset": offset})
        offset += 4 * math.prod(shapes[name])
    return layout, offset


def write_block_weights(dit: WanDiT, folder: Path) -> list[str]:
    """Every block's parameters as float32, layer after layer, in `block_weight_layout` order.

    Written from the model as exported (a bf16 build writes its bf16-rounded values), so the graphs' casts
    reproduce the whole-graph weights exactly.
    """
    with open(folder / WEIGHTS_FILE, "wb") as handle:
        for block in dit.blocks:
            params = dict(block.named_parameters())
            for name in block_weight_names():
                handle.write(np.ascontiguousarray(params[name].detach().float().numpy()).tobytes())
    return [WEIGHTS_FILE]


WIRE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def sp_manifest(config: ModelConfig, ranks: int, precision: str) -> dict:
    """The manifest's `sp` section: what the runtime needs to run the segments on `ranks` processes."""
    cfg = config.dit
    layout, layer_bytes = block_weight_layout(config)
    return {
        "version": SP_FORMAT_VERSION,
        "ranks": ranks,
        "scheme": "ulysses",
        "segments": {"embed": "dit_sp_embed", "pre_attention": "dit_sp_pre", "attention": "dit_sp_attn",
                     "post_attention": "dit_sp_post", "head": "dit_sp_head"},
        "num_layers": cfg.num_layers,
        "head_split": {"num_heads": cfg.num_heads, "heads_per_rank": cfg.num_heads // ranks,
                       "head_dim": cfg.head_dim, "rank_heads": "rank r owns heads [r*h, (r+1)*h)"},
        "tokens": {"per_rank": "ceil(L / ranks)", "padding": "zero tokens, identity RoPE rows, keys masked out "
                                                                "(official k_lens), dropped after the head",
                   "rank_tokens": "rank r owns tokens [r*l, (r+1)*l) of the padded sequence"},
        # q/k/v and the attention output hold values of this dtype (float32 graph I/O): exchange them in it.
        "wire_dtype": WIRE_DTYPES[precision],
        "weights": {
            "binding": "graph-inputs",
            "file": WEIGHTS_FILE, "dtype": "float32", "layer_bytes": layer_bytes,
            "input_prefix": WEIGHT_PREFIX, "tensors": layout,
            "inputs": {"dit_sp_pre": list(PRE_ATTENTION_WEIGHTS), "dit_sp_post": list(POST_ATTENTION_WEIGHTS)},
            "note": "layer i's tensor <name> is at i*layer_bytes + offset; dit_sp_pre/post take them as w.<name>",
        },
    }
