"""umT5 text encoder, key maps and prompt tokenizer vs the official Wan code and HF UMT5 (tiny config, CPU)."""
import copy
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

import oracle
from wan_export.checkpoints import t5_keys
from wan_export.checkpoints.tokenizer import write_tokenizer
from wan_export.config import DEFAULT_NEGATIVE_PROMPT, TINY
from wan_export.model.t5 import UMT5Encoder
from wan_rt.errors import WanError
from wan_rt.text import PromptTokenizer, clean_prompt

CFG = TINY.t5
TEXT_LEN = 512
LONG_PROMPT = " ".join(["A golden retriever runs across a snowy forest, cinematic lighting, slow motion."] * 60)
PROMPTS = [
    "A cat &amp;amp; a dog   run\t\n across the beach &lt;slowly&gt;,  golden hour.",
    "   leading and trailing spaces \u3000 ideographic\u00a0space\u2003em space\x1cseparator  ",
    DEFAULT_NEGATIVE_PROMPT,
    "mojibake cafÃ© and Ｆｕｌｌｗｉｄｔｈ text 🎬 with </s> inside",
    "",
    LONG_PROMPT,
]


@pytest.fixture(scope="module")
def official():
    return oracle.load_official()


@pytest.fixture(scope="module")
def official_encoder(official):
    encoder = official.t5.T5Encoder(
        vocab=CFG.vocab_size, dim=CFG.dim, dim_attn=CFG.dim_attn, dim_ffn=CFG.dim_ffn, num_heads=CFG.num_heads,
        num_layers=CFG.num_layers, num_buckets=CFG.num_buckets, shared_pos=False, dropout=0.0).eval()
    oracle.randomize_(encoder, seed=0, scale=0.1)
    return encoder


@pytest.fixture(scope="module")
def ours(official_encoder):
    model = UMT5Encoder(CFG).eval()
    model.load_state_dict(official_encoder.state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder, CFG.vocab_size)
    return folder


