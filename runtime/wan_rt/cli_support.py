"""Shared CLI plumbing: logging set-up, the -v option, and one-line errors instead of tracebacks."""
from __future__ import annotations

import errno
import logging
import sys

import click

from wan_rt.errors import WanError

verbose_option = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    if verbose < 2:
        for noisy in ("torch", "onnxscript", "onnx_ir", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


# Errors of the file system the outputs go to: one line with the fix, not a traceback from inside a library.
_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
    errno.EACCES: ("permission denied", "write to a folder you may write to"),
}


def disk_error_line(exc: OSError) -> str | None:
    """The one line for a write that the file system refused (None for other OS errors)."""
    if exc.errno not in _DISK_ERRORS:
        return None
    what, fix = _DISK_ERRORS[exc.errno]
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{what}{where}; {fix} (nothing half-written was kept)"


def run_cli(work) -> None:
    """Run `work`; a WanError, a refused write (disk full, read-only, no permission) or Ctrl-C becomes one line on
    stderr and exit status 2 (130 for Ctrl-C)."""
    try:
        work()
    except WanError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        line = disk_error_line(exc)
        if line is None:
            raise
        click.echo(f"error: {line}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
