"""text_encoder: token ids + attention mask -> context [B, 512, dim], zero where the mask is 0."""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from wan_export.components.base import ComponentSpec, RequestPoint, TensorSpec
from wan_export.config import ModelConfig
from wan_rt.shapes import ShapeLimits


class TextEncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids, attention_mask)


def text_encoder_spec(config: ModelConfig, limits: ShapeLimits) -> ComponentSpec:
    text_len, width, vocab = config.t5.text_len, config.t5.dim, config.t5.vocab_size

    def sample(point: RequestPoint, rng: np.random.Generator) -> dict:
        ids = rng.integers(3, vocab, size=(point.batch, text_len), dtype=np.int64)
        mask = np.zeros((point.batch, text_len), dtype=np.int64)
        for row in range(point.batch):
            length = int(rng.integers(2, min(64, text_len)))
            mask[row, :length] = 1
            ids[row, length - 1] = 1  # </s>
            ids[row, length:] = 0  # <pad>
        return {"input_ids": ids, "attention_mask": mask}

    return ComponentSpec(
        name="text_encoder", weights="t5", precision_key="text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", text_len)),
                TensorSpec("attention_mask", "int64", ("batch", text_len))),
        outputs=(TensorSpec("context", "float32", ("batch", text_len, width)),),
        dims={"batch": (limits.batch[0], limits.batch[1], limits.batch[1])},
        graph=TextEncoderGraph, sample=sample,
    )
