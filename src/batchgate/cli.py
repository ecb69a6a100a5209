"""The `batchgate` command line: parse flags, build Settings, call the library."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchgate.errors import BatchgateError
from batchgate.settings import Settings


def _settings(**flags: Any) -> Settings:
    return Settings.load(flags)


def _fail_cleanly(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn batchgate errors into a one-line message and exit status 2."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except BatchgateError as exc:
            click.echo(f"batchgate: {exc.message}", err=True)
            sys.exit(2)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


backend_options = [
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder for the embedded queue, state and store [.batchgate].",
    ),
    click.option(
        "--queue",
        "queue_url",
        default=None,
        help="Queue URL: sqlite:///…, redis://…, sqs://NAME?region=…",
    ),
    click.option("--state", "state_url", default=None, help="State URL: sqlite:///…, redis://…"),
    click.option(
        "--store", "store_url", default=None, help="Store URL: file:///…, s3://BUCKET/PREFIX"
    ),
]
gateway_options = [
    click.option("--host", default=None, help="Address to bind [127.0.0.1]."),
    click.option("--port", type=int, default=None, help="Port to bind [8000]."),
    click.option(
        "--max-wait",
        "max_wait_s",
        default=None,
        help="Longest a request may block, e.g. 900, 15m [900].",
    ),
    click.option(
        "--max-body",
        "max_body_bytes",
        default=None,
        help="Largest request body, e.g. 100MB [100MB].",
    ),
    click.option(
        "--api-key",
        "api_keys",
        multiple=True,
        default=None,
        help="Accepted API key (repeatable); required off loopback.",
    ),
    click.option(
        "--insecure", is_flag=True, default=None, help="Allow a non-loopback bind without API keys."
    ),
]
worker_options = [
    click.option("--workers", type=int, default=None, help="Executor processes [number of CPUs]."),
]


def _apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@click.group()
@click.version_option(package_name="batchgate")
def main() -> None:
    """batchgate: scalable batch processing behind one blocking HTTP call."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@main.command()
@click.argument("app_ref", metavar="APP")
@_apply(backend_options + gateway_options + worker_options)
@_fail_cleanly
def serve(app_ref: str, **flags: Any) -> None:
    """Run the gateway and a worker pool in one process (APP: file.py[:app] or module[:app])."""
    from batchgate.server import run
    from batchgate.server import serve as serve_all

    flags["api_keys"] = flags["api_keys"] or None
    settings = _settings(**flags)
    click.echo(
        f"batchgate serving {app_ref} on http://{settings.host}:{settings.port} "
        f"with {settings.workers} executors (data in {settings.data_dir})",
        err=True,
    )
    run(serve_all(app_ref, settings))


@main.group()
def dlq() -> None:
    """Inspect and re-drive the dead-letter queue."""


@dlq.command("list")
@_apply(backend_options)
@click.option("--limit", type=int, default=100, show_default=True)
@_fail_cleanly
def dlq_list(limit: int, **flags: Any) -> None:
    """List dead-lettered tasks, oldest first."""
    from batchgate.dlq import list_dead

    for line in asyncio.run(list_dead(_settings(**flags), limit)):
        click.echo(line)


@dlq.command("redrive")
@_apply(backend_options)
@click.argument("message_ids", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="Re-drive every dead letter.")
@_fail_cleanly
def dlq_redrive(message_ids: tuple[str, ...], redrive_all: bool, **flags: Any) -> None:
    """Send dead-lettered tasks (the named ones, or --all) back to the queue."""
    from batchgate.dlq import redrive

    if not message_ids and not redrive_all:
        raise click.UsageError("name message ids to re-drive, or pass --all")
    count = asyncio.run(redrive(_settings(**flags), None if redrive_all else list(message_ids)))
    click.echo(f"re-drove {count} task(s)")


if __name__ == "__main__":
    main()
