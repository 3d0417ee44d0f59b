#!/usr/bin/env python3
"""Test power by mutation: a reviewed list of targeted bugs, each applied alone to a COPY of the working tree, and
the tests meant to catch it run there. A mutation the tests pass is a survivor: the tests do not guard that property.

    python scripts/mutation_check.py                 # every mutation (about 5 minutes on two cores)
    python scripts/mutation_check.py --only dmd      # the ones whose id contains "dmd"
    python scripts/mutation_check.py --list

The copy holds the tracked and the untracked-but-not-ignored files as they are on disk (not the index, not HEAD),
so uncommitted work is checked too and the tree itself is never modified. It is imported first on PYTHONPATH, ahead
of the editable install (checked before any mutation runs). The session fixtures come from $WAN_TEST_SHARED_DIR
(default /tmp/wan-mutation-shared): the tiny engines are built by the unmutated code on the first run.
A first pass runs every test selection on the unmutated copy (it must pass). Exit status: 0 when every mutation
was caught, 1 when one survived, 2 when the check itself is broken: the unmutated tree fails, a mutation's
original text is not in its file exactly once (review the list after editing the code), or a selection collects
nothing or does not import.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    original: str
    mutant: str
    tests: tuple[str, ...]  # pytest arguments: files, -k expressions
    why: str


M = Mutation
MUTATIONS = [
    # -- the four the audit found surviving (issue 26) --
    M("step-cache-reuses-velocity", "runtime/wan_rt/denoise.py",
      "            predictions = cache.skipped(step, latent, timesteps)",
      "            predictions = predictions  # the last velocity again, no dit_skip",
      ("tests/test_step_cache.py", "-k", "runs_its_plan"), "a skipped step reuses the last velocity"),
    M("stage-never-closes", "runtime/wan_rt/pipeline.py",
      "                runner.__exit__(None, None, None)",
      "                pass  # logged as closed, never closed",
      ("tests/test_residency.py", "-k", "stage"), "--memory stage logs engines closed that stay open"),
    M("batch-runs-failed-request", "runtime/wan_rt/batch.py",
      "if outcomes[i].error is None and wanted(state)]",
      "if wanted(state)]",
      ("tests/test_batch.py", "-k", "failing"), "a staged batch keeps running a request that failed"),
    M("fastwan-ignores-manifest", "runtime/wan_rt/pipeline.py",
      'solver = request.solver or ("dmd" if request.timesteps is not None else sampling["solver"])',
      'solver = request.solver or ("dmd" if request.timesteps is not None else "unipc")',
      ("tests/test_dmd.py", "-k", "manifest"), "a dmd folder runs UniPC at its step count"),
    # -- solvers and dmd --
    M("dmd-no-warp", "runtime/wan_rt/schedulers/dmd.py",
      "return shift_sigmas(raw, shift) if warp else raw", "return raw",
      ("tests/test_dmd.py",), "FastWan timesteps not warped by the shift"),
    M("dmd-no-renoise", "runtime/wan_rt/schedulers/dmd.py",
      "np.add(a, b, O)  # (1 - sigma_next)*x0 + sigma_next*eps", "np.copyto(O, a)",
      ("tests/test_dmd.py",), "intermediate steps not re-noised"),
    M("shift-formula", "runtime/wan_rt/schedulers/base.py",
      "return shift * sigmas / (1 + (shift - 1) * sigmas)", "return shift * sigmas / (1 + shift * sigmas)",
      ("tests/test_schedulers.py", "tests/test_dmd.py"), "Wan's timestep shift off"),
    M("unipc-corrector-rho", "runtime/wan_rt/schedulers/unipc.py",
      "rho1 = float(b0) - rho0", "rho1 = float(b1) - rho0",
      ("tests/test_schedulers.py",), "UniC order-2 coefficients wrong"),
    M("guidance-swapped", "runtime/wan_rt/denoise.py",
      "scheduler.step_cfg(predictions[0], predictions[1], guide_scale, sample, out=sample)",
      "scheduler.step_cfg(predictions[1], predictions[0], guide_scale, sample, out=sample)",
      ("tests/test_step_cache.py", "-k", "runs_its_plan"), "cond and uncond swapped in guidance"),
    M("i2v-no-repin", "runtime/wan_rt/denoise.py",
      "            latent[:, :1] = first_frame\n", "            pass\n",
      ("tests/test_step_cache.py", "-k", "runs_its_plan"), "I2V frame 0 not re-pinned after a step"),
    # -- step cache plans and loop --
    M("magcache-K", "runtime/wan_rt/step_cache.py",
      "skipped[branch] <= max_skips", "skipped[branch] < max_skips",
      ("tests/test_step_cache.py", "-k", "magcache"), "MagCache skips one step fewer in a row than K"),
    M("magcache-resample", "runtime/wan_rt/step_cache.py",
      "values[np.round(positions).astype(int)]", "values[np.floor(positions).astype(int)]",
      ("tests/test_step_cache.py", "-k", "magcache"), "tables resampled by floor, not nearest"),
    M("teacache-threshold", "runtime/wan_rt/step_cache.py",
      "full = accumulated >= threshold", "full = accumulated >= 2 * threshold",
      ("tests/test_step_cache.py", "-k", "teacache"), "TeaCache threshold doubled"),
    M("teacache-last-step", "runtime/wan_rt/step_cache.py",
      "if step < first or step >= steps - last or threshold == 0:",
      "if step < first or step > steps - last or threshold == 0:",
      ("tests/test_step_cache.py", "-k", "teacache"), "TeaCache may skip the last step"),
    M("stale-residual", "runtime/wan_rt/denoise.py",
      "        if self.skip_runner is not None:\n            self.residuals = residuals",
      "        if self.skip_runner is not None and not self.residuals:\n            self.residuals = residuals",
      ("tests/test_step_cache.py", "-k", "runs_its_plan"), "skipped steps reuse the first full step's residual"),
    # -- residency --
    M("batch-decoders-together", "runtime/wan_rt/pipeline.py",
      '            self.close_engines(["vae_decoder_step"])\n', "            pass\n",
      ("tests/test_batch.py", "-k", "equals_single"), "a batch's decode stage holds both decoders at once"),
    M("stage-keeps-first-decoder", "runtime/wan_rt/pipeline.py",
      '                self.close_engines(["vae_decoder_first"])', "                pass",
      ("tests/test_residency.py", "-k", "stage"), "the first-chunk decoder stays open beside the steady one"),
    # -- batch --
    M("batch-failure-stops-all", "runtime/wan_rt/batch.py",
      "                    outcomes[i].error = _failure(exc)\n                    if outcomes[i].error is None:",
      "                    outcomes[i].error = _failure(exc)\n                    if True:",
      ("tests/test_batch.py", "-k", "failing"), "one failing request ends the staged batch"),
    # -- LoRA merge --
    M("lora-alpha-ignored", "wan_export/lora.py",
      "ratio = (t.alpha / rank) if t.alpha is not None else 1.0", "ratio = 1.0",
      ("tests/test_lora.py", "-k", "not premerged"), "a LoRA's alpha not applied"),
    M("lora-bias-unscaled", "wan_export/lora.py",
      "add(f\"{module}.bias\", t.up_bias.double() * ratio, t.keys)", "add(f\"{module}.bias\", t.up_bias.double(), t.keys)",
      ("tests/test_lora.py", "-k", "peft or diffusers"), "a PEFT lora_B bias not scaled by alpha / rank"),
    M("peft-alpha-ignored", "wan_export/lora.py",
      "effective = alpha / rank ** 0.5 if config.get(\"use_rslora\") else alpha / rank",
      "effective = 1.0",
      ("tests/test_lora.py", "-k", "peft"), "a PEFT LoRA's lora_alpha not read"),
    # -- engine checks --
    M("tf32-tolerance-ignored", "wan_export/check.py",
      'if info.precision == "fp32" and (info.target or {}).get("tf32"):', "if False:",
      ("tests/test_trt_engines.py", "-k", "tf32_tolerance"), "fp32 engines built with TF32 checked at fp32's"),
    # -- NaN guard, request checks, image preparation --
    M("nan-guard-off", "runtime/wan_rt/finite.py",
      "        if not all_finite(array):", "        if False:",
      ("tests/test_batch.py", "tests/test_bad_input.py", "-k", "failing or finite or nan"),
      "NaN from an engine passes silently"),
    M("request-maximum", "runtime/wan_rt/request_checks.py",
      "(maximum is not None and number > maximum)", "(maximum is not None and number > 2 * maximum)",
      ("tests/test_step_cache.py", "-k", "refuses"),
      "a request number above its maximum accepted"),
    M("request-minimum", "runtime/wan_rt/request_checks.py",
      "(minimum is not None and number < minimum)", "(minimum is not None and number < minimum - 10)",
      ("tests/test_bad_input.py", "-k", "guide"), "a request number below its minimum accepted"),
    M("request-noise-shape", "runtime/wan_rt/pipeline.py",
      "if noise.shape != latent_shape or noise.dtype != np.float32:",
      "if noise.dtype != np.float32:", ("tests/test_batch.py", "-k", "wrong_shape"),
      "a noise file of the wrong shape accepted"),
    M("image-resize-rounding", "runtime/wan_rt/image.py",
      "    img = img.resize((round(iw * scale), round(ih * scale)), Image.Resampling.LANCZOS)",
      "    img = img.resize((int(iw * scale), int(ih * scale)), Image.Resampling.LANCZOS)",
      ("tests/test_image_prep.py",), "the resize truncates instead of rounding (the official rounds)"),
    M("image-crop-offset", "runtime/wan_rt/image.py",
      "    x1 = (img.width - ow) // 2", "    x1 = 0",
      ("tests/test_image_prep.py",), "the image is cropped from the left, not centred"),
]


def copy_tree(destination: Path) -> None:
    """The working tree's files as on disk: tracked and untracked-not-ignored (no .venv, no build outputs)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # deleted in the working tree: not copied
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def environment(tree: Path) -> dict:
    """The copy's wan_rt and wan_export first on the path. wan_rt through a folder holding only a link to it:
    runtime/ itself would also put runtime/triton (the Triton model repository) in place of the triton package."""
    shared = os.environ.get("WAN_TEST_SHARED_DIR", "/tmp/wan-mutation-shared")
    packages = tree / ".mutation-path"
    if not packages.exists():
        packages.mkdir()
        (packages / "wan_rt").symlink_to(tree / "runtime" / "wan_rt", target_is_directory=True)
    path = os.pathsep.join([str(packages), str(tree), str(tree / "tests")])
    return {**os.environ, "PYTHONPATH": path, "WAN_TEST_SHARED_DIR": shared, "PYTHONDONTWRITEBYTECODE": "1"}


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_imports_come_from(tree: Path) -> None:
    code = "import wan_rt, wan_export; print(wan_rt.__file__); print(wan_export.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=environment(tree), check=True,
                         capture_output=True, text=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in out):
        die(f"the copy's packages are not the ones imported ({out}); check PYTHONPATH")


