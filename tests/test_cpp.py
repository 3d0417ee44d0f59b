"""The C++ runtime (runtime/cpp: library `wanrt`, command `wan-rt-cpp`) against the numpy runtime.

- build: CMake configure + build into runtime/cpp/build, once per run, compiling in the background while the other
  tests run (tests/cpp_build.py; this file runs last). Skipped when cmake or a C++ compiler is missing (a failure
  under CI); fails with the command to run when a library is missing (the Makefile's `test` target runs
  scripts/setup_cpp.sh first, so under `make test` that means the setup script itself failed; tests do not
  apt-install behind the user's back).
- golden parity: this file writes solver trajectories (every solver, several steps/shifts, with guidance and I2V
  re-pinning), sigma grids, patchify/unpatchify, RoPE tables, per-frame and per-token timesteps and whole guided loops over a
  stand-in DiT with wan_rt, and `wanrt_tests golden` replays them: max relative error <= 1e-6 (measured: 0, the
  C++ solvers are bit-identical).
- ctest: unit, golden and cli groups.
- end to end: `wan-rt-cpp generate` over a tritonserver serving the tiny engines (repository from
  `wan-export triton`, python-backend models on the CPU) equals `wan-rt generate` with the same noise:
  final latents relative error <= 1e-5, text- and image-to-video (measured: 0, latents and uint8 frames identical).
  Skipped when nvidia-pytriton is not installed (a failure under CI, which installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cpp_build as cpp_build_module
from requires import require

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "runtime" / "cpp"
SETUP = "scripts/setup_cpp.sh"
PARITY_TOL = 1e-6  # solvers, tables, host loop
E2E_TOL = 1e-5  # final latents through Triton vs wan-rt generate

# Solver trajectories: [C, F, H, W] small, frame axis 1 as in the real latent (as tests/test_schedulers.py).
SHAPE = (4, 3, 5, 6)
SOLVERS = ("unipc", "dpm++", "euler")
STEPS = (1, 2, 3, 10, 50)
SHIFTS = (1.0, 5.0, 3.0)


# -------------------------------------------------------------------------------------------------- build
def _run(command, what: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{tail}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def cpp_build() -> SimpleNamespace:
    """The build tests/conftest.py started in the background (tests/cpp_build.py), waited for."""
    cmake, compiler = cpp_build_module.tools()
    require(cmake is not None and compiler is not None,
            f"no {'cmake' if cmake is None else 'C++ compiler'} on PATH: run {SETUP} (apt) to build the C++ runtime")
    build = cpp_build_module.BUILD.wait()
    if isinstance(build, str):
        pytest.fail(build, pytrace=False)
    print(f"\nruntime/cpp configured and built in {build.seconds:.1f}s ({build.dir}), in the background")
    return build


# -------------------------------------------------------------------------------------------------- goldens
class FakeDiT:
    """A DiT stand-in whose velocity depends on every input, in float32 operations the C++ test repeats."""

    def __init__(self, batch_max: int):
        timesteps = SimpleNamespace(name="timesteps", shape=("batch", "frames"))  # one per latent frame
        self.component = SimpleNamespace(name="dit", dims={"batch": (1, batch_max, batch_max)}, inputs=[timesteps])
        self.calls = 0

    def to_device(self, array):  # a host runner: what DiTStep uploads once per request stays a numpy array
        return array

    def run(self, feeds: dict) -> dict:
        tokens, steps, context = feeds["tokens"], feeds["timesteps"], feeds["context"]
        cos, sin = feeds["rope_cos"], feeds["rope_sin"]
        _, length, width = tokens.shape
        text, dim = context.shape[1:]
        half = cos.shape[1]
        rows = np.arange(length)[:, None]
        cols = np.arange(width)[None, :]
        x = tokens * np.float32(0.8)
        x = x + steps[:, rows[:, 0] // (length // steps.shape[1]), None] * np.float32(0.001)
        x = x + context[:, rows % text, cols % dim]
        x = x + cos[rows, cols % half][None] * np.float32(0.5)
        x = x - sin[rows, cols % half][None] * np.float32(0.25)
        self.calls += 1
        return {"velocity": x.astype(np.float32)}


def _save(folder: Path, name: str, array: np.ndarray) -> str:
    np.save(folder / name, np.ascontiguousarray(array))
    return name


def _trajectory(solver, steps, shift, guide, i2v, x, noise, noise2, z0) -> np.ndarray:
    from wan_rt.schedulers import make_scheduler

    sched = make_scheduler(solver, steps, shift)
    x = x.copy()
    states = []
    for _ in sched.timesteps:
        cond = np.float32(0.8) * x + noise
        if guide is None:
            x = sched.step(cond, x, out=x)
        else:
            x = sched.step_cfg(cond, np.float32(0.6) * x + noise2, guide, x, out=x)
        if i2v:
            x[:, 0] = z0
        states.append(x.copy())
    return np.stack(states)


def write_goldens(folder: Path) -> dict:
    """Everything `wanrt_tests golden` replays, from the numpy runtime."""
    from wan_rt import tokens
    from wan_rt.denoise import DiTStep, denoise
    from wan_rt.schedulers import make_scheduler

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    noise2 = rng.standard_normal(SHAPE).astype(np.float32)
    z0 = rng.standard_normal((SHAPE[0], SHAPE[2], SHAPE[3])).astype(np.float32)
    shared = {"x": _save(folder, "x.npy", x), "noise": _save(folder, "noise.npy", noise),
              "noise2": _save(folder, "noise2.npy", noise2), "z0": _save(folder, "z0.npy", z0)}
    variants = [(steps, shift, None, False) for steps in STEPS for shift in SHIFTS]
    variants += [(steps, 5.0, guide, i2v) for steps in (3, 10, 50) for guide, i2v in
                 ((5.0, False), (None, True), (3.5, True))]
    cases = {"schedulers": [], "rope": [], "patchify": [], "token_timesteps": [], "denoise": []}
    for solver in SOLVERS:
        for steps, shift, guide, i2v in variants:
            case_id = f"{solver}_s{steps}_sh{shift:g}" + (f"_cfg{guide:g}" if guide else "") + ("_i2v" if i2v else "")
            sched = make_scheduler(solver, steps, shift)
            cases["schedulers"].append({
                "id": case_id, "solver": solver, "steps": steps, "shift": shift, "guide": guide, "i2v": i2v,
                "timesteps": [int(t) for t in sched.timesteps], **shared,
                "sigmas": _save(folder, f"{case_id}_sigmas.npy", sched.sigmas),
                "trajectory": _save(folder, f"{case_id}_traj.npy",
                                    _trajectory(solver, steps, shift, guide, i2v, x, noise, noise2, z0))})

    # RoPE: tiny grids and the real 720p one (121 frames at 1280x704: 31 x 22 x 40 tokens, head_dim 128)
    for grid, head_dim in (((1, 1, 1), 128), ((3, 2, 3), 24), ((5, 3, 5), 64), ((31, 22, 40), 128)):
        cos, sin = tokens.rope_tables(grid, head_dim)
        name = "rope_" + "x".join(map(str, grid)) + f"_{head_dim}"
        cases["rope"].append({"grid": list(grid), "head_dim": head_dim, "cos": _save(folder, f"{name}_cos.npy", cos),
                              "sin": _save(folder, f"{name}_sin.npy", sin)})
    for shape in ((48, 3, 6, 10), (4, 1, 2, 2)):
        latent = rng.standard_normal(shape).astype(np.float32)
        grid = tokens.token_grid(shape)
        head = rng.standard_normal((tokens.num_tokens(shape), 4 * shape[0])).astype(np.float32)
        name = "patch_" + "x".join(map(str, shape))
        cases["patchify"].append({
            "latent": _save(folder, f"{name}_latent.npy", latent),
            "tokens": _save(folder, f"{name}_tokens.npy", tokens.patchify(latent)),
            "head": _save(folder, f"{name}_head.npy", head),
            "unpatched": _save(folder, f"{name}_unpatched.npy", tokens.unpatchify(head, grid, shape[0]))})
    for grid, t, first in (((3, 3, 5), 999, 0.0), ((2, 2, 2), 500, None)):
        name = f"tt_{'x'.join(map(str, grid))}_{t}"
        cases["token_timesteps"].append({"grid": list(grid), "t": t, "first": first, "values": _save(
            folder, f"{name}.npy", tokens.token_timesteps(grid, float(t), first)), "frame_values": _save(
            folder, f"{name}_frames.npy", tokens.frame_timesteps(grid, float(t), first))})

    # The guided loop (wan_rt.denoise) over the stand-in DiT: batched / two-call / no guidance, T2V and I2V.
    latent_shape = (8, 3, 4, 6)
    head_dim = 24
    for solver, steps, shift, guide, batch_max, i2v in (("unipc", 6, 5.0, 5.0, 2, False),
                                                         ("dpm++", 5, 3.0, 4.0, 1, True),
                                                         ("euler", 4, 5.0, 1.0, 2, True),
                                                         ("unipc", 8, 5.0, 5.0, 2, True)):
        case_id = f"loop_{solver}_s{steps}_g{guide:g}_b{batch_max}" + ("_i2v" if i2v else "")
        latent = rng.standard_normal(latent_shape).astype(np.float32)
        first = rng.standard_normal((latent_shape[0], 1) + latent_shape[2:]).astype(np.float32) if i2v else None
        if first is not None:
            latent[:, :1] = first
        context = rng.standard_normal((1, 5, 7)).astype(np.float32)
        context_null = rng.standard_normal((1, 5, 7)).astype(np.float32)
        fake = FakeDiT(batch_max)
        step = DiTStep(fake, latent_shape, context, context_null, head_dim, latent_shape[0], guide)
        result = denoise(step, make_scheduler(solver, steps, shift), latent, first, show_progress=False)
        cases["denoise"].append({
            "id": case_id, "solver": solver, "steps": steps, "shift": shift, "guide": guide, "batch_max": batch_max,
            "head_dim": head_dim, "latent": _save(folder, f"{case_id}_latent.npy", latent),
            "context": _save(folder, f"{case_id}_ctx.npy", context),
            "context_null": _save(folder, f"{case_id}_ctx_null.npy", context_null),
            "first_frame": _save(folder, f"{case_id}_first.npy", first) if i2v else None,
            "result": _save(folder, f"{case_id}_result.npy", result)})
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    return cases


@pytest.fixture(scope="session")
def goldens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cpp_golden")
    write_goldens(folder)
    return folder


# -------------------------------------------------------------------------------------------------- tests
def test_setup_script_is_idempotent_and_quiet():
    """The build dependencies are installed (the Makefile's test target runs the script first; `--check` says so
    without installing anything): then the script itself, run twice, installs nothing and is silent both times.
    Tests never apt-install behind the user's back, so nothing runs when `--check` finds something missing.
    (No timing assertion: speed is for benchmarks, and a loaded CI machine would make it flaky.)"""
    require(shutil.which("dpkg-query") is not None, "not a Debian-based system: scripts/setup_cpp.sh uses apt")
    check = subprocess.run(["bash", str(ROOT / SETUP), "--check"], capture_output=True, text=True, timeout=60)
    require(check.returncode == 0, check.stderr.strip() or f"{SETUP} --check failed")
    assert check.stdout == "" and check.stderr == ""
    for run in (1, 2):
        result = subprocess.run(["bash", str(ROOT / SETUP)], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), (run, result)


def test_golden_parity(cpp_build, goldens):
    """C++ solvers, tables and the guided I2V loop replay the numpy runtime's results."""
    result = _run([str(cpp_build.tests), "golden", str(goldens)], "wanrt_tests golden")
    parity = [line for line in result.stdout.splitlines() if line.startswith("PARITY")]
    print("\n" + "\n".join(parity))
    assert len(parity) == 3 and result.stdout.strip().endswith("3 passed, 0 failed")


