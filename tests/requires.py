"""What a test needs from this machine: skipped where it is missing on a developer's machine, a failure with the
reason under CI (CI=true), which installs everything except a GPU (the wan22 oracle, TensorRT-RTX, tritonserver and
its stub environment, the C++ toolchain). Only GPU tests may skip there: they use plain `pytest.mark.skipif`.

    require(shutil.which("cmake") is not None, "no cmake on PATH: run scripts/setup_cpp.sh")   # inside a test
    @needs(HAVE_RTX, "TensorRT-RTX wheels not installed (...)")                               # on a test
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition, reason: str, *, module_level: bool = False) -> None:
    """Nothing when `condition` holds; else skip (locally) or fail (CI) the calling test with `reason`."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI installs this, so it may not skip: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def needs(condition, reason: str) -> pytest.MarkDecorator:
    """`require` as a test decorator, checked before the test's fixtures are set up (tests/conftest.py)."""
    return pytest.mark.requires(condition=bool(condition), reason=reason)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which this process cannot create files: a mode-0555 folder, or for root (whom modes do not stop)
    a kernel file system that refuses new files even to root (sysfs, procfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    for candidate in ("/sys", "/proc"):
        if os.path.isdir(candidate) and not _can_create_in(candidate):
            return Path(candidate)
    require(False, "running as root and no folder here refuses root (neither /sys nor /proc)")


def _can_create_in(folder: str) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False
