"""wan-export build / check on the tiny profile: real ONNX export, real ONNX Runtime, real polygraphy."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import oracle
from requires import require
from wan_export.build import BuildOptions, build
from wan_export.check import check_engines
from wan_export.profiles import load_profile
from wan_export.weights import weight_source, weight_source_from_manifest
from wan_rt import tokens
from wan_rt.backends import open_runner
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest, sha256_file
from wan_rt.vae_stream import decode_stream

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early


def copy_engines(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".verified.json"))
    return dst


def rewrite_hash(folder, relative):
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    for component in manifest["components"].values():
        if relative in component["files"]:
            component["files"][relative] = sha256_file(folder / relative)
    manifest_path.write_text(json.dumps(manifest))


def test_manifest_describes_every_component(tiny_engines):
    manifest = load_manifest(tiny_engines)
    assert set(manifest.components) == {"text_encoder", "dit", "dit_skip", "dit_time", "vae_encoder",
                                        "vae_decoder_first", "vae_decoder_step", "vae_tiny_decoder"}
    dit = manifest.component("dit")
    assert [t.name for t in dit.inputs] == ["tokens", "timesteps", "context", "rope_cos", "rope_sin"]
    assert dit.dims["batch"] == (1, 2, 2)
    low, _, high = dit.dims["tokens"]
    assert (low, high) == manifest.limits.token_range()
    assert manifest.data["versions"]["torch"] and manifest.data["versions"]["onnx"]
    assert manifest.data["weights"]["kind"] == "checkpoint"
    assert manifest.sampling["negative_prompt"] and manifest.sampling["fps"] == 24
    assert (manifest.tokenizer_dir / "tokenizer.json").is_file()
    step = manifest.component("vae_decoder_step")
    cache_inputs = [t for t in step.inputs if t.name.startswith("cache_in.")]
    assert len(cache_inputs) == len([t for t in step.outputs if t.name.startswith("cache_out.")]) > 0


def test_check_passes_on_tiny_build(tiny_engines, tmp_path):
    report = check_engines(tiny_engines, json_path=tmp_path / "check.json")
    print(report.table())
    assert report.passed, report.failures()
    points = {row.point for row in report.rows}
    assert len(points) == 2  # smallest and largest shapes of the profile
    worst = max(row.max_rel for row in report.rows)
    assert worst < 1e-4, f"worst ONNX Runtime vs PyTorch relative error {worst:.2e}"
    assert json.loads((tmp_path / "check.json").read_text())["passed"] is True


def test_check_fails_on_a_corrupted_weight(tiny_engines, tmp_path):
    folder = copy_engines(tiny_engines, tmp_path / "engines")
    model = onnx.load(folder / "dit.onnx")
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(largest).copy()
    values.flat[: values.size // 4] += 0.5
    largest.CopyFrom(onnx.numpy_helper.from_array(values, largest.name))
    onnx.save(model, folder / "dit.onnx")
    rewrite_hash(folder, "dit.onnx")  # a bad export, not a tampered file: the manifest agrees with it
    # the failure is pinned on the DiT, the text encoder beside it passes (test_check_passes_on_tiny_build checks
    # every component of the unchanged folder)
    report = check_engines(folder, only=("text_encoder", "dit"))
    assert not report.passed
    assert {row.component for row in report.rows} == {"text_encoder", "dit"}
    assert {row.component for row in report.rows if not row.passed} == {"dit"}
    result = subprocess.run([sys.executable, "-m", "wan_export.cli", "check", "--engines", str(folder), "--only",
                             "dit"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: check failed: dit/velocity")
    assert "vae_decoder" not in result.stdout  # --only: the other components are not checked
    result = subprocess.run([sys.executable, "-m", "wan_export.cli", "check", "--engines", str(folder), "--only",
                             "vae"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --only vae: not a component of {folder}; choose from text_encoder, dit, dit_skip, dit_time, "
        f"vae_encoder, vae_decoder_first, vae_decoder_step, vae_tiny_decoder")


def test_one_dit_graph_serves_two_resolutions(tiny_engines):
    manifest = load_manifest(tiny_engines)
    source = weight_source_from_manifest(manifest.data, None)
    model = source.load("dit")
    head_dim = source.config.dit.head_dim
    rng = np.random.default_rng(3)
    context = rng.standard_normal((2, 512, source.config.dit.text_dim)).astype(np.float32)
    with open_runner(manifest, "dit") as runner:
        for grid in [(1, 2, 2), (5, 4, 6)]:  # 64x64x1 and 192x128x17
            count = int(np.prod(grid))
            cos, sin = (np.ascontiguousarray(t) for t in tokens.rope_tables(grid, head_dim))
            feeds = {"tokens": rng.standard_normal((2, count, 192)).astype(np.float32),
                     "timesteps": np.stack([tokens.frame_timesteps(grid, 700.0, 0.0)] * 2),
                     "context": context, "rope_cos": cos, "rope_sin": sin}
            actual = runner.run(feeds)["velocity"]
            with torch.no_grad():
                expected = model(*(torch.from_numpy(feeds[k]) for k in feeds)).numpy()
            error = oracle.max_rel_error(actual, expected)
            assert error < 1e-5, f"grid {grid}: max relative error {error:.2e}"


def test_streamed_decoder_graphs_match_whole_clip_decode(tiny_engines):
    manifest = load_manifest(tiny_engines)
    vae = weight_source_from_manifest(manifest.data, None).load("vae")
    latents = np.random.default_rng(4).standard_normal((48, 4, 6, 10)).astype(np.float32)
    chunks = []
    with open_runner(manifest, "vae_decoder_first") as first, open_runner(manifest, "vae_decoder_step") as steady:
        frames = decode_stream(first, steady, latents, chunks.append, show_progress=False)
    streamed = np.concatenate(chunks, axis=1)
    with torch.no_grad():
        expected = vae.decode(torch.from_numpy(latents)[None])[0].numpy()
    assert frames == 13 and streamed.shape == expected.shape == (3, 13, 96, 160)
    error = oracle.max_rel_error(streamed, expected)
    assert error < 1e-5, f"streamed ONNX decode vs whole-clip reference: max relative error {error:.2e}"


def test_external_data_path(tiny_official_ckpt, tmp_path):
    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    out = build(profile, source, tmp_path / "ext", BuildOptions(backend="onnxruntime", only=("dit",),
                                                                  external_data_threshold=1000))
    manifest = load_manifest(out)
    assert set(manifest.component("dit").files) == {"dit.onnx", "dit.onnx.data"}
    assert (out / "dit.onnx.data").stat().st_size > (out / "dit.onnx").stat().st_size
    report = check_engines(out)
    assert report.passed, report.failures()


def test_tampered_folders_are_refused(tiny_engines, tmp_path):
    folder = copy_engines(tiny_engines, tmp_path / "engines")
    load_manifest(folder)
    with open(folder / "vae_encoder.onnx", "r+b") as handle:  # flip one byte
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WanError, match="vae_encoder.onnx does not match its sha256"):
        load_manifest(folder)

    folder = copy_engines(tiny_engines, tmp_path / "engines2")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(WanError, match="missing file tokenizer/tokenizer.json"):
        load_manifest(folder)

    folder = copy_engines(tiny_engines, tmp_path / "engines3")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(WanError, match="format version 99"):
        load_manifest(folder)
    (folder / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(WanError, match="invalid JSON"):
        load_manifest(folder)
    with pytest.raises(WanError, match="no manifest.json"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt-rtx"])
def test_failed_build_leaves_nothing(tiny_official_ckpt, tmp_path, backend):
    """The same one-line error whether the part is exported here (onnxruntime) or in a child process (engine
    builds: wan_export.isolated), and no staging folder left behind."""
    from wan_export.trt import library_available

    require(backend == "onnxruntime" or library_available(backend), f"{backend} is not installed")
    broken = tmp_path / "broken-ckpt"
    shutil.copytree(tiny_official_ckpt, broken)
    vae = torch.load(broken / "Wan2.2_VAE.pth", weights_only=True)
    vae.pop("decoder.head.2.weight")
    torch.save(vae, broken / "Wan2.2_VAE.pth")
    profile = load_profile("tiny")
    out = tmp_path / "out"
    options = BuildOptions(backend=backend, only=("vae_encoder",), compute_capabilities=("SM89",))
    with pytest.raises(WanError, match="missing: decoder.head.2.weight") as excinfo:
        build(profile, weight_source(broken, "tiny", 0, {}), out, options)
    assert "\n" not in str(excinfo.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken-ckpt"]  # no staging folder left behind


def test_profiles_load_and_bad_profiles_are_refused(tmp_path):
    for name in ("tiny", "480p", "720p"):
        profile = load_profile(name)
        low, high = profile.limits.token_range()
        assert 0 < low <= profile.limits.default_tokens() <= high
    assert load_profile("720p").limits.default_tokens() == 27280  # 1280x704x121, as the official seq_len
    with pytest.raises(WanError, match="unknown profile"):
        load_profile("4k")
    bad = tmp_path / "bad.toml"
    bad.write_text((load_profile("tiny").source and open(load_profile("tiny").source).read()).replace(
        "frames = [1, 17]", "frames = [1, 18]"))
    with pytest.raises(WanError, match="not 4n\\+1"):
        load_profile(str(bad))


def test_disk_estimate_is_close_to_the_folder_written(tiny_engines):
    """The size `wan-export build` announces before exporting, against the real tiny folder (weights dominate)."""
    from wan_export.components import component_specs
    from wan_export.disk import estimate_bytes

    manifest = load_manifest(tiny_engines)
    profile = load_profile("tiny")
    config = weight_source(None, profile.model_preset, 0, {}).config
    precisions = {name: c.precision for name, c in manifest.components.items()}
    estimate = estimate_bytes(config, component_specs(config, profile.limits), precisions, engines=False)
    written = sum(p.stat().st_size for p in tiny_engines.rglob("*") if p.is_file())
    print(f"estimate {estimate} bytes, written {written}")
    assert 0.85 * written <= estimate <= written


# Mounts `$1` (a tmpfs of `$2`), runs the rest, lists what it left in `$3` before the tmpfs goes with the namespace.
_ON_SMALL_FS = ('mount -t tmpfs -o size="$2" tmpfs "$1" || exit 97; d=$1 l=$3; shift 3; '
                '"$@"; rc=$?; ls -A "$d" > "$l"; exit $rc')


def _on_small_filesystem(folder, size: str, command: list[str], timeout: int):
    """`command` run with a real tmpfs of `size` at `folder`, in a mount namespace of its own: `unshare --mount` for
    root, plus a user namespace (in which one is root) for anyone else or where root lacks mount rights. Returns
    (the command's result, the names it left on the tmpfs)."""
    folder.mkdir()
    listing = folder.parent / f"{folder.name}.left"
    unshare = shutil.which("unshare")
    tried = []
    for flags in (["--mount"], ["--user", "--map-root-user", "--mount"]):
        if unshare is None:
            break
        probe = subprocess.run([unshare, *flags, "sh", "-c", _ON_SMALL_FS, "sh", str(folder), size, str(listing),
                                "true"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            result = subprocess.run([unshare, *flags, "sh", "-c", _ON_SMALL_FS, "sh", str(folder), size,
                                     str(listing), *command], capture_output=True, text=True, timeout=timeout)
            return result, listing.read_text().split()
        tried.append(f"unshare {' '.join(flags)}: {probe.stderr.strip() or probe.returncode}")
    require(False, f"cannot mount a small tmpfs in a mount namespace here ({'; '.join(tried) or 'no unshare'})")


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A real file system too small for the tiny engines: a warning before the export, then one error line."""
    small = tmp_path / "small"
    result, left = _on_small_filesystem(small, "3M", [sys.executable, "-m", "wan_export.cli", "build", "--profile",
                                                      "tiny", "--out", str(small / "engines")], timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "this build will likely run out of space" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on device") and "free some space" in last, last
    assert "Traceback" not in result.stderr
    assert left == []  # the staging folder is gone


def test_a_failed_build_keeps_its_finished_components_and_the_next_run_reuses_them(tiny_official_ckpt, tmp_path,
                                                                                   caplog):
    """text_encoder and dit finish, the VAE fails (a key missing): they stay in the hidden staging folder, and the
    same build after the checkpoint is repaired reuses them (files untouched) and exports only the VAE graphs."""
    import logging

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_official_ckpt, ckpt)
    vae_file = ckpt / "Wan2.2_VAE.pth"
    good = vae_file.read_bytes()
    vae = torch.load(vae_file, weights_only=True)
    vae.pop("decoder.head.2.weight")
    torch.save(vae, vae_file)
    profile, out = load_profile("tiny"), tmp_path / "engines"
    options = BuildOptions(backend="onnxruntime", only=("text_encoder", "dit", "vae_encoder"))  # no slow decoders
    with pytest.raises(WanError, match="missing: decoder.head.2.weight"):
        build(profile, weight_source(ckpt, "tiny", 0, {}), out, options)
    staging = tmp_path / ".engines.partial"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".engines.partial", "ckpt"]
    kept = sorted(p.name for p in staging.iterdir())
    assert kept == ["dit.onnx", "finished.json", "text_encoder.onnx"], kept  # no half-written VAE graph
    before = {name: (staging / name).stat().st_mtime_ns for name in ("dit.onnx", "text_encoder.onnx")}

    vae_file.write_bytes(good)  # repaired: its size and time change, the t5 and dit files do not
    with caplog.at_level(logging.INFO, logger="wan_export"):
        build(profile, weight_source(ckpt, "tiny", 0, {}), out, options)
    assert "reusing text_encoder, dit from an interrupted build" in caplog.text
    assert "text_encoder: exported" not in caplog.text and "vae_encoder: exported" in caplog.text
    manifest = load_manifest(out)  # verifies every file's sha256
    assert list(manifest.components) == ["text_encoder", "dit", "vae_encoder"]
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # reused, not rewritten
    assert not staging.exists() and not (out / "finished.json").exists()


def test_a_changed_build_does_not_reuse_and_two_builds_cannot_share_an_output(tmp_path):
    import fcntl
    import os

    profile, out = load_profile("tiny"), tmp_path / "engines"
    staging = tmp_path / ".engines.partial"
    staging.mkdir()
    (staging / "dit.onnx").write_bytes(b"from another build")
    (staging / "finished.json").write_text(json.dumps({"dit": {"key": "not this build's", "component": {
        "files": {"dit.onnx": sha256_file(staging / "dit.onnx")}}}}))
    lock = os.open(staging, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a build writing `out` right now
    try:
        with pytest.raises(WanError, match=f"another wan-export build is writing {out} right now"):
            build(profile, weight_source(None, "tiny", 0, {}), out, BuildOptions(backend="onnxruntime",
                                                                                  only=("dit",)))
        assert (staging / "dit.onnx").read_bytes() == b"from another build"  # untouched
    finally:
        os.close(lock)
    build(profile, weight_source(None, "tiny", 0, {}), out, BuildOptions(backend="onnxruntime", only=("dit",)))
    assert (out / "dit.onnx").read_bytes() != b"from another build" and not staging.exists()
    load_manifest(out)


def test_onnx_from_builds_from_the_graphs_of_a_matching_folder_only(tiny_official_ckpt, tiny_engines, tmp_path):
    """`--onnx-from`: the graphs are copied (sha256-checked) from a folder made from the same weights and profile;
    other weights, other shape limits, a missing graph are each one error line, before anything is written."""
    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    out = build(profile, source, tmp_path / "engines",
                BuildOptions(backend="onnxruntime", only=("dit",), onnx_from=tiny_engines))
    ours, theirs = load_manifest(out), load_manifest(tiny_engines, verify=False)
    assert ours.component("dit").files == theirs.component("dit").files
    assert not (out / "dit.onnx").samefile(tiny_engines / "dit.onnx")  # a copy: the folders stay independent

    narrower = tmp_path / "narrower.toml"
    narrower.write_text(open(profile.source).read().replace("frames = [1, 17]", "frames = [1, 13]"))
    cases = [(profile, weight_source(None, profile.model_preset, profile.seed, profile.sampling), tiny_engines,
              ("dit",), "its graphs come from other weights"),
             (load_profile(str(narrower)), source, tiny_engines, ("dit",),
              "its graphs were exported for other shape limits"),
             (profile, source, out, ("text_encoder",), "it has no text_encoder graph")]
    for index, (wanted, weights, folder, only, expected) in enumerate(cases):
        target = tmp_path / f"refused-{index}"
        with pytest.raises(WanError) as excinfo:
            build(wanted, weights, target, BuildOptions(backend="onnxruntime", only=only, onnx_from=folder))
        message = str(excinfo.value)
        assert message.startswith(f"--onnx-from {folder}: {expected}") and "\n" not in message, message
        assert not target.exists()

    result = subprocess.run([sys.executable, "-m", "wan_export.cli", "build", "--profile", "tiny", "--only", "dit",
                             "--onnx-from", str(tiny_engines), "--out", str(tmp_path / "cli")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --onnx-from {tiny_engines}: its graphs come "
                                                              f"from other weights")  # random weights, not the ckpt
