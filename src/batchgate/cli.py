"""The `batchgate` command line: parse flags, build Settings, call the library."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchgate.aws.package import LAMBDA_PYTHON
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
        "--max-items",
        type=int,
        default=None,
        help="Most items in one batch (413 above) [10000000].",
    ),
    click.option(
        "--result-ttl",
        "result_ttl_s",
        default=None,
        help="How long finished jobs and results are kept, e.g. 24h [24h].",
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

    def announce(url: str) -> None:
        click.echo(
            f"batchgate serving {app_ref} on {url} "
            f"with {settings.workers} executors (data in {settings.data_dir})",
            err=True,
        )

    run(serve_all(app_ref, settings, owns_queue=True, on_listening=announce))


@main.command()
@click.argument("app_ref", metavar="[APP]", required=False)
@_apply(backend_options + gateway_options)
@_fail_cleanly
def gateway(app_ref: str | None, **flags: Any) -> None:
    """Run only the HTTP gateway. Without APP it learns the functions the workers publish."""
    from batchgate.server import run
    from batchgate.server import serve as serve_all

    flags["api_keys"] = flags["api_keys"] or None
    settings = _settings(**flags)

    def announce(url: str) -> None:
        click.echo(f"batchgate gateway on {url}", err=True)

    run(serve_all(app_ref, settings, run_worker=False, on_listening=announce))


@main.command()
@click.argument("app_ref", metavar="APP")
@_apply(backend_options)
@click.option(
    "--concurrency", "workers", type=int, default=None, help="Executor processes [number of CPUs]."
)
@_fail_cleanly
def worker(app_ref: str, **flags: Any) -> None:
    """Run only a worker: executors for APP's functions, fed from the queue."""
    from batchgate.server import run
    from batchgate.server import serve as serve_all

    settings = _settings(**flags)
    click.echo(f"batchgate worker for {app_ref} with {settings.workers} executors", err=True)
    run(serve_all(app_ref, settings, run_gateway=False))


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


