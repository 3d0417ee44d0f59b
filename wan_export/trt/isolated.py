"""`build_engine` in a fresh child process: what `wan-export build` uses after exporting in the same process.

Why a child: the builder's own memory (about one more copy of the weights, for the 5B DiT ~20 GiB peak) is
given back in full when it exits, whatever the library or glibc keep, and a child that dies (the OOM killer, a
crash inside the library) cannot take the parent's cleanup of the staging folder with it: the parent turns the
death into one WanError line. It does not shrink the parent: after exporting, the exporting process still holds
the weights (see wan_export.build._give_back_memory), so on a 24 GiB machine the full DiT builds only from an
already exported graph in a fresh process (docs/tensorrt.md).

Log lines and the result come back over a pipe; the child starts with `spawn` (no copy of the parent's memory).
"""
from __future__ import annotations

import multiprocessing
import signal

from wan_export.trt.builder import EngineRequest, build_engine
from wan_rt.errors import WanError


def _child(request: EngineRequest, connection) -> None:
    def log(line) -> None:
        connection.send(("log", str(line)))

    try:
        connection.send(("done", build_engine(request, log)))
    except WanError as exc:
        connection.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 (anything else: one line for the parent, then exit non-zero)
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = " (the kernel's OOM killer: not enough host memory for this build)" if name == "SIGKILL" else ""
        return f"the engine builder process was killed by {name}{why}"
    return f"the engine builder process exited with status {exitcode} without a result"


def build_engine_isolated(request: EngineRequest, log=print) -> dict:
    """`build_engine(request, log)` run in a child process; same result, same one-line WanError on failure."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(request, sender), name=f"build {request.engine_path.name}")
    process.start()
    sender.close()  # the child holds the only writer: EOF on the pipe means it is gone
    outcome = None
    try:
        while outcome is None:
            try:
                kind, value = receiver.recv()
            except EOFError:
                break
            if kind == "log":
                log(value)
            else:
                outcome = (kind, value)
    finally:
        process.join()
        receiver.close()
    if outcome is None:
        for partial in request.engine_path.parent.glob(f".{request.engine_path.name}.*.tmp"):
            partial.unlink(missing_ok=True)  # the temp file a builder killed mid-write leaves (builder._write_atomic)
        raise WanError(f"building {request.engine_path.name} from {request.onnx_path} failed: "
                       f"{_death(process.exitcode)}; nothing was written")
    kind, value = outcome
    if kind == "error":
        raise WanError(value)
    return value
