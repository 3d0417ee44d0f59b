"""Run one heavy step of `wan-export build` in a fresh child process: a part's ONNX export, an engine build.

Why: memory, and one clean error line. After a dynamo export torch keeps the ONNX IR graph reachable and its
initializers wrap the model's parameters, so an exporting process keeps the weights (10.2 GiB for the 5B DiT)
whatever `del model` does, and the TensorRT builder then wants about one more copy of its own. In children,
each step's memory goes back in full when it exits, so the full DiT exports and builds on a 24 GiB machine. A
child that dies (the OOM killer, a crash inside a library) cannot take the parent's cleanup of the staging
folder with it: its death is one WanError line here.

The child starts with `spawn` (no copy of the parent's memory); its `wan_export` log records and its result come
back over a pipe. `function` must be importable (module level), its arguments and result picklable.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal

from wan_rt.cli_support import disk_error_line
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")


class _PipeHandler(logging.Handler):
    def __init__(self, connection):
        super().__init__()
        self.connection = connection

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.connection.send(("log", record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 (a closed pipe must not fail the work)
            pass


def _child(function, args: tuple, level: int, connection) -> None:
    log.handlers[:] = [_PipeHandler(connection)]
    log.setLevel(level)
    log.propagate = False
    try:
        connection.send(("done", function(*args)))
    except WanError as exc:
        connection.send(("error", str(exc)))
    except OSError as exc:  # a refused write (disk full, ...) in plain words; other OS errors as they are
        connection.send(("error", disk_error_line(exc) or f"{type(exc).__name__}: {exc}"))
    except BaseException as exc:  # noqa: BLE001 (anything else: one line for the parent)
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = " (the kernel's OOM killer: not enough host memory for this step)" if name == "SIGKILL" else ""
        return f"killed by {name}{why}"
    return f"exited with status {exitcode} without a result"


def call_in_child(what: str, function, *args, cleanup=None):
    """`function(*args)` in a spawned child: its result, or its failure as one WanError line. `what` names the
    step in that line ("building dit.engine"); `cleanup()` runs here when the child died without answering."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, args, log.getEffectiveLevel(), sender), name=what)
    process.start()
    sender.close()  # the child holds the only writer: EOF on the pipe means it is gone
    outcome = None
    try:
        while outcome is None:
            try:
                message = receiver.recv()
            except EOFError:
                break
            if message[0] == "log":
                log.log(message[1], "%s", message[2])
            else:
                outcome = message
    finally:
        process.join()
        receiver.close()
    if outcome is None:
        if cleanup is not None:
            cleanup()
        raise WanError(f"{what} failed: the worker process was {_death(process.exitcode)}; nothing of that step "
                       f"was kept")
    kind, value = outcome
    if kind == "error":
        raise WanError(value)
    return value
