"""`wan-rt generate` end to end over the tiny engines: outputs read back, noise/latents files, bad input refused
with one line, and the runtime working with torch and wan_export made unimportable.

The real CLI runs in subprocesses (`python -m wan_rt.cli generate ...`); the rest goes through `Pipeline`.
Few steps and small sizes throughout: the tiny engines make noise, so these tests check plumbing and shapes;
numerical parity with the official pipeline is tests/test_official_pipeline.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from requires import unwritable_folder
from wan_rt.errors import WanError
from wan_rt.image import load_image, prepare_image
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.text import PromptTokenizer
from wan_rt.video import read_video

PROMPT = "A red fox trots through fresh snow at sunrise"
LONG_PROMPT = " ".join(["A golden retriever runs across a snowy forest, cinematic lighting, slow motion."] * 60)


def run_cli(engines, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(engines), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr and "error:" not in result.stderr, result.stderr


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    with Pipeline(tiny_engines, show_progress=False) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def tokenizer(tiny_engines):
    return PromptTokenizer.from_folder(Path(tiny_engines) / "tokenizer")


# -- outputs through the real CLI -------------------------------------------------------------------------------
def test_cli_text_to_video_mp4(tiny_engines, tmp_path):
    out = tmp_path / "t2v.mp4"
    result = run_cli(tiny_engines, "--prompt", PROMPT, "--size", "192x64", "--frames", 13, "--steps", 2,
                     "--fps", 16, "--seed", 5, "--solver", "dpm++", "--out", out)
    assert_ok(result)
    assert f"wrote {out}" in result.stdout and "13 frames 192x64" in result.stdout and "seed 5" in result.stdout
    frames, fps = read_video(out)
    assert frames.shape == (13, 64, 192, 3) and frames.dtype == np.uint8
    assert fps == 16.0
    assert frames.std() > 0  # not an empty/black file
    assert folder_listing(tmp_path) == ["t2v.mp4"]  # no temporary left behind


def test_cli_image_to_video_mp4(tiny_engines, input_image, tmp_path):
    out = tmp_path / "i2v.mp4"
    # 240x128 image, area bound 160x96 -> the official best_output_size picks 160x96
    result = run_cli(tiny_engines, "--prompt", PROMPT, "--image", input_image, "--size", "160x96", "--frames", 9,
                     "--steps", 2, "--seed", 6, "--out", out)
    assert_ok(result)
    assert "9 frames 160x96" in result.stdout
    assert "image-to-video" in result.stderr  # the resize/crop is logged
    frames, fps = read_video(out)
    assert frames.shape == (9, 96, 160, 3)
    assert fps == 24.0  # the manifest's default
    assert folder_listing(tmp_path) == ["i2v.mp4"]


# -- outputs through the Python API -----------------------------------------------------------------------------
@pytest.mark.parametrize("frames, size", [(1, (64, 64)), (17, (64, 96))], ids=["1-frame", "17-frames"])
def test_npy_output_frame_counts(pipe, tmp_path, frames, size):
    out = tmp_path / "video.npy"
    result = pipe.generate(GenerationRequest(PROMPT, size=size, frames=frames, steps=1, seed=3), out)
    video, fps = read_video(out)
    assert fps is None
    assert video.dtype == np.uint8 and video.shape == (frames, size[1], size[0], 3)
    assert result.latents.shape == (48, (frames - 1) // 4 + 1, size[1] // 16, size[0] // 16)
    assert (result.width, result.height, result.frames) == (*size, frames)
    assert folder_listing(tmp_path) == ["video.npy"]


def test_seed_reproducible(pipe):
    first = pipe.generate(GenerationRequest(PROMPT, steps=2))  # no seed: drawn and reported
    assert isinstance(first.seed, int)
    again = pipe.generate(GenerationRequest(PROMPT, steps=2, seed=first.seed))
    other = pipe.generate(GenerationRequest(PROMPT, steps=2, seed=first.seed + 1))
    np.testing.assert_array_equal(again.latents, first.latents)
    assert not np.array_equal(other.latents, first.latents)


@pytest.mark.parametrize("request_args, message", [
    (dict(frames=0), "frame count 0"), (dict(frames=10), "not 4n+1"), (dict(steps=0), "steps must be"),
    (dict(size=(96, 96), noise=np.zeros((48, 3, 6, 6), np.float64)), "float32 (48, 3, 6, 6)"),
], ids=["frames-0", "frames-10", "steps-0", "noise-float64"])
def test_api_refuses_bad_requests(pipe, tmp_path, request_args, message):
    with pytest.raises(WanError, match=re.escape(message)):
        pipe.generate(GenerationRequest(PROMPT, **request_args), tmp_path / "video.mp4")
    assert folder_listing(tmp_path) == []


def test_image_to_video_pins_first_latent_frame(pipe, input_image):
    result = pipe.generate(GenerationRequest(PROMPT, image=input_image, size=(160, 96), frames=9, steps=2, seed=4))
    pixels, (width, height) = prepare_image(load_image(input_image), 160 * 96)
    assert (width, height) == (result.width, result.height) == (160, 96)
    np.testing.assert_array_equal(result.latents[:, :1], pipe.encode_image(pixels))
    assert np.abs(result.latents[:, 1:]).max() > 0


def test_noise_file_and_save_latents(tiny_engines, pipe, tmp_path):
    noise = np.random.default_rng(7).standard_normal((48, 3, 6, 10), dtype=np.float32)  # 160x96, 9 frames
    np.save(tmp_path / "noise.npy", noise)
    runs = []
    for seed in (1, 2):  # --noise wins over --seed
        latents, video = tmp_path / f"latents{seed}.npy", tmp_path / f"video{seed}.npy"
        assert_ok(run_cli(tiny_engines, "--prompt", PROMPT, "--noise", tmp_path / "noise.npy", "--steps", 2,
                          "--seed", seed, "--save-latents", latents, "--out", video))
        runs.append((np.load(latents), read_video(video)[0]))
    (latents_a, video_a), (latents_b, video_b) = runs
    assert latents_a.shape == noise.shape and latents_a.dtype == np.float32
    np.testing.assert_array_equal(latents_a, latents_b)
    np.testing.assert_array_equal(video_a, video_b)
    # the same request through the Python API, in this process
    in_process = pipe.generate(GenerationRequest(PROMPT, noise=noise, steps=2))
    np.testing.assert_allclose(in_process.latents, latents_a, rtol=0, atol=1e-6)
    assert in_process.seed is None


def test_long_prompt_warns_and_still_works(tiny_engines, tokenizer, tmp_path):
    assert tokenizer.count_tokens(LONG_PROMPT) > 512
    out = tmp_path / "long.npy"
    result = run_cli(tiny_engines, "--prompt", LONG_PROMPT, "--frames", 1, "--steps", 1, "--out", out)
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "prompt is longer than 512 tokens" in warnings[0], result.stderr
    assert read_video(out)[0].shape == (1, 96, 160, 3)


# -- bad input: exit status 2, one line on stderr, nothing written -----------------------------------------------
BAD_INPUT = {
    # name: (extra arguments, fragments the one error line must contain)
    "size-outside-range": (["--size", "256x96"], ["256x96", "width 64..192", "height 64..192", "area <= 24576"]),
    "size-area-too-large": (["--size", "192x192"], ["192x192", "area <= 24576"]),
    "size-not-multiple-of-32": (["--size", "150x96"], ["150x96", "not a multiple of 32", "128x96"]),
    "size-malformed": (["--size", "160"], ["'160'", "WIDTHxHEIGHT"]),
    "frames-not-4n+1": (["--frames", "8"], ["frame count 8", "4n+1", "5 or 9"]),
    "frames-too-many": (["--frames", "21"], ["frame count 21", "1..17"]),
    "frames-zero": (["--frames", "0"], ["'--frames'", "0 is not in the range"]),
    "steps-zero": (["--steps", "0"], ["'--steps'", "0 is not in the range"]),
    "shift-zero": (["--shift", "0"], ["shift must be"]),
    "solver-unknown": (["--solver", "ddim"], ["'--solver'", "'ddim' is not one of"]),
    "image-unreadable": (["--image", "{tmp}/broken.png"], ["cannot read image", "broken.png"]),
    "image-missing": (["--image", "{tmp}/nowhere.png"], ["cannot read image", "No such file"]),
    "image-too-wide-for-engines": (["--image", "{tmp}/wide.png"], ["384x32", "outside what these engines"]),
    "engines-missing": (["--engines", "{tmp}/no-engines"], ["no-engines does not exist", "wan-export build"]),
    "engines-not-an-engines-folder": (["--engines", "{tmp}"], ["no manifest.json"]),
    "engines-tampered": (["--engines", "{tmp}/tampered"], ["dit.onnx does not match its sha256", "rebuild"]),
    "out-folder-missing": (["--out", "{tmp}/missing/video.mp4"], ["does not exist", "mkdir -p"]),
    "out-parent-is-a-file": (["--out", "{tmp}/broken.png/video.mp4"], ["does not exist"]),
    "out-is-a-folder": (["--out", "{tmp}/folder.mp4"], ["is a directory"]),
    "out-unsupported-format": (["--out", "{tmp}/out/video.avi"], ["unsupported video output", ".mp4 or .npy"]),
    "out-folder-read-only": (["--out", "{tmp}/read-only/video.mp4"], ["output directory", "permission"]),
    "noise-wrong-shape": (["--noise", "{tmp}/noise-wrong.npy"], ["(48, 3, 6, 12)", "(48, 3, 6, 10)"]),
    "noise-wrong-dtype": (["--noise", "{tmp}/noise-f64.npy"], ["float64", "float32"]),
    "noise-unreadable": (["--noise", "{tmp}/broken.png"], ["cannot read noise file"]),
    "save-latents-folder-missing": (["--save-latents", "{tmp}/missing/latents.npy"], ["does not exist"]),
}


def _prepare_bad_input(name: str, tmp: Path, engines: Path) -> dict:
    """Make the files a case needs; returns arguments to override (where the case's template cannot work)."""
    (tmp / "out").mkdir()
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    if name == "image-too-wide-for-engines":  # 10:1 -> 384x32 for the area of 160x96: width outside 64..192
        Image.new("RGB", (1000, 100), (200, 100, 50)).save(tmp / "wide.png")
    elif name == "engines-tampered":
        shutil.copytree(engines, tmp / "tampered")  # keeps mtimes: the sha256 cache is warm for the other files
        with open(tmp / "tampered" / "dit.onnx", "r+b") as handle:  # same size, different bytes
            handle.seek(os.path.getsize(tmp / "tampered" / "dit.onnx") // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
    elif name == "out-is-a-folder":
        (tmp / "folder.mp4").mkdir()
    elif name == "out-folder-read-only":
        return {"--out": str(unwritable_folder(tmp) / "video.mp4")}
    elif name == "noise-wrong-shape":
        np.save(tmp / "noise-wrong.npy", np.zeros((48, 3, 6, 12), np.float32))
    elif name == "noise-wrong-dtype":
        np.save(tmp / "noise-f64.npy", np.zeros((48, 3, 6, 10), np.float64))
    return {}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2(name, tiny_engines, tmp_path):
    extra, fragments = BAD_INPUT[name]
    overrides = _prepare_bad_input(name, tmp_path, Path(tiny_engines))
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    args = {"--engines": str(tiny_engines), "--prompt": PROMPT, "--steps": "1",
            "--out": str(tmp_path / "out" / "video.mp4")}
    args.update(zip(extra[::2], extra[1::2]))
    args.update(overrides)
    engines = args.pop("--engines")
    before = {folder: folder_listing(folder) for folder in (tmp_path, tmp_path / "out")}

    result = run_cli(engines, *[item for pair in args.items() for item in pair], cwd=tmp_path)

    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == ""
    out = Path(args["--out"])
    assert not out.is_file(), f"{out} was written"
    for folder, listing in before.items():  # nothing written anywhere, no temporary files left
        assert folder_listing(folder) == listing, f"{folder} changed"


# -- torch-free ---------------------------------------------------------------------------------------------------
BLOCK_AND_RUN = r"""
import importlib.abc, json, sys

BLOCKED = ("torch", "wan_export")

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"import of {name} blocked: the runtime must not need it")
        return None

sys.meta_path.insert(0, Blocker())
from wan_rt.cli import main

for args in json.loads(sys.argv[1]):
    main(args, standalone_mode=False)
print("LOADED " + json.dumps(sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)))
"""


def test_runtime_runs_without_torch(tiny_engines, input_image, tmp_path):
    base = ["generate", "--engines", str(tiny_engines), "--prompt", PROMPT, "--steps", "2"]
    runs = [base + ["--out", str(tmp_path / "t2v.mp4")],
            base + ["--image", str(input_image), "--save-latents", str(tmp_path / "i2v-latents.npy"),
                    "--out", str(tmp_path / "i2v.npy")]]
    result = subprocess.run([sys.executable, "-c", BLOCK_AND_RUN, json.dumps(runs)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert_ok(result)
    assert "LOADED []" in result.stdout, result.stdout
    assert read_video(tmp_path / "t2v.mp4")[0].shape == (9, 96, 160, 3)
    assert read_video(tmp_path / "i2v.npy")[0].shape == (9, 96, 160, 3)
    assert np.load(tmp_path / "i2v-latents.npy").shape == (48, 3, 6, 10)


def test_onnx_runtime_threads_from_the_environment(tiny_engines, tmp_path, monkeypatch):
    """$WAN_RT_ORT_THREADS sets each session's CPU threads (processes sharing the cores); the result is the
    default's; a value that is no count is one line."""
    request = GenerationRequest(PROMPT, seed=3, steps=2, frames=1)
    monkeypatch.delenv("WAN_RT_ORT_THREADS", raising=False)  # tests/conftest.py sets it for parallel workers
    with Pipeline(tiny_engines, show_progress=False) as default:
        expected = default.generate(request).latents
        assert default.runner("dit").session.get_session_options().intra_op_num_threads == 0
    monkeypatch.setenv("WAN_RT_ORT_THREADS", "1")
    with Pipeline(tiny_engines, show_progress=False) as one_thread:
        np.testing.assert_allclose(one_thread.generate(request).latents, expected, rtol=0, atol=1e-5)
        assert one_thread.runner("dit").session.get_session_options().intra_op_num_threads == 1
    env = {**os.environ, "WAN_RT_ORT_THREADS": "two"}
    result = subprocess.run([sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines), "--prompt",
                             PROMPT, "--out", str(tmp_path / "never.mp4")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: WAN_RT_ORT_THREADS='two' is not a thread count; set a whole number (0 = one per core)")
    assert not (tmp_path / "never.mp4").exists()
