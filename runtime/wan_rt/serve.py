"""Serving the wan-rt pipeline with Triton Inference Server (repositories written by `wan-export triton`).

Two parts, none of them needing torch:

* The server: `run_server(repository, http_port)` starts the `tritonserver` 2.51 binary that the
  `nvidia-pytriton==0.7.0` wheel bundles, in the foreground, and stops it cleanly on Ctrl-C (`wan-rt serve`).
  Before that it puts the python-backend stub for this Python into the bundled backend folder (the wheel ships
  the stubs separately, one per Python version) and makes sure the stub environment exists.
* The stub environment: the bundled stub is built against numpy 1.x; with numpy 2 in the process it mangles every
  tensor. `ensure_stub_env()` makes a small virtual environment (no pip, a few MB) holding numpy 1.26 that sees
  this environment's packages and `wan_rt` through a .pth file. Repositories name it in each python model's
  `EXECUTION_ENV_PATH`, so the plain `tritonserver` command works as well. `python -m wan_rt.serve --prepare-env`
  makes it ahead of time (the install step).
The runners that forward a component call to a server (BLS, HTTP) are in `wan_rt.remote`.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")

PYTRITON = "nvidia-pytriton==0.7.0"
INSTALL_HINT = "pip install --no-deps -r requirements/triton.txt (nvidia-pytriton==0.7.0 bundles tritonserver 2.51)"
STUB = "triton_python_backend_stub"
STUB_NUMPY = "numpy==1.26.4"  # what the bundled stub was built against (numpy 2 breaks its tensor conversions)
ENV_MARKER = "wan-deploy-stub-env.json"
ENV_VARIABLE = "WAN_RT_TRITON_ENV"  # overrides the stub environment's location
ENGINES_VARIABLE = "WAN_RT_ENGINES"  # overrides the engines folder the repository's python models open
RUNTIME_DIR = Path(__file__).resolve().parent.parent  # the folder holding the wan_rt package


# -- the bundled server -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonInstall:
    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def stub_source(self, version: str) -> Path:
        return self.root / "python_backend_stubs" / version / STUB


def find_triton() -> TritonInstall:
    """The tritonserver bundled with nvidia-pytriton; WanError naming the install command when it is absent."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise WanError(f"Triton Inference Server is not installed: {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    install = TritonInstall(root)
    if not install.binary.is_file() or not (install.backends / "python").is_dir():
        raise WanError(f"{root} has no tritonserver binary or python backend: reinstall with {INSTALL_HINT}")
    return install


def install_stub(triton: TritonInstall, version: str | None = None) -> Path:
    """Copy the python-backend stub for Python `version` ("3.11") into the bundled backend folder (once)."""
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    source = triton.stub_source(version)
    if not source.is_file():
        offered = sorted(p.name for p in (triton.root / "python_backend_stubs").iterdir())
        raise WanError(f"{PYTRITON} has no python-backend stub for Python {version} (it has {', '.join(offered)}); "
                       f"use one of those Python versions for the server environment")
    target = triton.backends / "python" / STUB
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and target.read_bytes() == source.read_bytes():
        return target
    try:
        tmp = target.with_name(f".{STUB}.{os.getpid()}")
        shutil.copy2(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise WanError(f"cannot install the python-backend stub into {target.parent} ({exc.strerror or exc}); copy "
                       f"{source} there yourself") from None
    return target


# -- the stub environment -----------------------------------------------------------------------------------------
def default_stub_env() -> Path:
    """$WAN_RT_TRITON_ENV, else `triton-stub-env` inside this (virtual) environment."""
    override = os.environ.get(ENV_VARIABLE)
    return Path(override).expanduser().absolute() if override else Path(sys.prefix) / "triton-stub-env"


def _env_description() -> dict:
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "base_executable": getattr(sys, "_base_executable", sys.executable),
        "site_packages": [p for p in site.getsitepackages() if Path(p).is_dir()],
        "runtime": str(RUNTIME_DIR),
        "numpy": STUB_NUMPY if int(np.__version__.split(".")[0]) >= 2 else f"numpy=={np.__version__} (inherited)",
    }


def env_python_version(env: Path) -> str | None:
    """"3.11" from the environment's pyvenv.cfg (None when unreadable)."""
    try:
        text = (Path(env) / "pyvenv.cfg").read_text()
    except OSError:
        return None
    found = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def stub_env_ready(env: Path) -> bool:
    try:
        marker = json.loads((Path(env) / ENV_MARKER).read_text())
    except (OSError, ValueError):
        return False
    try:  # a moved or copied environment activates its old path
        activate = (Path(env) / "bin" / "activate").read_text()
    except OSError:
        return False
    return marker == _env_description() and str(Path(env).absolute()) in activate


def ensure_stub_env(env: str | Path | None = None) -> Path:
    """The stub environment at `env` (default `default_stub_env()`), made now if missing or stale.

    A virtual environment without pip whose site-packages holds numpy 1.26 (installed with this environment's pip:
    from its cache or PyPI) and a .pth that adds this environment's site-packages and the wan_rt folder after it.
    """
    env = Path(env).absolute() if env is not None else default_stub_env()
    if stub_env_ready(env):
        return env
    import fcntl

    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.with_name(f".{env.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time; the others find it ready
        if stub_env_ready(env):
            return env
        _make_stub_env(env)
    log.info("stub environment ready: %s", env)
    return env


def _make_stub_env(env: Path) -> None:
    """Made in place (its activate script names its own path); the marker file, written last, says it is whole."""
    description = _env_description()
    if env.exists():
        if not (env / "pyvenv.cfg").is_file():
            raise WanError(f"{env} exists and is not a virtual environment; remove it or set {ENV_VARIABLE}")
        shutil.rmtree(env)
    try:
        _run([sys.executable, "-m", "venv", "--without-pip", str(env)], "create the stub environment")
        site_dir = env / "lib" / f"python{description['python']}" / "site-packages"
        if not site_dir.is_dir():
            raise WanError(f"{env}: no {site_dir.relative_to(env)} after python -m venv")
        if description["numpy"] == STUB_NUMPY:
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                  "--only-binary=:all:", "--target", str(site_dir), STUB_NUMPY],
                 f"install {STUB_NUMPY} for the python-backend stub (needs PyPI or a pip cache)")
        lines = [f"import site; site.addsitedir({path!r})" for path in description["site_packages"]]
        lines.append(description["runtime"])
        (site_dir / "wan_deploy_runtime.pth").write_text("\n".join(lines) + "\n")
        (env / ENV_MARKER).write_text(json.dumps(description))
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise


