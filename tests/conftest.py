"""Session fixtures shared by the end-to-end tests: a tiny official-layout checkpoint and engines built from it.

Building the tiny profile costs ~85 s of one core (the ONNX exports are single-threaded), so it happens once per
run, on first use, and `make test`'s pytest-xdist workers share it (`shared`); tests that only read the folder share
it (tests that need to damage an engines folder copy it first).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from cpp_build import BUILD as CPP_BUILD
from requires import require

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Several workers share the cores: one thread each (torch's OpenMP pool, ONNX Runtime's sessions, and the
    # processes tests start inherit both). Full pools per worker oversubscribe a 2-core machine and spin: the
    # torch-heavy files took 43 s instead of 21 s on two workers (docs/benchmarks.md, issue 19).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("WAN_RT_ORT_THREADS", "1")
    if "torch" in sys.modules:  # imported before this file by a plugin: OMP_NUM_THREADS came too late
        sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    """The order in which test files start (`make test` hands whole files to two workers in this order):
    1. the first file that needs `tiny_engines` (its worker builds them, ~85 s),
    2. the files that do not need them: the other worker runs these meanwhile instead of waiting for the build,
    3. the rest; tests/test_cpp.py last, its C++ build compiling in the background meanwhile (tests/cpp_build.py).
    Within 2 and 3, files marked `own_build` (their fixtures build engines of their own) come first: long work
    first keeps the two workers' ends close."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.path.name, []).append(item)

    def uses(name: str, fixture: str) -> bool:
        return any(fixture in getattr(item, "fixturenames", ()) for item in files[name])

    def own_build(name: str) -> bool:
        return any(item.get_closest_marker("own_build") for item in files[name])

    cpp = [name for name in files if name == "test_cpp.py"]
    rest = [name for name in files if name not in cpp]
    first = next((name for name in rest if uses(name, "tiny_engines")), None)
    independent = [name for name in rest if not uses(name, "tiny_engines")]
    dependent = [name for name in rest if name not in independent and name != first]
    order = [first] if first else []
    for group in (independent, dependent):
        order += sorted(group, key=lambda name: not own_build(name))  # stable: collection order otherwise
    order += cpp
    items[:] = [item for name in order for item in files[name]]
    if cpp and uses("test_cpp.py", "cpp_build"):
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


def shared(tmp_path_factory, name: str, make) -> Path:
    """`make(path)` once per run at a folder every pytest-xdist worker of the run sees (the run's base temp
    folder), the first worker to ask making it under a file lock while the others wait; returns the path."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's base temp is a folder of the run's
        root = root.parent
    root = Path(os.environ.get("WAN_TEST_SHARED_DIR", root))  # developers: keep the builds across runs
    path = root / "shared" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{name}.lock")):
        if not (path.parent / f".{name}.done").exists():
            make(path)
            (path.parent / f".{name}.done").touch()
    return path


@pytest.fixture(scope="session")
def tiny_official_ckpt(tmp_path_factory) -> Path:
    """Seeded random weights of the tiny preset in the official Wan2.2 layout (config.json, .pth files, tokenizer)."""
    from wan_export.checkpoints.writer import write_random_checkpoint
    from wan_export.config import TINY

    return shared(tmp_path_factory, "tiny-official",
                  lambda path: write_random_checkpoint(TINY, path, layout="official", seed=0))


@pytest.fixture(scope="session")
def tiny_engines(tiny_official_ckpt, tmp_path_factory) -> Path:
    """The `tiny` profile (ONNX Runtime, fp32) built from `tiny_official_ckpt`: the same weights the official code
    loads, so the runtime can be compared with it end to end. Treat as read-only."""
    from wan_export.build import BuildOptions, build
    from wan_export.profiles import load_profile
    from wan_export.weights import weight_source

    profile = load_profile("tiny")
    source = weight_source(tiny_official_ckpt, profile.model_preset, profile.seed, profile.sampling)
    return shared(tmp_path_factory, "tiny-engines",
                  lambda path: build(profile, source, path, BuildOptions(backend="onnxruntime")))


@pytest.fixture(scope="session")
def input_image(tmp_path_factory) -> Path:
    """A 240x128 RGB PNG for image-to-video: with the area of 160x96 it is resized to 180x96 and center-cropped
    to 160x96, so the whole official preprocessing (best_output_size, LANCZOS resize, crop) is exercised."""
    from wan_rt.demo_image import landscape

    path = tmp_path_factory.mktemp("images") / "input.png"
    landscape(240, 128).save(path)
    return path
