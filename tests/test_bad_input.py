"""Bad input, second round (issue 18): numbers that are not finite or out of range, NaN coming out of an engine,
and a checkpoint whose tokenizer folder has only a SentencePiece model (or nothing).

Everything through the real CLIs (`python -m wan_rt.cli` / `wan_export.cli` in subprocesses) over the tiny engines:
exit status 2, one `error:` line naming the problem and the fix, no output file and nothing else left behind.
An engine returning NaN is a real ONNX graph: the tiny engines' graph with one Add of NaN on its output (same
inputs and outputs, manifest sha256 re-written), or the real fp32 DiT overflowing on huge (finite) noise.
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from requires import require
from wan_rt.errors import WanError
from wan_rt.finite import all_finite, check_finite
from wan_rt.manifest import MANIFEST_NAME, sha256_file
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.schedulers import make_scheduler

PROMPT = "A red fox trots through fresh snow at sunrise"
NEGATIVE = "色调艳丽，过曝，静态，细节模糊不清"
LATENT = (48, 3, 6, 10)  # the tiny profile's default request: 160x96, 9 frames
REBUILD = "at fp32 or bf16"


def run(module: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal's one error line; log lines (INFO, written before the failure) may precede it."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


# -- numbers of the request -------------------------------------------------------------------------------------
NUMBERS = {
    # name: (extra arguments, fragments of the one error line)
    "guide-scale-nan": (["--guide-scale", "nan"], ["guide scale must be a finite number >= 0", "nan"]),
    "guide-scale-inf": (["--guide-scale", "inf"], ["guide scale must be a finite number >= 0", "inf"]),
    "guide-scale-negative": (["--guide-scale", "-2"], ["guide scale must be a finite number >= 0", "-2"]),
    "shift-nan": (["--shift", "nan"], ["shift must be a finite number > 0", "nan"]),
    "shift-minus-inf": (["--shift", "-inf"], ["shift must be a finite number > 0", "-inf"]),
    "steps-past-the-schedule": (["--steps", "100000"], ["steps 100000", "1000 training timesteps", "at most 1000"]),
    "noise-nan": (["--noise", "{tmp}/noise-nan.npy"], ["noise holds 3 NaN and 0 infinite values", "finite"]),
    "noise-inf": (["--noise", "{tmp}/noise-inf.npy"], ["noise holds 0 NaN and 1 infinite values", "finite"]),
}


@pytest.mark.parametrize("name", list(NUMBERS))
def test_cli_refuses_numbers_with_one_line(name, tiny_engines, tmp_path):
    extra, fragments = NUMBERS[name]
    noise = np.zeros(LATENT, np.float32)
    noise.flat[:3] = np.nan
    np.save(tmp_path / "noise-nan.npy", noise)
    noise = np.zeros(LATENT, np.float32)
    noise.flat[7] = -np.inf
    np.save(tmp_path / "noise-inf.npy", noise)
    before = listing(tmp_path)

    result = run("wan_rt.cli", "generate", "--engines", tiny_engines, "--prompt", PROMPT, "--steps", 1,
                 *[arg.format(tmp=tmp_path) for arg in extra], "--out", tmp_path / "video.mp4", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # refused before any log line
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == "" and listing(tmp_path) == before


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    with Pipeline(tiny_engines, show_progress=False) as pipeline:
        yield pipeline


@pytest.mark.parametrize("request_args, message", [
    (dict(guide_scale=float("nan")), "guide scale must be a finite number >= 0, got nan"),
    (dict(shift=float("inf")), "shift must be a finite number > 0, got inf"),
    (dict(fps=float("nan")), "fps must be a finite number > 0, got nan"),
    (dict(fps=0), "fps must be a finite number > 0, got 0"),
    (dict(steps=1001), "steps 1001 is more than the schedule's 1000 training timesteps"),
    (dict(noise=np.full(LATENT, np.inf, np.float32)), f"noise holds 0 NaN and {np.prod(LATENT)} infinite values"),
], ids=["guide-nan", "shift-inf", "fps-nan", "fps-0", "steps-1001", "noise-inf"])
def test_python_api_refuses_the_same_numbers(pipe, tmp_path, request_args, message):
    with pytest.raises(WanError, match=re.escape(message)):
        pipe.generate(GenerationRequest(PROMPT, **request_args), tmp_path / "video.mp4")
    assert listing(tmp_path) == []


def test_the_schedule_limit_is_the_solvers_too():
    assert len(make_scheduler("unipc", 1000, 5.0).timesteps) == 1000  # the limit itself is fine
    for name in ("unipc", "dpm++", "euler"):
        with pytest.raises(WanError, match=f"scheduler '{re.escape(name)}': steps 1001 is more than the schedule's "
                                           "1000 training timesteps; use at most 1000"):
            make_scheduler(name, 1001, 5.0)


# -- NaN / Inf coming out of an engine --------------------------------------------------------------------------
def test_the_guard_finds_every_kind_of_non_finite_value():
    clean = np.random.default_rng(0).standard_normal((4, 5, 6), dtype=np.float32)
    assert all_finite(clean) and all_finite(np.full(8, 1e30, np.float32))  # huge but finite: the exact path
    assert all_finite(np.arange(5)) and all_finite(np.zeros(0, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        for dtype in (np.float32, np.float64, np.float16):
            values = clean.astype(dtype)
            values[3, 4, 5] = bad
            assert not all_finite(values)
            assert not all_finite(values[:, ::2, 1:])  # non-contiguous views too (a copy for the dot product)
    values = clean.copy()
    values[0, 0, 0] = np.nan
    with pytest.raises(WanError, match=re.escape("dit returned non-finite values at step 7 (1 NaN, 0 Inf of 120): "
                                                 "usually a float16 overflow")):
        check_finite([clean, values], "dit", "at step 7")
    assert check_finite(clean, "vae_decoder_step", "x") is clean


def _poison(engines: Path, component: str, output: str) -> None:
    """Make `component`'s ONNX graph return NaN in `output`: one Add of a NaN constant after the node that made it,
    inputs and outputs unchanged; the manifest gets the new file's sha256, so the folder verifies."""
    import onnx
    from onnx import TensorProto, helper

    manifest = json.loads((engines / MANIFEST_NAME).read_text())
    info = manifest["components"][component]
    path = engines / info["file"]
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = [f"{name}.finite" if name == output else name for name in node.output]
    model.graph.initializer.append(helper.make_tensor("poison.nan", TensorProto.FLOAT, [], [float("nan")]))
    model.graph.node.append(helper.make_node("Add", [f"{output}.finite", "poison.nan"], [output]))
    onnx.checker.check_model(model)
    path.unlink()  # a real file in place of the link to the shared fixture
    onnx.save(model, str(path))
    info["files"][info["file"]] = sha256_file(path)
    (engines / MANIFEST_NAME).unlink()
    (engines / MANIFEST_NAME).write_text(json.dumps(manifest))