def test_ctest(cpp_build, goldens):
    """ctest runs the unit, golden and cli groups; none may be skipped here."""
    env = dict(os.environ, WANRT_GOLDEN_DIR=str(goldens))
    result = _run(["ctest", "--output-on-failure", "--test-dir", str(cpp_build.dir)], "ctest", env=env, timeout=300)
    assert "100% tests passed, 0 tests failed out of 3" in result.stdout, result.stdout
    assert "Skipped" not in result.stdout, result.stdout


# -------------------------------------------------------------------------------------------------- end to end
def write_token_file(engines: Path, prompt: str, out: Path, negative_prompt: str | None = None) -> Path:
    """The token file `wan-rt-cpp generate --token-ids` reads, as `wan-rt tokenize` writes it."""
    from wan_rt.manifest import load_manifest, sha256_file
    from wan_rt.text import PromptTokenizer

    manifest = load_manifest(engines, verify=False)
    negative = negative_prompt or manifest.sampling["negative_prompt"]
    tokenizer = PromptTokenizer.from_folder(manifest.tokenizer_dir)
    ids, mask = tokenizer.encode([prompt, negative])
    out.write_text(json.dumps({
        "format": "wan-rt-tokens", "format_version": 1, "text_len": int(ids.shape[1]),
        "tokenizer_sha256": sha256_file(manifest.tokenizer_dir / "tokenizer.json"),
        "prompt": prompt, "negative_prompt": negative,
        "input_ids": ids.tolist(), "attention_mask": mask.tolist()}))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _triton_unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        return "nvidia-pytriton is not installed (it bundles tritonserver): pip install -r requirements/triton.txt"
    return None


