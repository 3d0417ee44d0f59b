"""Reduced-precision ONNX Runtime graphs (issue 24): built by the real CLI, loaded, and checked on the CPU.

One tiny build (text encoder bf16, DiT fp16: both kinds in one export) serves the file: `wan-export check` runs the
bf16 graph through onnx's reference evaluator (ONNX Runtime's CPU provider has no bf16 MatMul) and the fp16 graph
through ONNX Runtime's CPU provider, each against the fp32 PyTorch reference; the graphs keep the official fp32
islands; the runtime refuses a bf16 graph on the CPU provider in one line; the build refuses fp16 umT5.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from wan_rt.errors import WanError

pytestmark = pytest.mark.own_build  # tests/conftest.py starts this file early (its fixture exports a build)
CLI = [sys.executable, "-m", "wan_export.cli"]


def _run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reduced(tiny_official_ckpt, tmp_path_factory) -> Path:
    """text_encoder bf16 and dit fp16 of the tiny model, by `wan-export build --precision` (ONNX Runtime)."""
    out = tmp_path_factory.mktemp("reduced") / "engines"
    result = _run("build", "--profile", "tiny", "--ckpt-dir", tiny_official_ckpt, "--out", out, "--only",
                  "text_encoder", "--only", "dit", "--precision", "text_encoder=bf16,dit=fp16")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _graph_dtypes(path: Path) -> dict[str, int]:
    """Bytes of initializers per element type name (FLOAT, FLOAT16, BFLOAT16)."""
    model = onnx.load(str(path))
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
        sizes[name] = sizes.get(name, 0) + array.size
    return sizes


def test_manifest_records_each_components_precision(reduced):
    manifest = json.loads((reduced / "manifest.json").read_text())
    assert {n: c["precision"] for n, c in manifest["components"].items()} == {"text_encoder": "bf16", "dit": "fp16"}
    assert manifest["profile"]["precision"]["dit"] == "fp16"
    # the I/O stays float32: the runtime feeds the same arrays whatever the precision inside
    assert {t["dtype"] for t in manifest["components"]["dit"]["inputs"]} == {"float32"}


@pytest.mark.parametrize(("component", "reduced_type"), [("text_encoder", "BFLOAT16"), ("dit", "FLOAT16")])
def test_graph_weights_are_reduced_with_fp32_islands(reduced, component, reduced_type):
    """Most weights in the reduced type; the official fp32 islands (norm scales, modulation, time embedding)
    stay float32."""
    sizes = _graph_dtypes(reduced / f"{component}.onnx")
    floats = sum(sizes.get(kind, 0) for kind in ("FLOAT", "FLOAT16", "BFLOAT16"))  # not the int64 index tables
    # most weights reduced (the tiny DiT's islands are ~28% of its floats; at 5B scale under 2%)
    assert sizes.get(reduced_type, 0) > 0.6 * floats, sizes
    if component == "dit":  # the DiT's islands: modulation tables, time embedding, head norm
        assert sizes.get("FLOAT", 0) > 0, sizes


def test_check_passes_within_the_precision_tolerances(reduced):
    """`wan-export check`: bf16 through the reference evaluator, fp16 through ONNX Runtime CPU, each against the
    fp32 PyTorch reference at the smallest and largest shapes."""
    report = reduced.parent / "check.json"
    result = _run("check", "--engines", reduced, "--json", report)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = json.loads(report.read_text())["rows"]
    runners = {(r["component"], r["runner"]) for r in rows}
    assert ("text_encoder", "onnx-reference") in runners and ("dit", "onnxruntime") in runners
    for row in rows:
        assert row["passed"] and row["cosine"] > 0.999, row
        # a reduced graph is not bit-exact with the fp32 reference: the rows measure real rounding
        assert row["max_abs"] > 0, row
        assert row["tolerance"] == {"text_encoder": "max(0.06,0.1*max|ref|)/0.06", "dit": "0.02/0.02"}[row["component"]]


def test_runtime_refuses_a_bf16_graph_on_the_cpu_provider(reduced, monkeypatch):
    from wan_rt.backends import open_runner
    from wan_rt.manifest import load_manifest

    monkeypatch.setenv("WAN_RT_ORT_PROVIDERS", "CPUExecutionProvider")
    manifest = load_manifest(reduced)
    with pytest.raises(WanError) as excinfo, open_runner(manifest, "text_encoder") as runner:
        runner.run({"input_ids": np.zeros((1, 512), np.int64), "attention_mask": np.ones((1, 512), np.int64)})
    message = str(excinfo.value)
    assert "\n" not in message
    assert "bf16 graph is for ONNX Runtime CUDA" in message and "--precision fp32" in message
    # the fp16 DiT runs on the CPU provider
    with open_runner(manifest, "dit") as dit:
        assert dit.session.get_providers() == ["CPUExecutionProvider"]


def test_fp16_text_encoder_is_refused_before_any_export(tiny_official_ckpt, tmp_path):
    result = _run("build", "--profile", "tiny", "--ckpt-dir", tiny_official_ckpt, "--out", tmp_path / "e",
                  "--only", "text_encoder", "--precision", "fp16")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: text_encoder at fp16 overflows")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("bf16", {"text_encoder": "bf16", "dit": "bf16", "vae_encoder": "bf16", "vae_decoder": "bf16"}),
    ("dit=fp16,text_encoder=bf16", {"dit": "fp16", "text_encoder": "bf16"}),
])
def test_precision_option_parses(text, expected):
    from wan_export.precision import parse_precision

    assert parse_precision(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("int8", "'int8' is not one of fp32, bf16, fp16"),
    ("unet=bf16", "unknown component 'unet'"),
    (",", "needs a value"),
])
def test_bad_precision_option_is_one_line(text, fragment):
    from wan_export.precision import parse_precision

    with pytest.raises(WanError, match=fragment):
        parse_precision(text)


def test_placement_cpu_builds_an_fp32_onnxruntime_text_encoder(tiny_official_ckpt, tmp_path, caplog):
    """--place text_encoder=cpu: fp32 whatever the precision asked (no bf16 CPU kernels), `device: cpu` recorded
    (in-process: the CLI's option parsing is the same `override_profile`)."""
    from wan_export.build import BuildOptions, build
    from wan_export.precision import override_profile
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = override_profile(load_profile("tiny"), "bf16", ("text_encoder=cpu",))
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    with caplog.at_level("INFO", logger="wan_export"):
        out = build(profile, source, tmp_path / "engines", BuildOptions(backend="onnxruntime", only=("text_encoder",)))
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["components"]["text_encoder"]
    assert (entry["backend"], entry["precision"], entry["device"]) == ("onnxruntime", "fp32", "cpu")
    assert manifest["profile"]["placement"] == {"text_encoder": "cpu"}
    assert "placed on the CPU, exported at fp32" in caplog.text


def test_bad_placement_is_one_line(tmp_path):
    from wan_export.precision import parse_placement

    with pytest.raises(WanError, match="only text_encoder can be placed|COMPONENT=DEVICE"):
        parse_placement("dit=cpu")
    profile = tmp_path / "p.toml"
    profile.write_text((Path(__file__).resolve().parents[1] / "profiles" / "tiny.toml").read_text()
                       + '\n[placement]\nvae_decoder = "cpu"\n')
    result = _run("build", "--profile", profile, "--out", tmp_path / "e")
    assert result.returncode == 2
    assert "placement.vae_decoder = 'cpu'; only text_encoder can be placed" in result.stderr