def poisoned_copy(tiny_engines: Path, folder: Path, component: str, output: str, keep=None) -> Path:
    """The tiny engines with links to the fixture's files (read-only: they are never written through), but a
    real manifest and a real NaN graph for `component`; `keep`: only these components in the manifest."""
    folder.mkdir()
    for entry in Path(tiny_engines).iterdir():
        if not entry.name.startswith("."):  # not the sha256 cache: this folder writes its own
            (folder / entry.name).symlink_to(entry)
    _poison(folder, component, output)
    if keep is not None:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        manifest["components"] = {name: manifest["components"][name] for name in keep}
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("case", ["text_encoder", "dit-overflow", "vae_decoder_first"])
def test_non_finite_engine_output_stops_with_one_line(case, tiny_engines, tmp_path):
    engines, extra = tiny_engines, []
    if case == "text_encoder":
        engines = poisoned_copy(tiny_engines, tmp_path / "engines", "text_encoder", "context")
        expected = "error: text_encoder returned non-finite values for the prompts ("
        fix = f"rebuild text_encoder {REBUILD}"
    elif case == "vae_decoder_first":
        engines = poisoned_copy(tiny_engines, tmp_path / "engines", "vae_decoder_first", "pixels")
        expected = "error: vae_decoder_first returned non-finite values at latent frame 0 ("
        fix = f"rebuild vae_decoder {REBUILD}"
    else:  # finite noise the fp32 DiT cannot represent its activations of: a real overflow in a real graph
        np.save(tmp_path / "huge.npy", np.full(LATENT, 3e38, np.float32))
        extra = ["--noise", tmp_path / "huge.npy"]
        expected = "error: dit returned non-finite values at denoising step 1 of 2 ("
        fix = f"rebuild dit {REBUILD}"
    out = tmp_path / "out"
    out.mkdir()

    result = run("wan_rt.cli", "generate", "--engines", engines, "--prompt", PROMPT, "--steps", 2, *extra,
                 "--save-latents", out / "latents.npy", "--out", out / "video.mp4", cwd=tmp_path)

    line = error_line(result)
    assert line.startswith(expected) and fix in line, line
    assert result.stdout == ""
    # no video; the latents (written before decoding) only when the decoder was the one that failed
    assert listing(out) == (["latents.npy"] if case == "vae_decoder_first" else [])


