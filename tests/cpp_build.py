"""The CMake build of runtime/cpp for tests/test_cpp.py, once per run, in the background.

Compiling takes about two minutes of one core on a fresh clone. tests/conftest.py starts it as soon as the session
has collected a test of test_cpp.py and runs that file last, so the compile overlaps the Python tests; the
`cpp_build` fixture waits for it. In a single pytest process it runs at a lower CPU priority (on the core the tests
leave idle); under pytest-xdist every worker starts it, one compiles under a file lock at the tests' priority (the
workers keep both cores busy: a niced compile would only start once they finish) and the others then find it up to
date. Incremental: later runs only relink what changed ($WANRT_CPP_BUILD_DIR moves the build folder).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "runtime" / "cpp"
SETUP = "scripts/setup_cpp.sh"


def build_dir() -> Path:
    return Path(os.environ.get("WANRT_CPP_BUILD_DIR", CPP / "build")).absolute()


def tools() -> tuple[str | None, str | None]:
    """(cmake, C++ compiler) on PATH."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    return shutil.which("cmake"), compiler


def _cache_source(build: Path) -> str | None:
    try:
        for line in (build / "CMakeCache.txt").read_text().splitlines():
            if line.startswith("CMAKE_HOME_DIRECTORY:"):
                return line.split("=", 1)[1]
    except OSError:
        return None
    return None


def _tail(result: subprocess.CompletedProcess, lines: int) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def _niced(command: list[str]) -> list[str]:
    """At a lower CPU priority in a single pytest process: the tests running meanwhile come first."""
    nice = shutil.which("nice")
    return [nice, "-n", "10", *command] if nice and not os.environ.get("PYTEST_XDIST_WORKER") else command


class BackgroundBuild:
    """configure + build in a thread; `wait()` returns the build (dir, cli, tests, seconds) or the failure text."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._result: SimpleNamespace | str | None = None

    def start(self) -> None:
        cmake, compiler = tools()
        if self._thread is None and cmake and compiler:
            self._thread = threading.Thread(target=self._run, args=(cmake,), name="cpp-build", daemon=True)
            self._thread.start()

    def wait(self) -> SimpleNamespace | str:
        self.start()
        self._thread.join()
        return self._result

    def _run(self, cmake: str) -> None:
        build = build_dir()
        build.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(build.with_name(f".{build.name}.lock"))):  # one compile per folder at a time
            self._build(cmake, build)

    def _build(self, cmake: str, build: Path) -> None:
        if _cache_source(build) not in (None, str(CPP)):  # a build folder copied from another checkout
            shutil.rmtree(build)
        started = time.perf_counter()
        configure = subprocess.run(_niced([cmake, "-S", str(CPP), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]),
                                   capture_output=True, text=True, timeout=300)
        if configure.returncode:
            self._result = (f"CMake cannot configure runtime/cpp; its build dependencies (nlohmann-json, OpenSSL, "
                            f"libcurl) are probably missing: run {SETUP} (as root), then the tests again.\n"
                            f"{_tail(configure, 15)}")
            return
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        compile_ = subprocess.run(_niced([cmake, "--build", str(build), "-j", jobs]), capture_output=True, text=True,
                                  timeout=1200)
        if compile_.returncode:
            self._result = f"building runtime/cpp (cmake --build) failed (exit {compile_.returncode}):\n" \
                           f"{_tail(compile_, 30)}"
            return
        self._result = SimpleNamespace(dir=build, cli=build / "wan-rt-cpp", tests=build / "wanrt_tests",
                                       seconds=time.perf_counter() - started)


BUILD = BackgroundBuild()