@pytest.fixture(scope="module")
def triton_server(tiny_engines, tmp_path_factory):
    """tritonserver over `wan-export triton --engines tiny_engines`, on a free loopback port."""
    reason = _triton_unavailable()
    require(reason is None, reason)
    repo = tmp_path_factory.mktemp("cpp_triton") / "repo"
    _run([sys.executable, "-m", "wan_export.cli", "triton", "--engines", str(tiny_engines), "--out", str(repo)],
         "wan-export triton")
    port = _free_port()
    log = open(repo.parent / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "wan_rt.cli", "serve", "--repository", str(repo),
                               "--http-port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                log.flush()
                pytest.fail(f"tritonserver exited ({server.returncode}):\n" +
                            "\n".join((repo.parent / "server.log").read_text().splitlines()[-20:]), pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tritonserver did not become ready in 300 s", pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)  # wan-rt serve stops the server it started
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_triton_generation_equals_wan_rt(mode, cpp_build, triton_server, tiny_engines, input_image, tmp_path):
    """`wan-rt-cpp generate` over Triton == `wan-rt generate` (ONNX Runtime in-process) with the same noise."""
    from wan_rt.image import load_image, prepare_image
    from wan_rt.manifest import load_manifest

    manifest = load_manifest(tiny_engines, verify=False)
    width, height = manifest.limits.default_size
    frames = manifest.limits.default_frames
    prompt = "A red fox trots through fresh snow at sunrise"
    python_args = []
    cpp_args = []
    if mode == "i2v":
        pixels, (width, height) = prepare_image(load_image(input_image), width * height)
        np.save(tmp_path / "pixels.npy", pixels)
        python_args = ["--image", str(input_image)]
        cpp_args = ["--image-pixels", str(tmp_path / "pixels.npy")]
    shape = (manifest.model["vae"]["z_dim"], (frames - 1) // 4 + 1, height // 16, width // 16)
    np.save(tmp_path / "noise.npy", np.random.default_rng(5).standard_normal(shape, dtype=np.float32))
    tokens = write_token_file(tiny_engines, prompt, tmp_path / "tokens.json")

    started = time.perf_counter()
    _run([sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(tiny_engines), "--prompt", prompt,
          "--noise", str(tmp_path / "noise.npy"), "--save-latents", str(tmp_path / "py_latents.npy"),
          "--out", str(tmp_path / "py_frames.npy"), *python_args], "wan-rt generate")
    python_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _run([str(cpp_build.cli), "generate", "--manifest", str(tiny_engines), "--triton-url", triton_server,
          "--token-ids", str(tokens), "--noise", str(tmp_path / "noise.npy"),
          "--save-latents", str(tmp_path / "cpp_latents.npy"), "--out", str(tmp_path / "cpp_frames.npy"), *cpp_args],
         "wan-rt-cpp generate")
    cpp_seconds = time.perf_counter() - started

    expected, actual = np.load(tmp_path / "py_latents.npy"), np.load(tmp_path / "cpp_latents.npy")
    assert actual.shape == expected.shape == shape and actual.dtype == np.float32
    error = _rel(actual, expected)
    py_frames, cpp_frames = np.load(tmp_path / "py_frames.npy"), np.load(tmp_path / "cpp_frames.npy")
    assert cpp_frames.shape == py_frames.shape == (frames, height, width, 3) and cpp_frames.dtype == np.uint8
    frame_diff = int(np.abs(cpp_frames.astype(np.int16) - py_frames.astype(np.int16)).max())
    print(f"\n{mode}: final latents max relative error {error:.3g} ({np.mean(actual != expected):.1%} of values "
          f"differ), decoded frames max |diff| {frame_diff}/255; wan-rt generate {python_seconds:.1f}s, "
          f"wan-rt-cpp over Triton {cpp_seconds:.1f}s")
    assert error <= E2E_TOL
    assert frame_diff <= 1


@pytest.mark.slow
def test_triton_json_protocol_equals_binary(cpp_build, triton_server, tiny_engines, tmp_path):
    """Plain JSON tensors give exactly what the binary extension gives (one step, no decode)."""
    tokens = write_token_file(tiny_engines, "a cat", tmp_path / "tokens.json")
    results = []
    for protocol in ([], ["--json-protocol"]):
        out = tmp_path / f"latents{len(results)}.npy"
        _run([str(cpp_build.cli), "generate", "--manifest", str(tiny_engines), "--triton-url", triton_server,
              "--token-ids", str(tokens), "--seed", "3", "--steps", "1", "--save-latents", str(out), *protocol],
             "wan-rt-cpp generate")
        results.append(np.load(out))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.slow
def test_embed_example(cpp_build, triton_server, tiny_engines, tmp_path):
    """The README's embedding example runs and gives what the command gives for the same request."""
    tokens = write_token_file(tiny_engines, "a red fox", tmp_path / "tokens.json")
    _run([str(cpp_build.dir / "wanrt_embed_example"), str(tiny_engines), triton_server, str(tokens), str(tmp_path)],
         "wanrt_embed_example")
    _run([str(cpp_build.cli), "generate", "--manifest", str(tiny_engines), "--triton-url", triton_server,
          "--token-ids", str(tokens), "--seed", "42", "--save-latents", str(tmp_path / "cli.npy")],
         "wan-rt-cpp generate")
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), np.load(tmp_path / "cli.npy"))
    frames = np.load(tmp_path / "frames.npy")
    assert frames.dtype == np.uint8 and frames.shape[-1] == 3


def test_wan_rt_tokenize_and_prepare_image(cpp_build, tiny_engines, input_image, tmp_path):
    """`wan-rt tokenize` / `wan-rt prepare-image` (the Python side of wan-rt-cpp's inputs) write what the C++ reads."""
    from wan_rt.image import load_image, prepare_image

    prompt = "A red fox trots through fresh snow at sunrise"
    _run([sys.executable, "-m", "wan_rt.cli", "tokenize", "--engines", str(tiny_engines), "--prompt", prompt,
          "--out", str(tmp_path / "cli.json")], "wan-rt tokenize")
    expected = json.loads(write_token_file(tiny_engines, prompt, tmp_path / "expected.json").read_text())
    assert json.loads((tmp_path / "cli.json").read_text()) == expected
    _run([sys.executable, "-m", "wan_rt.cli", "prepare-image", "--engines", str(tiny_engines), "--image",
          str(input_image), "--out", str(tmp_path / "pixels.npy")], "wan-rt prepare-image")
    from wan_rt.manifest import load_manifest

    width, height = load_manifest(tiny_engines, verify=False).limits.default_size
    np.testing.assert_array_equal(np.load(tmp_path / "pixels.npy"),
                                  prepare_image(load_image(input_image), width * height)[0])
    result = subprocess.run([str(cpp_build.cli), "generate", "--manifest", str(tiny_engines), "--triton-url",
                             "http://127.0.0.1:9", "--token-ids", str(tmp_path / "cli.json"), "--image-pixels",
                             str(tmp_path / "pixels.npy"), "--save-latents", str(tmp_path / "l.npy")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
    assert "cannot reach Triton" in result.stderr  # both files accepted; only the server is missing


def test_cli_refuses_text_and_bad_inputs(cpp_build, tiny_engines, tmp_path):
    """One `error:` line (exit 2) naming the fix, before any server is contacted."""
    def refused(*args) -> str:
        result = subprocess.run([str(cpp_build.cli), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    base = ["generate", "--manifest", str(tiny_engines), "--triton-url", "http://127.0.0.1:9"]
    assert "wan-rt tokenize" in refused(*base, "--prompt", "a fox")
    tokens = write_token_file(tiny_engines, "a fox", tmp_path / "tokens.json")
    assert "cannot reach Triton at http://127.0.0.1:9" in refused(*base, "--token-ids", str(tokens), "--out",
                                                                  str(tmp_path / "f.npy"))
    assert "is not a multiple of 32" in refused(*base, "--token-ids", str(tokens), "--size", "100x96",
                                                "--save-latents", str(tmp_path / "l.npy"))
    data = json.loads(tokens.read_text())
    data["tokenizer_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(data))
    assert "another tokenizer" in refused(*base, "--token-ids", str(tmp_path / "other.json"), "--save-latents",
                                          str(tmp_path / "l.npy"))
    # sha256 results are cached in .verified.json in the Python runtime's format: each side reuses the other's
    from wan_rt.manifest import VERIFIED_CACHE, load_manifest

    load_manifest(tiny_engines)  # the Python side verifies (and caches) first
    cache = tiny_engines / VERIFIED_CACHE
    before = cache.stat().st_mtime_ns
    check = subprocess.run([str(cpp_build.cli), "check", "--manifest", str(tiny_engines)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "every file matches its sha256" in check.stdout, check
    assert cache.stat().st_mtime_ns == before  # nothing re-hashed, nothing rewritten
