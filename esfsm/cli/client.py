"""The commands that talk to a running ``esfsm run``: ``send``, ``state``, ``history``,
and ``rebuild`` (which replays a stream into its bucket)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from esfsm.cli.common import (
    PATHS,
    Integer,
    Number,
    check_definitions,
    connect_options,
    connection_options,
    described,
    require_valid,
    resolve_aggregate,
    run_async,
)
from esfsm.contract import COMMAND_ID_HEADER, EVENT_VERSION_EXTENSION, KEY_HEADER, VERSION_EXTENSION
from esfsm.values import HEADER_NAME

if TYPE_CHECKING:
    from esfsm.client import Client
    from esfsm.compiler import CompiledAggregate

T = TypeVar("T")


def ask(
    servers: tuple[str, ...],
    store_dir: Path,
    kwargs: dict[str, Any],
    call: Callable[[Client], Awaitable[T]],
    timeout: float = 5.0,
) -> T:
    """Connect a client with the connection options, make one call, close it: the call's answer."""
    from esfsm.client import Client

    async def go() -> T:
        client = await Client.connect(servers, connect_options(kwargs, "esfsm-cli"), store_dir, timeout)
        try:
            return await call(client)
        finally:
            await client.close()

    return run_async(go())


# -- esfsm send ------------------------------------------------------------------


def _parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, text = value.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint="'--header'")
        if not HEADER_NAME.fullmatch(name):
            raise click.BadParameter(
                f"{name!r} is not a header name: printable ASCII without spaces or ':'", param_hint="'--header'"
            )
        if "\r" in text or "\n" in text:
            raise click.BadParameter(
                f"the value of {name!r} holds a line break, which a NATS header cannot carry", param_hint="'--header'"
            )
        headers[name] = text
    return headers


def _no_line_break(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and ("\r" in value or "\n" in value):
        raise click.BadParameter("holds a line break, which a NATS header cannot carry", ctx=ctx, param=param)
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (JavaScript allows it, JSON does not)")


def _parse_data(value: str | None) -> Any:
    if value is None:
        return {}
    text = value
    if value.startswith("@"):
        if value == "@-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(value[1:]).read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise click.BadParameter(
                    f"{value[1:]!r} is not UTF-8 text (byte {err.start})", param_hint="'--data'"
                ) from err
            except OSError as err:
                what = "give a file name after '@'" if not value[1:] else err.strerror
                raise click.BadParameter(f"cannot read {value[1:]!r}: {what}", param_hint="'--data'") from err
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as err:
        raise click.BadParameter(f"not valid JSON: {err}", param_hint="'--data'") from err


@click.command()
@click.argument("aggregate")
@click.argument("command")
@click.option("--key", "-k", required=True, help=f"The entity key ({KEY_HEADER}).")
@click.option(
    "--data", "-d", help="The JSON payload, or @FILE to read it from a file (@- standard input). Default: {}."
)
@click.option("--header", "-H", "header_values", multiple=True, metavar="NAME=VALUE", help="A header (repeatable).")
@click.option(
    "--command-id", callback=_no_line_break, help=f"Idempotency id ({COMMAND_ID_HEADER}): a retry is applied once."
)
@click.option("--expected-version", type=Integer(min=0), help="Reject unless the entity is at this version.")
@click.option(
    "--timeout",
    type=Number(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the reply.",
)
@connection_options
def send(
    aggregate: str,
    command: str,
    key: str,
    data: str | None,
    header_values: tuple[str, ...],
    command_id: str | None,
    expected_version: int | None,
    timeout: float,
    servers: tuple[str, ...],
    store_dir: Path,
    **kwargs: Any,
) -> None:
    """Send COMMAND to an entity of AGGREGATE and print the reply (JSON).

    Exits 0 when the command is accepted, 1 when it is rejected.

    \b
    esfsm send bankaccount open_account --key acc-1 \\
      --data '{"owner": "ann", "initial_balance": 150}' --header x-username=ann
    """
    payload = _parse_data(data)
    headers = _parse_headers(header_values)
    reply = ask(
        servers,
        store_dir,
        kwargs,
        timeout=timeout,
        call=lambda client: client.send(aggregate, command, key, payload, headers, command_id, expected_version),
    )
    click.echo(json.dumps(reply, indent=2))
    sys.exit(0 if reply.get("accepted") else 1)


# -- esfsm state, esfsm history ----------------------------------------------------


@click.command()
@click.argument("aggregate")
@click.argument("key")
@connection_options
def state(aggregate: str, key: str, servers: tuple[str, ...], store_dir: Path, **kwargs: Any) -> None:
    """Print the current state of one entity: its KV snapshot as JSON.

    The snapshot is `version`, `key`, `state`, `data` and `seq` (the stream sequence it
    reflects); the replies it remembers for command ids are left out. It waits up to 2 s
    for the snapshot to reflect the entity's last stored event, then prints it anyway
    with "stale": true. Exits 1 when the entity has no event yet.
    """
    value = ask(servers, store_dir, kwargs, lambda client: client.state(aggregate, key))
    if value is None:
        raise click.ClickException(f"entity {key!r} of aggregate {aggregate!r} has no event yet")
    click.echo(json.dumps(value, indent=2))


@click.command()
@click.argument("aggregate")
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--definitions",
    "definitions",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    metavar="PATHS",
    help="Definition files or folders (repeatable): also show each event as AGGREGATE's definition "
    "there reads it (its upcast type, version and data).",
)
@connection_options
def history(
    aggregate: str,
    key: str,
    fmt: str,
    definitions: tuple[Path, ...],
    servers: tuple[str, ...],
    store_dir: Path,
    **kwargs: Any,
) -> None:
    """Print the events of one entity, oldest first, as stored: a table (seq,
    version, type, event version, time, data), or with --format json the
    CloudEvents, each with its stream `seq`.

    `version` is the entity's version after the event; `type` and `event
    version` (the `eventversion` extension) are what the event was stored
    under: an event stored before events carried versions is version 1 (and
    is given `eventversion: 1` in JSON). With --definitions, each event also
    as that definition reads it, after upcasting (the columns `read as` and
    `read data`; in JSON a `read` object with `type`, `eventversion` and
    `data`), or why it cannot be read (`error`).

    Exits 1 when the entity has no event yet.
    """
    compiled = _definition(aggregate, definitions) if definitions else None
    events = ask(servers, store_dir, kwargs, lambda client: client.history(aggregate, key))
    if not events:
        raise click.ClickException(f"entity {key!r} of aggregate {aggregate!r} has no event yet")
    from esfsm import reading

    for event in events:
        event.setdefault(EVENT_VERSION_EXTENSION, reading.stored_version(event))
    if compiled is not None:
        from esfsm.client import read_forms

        for event, form in zip(events, read_forms(compiled, key, events), strict=True):
            event["read"] = form
    if fmt == "json":
        click.echo(json.dumps(events, indent=2))
        return
    _print_history(f"{aggregate} {key}: {len(events)} event(s)", events, compiled is not None)