def apply(tree: Path, mutation: Mutation) -> str:
    path = tree / mutation.file
    text = path.read_text()
    if text.count(mutation.original) != 1:
        die(f"{mutation.id}: its original text is in {mutation.file} {text.count(mutation.original)} "
                 f"times, not once; review the mutation list")
    path.write_text(text.replace(mutation.original, mutation.mutant))
    return text


def pytest(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[int | None, float, str]:
    """(pytest's exit status or None when it timed out, seconds, its last line); stops at the first failure."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=tree, env=environment(tree), capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started, "timed out"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, time.monotonic() - started, lines[-1] if lines else result.stderr.strip()[-200:]


def run_tests(tree: Path, mutation: Mutation, timeout: int) -> tuple[bool, float, str]:
    """(caught, seconds, last line). Caught: a test failed or errored (exit 1), or the mutant hung. A collection
    error (exit 2) or an empty selection (5) is a broken check, not a catch."""
    status, seconds, last = pytest(tree, mutation.tests, timeout)
    if status in (2, 3, 4, 5):
        die(f"{mutation.id}: pytest exited {status} ({last}); fix the mutation or its test selection")
    return status != 0, seconds, last if status is not None else "timed out (a mutant that hangs: caught)"


def baseline(tree: Path, mutations: list[Mutation], timeout: int) -> None:
    """Every test selection passes on the unmutated copy, so a failure under a mutation is the mutation's."""
    for tests in dict.fromkeys(m.tests for m in mutations):
        status, seconds, last = pytest(tree, tests, timeout)
        if status != 0:
            die(f"the unmutated tree fails {' '.join(tests)} ({last}); fix that first")
        print(f"baseline  {' '.join(tests)}: {last} ({seconds:.1f} s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the mutations whose id contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutation's tests")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the first pass that runs every selection on the unmutated copy")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or args.only in m.id]
    if args.list:
        for m in chosen:
            print(f"{m.id:28} {m.file:38} {m.why}")
        return 0
    if not chosen:
        die(f"no mutation id contains {args.only!r}")
    with tempfile.TemporaryDirectory(prefix="wan-mutation-") as folder:
        tree = Path(folder) / "tree"
        copy_tree(tree)
        check_imports_come_from(tree)
        for m in chosen:  # every original text present once, before spending time on any
            (tree / m.file).write_text(apply(tree, m))
        if not args.no_baseline:
            baseline(tree, chosen, args.timeout)
        caught = 0
        for number, m in enumerate(chosen, 1):
            original = apply(tree, m)
            try:
                killed, seconds, last = run_tests(tree, m, args.timeout)
            finally:
                (tree / m.file).write_text(original)
            caught += killed
            print(f"[{number}/{len(chosen)}] {'caught  ' if killed else 'SURVIVED'} {m.id:28} {seconds:5.1f} s  "
                  f"{m.why}; {last}", flush=True)
    print(f"mutation score: {caught} of {len(chosen)} caught ({caught / len(chosen):.0%})")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
