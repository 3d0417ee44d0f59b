"""A small umT5-like tokenizer made locally (no model hub): for the tiny preset, tests and the demo.

`write_tokenizer(folder, vocab_size)` trains a SentencePiece-style Unigram model with the `tokenizers` library on a
corpus built into this module (English and Chinese video-prompt phrases, including every character of the
official Chinese negative prompt), and saves it in the Hugging Face layout of google/umt5-xxl:

    tokenizer.json            the `tokenizers` pipeline (what the torch-free runtime loads)
    tokenizer_config.json     tokenizer_class "T5TokenizerFast", extra_ids 0, model_max_length 512
    special_tokens_map.json   <pad>, </s>, <unk>

so `transformers.AutoTokenizer.from_pretrained(folder)` (what the official `HuggingfaceTokenizer` calls) loads it
offline. Ids: <pad>=0, </s>=1, <unk>=2 (as umT5); the post-processor appends </s>; exactly `vocab_size` pieces.

The pipeline in tokenizer.json is exactly what transformers' `T5Tokenizer` rebuilds around the stored vocabulary
(transformers 5 keeps only the vocabulary, the post-processor and a Precompiled normalizer charsmap from the file,
and always uses WhitespaceSplit + Metaspace(prepend_scheme="always")): no normalizer, pre-tokenizer
Sequence[WhitespaceSplit, Metaspace], Unigram(unk_id=2), so the raw file and AutoTokenizer give the same ids with
any transformers version.

Deterministic: the corpus is fixed, the scores the trainer hands out in hash-set order are canonicalised, ties are
ordered by piece, scores are rounded, and the JSON is written with a fixed layout, so two calls write the same
bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import DEFAULT_NEGATIVE_PROMPT

__all__ = ["write_tokenizer", "corpus", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in umT5
_SCORE_DECIMALS = 6

_SUBJECTS = [
    "a golden retriever", "a young woman in a red dress", "an old fisherman", "a small white cat",
    "two children", "a robot", "a red sports car", "a flock of birds", "a panda", "an astronaut",
    "a samurai", "a dancer", "a chef", "a horse", "a sailing boat", "a steam train", "a butterfly",
    "a teddy bear", "a jellyfish", "a dragon",
]
_ACTIONS = [
    "runs across", "walks slowly through", "flies over", "sits quietly in", "dances in", "jumps into",
    "drives along", "floats above", "plays in", "looks around", "rides through", "swims in",
]
_PLACES = [
    "a snowy forest", "the city streets at night", "a sunny beach", "a field of sunflowers", "a busy market",
    "the surface of the moon", "a quiet library", "a mountain lake", "a neon-lit alley", "an ancient temple",
    "a wheat field at sunset", "the deep ocean", "a cozy kitchen", "a rainy train station",
]
_STYLES = [
    "cinematic lighting", "slow motion", "4k, highly detailed", "aerial drone shot", "close-up shot",
    "wide angle lens", "soft morning light", "golden hour", "shallow depth of field", "handheld camera",
    "anime style", "watercolor painting style", "realistic, natural colors", "tracking shot",
    "time-lapse", "dramatic shadows", "vibrant colors", "film grain",
]
_ENGLISH_EXTRA = [
    "The camera slowly pans to the right.",
    "The camera zooms in on her face as she smiles.",
    "Waves crash against the rocks while seagulls circle overhead.",
    "Leaves fall gently from the trees in the autumn wind.",
    "Fireworks explode in the night sky above the river.",
    "Steam rises from a cup of hot coffee on a wooden table.",
    "A timelapse of clouds moving over green hills.",
    "Rain drops run down the window glass; the city lights blur behind it.",
    "Two cats play with a ball of yarn on the carpet.",
    "A man in a black suit walks toward the camera, then stops.",
    "Snow falls on a quiet village, smoke rising from the chimneys.",
    "Summer beach, sunny day, a surfer rides a big wave.",
    "An elderly couple dances together in the living room.",
    "A little girl blows out the candles on her birthday cake.",
    "Camera orbits around a marble statue in a museum hall.",
    "The sun rises over the mountains and the fog slowly clears.",
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, still,",
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers,",
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers,",
    "still picture, messy background, three legs, many people in the background, walking backwards",
    "Tom & Jerry chase each other around the house; \"cartoon\" style, 24 fps.",
    "A 3D render of a city in the year 2077, with flying cars (no people).",
    "high quality, masterpiece, best quality, ultra-detailed, 8k, HDR, sharp focus",
    "First-person view of a bicycle ride down a steep hill!",
    "What happens next? The door opens and a dog runs out.",
    "pixel art, retro video game, 16-bit, side-scrolling",
    "A woman's hair moves in the wind; she turns her head and laughs.",
    "Macro shot: a bee collects pollen from a purple flower.",
]
_CHINESE = [
    DEFAULT_NEGATIVE_PROMPT,
    "一只小猫在草地上奔跑，阳光明媚。",
    "一位年轻女子站在海边，海风吹动她的长发。",
    "镜头缓缓推进，展示城市夜景的灯光。",
    "雪花飘落在安静的小村庄里。",
    "一个男孩骑着自行车穿过金色的麦田。",
    "电影级画面，高清，细节丰富，色彩自然。",
    "慢动作镜头，水滴落入平静的湖面。",
    "一条龙在云层中飞翔，气势磅礴。",
    "夕阳下，一对老人手牵手在公园里散步。",
    "宇航员在月球表面行走，背景是蓝色的地球。",
    "一只熊猫坐在竹林里吃竹子。",
    "繁忙的街道上车来车往，行人匆匆。",
    "厨师在厨房里做菜，锅里冒着热气。",
    "鲜花在春天里盛开，蝴蝶在花丛中飞舞。",
    "航拍镜头，高山和河流，壮丽的风景。",
    "一个机器人在未来城市中巡逻。",
    "下雨天，窗户上的雨滴慢慢滑落。",
    "小女孩在生日聚会上吹灭蜡烛，大家一起鼓掌。",
    "海浪拍打着岩石，海鸥在天空中盘旋。",
    "高质量，杰作，最佳画质，超高清。",
    "一匹白马在草原上奔驰，尘土飞扬。",
    "古老的寺庙里，僧人在安静地打坐。",
    "烟花在夜空中绽放，照亮了整条河。",
    "动漫风格，一个少年站在樱花树下。",
    "水彩画风格的山水，云雾缭绕。",
    "特写镜头，一只蜜蜂在紫色的花朵上采蜜。",
    "两只狗在雪地里玩耍，追逐着一个红色的球。",
    "镜头向右平移，展示一个热闹的集市。",
    "她转过头来，对着镜头微笑。",
]


def corpus() -> list[str]:
    """The built-in training text: a few hundred prompt-like lines, in a fixed order."""
    lines: list[str] = []
    for i, subject in enumerate(_SUBJECTS):
        for j in range(6):
            action = _ACTIONS[(i + j) % len(_ACTIONS)]
            place = _PLACES[(3 * i + j) % len(_PLACES)]
            style = _STYLES[(5 * i + 2 * j) % len(_STYLES)]
            lines.append(f"{subject[0].upper()}{subject[1:]} {action} {place}, {style}.")
    lines.extend(_ENGLISH_EXTRA)
    lines.extend(_STYLES)
    lines.extend(_CHINESE)
    # Chinese phrases one by one (the negative prompt is a comma-separated list of them).
    for sentence in _CHINESE:
        lines.extend(part for part in sentence.replace("。", "，").split("，") if part)
    return lines


def _alphabet(lines: list[str]) -> list[str]:
    return sorted({ch for line in lines for ch in line if not ch.isspace()})


def _pipeline(tokenizer) -> None:
    from tokenizers import decoders, pre_tokenizers

    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(),
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)


def _train(vocab_size: int) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, trainers

    lines = corpus()
    alphabet = _alphabet(lines)
    minimum = len(SPECIAL_TOKENS) + len(alphabet) + 1  # + the bare "▁" piece
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small for the built-in corpus: it needs at least "
                         f"{minimum} (3 special tokens + {len(alphabet) + 1} characters)")
    tokenizer = Tokenizer(models.Unigram())
    _pipeline(tokenizer)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>", initial_alphabet=alphabet, max_piece_length=16, shrinking_factor=0.75,
        n_sub_iterations=2)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = [(str(piece), float(score)) for piece, score in model["vocab"]]
    if [piece for piece, _ in vocab[:3]] != list(SPECIAL_TOKENS):
        raise RuntimeError(f"unexpected special token order after training: {vocab[:3]}")
    return vocab


def _canonical_scores(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Make the trainer's output independent of hash-set iteration order.

    The `tokenizers` Unigram trainer appends every required character that pruning dropped with the score
    `min_score + k * 0.0001`, k counting in the (randomly seeded) iteration order of a hash set, so the same
    characters get different scores from run to run. Those scores lie exactly (bit for bit: same f64 sums) on that
    grid; give the characters found there the grid's scores in code point order instead.
    """
    if not pieces:
        return pieces
    floor = min(score for _, score in pieces)
    grid, penalty = [], 0.0
    for _ in range(len(pieces)):
        grid.append(floor + penalty)
        penalty += 0.0001
    on_grid = set(grid)
    chars = sorted(piece for piece, score in pieces if len(piece) == 1 and score in on_grid)
    fixed = {char: grid[k] for k, char in enumerate(chars)}
    return [(piece, fixed.get(piece, score)) for piece, score in pieces]