def batch(lengths, seed=1):
    """ids/mask [B, 512]: random tokens, </s> last, <pad> (0) after, as the tokenizer produces."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), TEXT_LEN, dtype=torch.long)
    mask = torch.zeros(len(lengths), TEXT_LEN, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, CFG.vocab_size, (length,), generator=generator)
        ids[row, length - 1] = 1
        mask[row, :length] = 1
    return ids, mask


def official_context(context_list):
    """T5EncoderModel.__call__ output (trimmed per prompt) zero-padded to 512 as WanModel.forward does."""
    return torch.stack([torch.cat([u, u.new_zeros(TEXT_LEN - u.size(0), u.size(1))]) for u in context_list])


def official_call(encoder, ids, mask):
    """The body of T5EncoderModel.__call__ after tokenization."""
    seq_lens = mask.gt(0).sum(dim=1).long()
    context = encoder(ids, mask)
    return official_context([u[:v] for u, v in zip(context, seq_lens)])


# -- encoder ---------------------------------------------------------------------------------------------------
def test_state_dict_layout_matches_official(official_encoder, ours):
    expected = {k: tuple(v.shape) for k, v in official_encoder.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert "blocks.1.pos_embedding.embedding.weight" in expected  # per-block bias (UMT5), not shared


def test_encoder_matches_official_fp32(official_encoder, ours):
    ids, mask = batch([37, 300])  # 300 > max_distance: the saturated buckets are exercised too
    with torch.no_grad():
        expected = official_call(official_encoder, ids, mask)
        actual = ours(ids, mask)
    assert actual.dtype == torch.float32 and actual.shape == (2, TEXT_LEN, CFG.dim)
    error = oracle.max_rel_error(actual, expected)
    assert error <= 1e-4, f"fp32 context vs official: max rel error {error:.3e}"
    assert torch.all(actual[0, 37:] == 0) and torch.all(actual[1, 300:] == 0)


def test_encoder_bf16_close_to_official_bf16(official_encoder, ours):
    official_bf16 = copy.deepcopy(official_encoder).to(torch.bfloat16)
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    ids, mask = batch([20, 150], seed=2)
    with torch.no_grad():
        expected = official_call(official_bf16, ids, mask).float()
        actual = ours_bf16(ids, mask)
    assert actual.dtype == torch.float32
    error = oracle.max_rel_error(actual, expected)
    assert error <= 2e-2, f"bf16 context vs official bf16: max rel error {error:.3e}"


def test_fully_padded_row_gives_zeros_not_nan(ours):
    ids, mask = batch([12, 1])
    mask[1] = 0  # a row with no real token at all
    with torch.no_grad():
        context = ours(ids, mask)
        raw = ours.encode(ids, mask)
    assert torch.isfinite(raw).all(), "masked-out row produced NaN/inf before the mask multiply"
    assert torch.all(context[1] == 0)


def test_encoder_with_official_wrapper_and_tokenizer(official, official_encoder, ours, tokenizer_dir):
    """Whole chain: official T5EncoderModel.__call__ (its HuggingfaceTokenizer on our folder) vs tokenizer + ours."""
    wrapper = official.t5.T5EncoderModel.__new__(official.t5.T5EncoderModel)
    wrapper.model = official_encoder
    wrapper.tokenizer = official.tokenizers.HuggingfaceTokenizer(name=str(tokenizer_dir), seq_len=TEXT_LEN,
                                                                 clean="whitespace")
    prompts = [PROMPTS[0], DEFAULT_NEGATIVE_PROMPT]
    with torch.no_grad():
        expected = official_context(wrapper(prompts, "cpu"))
        ids, mask = PromptTokenizer.from_folder(tokenizer_dir).encode(prompts)
        actual = ours(torch.from_numpy(ids), torch.from_numpy(mask))
    error = oracle.max_rel_error(actual, expected)
    assert error <= 1e-4, f"prompt -> context vs official T5EncoderModel: max rel error {error:.3e}"


# -- HF UMT5 and key maps ------------------------------------------------------------------------------------
def test_hf_umt5_matches(official_encoder, ours):
    from transformers import UMT5Config, UMT5EncoderModel

    official_sd = official_encoder.state_dict()
    hf = UMT5EncoderModel(UMT5Config(**t5_keys.hf_config(CFG))).eval()
    hf.load_state_dict(t5_keys.official_to_hf(official_sd), strict=True)
    lengths = [37, 300]
    ids, mask = batch(lengths, seed=3)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = ours(ids, mask)
    error = max(oracle.max_rel_error(actual[i, :n], expected[i, :n]) for i, n in enumerate(lengths))
    assert error <= 1e-4, f"ours vs HF UMT5EncoderModel on real tokens: max rel error {error:.3e}"

    hf_sd = hf.state_dict()
    assert set(t5_keys.official_to_hf(official_sd)) == set(hf_sd)
    back = t5_keys.hf_to_official(t5_keys.official_to_hf(official_sd))
    assert set(back) == set(official_sd)
    assert all(back[k] is official_sd[k] for k in official_sd)
    again = t5_keys.official_to_hf(t5_keys.hf_to_official(hf_sd))
    assert set(again) == set(hf_sd) and all(torch.equal(again[k], hf_sd[k]) for k in hf_sd)
    file_layout = t5_keys.official_to_hf(official_sd, tied=False)
    assert set(hf_sd) - set(file_layout) == {"encoder.embed_tokens.weight"}
    assert set(t5_keys.hf_to_official(file_layout)) == set(official_sd)


def test_key_maps_reject_unknown_keys():
    with pytest.raises(ValueError, match="blocks.0.attn.bogus.weight"):
        t5_keys.official_to_hf({"blocks.0.attn.bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="decoder.block.0.layer.0.SelfAttention.q.weight"):
        t5_keys.hf_to_official({"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(1)})


def test_config_from_state_dict(official_encoder):
    sd = official_encoder.state_dict()
    assert t5_keys.t5_config_from_state_dict(sd) == CFG
    assert t5_keys.t5_config_from_state_dict(t5_keys.official_to_hf(sd), num_heads=CFG.num_heads) == CFG
    real = t5_keys.t5_config_from_state_dict({k: torch.empty(s, device="meta") for k, s in {
        "token_embedding.weight": (256384, 4096), "blocks.0.attn.q.weight": (4096, 4096),
        "blocks.0.ffn.fc1.weight": (10240, 4096), "blocks.0.pos_embedding.embedding.weight": (32, 64),
        **{f"blocks.{i}.norm1.weight": (4096,) for i in range(24)}, "norm.weight": (4096,)}.items()})
    assert real == type(CFG)()  # the real umT5-XXL numbers are the T5Config defaults
    with pytest.raises(ValueError, match="num_heads"):
        t5_keys.t5_config_from_state_dict(sd, num_heads=CFG.num_heads + 1)


def test_hf_config_is_umt5_xxl_like():
    config = t5_keys.hf_config(type(CFG)())
    assert config["model_type"] == "umt5" and config["feed_forward_proj"] == "gated-gelu"
    assert (config["d_model"], config["d_kv"], config["d_ff"], config["num_heads"], config["num_layers"],
            config["vocab_size"]) == (4096, 64, 10240, 64, 24, 256384)
    assert config["dense_act_fn"] == "gelu_new" and config["is_gated_act"] is True
    assert config["tie_word_embeddings"] is False
    assert (config["relative_attention_num_buckets"], config["relative_attention_max_distance"]) == (32, 128)


# -- tokenizer -----------------------------------------------------------------------------------------------
def test_write_tokenizer_is_deterministic(tokenizer_dir, tmp_path):
    write_tokenizer(tmp_path, CFG.vocab_size)
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    match, mismatch, errors = filecmp.cmpfiles(tokenizer_dir, tmp_path, names, shallow=False)
    assert match == names, f"differing files: {mismatch + errors}"


def test_tokenizer_loads_in_transformers(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.vocab_size == CFG.vocab_size and len(tok) == CFG.vocab_size
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    # every character of the official negative prompt is a known piece (no <unk>)
    assert 2 not in tok(DEFAULT_NEGATIVE_PROMPT).input_ids


def test_prompt_tokenizer_matches_official(official, tokenizer_dir):
    reference = official.tokenizers.HuggingfaceTokenizer(name=str(tokenizer_dir), seq_len=TEXT_LEN,
                                                          clean="whitespace")
    expected_ids, expected_mask = reference(PROMPTS, return_mask=True, add_special_tokens=True)
    ours = PromptTokenizer.from_folder(tokenizer_dir)
    ids, mask, truncated = ours.encode(PROMPTS, return_truncated=True)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (len(PROMPTS), TEXT_LEN)
    np.testing.assert_array_equal(ids, expected_ids.numpy())
    np.testing.assert_array_equal(mask, expected_mask.numpy())
    assert truncated == [False] * (len(PROMPTS) - 1) + [True]
    assert ours.count_tokens(LONG_PROMPT) > TEXT_LEN and mask[-1].sum() == TEXT_LEN and ids[-1, -1] == 1
    for prompt in PROMPTS:
        assert clean_prompt(prompt) == reference._clean(prompt)


def test_truncation_boundary(official, tokenizer_dir):
    reference = official.tokenizers.HuggingfaceTokenizer(name=str(tokenizer_dir), seq_len=TEXT_LEN,
                                                          clean="whitespace")
    ours = PromptTokenizer.from_folder(tokenizer_dir)
    fits, over = " ".join(["a"] * (TEXT_LEN - 1)), " ".join(["a"] * TEXT_LEN)  # "▁a" is one piece
    assert ours.count_tokens(fits) == TEXT_LEN and ours.count_tokens(over) == TEXT_LEN + 1
    ids, mask, truncated = ours.encode([fits, over], return_truncated=True)
    expected_ids, expected_mask = reference([fits, over], return_mask=True, add_special_tokens=True)
    np.testing.assert_array_equal(ids, expected_ids.numpy())
    np.testing.assert_array_equal(mask, expected_mask.numpy())
    assert truncated == [False, True]


def test_whitespace_class_equals_regex_module():
    """The official cleaner uses `regex`'s \\s; ours spells the class out for the standard `re` module."""
    from wan_rt import text

    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert "".join(text._WHITE_SPACE.findall(every)) == "".join(regex.findall(r"\s", every))


def test_prompt_tokenizer_errors(tmp_path):
    with pytest.raises(WanError, match="no tokenizer.json"):
        PromptTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(WanError, match="cannot read"):
        PromptTokenizer.from_folder(tmp_path)


def test_runtime_text_imports_no_torch():
    code = ("import sys, wan_rt.text; bad = [m for m in ('torch', 'transformers', 'wan_export') if m in sys.modules];"
            " assert not bad, bad")
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(runtime), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
