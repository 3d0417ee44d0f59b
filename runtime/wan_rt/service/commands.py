"""The `wan-rt api` and `wan-rt worker` commands (registered by wan_rt.cli). Light at import: the server's libraries
load when a command runs."""
from __future__ import annotations

from pathlib import Path

import click

from wan_rt.cli_support import run_cli, setup_logging, verbose_option

_MEMORY = click.Choice(["auto", "keep", "stage"])


def _serve_extra_missing(exc: ImportError):
    from wan_rt.errors import WanError

    return WanError(f"the service needs {exc.name}: pip install 'wan-deploy[serve]'")


def queue_options(command):
    for option in reversed([
        click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json)."),
        click.option("--queue", "queue_url", default=None,
                     help="postgresql://USER@HOST:PORT/DB (many machines). Default: SQLite in the --state folder."),
        click.option("--lease", "lease_s", type=click.FloatRange(min=1), default=60.0, show_default=True,
                     help="Seconds a worker holds a job without a heartbeat before another may take it over."),
        click.option("--memory", type=_MEMORY, default="auto", show_default=True,
                     help="Engines in device memory (wan-rt generate --memory): auto keeps them all open when they fit."),
        click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the engine files."),
    ]):
        command = option(command)
    return command


@click.command()
@queue_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--state", type=click.Path(path_type=Path), default=Path("wan-rt-state"), show_default=True,
              help="Folder of the SQLite queue (jobs.db), the outputs and upload scratch.")
@click.option("--outputs", type=click.Path(path_type=Path), default=None,
              help="Where workers write the videos (shared by every machine with --queue postgresql://). "
                   "Default: STATE/outputs.")
@click.option("--api-key", "keys", multiple=True, help="Require Authorization: Bearer KEY (repeatable).")
@click.option("--api-key-file", type=click.Path(path_type=Path), default=None, help="Keys, one per line.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Workers on this machine. Default: one per visible GPU, one on a CPU; 0: API only.")
@click.option("--max-queued", type=click.IntRange(min=1), default=100, show_default=True,
              help="Jobs that may wait; more are answered 429.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Largest input_reference image.")
@click.option("--model-name", default="wan2.2-ti2v-5b", show_default=True, help="The `model` this server answers to.")
@click.option("--poll-after-ms", type=click.IntRange(min=10), default=1000, show_default=True,
              help="How long the SDK's poll() waits between retrieves (openai-poll-after-ms header).")
@verbose_option
def api(engines, queue_url, lease_s, memory, no_verify, host, port, state, outputs, keys, api_key_file, workers,
        max_queued, max_upload_mb, model_name, poll_after_ms, verbose):
    """Serve the OpenAI Videos API (/v1/videos) over a durable job queue, with workers on this machine."""
    setup_logging(verbose)

    def work():
        try:
            from wan_rt.service.server import ApiOptions, run_api
        except ImportError as exc:
            raise _serve_extra_missing(exc) from None
        run_api(ApiOptions(engines=engines, host=host, port=port, state=state, queue_url=queue_url, outputs=outputs,
                           keys=keys, key_file=api_key_file, workers=workers, max_queued=max_queued,
                           max_upload_mb=max_upload_mb, lease_s=lease_s, memory=memory, model_name=model_name,
                           verify=not no_verify, poll_after_ms=poll_after_ms))

    run_cli(work)


@click.command()
@queue_options
@click.option("--outputs", type=click.Path(path_type=Path), required=True,
              help="Where the videos go: the folder the API serves them from (a shared file system).")
@click.option("--state", type=click.Path(path_type=Path), default=None,
              help="The API's --state folder, for its SQLite queue (same machine only).")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="Seconds between looks at an empty queue.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="A job whose workers were lost this many times fails instead of running again.")
@verbose_option
def worker(engines, queue_url, lease_s, memory, no_verify, outputs, state, poll_s, max_attempts, verbose):
    """Run queued jobs of `wan-rt api` on this machine until SIGTERM (the running job goes back to the queue)."""
    setup_logging(verbose)

    def work():
        try:
            from wan_rt.service.worker import run_worker
        except ImportError as exc:
            raise _serve_extra_missing(exc) from None
        run_worker(engines, queue_url, outputs, state, lease_s, poll_s, max_attempts, memory, verify=not no_verify)

    run_cli(work)
