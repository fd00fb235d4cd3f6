"""``esfsm run``: serve the aggregates on NATS JetStream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from esfsm.cli.common import PATHS, Integer, Number, connect_options, connection_options, run_async, valid_definitions


@click.command()
@PATHS
@connection_options
@click.option(
    "--port",
    type=Integer(0, 65535),
    default=0,
    help="Port of the embedded server (default 4222 or the next free one); not with --server.",
)
@click.option(
    "--workers",
    "-w",
    type=Integer(1, 64),
    default=1,
    show_default=True,
    help="Worker processes. Each serves every aggregate; entity keys are shared out among them, so "
    "every entity stays in one process. More than 1 uses more cores (a Python process uses one).",
)
@click.option(
    "--worker",
    "worker_spec",
    hidden=True,
    help="GROUP:INDEX/COUNT: set by `--workers` on the worker processes it starts.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option(
    "--log-format",
    type=click.Choice(["logfmt", "json"]),
    default="logfmt",
    show_default=True,
    help="One log line per record: logfmt (key=value) or a JSON object.",
)
@click.option(
    "--cache-entities",
    type=Integer(1, 100_000_000),
    default=100_000,
    show_default=True,
    help="Entities kept warm in memory per aggregate and process; past it the least recently used "
    "is dropped (and read again from its snapshot when next used).",
)
@click.option(
    "--command-window",
    type=Number(min=1),
    default=7 * 24 * 3600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the answer to an x-esfsm-command-id is kept: a retry within it gets the first "
    "answer from any runtime process, after restarts too (bucket <bucket>_ids).",
)
def run(
    paths: tuple[Path, ...],
    servers: tuple[str, ...],
    store_dir: Path,
    port: int,
    workers: int,
    worker_spec: str | None,
    log_level: str,
    log_format: str,
    cache_entities: int,
    command_window: float,
    **kwargs: Any,
) -> None:
    """Serve the aggregates defined under PATHS on NATS JetStream.

    Checks the definitions first and refuses to start on an error. With no
    --server (and no $NATS_URL) it starts an embedded nats-server with
    JetStream on 127.0.0.1:4222 (or the next free port), data under
    --store-dir. Creates or updates each aggregate's stream, KV bucket and
    durable consumer, serves each as the micro service aggregate-<name>, and
    on SIGINT, SIGTERM or SIGHUP finishes the commands in flight and exits 0.

    With --workers N it starts N-1 more processes on the same server; a
    command that reaches a worker not owning its entity key is passed to the
    one that does. If a worker fails, the whole run stops with status 1.
    """
    import os

    from esfsm.runtime.connection import check_server_urls
    from esfsm.runtime.logs import configure_logging
    from esfsm.runtime.partition import Partition
    from esfsm.runtime.runner import RunSettings, serve

    partition = None
    if worker_spec is not None:
        try:
            partition = Partition.parse(worker_spec)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--worker'") from err
        if workers > 1:
            raise click.BadParameter("a worker starts no workers of its own", param_hint="'--workers'")
    project = valid_definitions(paths, "the definitions have errors; not starting")
    env = os.environ.get("NATS_URL")
    chosen = servers or tuple(s.strip() for s in (env or "").split(",") if s.strip())
    check_server_urls(chosen)
    if port and chosen:
        raise click.BadParameter(
            f"the embedded server's port; with {'--server' if servers else '$NATS_URL'} no server is started",
            param_hint="'--port'",
        )
    if partition is not None and not chosen:
        raise click.BadParameter("a worker needs --server", param_hint="'--worker'")
    configure_logging(
        log_level,
        fmt=log_format,  # type: ignore[arg-type]  # click.Choice checked it
        worker=partition.index if partition else (0 if workers > 1 else None),
    )
    worker_args = (
        *map(str, paths),
        "--store-dir",
        str(store_dir),
        "--log-level",
        log_level,
        "--log-format",
        log_format,
        "--cache-entities",
        str(cache_entities),
        "--command-window",
        str(command_window),
    )
    settings = RunSettings(
        chosen,
        connect_options(kwargs, "esfsm-run"),
        store_dir,
        port,
        workers,
        worker_args,
        partition,
        cache_entities,
        command_window,
    )
    run_async(serve(project.aggregates.values(), settings))