def test_check_reports_non_finite_outputs_as_a_failure(tiny_engines, tmp_path):
    engines = poisoned_copy(tiny_engines, tmp_path / "engines", "text_encoder", "context", keep=["text_encoder"])
    result = run("wan_export.cli", "check", "--engines", engines, "--json", tmp_path / "check.json")
    line = error_line(result)
    assert line.startswith("error: check failed: text_encoder/context at ") and "non-finite values" in line, line
    rows = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert rows and all(not row["passed"] and row["note"] == "non-finite values (NaN/Inf)" for row in rows)
    assert "FAIL (non-finite values (NaN/Inf))" in result.stdout


# -- a tokenizer folder with only spiece.model, or with nothing -------------------------------------------------
def train_sentencepiece(folder: Path, vocab_size: int = 600) -> Path:
    """An umT5-layout SentencePiece folder trained here (ids <pad>=0, </s>=1, <unk>=2, no <s>), as upstream
    google/umt5-xxl folders without tokenizer.json: spiece.model, tokenizer_config.json, special_tokens_map.json."""
    require(importlib.util.find_spec("sentencepiece") is not None, "pip install sentencepiece (in the test extra)")
    import sentencepiece as spm

    from wan_export.checkpoints.tokenizer import corpus

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "additional_special_tokens": []}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    return folder


def checkpoint_with_tokenizer(tiny_official_ckpt: Path, folder: Path, tokenizer: Path | None) -> Path:
    """The tiny official checkpoint (weights linked) with google/umt5-xxl replaced by `tokenizer` (None: empty)."""
    folder.mkdir()
    for entry in Path(tiny_official_ckpt).iterdir():
        if entry.name != "google":
            (folder / entry.name).symlink_to(entry)
    target = folder / "google" / "umt5-xxl"
    if tokenizer is None:
        target.mkdir(parents=True)
    else:
        shutil.copytree(tokenizer, target)
    return target


def test_sentencepiece_folder_is_converted_at_build_time(tiny_official_ckpt, tmp_path):
    """`wan-export build` on a checkpoint whose tokenizer is spiece.model only writes a tokenizer.json that the
    torch-free runtime loads (`wan-rt tokenize`), with the official HuggingfaceTokenizer's ids and mask."""
    import oracle

    spiece = train_sentencepiece(tmp_path / "spiece")
    ckpt = checkpoint_with_tokenizer(tiny_official_ckpt, tmp_path / "ckpt", spiece).parents[1]
    engines = tmp_path / "engines"
    built = run("wan_export.cli", "build", "--ckpt-dir", ckpt, "--out", engines, "--only", "text_encoder")
    assert built.returncode == 0, built.stderr
    assert "converted into" in built.stderr
    tokenized = run("wan_rt.cli", "tokenize", "--engines", engines, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                    "--out", tmp_path / "tokens.json")
    assert tokenized.returncode == 0, tokenized.stderr
    tokens = json.loads((tmp_path / "tokens.json").read_text())

    official = oracle.load_official().tokenizers.HuggingfaceTokenizer(name=str(spiece), seq_len=512,
                                                                      clean="whitespace")
    ids, mask = official([PROMPT, NEGATIVE], return_mask=True, add_special_tokens=True)
    np.testing.assert_array_equal(np.array(tokens["input_ids"]), ids.numpy())
    np.testing.assert_array_equal(np.array(tokens["attention_mask"]), mask.numpy())
    assert 5 < int(mask[0].sum()) < 100 and ids[0, int(mask[0].sum()) - 1] == 1  # real text, closed by </s>
    manifest = json.loads((engines / MANIFEST_NAME).read_text())
    assert "tokenizer/tokenizer.json" in manifest["tokenizer"]["files"]


def test_tokenizer_folder_without_either_file_is_refused_before_export(tiny_official_ckpt, tmp_path):
    tokenizer = checkpoint_with_tokenizer(tiny_official_ckpt, tmp_path / "ckpt", None)
    (tokenizer / "tokenizer_config.json").write_text("{}")
    out_parent = tmp_path / "builds"
    out_parent.mkdir()
    result = run("wan_export.cli", "build", "--ckpt-dir", tmp_path / "ckpt", "--out", out_parent / "engines")
    line = error_line(result)
    assert line == (f"error: no tokenizer in {tokenizer}: it needs tokenizer.json or spiece.model (the umT5 tokenizer "
                    f"of google/umt5-xxl); copy the checkpoint's tokenizer folder there")
    assert listing(out_parent) == []  # no engines folder, no staging folder: nothing was exported
    assert "exporting" not in result.stderr and "building" not in result.stderr
