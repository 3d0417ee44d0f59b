"""umT5 encoder checkpoints: official Wan key layout <-> Hugging Face `UMT5EncoderModel` layout.

Official (models_t5_umt5-xxl-enc-bf16.pth)          HF (diffusers `text_encoder/`, UMT5EncoderModel)
  token_embedding.weight                            shared.weight (+ its tied alias encoder.embed_tokens.weight)
  blocks.{i}.norm1.weight                           encoder.block.{i}.layer.0.layer_norm.weight
  blocks.{i}.attn.{q,k,v,o}.weight                  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
  blocks.{i}.pos_embedding.embedding.weight         encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight
  blocks.{i}.norm2.weight                           encoder.block.{i}.layer.1.layer_norm.weight
  blocks.{i}.ffn.gate.0.weight  (gelu branch)       encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight
  blocks.{i}.ffn.fc1.weight     (linear branch)     encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight
  blocks.{i}.ffn.fc2.weight                         encoder.block.{i}.layer.1.DenseReluDense.wo.weight
  norm.weight                                       encoder.final_layer_norm.weight

The math is identical on both sides (HF: gelu_new(wi_0 x) * wi_1 x; official: fc1(x) * gelu_tanh(gate.0(x))), so
the maps only rename; tensors are passed through untouched (same objects).
"""
from __future__ import annotations

import re
from typing import Mapping

from ..config import T5Config

__all__ = ["hf_to_official", "official_to_hf", "hf_config", "t5_config_from_state_dict", "is_hf_layout"]

# Per-block suffixes: official -> HF (after "blocks.{i}." / "encoder.block.{i}.").
_BLOCK_OFFICIAL_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_HF_TO_OFFICIAL = {hf: official for official, hf in _BLOCK_OFFICIAL_TO_HF.items()}

_OFFICIAL_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)")

_HF_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def official_to_hf(sd: Mapping, *, tied: bool = True) -> dict:
    """Official Wan umT5 state dict -> `UMT5EncoderModel` state dict.

    With `tied=True` (default) the token embedding goes to both `shared.weight` and its tied alias
    `encoder.embed_tokens.weight` (the same tensor object), as `UMT5EncoderModel.state_dict()` lists both, so the
    result loads with `load_state_dict(strict=True)`. With `tied=False` only `shared.weight` is kept: the layout
    `save_pretrained` writes, and what `safetensors.torch.save_file` accepts (it refuses two names for one
    tensor). Unknown key -> ValueError naming it.
    """
    out: dict = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            for hf_key in (_HF_EMBEDDING_KEYS if tied else _HF_EMBEDDING_KEYS[:1]):
                out[hf_key] = value
            continue
        if key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
            continue
        match = _OFFICIAL_BLOCK.fullmatch(key)
        if match and match.group(2) in _BLOCK_OFFICIAL_TO_HF:
            out[f"encoder.block.{match.group(1)}.{_BLOCK_OFFICIAL_TO_HF[match.group(2)]}"] = value
            continue
        raise ValueError(f"unknown key in an official umT5 state dict: {key!r}")
    return out


def hf_to_official(sd: Mapping) -> dict:
    """`UMT5EncoderModel` state dict (or the encoder half of a `UMT5Model`-style dict) -> official Wan layout.

    `shared.weight` and `encoder.embed_tokens.weight` are the same tied tensor; either one (or both, with the same
    shape) gives `token_embedding.weight`. Unknown key -> ValueError naming it.
    """
    out: dict = {}
    embeddings = [key for key in _HF_EMBEDDING_KEYS if key in sd]
    if len(embeddings) == 2 and tuple(sd[embeddings[0]].shape) != tuple(sd[embeddings[1]].shape):
        raise ValueError("shared.weight and encoder.embed_tokens.weight differ in shape: "
                         f"{tuple(sd[embeddings[0]].shape)} vs {tuple(sd[embeddings[1]].shape)}")
    if embeddings:
        out["token_embedding.weight"] = sd[embeddings[0]]
    for key, value in sd.items():
        if key in _HF_EMBEDDING_KEYS:
            continue
        if key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
            continue
        match = _HF_BLOCK.fullmatch(key)
        if match and match.group(2) in _BLOCK_HF_TO_OFFICIAL:
            out[f"blocks.{match.group(1)}.{_BLOCK_HF_TO_OFFICIAL[match.group(2)]}"] = value
            continue
        raise ValueError(f"unknown key in a Hugging Face UMT5EncoderModel state dict: {key!r}")
    return out


def is_hf_layout(sd: Mapping) -> bool:
    """True when the keys are HF UMT5 names (encoder.block..., shared.weight), False for the official names."""
    return any(key.startswith("encoder.") or key == "shared.weight" for key in sd)


def hf_config(cfg: T5Config) -> dict:
    """`text_encoder/config.json` for the diffusers layout: a UMT5Config dict as in google/umt5-xxl."""
    if cfg.dim_attn != cfg.num_heads * cfg.head_dim:
        raise ValueError(f"dim_attn {cfg.dim_attn} is not num_heads {cfg.num_heads} x head_dim")
    return {
        "architectures": ["UMT5EncoderModel"],
        "model_type": "umt5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.dim,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.dim_ffn,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.num_buckets,
        "relative_attention_max_distance": cfg.max_distance,
        "dropout_rate": 0.1,
        "classifier_dropout": 0.0,
        "layer_norm_epsilon": cfg.eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "is_encoder_decoder": True,
        "scalable_attention": True,
        "tie_word_embeddings": False,
        "use_cache": True,
        "output_past": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "tokenizer_class": "T5Tokenizer",
    }


def t5_config_from_state_dict(sd: Mapping, num_heads: int | None = None) -> T5Config:
    """Infer the encoder's sizes from an official-layout (or HF-layout) state dict.

    vocab_size, dim from token_embedding [vocab, dim]; dim_attn from attn.q [dim_attn, dim]; dim_ffn from ffn.fc1
    [dim_ffn, dim]; num_layers from the block indices; num_buckets, num_heads from pos_embedding [buckets, heads].
    `num_heads`, when given, must agree with the checkpoint. max_distance, text_len and eps keep their defaults
    (they are not stored in the weights).
    """
    if is_hf_layout(sd):
        sd = hf_to_official(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"not a umT5 encoder state dict: missing {key!r}")
        return tuple(sd[key].shape)

    vocab_size, dim = shape("token_embedding.weight")
    indices = {int(m.group(1)) for m in (_OFFICIAL_BLOCK.fullmatch(k) for k in sd) if m}
    if not indices:
        raise ValueError("not a umT5 encoder state dict: no blocks.{i}.* keys")
    num_layers = max(indices) + 1
    if indices != set(range(num_layers)):
        raise ValueError(f"umT5 state dict has gaps in its block indices: {sorted(set(range(num_layers)) - indices)}")
    dim_attn = shape("blocks.0.attn.q.weight")[0]
    dim_ffn = shape("blocks.0.ffn.fc1.weight")[0]
    num_buckets, heads = shape("blocks.0.pos_embedding.embedding.weight")
    if num_heads is not None and num_heads != heads:
        raise ValueError(f"num_heads={num_heads} contradicts the checkpoint's relative position bias "
                         f"({num_buckets} buckets x {heads} heads)")
    if dim_attn % heads:
        raise ValueError(f"dim_attn {dim_attn} is not a multiple of num_heads {heads}")
    return T5Config(vocab_size=vocab_size, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=heads,
                    num_layers=num_layers, num_buckets=num_buckets)