def _vocabulary(vocab_size: int) -> list[tuple[str, float]]:
    vocab = _train(vocab_size)
    if len(vocab) > vocab_size:
        raise ValueError(f"training gave {len(vocab)} pieces, more than vocab_size={vocab_size}")
    specials = [(piece, 0.0) for piece in SPECIAL_TOKENS]
    rest = [(piece, round(score, _SCORE_DECIMALS)) for piece, score in _canonical_scores(vocab[3:])]
    rest.sort(key=lambda item: (-item[1], item[0]))
    # Pad to exactly vocab_size with pieces that are never the best segmentation of ordinary text.
    floor = min((score for _, score in rest), default=0.0) - 100.0
    known = {piece for piece, _ in vocab}
    index = 0
    while len(specials) + len(rest) < vocab_size:
        piece = f"<unused_{index}>"
        index += 1
        if piece not in known:
            rest.append((piece, round(floor, _SCORE_DECIMALS)))
    return specials + rest


def _tokenizer_json(vocab: list[tuple[str, float]]) -> str:
    from tokenizers import AddedToken, Tokenizer, models, processors

    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    _pipeline(tokenizer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    tokenizer.no_padding()
    tokenizer.no_truncation()
    data = json.loads(tokenizer.to_str())
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _config_files(model_max_length: int) -> dict[str, dict]:
    added = {str(i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, token in enumerate(SPECIAL_TOKENS)}
    tokenizer_config = {
        "tokenizer_class": "T5TokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_ids": 0,
        "model_max_length": model_max_length,
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    special_tokens_map = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": special_tokens_map}


def write_tokenizer(folder: str | os.PathLike, vocab_size: int, model_max_length: int = 512) -> None:
    """Train the built-in umT5-like tokenizer with exactly `vocab_size` pieces and save it under `folder`."""
    vocab_size = int(vocab_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = _tokenizer_json(_vocabulary(vocab_size))
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    for name, data in _config_files(model_max_length).items():
        (folder / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
