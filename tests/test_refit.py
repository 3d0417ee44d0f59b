"""`wan-export refit`: new DiT weights into an existing engines folder, in place, without an engine rebuild.

A refit of (a copy of) the session's ONNX Runtime folder with a random LoRA must run exactly like a folder freshly
built with that LoRA, with every sha256 in the new manifest verifying; a refit back to the base checkpoint must run
like the folder before; a refused refit must leave the folder byte-identical. TensorRT-RTX engines are built here
ahead of time (no GPU): with --refittable the manifest says so and the refit says plainly it needs a GPU; without
it, the refit is refused in one line.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from requires import needs
from test_lora import SCALE, dit_velocity, random_lora
from wan_export.lora import LoraSpec
from wan_export.refit import refit
from wan_export.trt import gpu_compute_capability, library_available
from wan_rt.errors import WanError
from wan_rt.manifest import load_manifest

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early

HAVE_RTX = library_available("tensorrt-rtx")
needs_rtx = needs(HAVE_RTX, "TensorRT-RTX wheels not installed (pip install -r requirements/tensorrt-rtx.txt)")
HAVE_GPU = gpu_compute_capability() is not None


def build(ckpt: Path, out: Path, loras=(), **options) -> Path:
    from wan_export.build import BuildOptions
    from wan_export.build import build as run_build
    from wan_export.lora import with_loras
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile("tiny")
    source = with_loras(weight_source(ckpt, profile.model_preset, profile.seed, profile.sampling), list(loras))
    return run_build(profile, source, out, BuildOptions(**{"backend": "onnxruntime", "only": ("dit",), **options}))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of the folder (hidden ones too) -> sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora(tiny_official_ckpt, tmp_path_factory) -> LoraSpec:
    from wan_export.checkpoints.checkpoint import open_checkpoint

    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_file(random_lora(open_checkpoint(tiny_official_ckpt).dit_state_dict(), "original", 7), str(path))
    return LoraSpec(path, SCALE)


@pytest.fixture(scope="module")
def fresh(tiny_official_ckpt, lora, tmp_path_factory) -> Path:
    """The DiT graphs built with the LoRA, weights in external data files (the 5B DiT's layout)."""
    return build(tiny_official_ckpt, tmp_path_factory.mktemp("fresh") / "engines", [lora], external_data_threshold=0)


@pytest.fixture(scope="module")
def refitted(tiny_engines, lora, tmp_path_factory) -> Path:
    """A copy of the session's folder (every component, no LoRA), refitted with the LoRA; an interrupted refit's
    leftover file sits in it beforehand."""
    folder = tmp_path_factory.mktemp("refit") / "engines"
    shutil.copytree(tiny_engines, folder)
    (folder / "dit.r5.onnx").write_bytes(b"half-written by an interrupted refit")
    load_manifest(folder)  # an unreferenced file does not make the folder invalid
    return refit(folder, [lora])


def test_refit_equals_a_fresh_build_with_the_lora(refitted, fresh, tiny_engines, lora):
    np.testing.assert_allclose(dit_velocity(refitted), dit_velocity(fresh), rtol=1e-5, atol=1e-5)
    assert not np.allclose(dit_velocity(refitted), dit_velocity(tiny_engines), atol=1e-3)  # the LoRA did something

    manifest = load_manifest(refitted, verify=True)
    before = load_manifest(tiny_engines).data
    assert manifest.data["weights"]["loras"] == [lora.record()]
    assert manifest.data["refit"]["count"] == 1
    dit_graphs = set(manifest.data["refit"]["components"])
    assert "dit" in dit_graphs
    for name, entry in manifest.data["components"].items():
        if name in dit_graphs:
            assert entry["file"] == name + ".r1.onnx" and entry["files"] != before["components"][name]["files"]
        else:  # text encoder and VAE: untouched
            assert entry == before["components"][name]
    left = {p.name for p in refitted.iterdir()}
    assert "dit.onnx" not in left and "dit.r5.onnx" not in left and ".refit.partial" not in left
    named = {f for entry in manifest.data["components"].values() for f in entry["files"]}
    assert {n for n in left if n.endswith((".onnx", ".data"))} == named


def test_check_compares_a_refitted_folder_with_its_lora(refitted):
    from wan_export.check import check_engines

    report = check_engines(refitted)
    assert report.passed, report.table()
    assert {row.component for row in report.rows} >= {"dit", "text_encoder"}


def test_refit_back_to_the_base_checkpoint_rewrites_external_data(fresh, tiny_engines, tiny_official_ckpt,
                                                                  tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(fresh, folder)
    refit(folder, [], ckpt_dir=tiny_official_ckpt)
    manifest = load_manifest(folder, verify=True)
    assert "loras" not in manifest.data["weights"]  # the base weights alone
    assert "dit.r1.onnx.data" in manifest.components["dit"].files
    assert not (folder / "dit.onnx.data").exists()
    np.testing.assert_allclose(dit_velocity(folder), dit_velocity(tiny_engines), rtol=1e-5, atol=1e-5)


def test_refused_refit_leaves_the_folder_byte_identical(fresh, tmp_path):
    from wan_export.checkpoints.checkpoint import open_checkpoint

    folder = tmp_path / "engines"
    shutil.copytree(fresh, folder)
    load_manifest(folder)  # its sha256 cache written, as any run does
    before = snapshot(folder)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"diffusion_model.blocks.0.img_attn.q.lora_down.weight": torch.zeros(4, 8),
               "diffusion_model.blocks.0.img_attn.q.lora_up.weight": torch.zeros(8, 4)}, str(wrong))
    with pytest.raises(WanError, match="LoRA keys match no DiT weight") as info:
        refit(folder, [LoraSpec(wrong)])  # refused in the middle of the export
    assert "\n" not in str(info.value)
    with pytest.raises(WanError, match="nothing to refit"):
        refit(folder, [])
    other = tmp_path / "other-shape"
    _write_other_shape_checkpoint(other)
    with pytest.raises(WanError, match="other sizes"):
        refit(folder, [], ckpt_dir=other)
    assert snapshot(folder) == before
    assert open_checkpoint(other).dit_config.num_layers == 1


