"""Prompt text handling, exactly as the official Wan code does it, without torch or transformers.

Official path (wan/modules/t5.py T5EncoderModel.__call__ -> wan/modules/tokenizers.py HuggingfaceTokenizer with
seq_len=512, clean='whitespace'):

    text = ftfy.fix_text(text); text = html.unescape(html.unescape(text)); text = text.strip()
    text = regex.sub(r'\\s+', ' ', text).strip()
    AutoTokenizer(...)(texts, padding='max_length', truncation=True, max_length=512, add_special_tokens=True)

Here the same cleaning, then the folder's `tokenizer.json` through the `tokenizers` library with the same padding
(<pad>, right side, to 512) and truncation (right side, 511 text tokens + </s>). The official code truncates
silently; `encode(..., return_truncated=True)` says which prompts lost tokens so the caller can warn.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np

from .errors import WanError

__all__ = ["clean_prompt", "PromptTokenizer", "TEXT_LEN"]

TEXT_LEN = 512  # wan_shared_cfg.text_len

# The official code collapses whitespace with the third-party `regex` module, whose `\s` is exactly the Unicode
# White_Space property. The standard `re` module's `\s` also matches U+001C..U+001F (str.isspace), so the class
# is spelled out here instead of relying on `\s`.
_WHITE_SPACE = re.compile(
    "[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clean_prompt(text: str) -> str:
    """HuggingfaceTokenizer._clean with clean='whitespace': whitespace_clean(basic_clean(text))."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITE_SPACE.sub(" ", text)
    return text.strip()


class PromptTokenizer:
    """The umT5 tokenizer of a checkpoint folder (google/umt5-xxl layout), padded and truncated like Wan."""

    def __init__(self, tokenizer, max_length: int = TEXT_LEN, pad_token: str = "<pad>"):
        self.max_length = int(max_length)
        self._tokenizer = tokenizer
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise WanError(f"the tokenizer has no {pad_token!r} token; is this an umT5 tokenizer.json?")
        self.pad_id = int(pad_id)
        self.pad_token = pad_token
        # An untouched copy for counting tokens; the main one pads and truncates, set once here (no per-call
        # state changes, so one instance can serve several threads).
        self._plain = type(tokenizer).from_str(tokenizer.to_str())
        self._plain.no_truncation()
        self._plain.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length, stride=0, strategy="longest_first",
                                    direction="right")
        tokenizer.enable_padding(direction="right", pad_id=self.pad_id, pad_type_id=0, pad_token=pad_token,
                                 length=self.max_length)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, max_length: int = TEXT_LEN) -> "PromptTokenizer":
        """Load `<path>/tokenizer.json` (or `path` itself when it is that file)."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            raise WanError(f"no tokenizer.json in {str(path)!r}: point it at the umT5 tokenizer folder "
                           "(google/umt5-xxl in the official checkpoint, tokenizer/ in the diffusers layout)")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # the Rust side raises plain Exceptions for malformed files
            raise WanError(f"cannot read {str(file)!r} as a tokenizers file: {error}") from None
        return cls(tokenizer, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: str | Sequence[str], *, clean: bool = True, return_truncated: bool = False):
        """texts -> (ids int64 [B, max_length], mask int64 [B, max_length]) as the official tokenizer call.

        With `return_truncated=True` a third item, a list of bools, tells which prompts were cut to fit
        (the official code drops the excess silently).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = [clean_prompt(text) if clean else text for text in texts]
        if not texts:
            empty = np.zeros((0, self.max_length), dtype=np.int64)
            return (empty, empty.copy(), []) if return_truncated else (empty, empty.copy())
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(texts), -1)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64).reshape(len(texts), -1)
        if not return_truncated:
            return ids, mask
        truncated = [bool(encoding.overflowing) for encoding in encodings]
        return ids, mask, truncated

    def count_tokens(self, text: str, *, clean: bool = True) -> int:
        """Tokens of one prompt including the closing </s>, before truncation (the limit is max_length)."""
        text = clean_prompt(text) if clean else text
        return len(self._plain.encode(text, add_special_tokens=True).ids)