def _definition(aggregate: str, paths: tuple[Path, ...]) -> CompiledAggregate:
    """AGGREGATE's compiled definition under paths (refused, with the findings, when they have errors)."""
    project = require_valid(check_definitions(paths), paths, "the definitions have errors")
    if aggregate not in project.aggregates:
        from esfsm.engine import unknown_aggregate

        unknown = unknown_aggregate(aggregate, project.aggregates).message
        raise click.ClickException(f"{unknown} (the definitions under {described(paths)})")
    return project.aggregates[aggregate]


def _print_history(title: str, events: list[dict[str, Any]], read: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    table = Table(title=Text(title))
    columns = ["seq", "version", "type", "event version", "time", "data"]
    for column in columns + (["read as", "read data"] if read else []):
        table.add_column(column, no_wrap="data" not in column)
    for event in events:  # Text: stored data is shown as it is, never read as Rich markup
        cells = [
            str(event["seq"]),
            str(event.get(VERSION_EXTENSION, "")),
            str(event.get("type", "")),
            str(event.get(EVENT_VERSION_EXTENSION, "")),
            str(event.get("time", "")),
            text(event.get("data")),
        ]
        if read:
            form = event["read"]
            shown = f"{form['type']} v{form['eventversion']}" if "type" in form else "(cannot read)"
            cells += [shown, text(form["data"]) if "data" in form else form["error"]]
        table.add_row(*(Text(cell) for cell in cells))
    console = Console()
    if not console.is_terminal:  # piped: as wide as the table needs, not cut at 80 columns
        console = Console(width=100_000)
    console.print(table)


# -- esfsm rebuild -----------------------------------------------------------------


@click.command()
@click.argument("aggregate")
@PATHS
@connection_options
def rebuild(aggregate: str, paths: tuple[Path, ...], servers: tuple[str, ...], store_dir: Path, **kwargs: Any) -> None:
    """Replay AGGREGATE's event stream into its KV bucket: every snapshot rewritten.

    PATHS hold the definitions (default ./definitions): each entity's events
    are upcast and folded with the same compiled aggregate the runtime runs,
    so snapshots written under an older definition are refreshed now instead
    of when each entity is next loaded. The definition is registered as the
    newest (after a rollback, this is what makes the older one current
    again). An entity whose events cannot be replayed is named, the others are
    still rewritten, and the exit status is 1. AGGREGATE is the aggregate's
    name, or its definition file.
    """
    from nats.js.errors import NotFoundError
    from rich.progress import Progress

    from esfsm.runtime.connection import connect, resolve_servers
    from esfsm.runtime.rebuild import RebuildFailed, entity_keys
    from esfsm.runtime.rebuild import rebuild as replay
    from esfsm.runtime.store import AggregateStore

    name, project = resolve_aggregate(aggregate, paths)
    require_valid(project, paths, "the definitions have errors")
    if name not in project.aggregates:
        from esfsm.engine import unknown_aggregate

        raise click.ClickException(unknown_aggregate(name, project.aggregates).message)
    compiled = project.aggregates[name]
    options = connect_options(kwargs, "esfsm-rebuild")
    found = resolve_servers(servers, store_dir)
    if not found:
        raise click.ClickException("no NATS server: pass --server, set NATS_URL or start `esfsm run`")

    async def go() -> int:
        nc = await connect(found, options, max_reconnect_attempts=2)
        try:
            store = AggregateStore(nc, compiled, domain=options.js_domain)
            stream = store.names.stream
            try:
                await nc.jetstream(domain=options.js_domain).stream_info(stream)
            except NotFoundError:  # nothing to replay; and never create a stream from a definition that may be wrong
                raise click.ClickException(
                    f"there is no stream {stream!r} on this server, so nothing to rebuild: is "
                    f"{compiled.model.file} the definition `esfsm run` serves?"
                ) from None
            await store.ensure()
            total = len(await entity_keys(store))
            with Progress(transient=True) as bar:
                task = bar.add_task(f"rebuilding {name}", total=total)
                return await replay(store, lambda key: bar.advance(task))
        finally:
            await nc.close()

    try:
        count = run_async(go())
    except RebuildFailed as err:  # an outcome, not a crash: one line per entity, never a traceback
        raise click.ClickException(str(err)) from None
    click.echo(f"rebuilt {count} entit{'y' if count == 1 else 'ies'} of {name}")