def _run(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WanError(f"cannot {what}: {exc}") from None
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WanError(f"cannot {what}: `{' '.join(command)}` failed ({tail[0]})")


# -- running the server -------------------------------------------------------------------------------------------
def repository_env_paths(repository: Path) -> set[Path]:
    """Every EXECUTION_ENV_PATH the repository's model configs name."""
    found = set()
    for config in Path(repository).glob("*/config.pbtxt"):
        text = config.read_text()
        for match in re.finditer(r'key:\s*"EXECUTION_ENV_PATH"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text):
            value = match.group(1).replace("$$TRITON_MODEL_DIRECTORY", str(config.parent))
            found.add(Path(value))
    return found


def server_command(triton: TritonInstall, repository: str | Path, http_port: int, host: str = "127.0.0.1",
                   grpc_port: int | None = None, metrics_port: int | None = None, exit_timeout: int = 5) -> list[str]:
    """The tritonserver command line: HTTP on host:http_port; gRPC and metrics only when given a port."""
    command = [str(triton.binary), f"--model-repository={Path(repository).absolute()}",
               f"--backend-directory={triton.backends}", f"--http-address={host}", f"--http-port={http_port}",
               f"--exit-timeout-secs={exit_timeout}", "--disable-auto-complete-config",
               # grow the stub's shared memory in 64 MB steps: a video output is one tensor
               "--backend-config=python,shm-growth-byte-size=67108864"]
    if grpc_port is None:
        command.append("--allow-grpc=false")
    else:
        command += [f"--grpc-address={host}", f"--grpc-port={grpc_port}"]
    if metrics_port is None:
        command.append("--allow-metrics=false")
    else:
        command += [f"--metrics-address={host}", f"--metrics-port={metrics_port}"]
    return command


def check_repository(repository: Path) -> None:
    if not repository.is_dir():
        raise WanError(f"model repository {repository} does not exist; write one with "
                       f"wan-export triton --engines ENGINES --out {repository}")
    if not any(repository.glob("*/config.pbtxt")):
        raise WanError(f"{repository} has no model folders with config.pbtxt: not a Triton model repository "
                       f"(write one with wan-export triton)")


def prepare_server(repository: str | Path, engines: str | Path | None = None) -> tuple[TritonInstall, dict]:
    """Everything before the server starts: binary, stub, stub environment; returns (install, environment)."""
    repository = Path(repository).absolute()
    check_repository(repository)
    triton = find_triton()
    environment = dict(os.environ)
    version = None
    for env in repository_env_paths(repository):
        if env == default_stub_env():
            ensure_stub_env(env)
        elif not (env / "bin" / "activate").is_file():
            raise WanError(f"{repository} names the python environment {env}, which does not exist; rewrite the "
                           f"repository with wan-export triton or make it with python -m wan_rt.serve --prepare-env")
        version = env_python_version(env) or version
    install_stub(triton, version)
    if engines is not None:
        from wan_rt.manifest import load_manifest

        engines = Path(engines).absolute()
        load_manifest(engines, verify=False)  # a clear error now rather than a failed model load
        environment[ENGINES_VARIABLE] = str(engines)
    return triton, environment


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> bool:
    """Poll GET url/v2/health/ready until 200 (True), the process exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def run_server(repository: str | Path, http_port: int = 8000, host: str = "127.0.0.1",
               engines: str | Path | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
               echo: Callable[[str], None] = print) -> int:
    """Run tritonserver over `repository` in the foreground until Ctrl-C / SIGTERM (then stop it and return 0).

    The server runs in its own session (so one Ctrl-C reaches it once, through this process) and is sent SIGTERM
    by the kernel if this process dies. Returns the server's exit status when it stops on its own; 0 after a stop
    requested here.
    """
    triton, environment = prepare_server(repository, engines)
    command = server_command(triton, repository, http_port, host, grpc_port, metrics_port)
    log.debug("starting %s", " ".join(command))
    stopping = threading.Event()
    process = subprocess.Popen(command, env=environment, start_new_session=True, preexec_fn=_die_with_parent)

    def stop(signum, _frame):
        if stopping.is_set():  # a second Ctrl-C: do not wait for in-flight requests
            process.kill()
            return
        stopping.set()
        try:
            process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    url = f"http://{local}:{http_port}"

    def announce():
        if wait_ready(url, process, timeout=600) and not stopping.is_set():
            echo(f"serving {Path(repository).absolute()} at http://{host}:{http_port} (tritonserver pid "
                 f"{process.pid}); Ctrl-C stops it")

    threading.Thread(target=announce, daemon=True).start()
    try:
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:  # raised only if a handler was replaced; keep waiting for the stop
                stop(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:
            process.kill()
            process.wait()
    if stopping.is_set():
        echo("tritonserver stopped")
        return 0
    if code:
        raise WanError(f"tritonserver exited with status {code} (its log is above); a model that failed to load "
                       f"stops the server: check the repository and engines paths")
    return 0


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wan_rt.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare-env", action="store_true",
                        help="make the stub environment (numpy 1.26 for the bundled python backend) and install "
                             "the stub, then exit")
    parser.add_argument("--env", default=None, help=f"stub environment folder (default ${ENV_VARIABLE} or "
                                                    f"<sys.prefix>/triton-stub-env)")
    args = parser.parse_args(argv)
    if not args.prepare_env:
        parser.print_help()
        return 2
    try:
        env = ensure_stub_env(args.env)
        stub = install_stub(find_triton(), env_python_version(env))
    except WanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"stub environment {env}; python-backend stub {stub}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
