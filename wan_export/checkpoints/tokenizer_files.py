"""A checkpoint's umT5 tokenizer folder made into the one the torch-free runtime loads (`tokenizer.json`).

Some upstream umT5 folders hold only the SentencePiece model (`spiece.model`, with tokenizer_config.json and
special_tokens_map.json). The runtime reads `tokenizer.json` with the `tokenizers` library and must not need
sentencepiece, so the build converts it here, with transformers' own slow-to-fast conversion: the tokenizer
`AutoTokenizer.from_pretrained(folder)` loads (what the official `HuggingfaceTokenizer` calls, so the ids are the
official ones) is saved as tokenizer.json. A folder with neither file is refused before any export.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from wan_rt.errors import WanError

log = logging.getLogger("wan_export")

__all__ = ["check_tokenizer_folder", "copy_tokenizer"]

TOKENIZER_JSON, SPIECE = "tokenizer.json", "spiece.model"


def _converted_json(folder: Path) -> str:
    """tokenizer.json text for a folder that has spiece.model only (transformers' slow-to-fast conversion)."""
    try:
        import sentencepiece  # noqa: F401 - transformers reads spiece.model through it
        import transformers
    except ImportError as exc:
        raise WanError(f"{folder} has {SPIECE} but no {TOKENIZER_JSON}; converting it needs {exc.name}: "
                       f"pip install sentencepiece transformers (build side only)") from None
    try:
        if (folder / "tokenizer_config.json").is_file():  # its tokenizer class, extra ids and special tokens
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        else:
            log.warning("%s has no tokenizer_config.json: converting %s with T5TokenizerFast's defaults", folder,
                        SPIECE)
            tokenizer = transformers.T5TokenizerFast.from_pretrained(str(folder))
        backend = tokenizer.backend_tokenizer
    except Exception as exc:  # noqa: BLE001 - transformers/sentencepiece raise many kinds for a bad model file
        raise WanError(f"cannot convert {folder / SPIECE} into {TOKENIZER_JSON}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}; is it an umT5 SentencePiece model?") from None
    backend.no_padding()  # the runtime sets Wan's padding and truncation itself
    backend.no_truncation()
    return backend.to_str(pretty=True)


def _has_tokenizer_json(folder: Path) -> bool:
    """True for tokenizer.json, False for spiece.model only; one WanError line for neither."""
    if (folder / TOKENIZER_JSON).is_file():
        return True
    if not (folder / SPIECE).is_file():
        raise WanError(f"no tokenizer in {folder}: it needs {TOKENIZER_JSON} or {SPIECE} (the umT5 tokenizer of "
                       f"google/umt5-xxl); copy the checkpoint's tokenizer folder there")
    return False


def check_tokenizer_folder(folder: Path) -> None:
    """One WanError line, before any export, for a tokenizer folder the build cannot turn into tokenizer.json."""
    folder = Path(folder)
    if not _has_tokenizer_json(folder):
        _converted_json(folder)  # a broken or unreadable model file fails now, not after the export


def copy_tokenizer(source: Path, destination: Path) -> None:
    """Copy the tokenizer folder; without tokenizer.json, write one converted from spiece.model."""
    source, destination = Path(source), Path(destination)
    converted = None if _has_tokenizer_json(source) else _converted_json(source)
    shutil.copytree(source, destination)
    if converted is not None:
        (destination / TOKENIZER_JSON).write_text(converted, encoding="utf-8")
        log.info("tokenizer: %s converted into %s", source / SPIECE, destination / TOKENIZER_JSON)
