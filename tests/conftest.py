"""Session fixtures shared by the end-to-end tests: a tiny official-layout checkpoint and engines built from it.

Building the tiny profile costs ~35 s on 2 CPU cores, so it happens once per session, on first use; tests that
only read the folder share it (tests that need to damage an engines folder copy it first).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cpp_build import BUILD as CPP_BUILD
from requires import require


def pytest_collection_modifyitems(session, config, items):
    """tests/test_cpp.py runs last, its C++ build compiling in the background meanwhile (tests/cpp_build.py)."""
    cpp = [item for item in items if item.path.name == "test_cpp.py"]
    if cpp and len(cpp) < len(items):
        items[:] = [item for item in items if item.path.name != "test_cpp.py"] + cpp
    if any("cpp_build" in getattr(item, "fixturenames", ()) for item in cpp):
        CPP_BUILD.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`@needs(condition, reason)` (tests/requires.py): skip locally, fail under CI, before any fixture runs."""
    for mark in item.iter_markers("requires"):
        require(mark.kwargs["condition"], mark.kwargs["reason"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip from tests/requires.py is reported at the skipped test (`-ra` then says which test and why), not at
    the helper that raised it."""
    report = (yield).get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and str(report.longrepr[0]).endswith("requires.py"):
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, report.longrepr[2])


@pytest.fixture(scope="session")
def tiny_official_ckpt(tmp_path_factory) -> Path:
    """Seeded random weights of the tiny preset in the official Wan2.2 layout (config.json, .pth files, tokenizer)."""
    from wan_export.checkpoints.writer import write_random_checkpoint
    from wan_export.config import TINY

    return write_random_checkpoint(TINY, tmp_path_factory.mktemp("ckpt") / "tiny-official", layout="official",
                                   seed=0)


@pytest.fixture(scope="session")
def tiny_engines(tiny_official_ckpt, tmp_path_factory) -> Path:
    """The `tiny` profile (ONNX Runtime, fp32) built from `tiny_official_ckpt`: the same weights the official code
    loads, so the runtime can be compared with it end to end. Treat as read-only."""
    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    return build(profile, source, tmp_path_factory.mktemp("engines") / "tiny", BuildOptions(backend="onnxruntime"))


@pytest.fixture(scope="session")
def input_image(tmp_path_factory) -> Path:
    """A 240x128 RGB PNG for image-to-video: with the area of 160x96 it is resized to 180x96 and center-cropped
    to 160x96, so the whole official preprocessing (best_output_size, LANCZOS resize, crop) is exercised."""
    from wan_rt.demo_image import landscape

    path = tmp_path_factory.mktemp("images") / "input.png"
    landscape(240, 128).save(path)
    return path