@main.command("submit")
@click.argument("function")
@click.argument("file", default="-", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Gateway URL.")
@click.option("--api-key", default=None, help="API key, sent as Authorization: Bearer KEY.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
    help="Write the result to this file [stdout].",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["json", "ndjson"]), default=None,
    help="Input format [ndjson for .ndjson/.jsonl files, else json].",
)  # fmt: skip
def submit_cmd(
    function: str, file: str, url: str, api_key: str | None, output: str, fmt: str | None
) -> None:
    """Send FILE (JSON or NDJSON; - for stdin) to FUNCTION and write its result.

    A map function gets the file streamed as a batch, and progress shows while it runs;
    the result comes back in the input's format. Any other function gets the file's JSON
    value. Exit status: 0 done, 1 the job failed or the server refused, 2 usage error.
    """
    import contextlib
    import json

    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from batchgate.client import Client
    from batchgate.errors import NotFound
    from batchgate.models import dumps

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    stdin = sys.stdin.buffer
    if fmt is None:
        fmt = "ndjson" if Path(file).suffix.lower() in (".ndjson", ".jsonl") else "json"
    console = Console(stderr=True)
    quiet = not console.is_terminal

    class CountingReader:
        """The input file, reporting each read to the upload bar."""

        def __init__(self, on_read: Callable[[int], object]) -> None:
            self.file = stdin if file == "-" else open(file, "rb")  # noqa: SIM115
            self.on_read = on_read

        def read(self, size: int = -1) -> bytes:
            piece: bytes = self.file.read(size)
            self.on_read(len(piece))
            return piece

        def close(self) -> None:
            if self.file is not stdin:
                self.file.close()

    def write(pieces: Any) -> None:
        first = next(pieces, b"")  # waits for the outcome before creating the output file
        out = sys.stdout.buffer if output == "-" else open(output, "wb")  # noqa: SIM115
        try:
            out.write(first)
            last = first[-1:]
            for piece in pieces:
                out.write(piece)
                last = piece[-1:] or last
            if last not in (b"\n", b""):
                out.write(b"\n")  # a JSON result ends its line too
        finally:
            if output != "-":
                out.close()

    job_id = None
    try:
        with Client(url, api_key, poll_s=30.0) as client:
            kinds = {f["name"]: f.get("kind") for f in client.functions()}
            if function not in kinds:
                known = ", ".join(sorted(kinds)) or "none"
                raise NotFound(f"the gateway has no function {function!r} (it has: {known})")
            if kinds[function] != "map":
                raw = stdin.read() if file == "-" else Path(file).read_bytes()
                try:
                    payload = json.loads(raw)
                except ValueError as exc:
                    raise click.UsageError(f"{file} is not valid JSON: {exc}") from None
                result = client.run(function, payload)
                write(iter([result if isinstance(result, bytes) else dumps(result) + b"\n"]))
                return
            size = None if file == "-" else Path(file).stat().st_size
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(
                TextColumn("upload"), *columns, console=console, disable=quiet, transient=True
            ) as bars:
                upload = bars.add_task("upload", total=size)
                reader = CountingReader(lambda n: bars.advance(upload, n))
                try:
                    handle = client.submit(function, file=reader, format=fmt)
                finally:
                    reader.close()
            job_id = handle.id
            with Progress(
                TextColumn(f"job {handle.id}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, disable=quiet,
            ) as bars:  # fmt: skip
                items = bars.add_task("items", total=None)
                with contextlib.suppress(BatchgateError):  # fetching the result reports them
                    for event in handle.events():
                        if (progress := event.progress) is not None:
                            done = progress.done + progress.failed
                            bars.update(items, completed=done, total=progress.total or None)
                        if event.terminal:
                            break
            write(handle.stream_result(format=fmt))
    except BatchgateError as exc:
        click.echo(f"batchgate: {exc.message}", err=True)
        sys.exit(1)
    except httpx.HTTPError as exc:
        click.echo(f"batchgate: {url}: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if job_id is not None:
            click.echo(f"batchgate: interrupted; job {job_id} goes on", err=True)
        sys.exit(130)


def _ids(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@main.group()
def aws() -> None:
    """Deploy an app on AWS Lambda: build its package and its SAM template."""


@aws.command("template")
@click.argument("app_ref", metavar="APP")
@click.option(
    "--workers", type=click.Choice(["esm", "feeder"]), default="esm", show_default=True,
    help="esm: a worker Lambda on an SQS event source; feeder: self-re-invoking chains.",
)  # fmt: skip
@click.option("--subnets", default=None, help="Subnet ids (comma-separated): run in this VPC.")
@click.option("--security-groups", default=None, help="Security group ids for the Lambdas.")
@click.option("--route-tables", default=None, help="Route table ids, for the S3 endpoint.")
@click.option("--vpc-id", default=None, help="The subnets' VPC id (else a stack parameter).")
@click.option(
    "--no-endpoints", is_flag=True,
    help="Do not create VPC endpoints (the VPC already has them, or a NAT gateway).",
)  # fmt: skip
@click.option(
    "--redis-url", default=None,
    help="Use this Redis/Valkey for job state instead of creating ElastiCache Serverless.",
)  # fmt: skip
@click.option(
    "--cache-engine", type=click.Choice(["valkey", "redis"]), default="valkey",
    show_default=True, help="Engine of the ElastiCache Serverless cache.",
)  # fmt: skip
@click.option(
    "--public-url", is_flag=True,
    help="Function URL with AuthType NONE (requires the ApiKeys parameter) instead of AWS_IAM.",
)  # fmt: skip
@click.option(
    "--code-uri", default="dist/batchgate-lambda.zip", show_default=True,
    help="The zip from `batchgate aws package` (sam deploy uploads it).",
)  # fmt: skip
@click.option("--gateway-timeout", type=int, default=900, show_default=True, help="Seconds.")
@click.option(
    "--worker-timeout", type=int, default=None,
    help="Seconds [the longest function timeout + 30, at most 900].",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
    help="Write the template here [stdout].",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default=None,
    help="[json for a .json file name, else yaml]",
)  # fmt: skip
@_fail_cleanly
def aws_template(
    app_ref: str,
    workers: str,
    subnets: str | None,
    security_groups: str | None,
    route_tables: str | None,
    vpc_id: str | None,
    no_endpoints: bool,
    redis_url: str | None,
    cache_engine: str,
    public_url: bool,
    code_uri: str,
    gateway_timeout: int,
    worker_timeout: int | None,
    output: str,
    fmt: str | None,
) -> None:
    """Write the SAM template that runs APP on AWS Lambda (see docs/deploy/aws.md)."""
    from batchgate.app import load_app
    from batchgate.aws.template import TemplateOptions, build_template, dump_template, format_for

    app = load_app(app_ref)
    options = TemplateOptions(
        workers=workers,  # type: ignore[arg-type]  # click.Choice checked it
        subnet_ids=_ids(subnets),
        security_group_ids=_ids(security_groups),
        route_table_ids=_ids(route_tables),
        vpc_id=vpc_id,
        endpoints=not no_endpoints,
        redis_url=redis_url,
        cache_engine=cache_engine,  # type: ignore[arg-type]
        public_url=public_url,
        code_uri=code_uri,
        gateway_timeout_s=gateway_timeout,
        worker_timeout_s=worker_timeout,
        app_name=app.name,
    )
    text = dump_template(
        build_template(app.registry(), options),
        fmt or format_for(None if output == "-" else output),  # type: ignore[arg-type]
    )
    if output == "-":
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)


@aws.command("package")
@click.argument("app_ref", metavar="APP")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
    default=Path("dist/batchgate-lambda.zip"), show_default=True,
)  # fmt: skip
@click.option(
    "-r", "--requirements", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="The app's own requirements file, installed into the zip.",
)  # fmt: skip
@click.option(
    "-c", "--constraints", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="A pip constraints file (e.g. batchgate's constraints.txt).",
)  # fmt: skip
@click.option(
    "--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True,
    help="Lambda architecture; must match the template's Architecture parameter.",
)  # fmt: skip
@click.option(
    "--include", type=click.Path(exists=True, path_type=Path), multiple=True,
    help="Another file or folder the app needs (repeatable), put at the zip's root.",
)  # fmt: skip
@click.option(
    "--no-deps", is_flag=True, help="Leave the dependencies out (you provide them in a layer)."
)
@click.option(
    "--python-version", default=LAMBDA_PYTHON, show_default=True,
    help="The Python the wheels are for: the template's runtime (or an emulator's Python).",
)  # fmt: skip
@_fail_cleanly
def aws_package(
    app_ref: str,
    output: Path,
    requirements: Path | None,
    constraints: Path | None,
    arch: str,
    include: tuple[Path, ...],
    no_deps: bool,
    python_version: str,
) -> None:
    """Build the Lambda deployment zip for APP.

    It holds batchgate's source, the app (its file, or its module's top-level package),
    batchgate-lambda.json naming the app, and, unless --no-deps, batchgate's dependencies
    (with the redis and aws extras) and --requirements, installed by pip as manylinux
    wheels for --python-version on --arch. Run it where the app imports; run it on that
    Python version and the modules also go in compiled, which shortens cold starts.
    """
    from batchgate.aws.package import build_package

    report = build_package(
        app_ref,
        output,
        requirements_file=requirements,
        constraints_file=constraints,
        arch=arch,  # type: ignore[arg-type]  # click.Choice checked it
        with_deps=not no_deps,
        include=include,
        python_version=python_version,
    )
    click.echo(
        f"wrote {report.path}: {report.files} files, {report.unzipped_bytes / 2**20:.1f} MiB "
        f"unzipped, {report.zipped_bytes / 2**20:.1f} MiB zipped (app {report.app})",
        err=True,
    )
    if not report.bytecode:
        click.echo(
            f"note: built on Python {sys.version_info.major}.{sys.version_info.minor}, not "
            f"{python_version}: no compiled modules, so cold starts compile them",
            err=True,
        )


if __name__ == "__main__":
    main()


@aws.command("feeding")
@click.argument("switch", type=click.Choice(["on", "off", "status"]))
@click.option(
    "--store",
    "store_url",
    required=True,
    help="The stack's store: s3://BUCKET?region=… (the BucketName output).",
)
@_fail_cleanly
def aws_feeding(switch: str, store_url: str) -> None:
    """Turn feeder chains on or off (the kill switch), or show it.

    Chains run while the object control/keep-feeding exists in the store: `off` removes
    it, and every chain ends after its current hop (the controller starts none).
    """
    from batchgate.aws.chains import keep_feeding, set_keep_feeding
    from batchgate.store import open_store

    async def flip() -> bool:
        store = await open_store(store_url)
        try:
            if switch != "status":
                await set_keep_feeding(store, switch == "on")
            return await keep_feeding(store)
        finally:
            await store.aclose()

    click.echo("feeding is " + ("on" if asyncio.run(flip()) else "off"))