def _write_other_shape_checkpoint(out: Path) -> None:
    from dataclasses import replace

    from wan_export.checkpoints.writer import write_random_checkpoint
    from wan_export.config import TINY

    write_random_checkpoint(replace(TINY, dit=replace(TINY.dit, num_layers=1)), out)


def test_check_names_a_missing_or_changed_lora_in_one_line(fresh, lora, tmp_path):
    from wan_export.check import check_engines

    folder = tmp_path / "engines"
    shutil.copytree(fresh, folder)
    data = json.loads((folder / "manifest.json").read_text())
    moved = tmp_path / "gone.safetensors"
    data["weights"]["loras"][0]["path"] = str(moved)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(WanError, match="is missing") as info:
        check_engines(folder)
    assert str(moved) in str(info.value) and "\n" not in str(info.value)
    moved.write_bytes(lora.path.read_bytes()[:-1] + b"\0")
    with pytest.raises(WanError, match="changed since the engines were built") as info:
        check_engines(folder)
    assert "\n" not in str(info.value)


# -- TensorRT-RTX engines (built ahead of time on this CPU) ----------------------------------------------------
def rtx_build(ckpt: Path, onnx_from: Path, out: Path, refittable: bool) -> Path:
    """The tiny DiT graphs as TensorRT-RTX engines from the session folder's graphs (no second export)."""
    target = "CURRENT" if HAVE_GPU else "SM89"
    return build(ckpt, out, backend="tensorrt-rtx", compute_capabilities=(target,), onnx_from=onnx_from,
                 refittable=refittable)


@pytest.fixture(scope="module")
def rtx_dit(tiny_official_ckpt, tiny_engines, tmp_path_factory) -> Path:
    """Built without --refittable."""
    return rtx_build(tiny_official_ckpt, tiny_engines, tmp_path_factory.mktemp("rtx") / "engines", False)


@needs_rtx
def test_engines_built_without_refittable_are_refused_in_one_line(rtx_dit, lora, tmp_path):
    from click.testing import CliRunner

    from wan_export.cli import main

    folder = tmp_path / "engines"
    shutil.copytree(rtx_dit, folder)
    load_manifest(folder)
    before = snapshot(folder)
    result = CliRunner().invoke(main, ["refit", "--engines", str(folder), "--lora", f"{lora.path}:{SCALE}"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "built without --refittable" in lines[0] and "dit.engine" in lines[0]
    assert snapshot(folder) == before
    assert "refittable" not in load_manifest(folder).components["dit"].target


@needs_rtx
@pytest.mark.skipif(HAVE_GPU, reason="checks the no-GPU refusal; this machine has a GPU")
def test_refittable_rtx_build_without_gpu_is_refused_before_any_export(tiny_official_ckpt, tiny_engines, tmp_path):
    """TensorRT-RTX 1.7's ahead-of-time builder fails refittable engines without a GPU (CUDA driver error)."""
    with pytest.raises(WanError, match="--refittable TensorRT-RTX engines need an NVIDIA GPU at build time") as info:
        rtx_build(tiny_official_ckpt, tiny_engines, tmp_path / "engines", True)
    assert "\n" not in str(info.value) and not (tmp_path / "engines").exists()


@needs_rtx
@pytest.mark.skipif(not HAVE_GPU, reason="refittable TensorRT-RTX builds and refits need an NVIDIA GPU")
def test_refittable_engines_refit_on_a_gpu(tiny_official_ckpt, tiny_engines, fresh, lora, tmp_path):
    folder = rtx_build(tiny_official_ckpt, tiny_engines, tmp_path / "engines", True)
    assert all(info.target.get("refittable") is True for info in load_manifest(folder).components.values())
    refit(folder, [lora])
    manifest = load_manifest(folder, verify=True)
    assert manifest.components["dit"].file == "dit.r1.engine"
    np.testing.assert_allclose(dit_velocity(folder), dit_velocity(fresh), rtol=1e-3, atol=1e-3)
