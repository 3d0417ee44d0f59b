"""Shared CLI plumbing: logging set-up, the -v option, and one-line errors instead of tracebacks."""
from __future__ import annotations

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


def run_cli(work) -> None:
    """Run `work`; a WanError (or Ctrl-C) becomes one line on stderr and exit status 2 (130 for Ctrl-C)."""
    try:
        work()
    except WanError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
