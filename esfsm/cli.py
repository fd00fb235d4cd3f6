"""The ``esfsm`` command line.

A user mistake prints ``Error: …`` on stderr and exits 1 (invalid input) or 2
(usage), never a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from esfsm import __version__
from esfsm.errors import EsfsmError
from esfsm.findings import Finding, has_errors
from esfsm.project import Project, check_paths
from esfsm.values import HEADER_NAME

PATHS = click.argument(
    "paths", nargs=-1, type=click.Path(exists=True, path_type=Path),
)


_ALIASES = {"check": "validate"}


class _Group(click.Group):
    """Turns unexpected exceptions into one line unless --debug is set; `check` is `validate`."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, _ALIASES.get(cmd_name, cmd_name))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except EsfsmError as err:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(str(err)) from err
        except Exception as err:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(f"internal error: {type(err).__name__}: {err} (run with --debug for details)") from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="esfsm")
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
def main(debug: bool) -> None:
    """esfsm: event-sourced aggregates described in YAML, run on NATS JetStream.

    Write a definition (see docs/dsl.md), check it with `esfsm validate`,
    prove its behaviour with `esfsm test`.
    """


def _paths(paths: tuple[Path, ...]) -> list[Path]:
    return list(paths) or [Path("definitions")]


def _check(paths: tuple[Path, ...]) -> Project:
    chosen = _paths(paths)
    missing = [p for p in chosen if not p.exists()]
    if missing:
        raise click.UsageError(f"path {str(missing[0])!r} does not exist (give the definition files or folders)")
    return check_paths(chosen)


class _Integer(click.IntRange):
    name = "integer"  # click's own says "'abc' is not a valid integer range."


class _Number(click.FloatRange):
    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _definitions_beside(paths: list[Path]) -> list[Path]:
    """The definition file next to each scenario file given by name (`x.scenarios.yaml` →
    `x.yaml` or `x.yml`): `esfsm test definitions/x.scenarios.yaml` runs x's scenarios."""
    from esfsm.loader import SCENARIO_SUFFIXES

    found = []
    for path in paths:
        suffix = next((s for s in SCENARIO_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        stem = path.name[: -len(suffix)]
        found += [p for p in (path.with_name(f"{stem}.yaml"), path.with_name(f"{stem}.yml")) if p.is_file()]
    return found


def _print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        click.echo(str(finding))


@main.command()
@PATHS
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format: one line per finding, or one JSON document.")
def validate(paths: tuple[Path, ...], fmt: str) -> None:
    """Check definitions: YAML, the DSL schema, states, events, CEL and NATS names (alias: check).

    PATHS are definition files or folders (searched recursively for *.yaml
    and *.yml; scenario files are skipped). Default: ./definitions.
    Prints every finding as `file:line:col: severity: message [/json/pointer]`.
    Exits 0 when there is no error (warnings allowed), 1 otherwise, and 1
    when there is no definition to check.
    """
    project = _check(paths)
    if project.ok and not any(d.kind == "definition" for d in project.documents):
        raise click.ClickException(f"no definitions under {', '.join(map(str, _paths(paths)))} (definition files "
                                   "are *.yaml or *.yml, other than *.scenarios.yaml)")
    errors = sum(f.severity == "error" for f in project.findings)
    warnings = len(project.findings) - errors
    if fmt == "json":
        click.echo(json.dumps({
            "valid": project.ok,
            "aggregates": sorted(project.aggregates),
            "errors": errors,
            "warnings": warnings,
            "findings": [f.as_dict() for f in project.findings],
        }, indent=2))
    else:
        _print_findings(project.findings)
        definitions = sum(d.kind == "definition" for d in project.documents)
        if project.ok:
            click.echo(f"{definitions} definition(s) valid: {', '.join(sorted(project.aggregates)) or '(none)'}"
                       + (f" ({warnings} warning(s))" if warnings else ""))
        else:
            click.echo(f"{errors} error(s), {warnings} warning(s)", err=True)
    sys.exit(0 if project.ok else 1)


@main.command()
@PATHS
@click.option("--verbose", "-v", is_flag=True, help="Print each scenario's steps.")
@click.option("--nats", "on_nats", is_flag=True,
              help="Also run every scenario against the real runtime on an embedded nats-server.")
def test(paths: tuple[Path, ...], verbose: bool, on_nats: bool) -> None:
    """Run the scenario files (*.scenarios.yaml) under PATHS against the in-memory engine.

    PATHS are files or folders holding the definitions and their scenario
    files (default: ./definitions). Prints one line per scenario, a diff for
    each failure, and `N passed, N failed`. Exits 1 on any failure.

    With --nats the scenarios run twice: on the in-memory engine and on the
    NATS runtime (an embedded nats-server with a temporary store), proving
    the two engines agree.
    """
    from esfsm.loader import kind_of
    from esfsm.scenarios import run_scenario_files

    project = _check((*paths, *_definitions_beside(_paths(paths))))
    unreadable = [f for f in project.findings if kind_of(f.file) == "scenarios"]  # a scenario file that won't load
    if has_errors([f for f in project.findings if f not in unreadable]):
        _print_findings(project.findings)
        raise click.ClickException("the definitions have errors; fix them before running scenarios")
    if not project.scenario_documents and not unreadable:
        raise click.ClickException(f"no scenario files (*.scenarios.yaml) under {', '.join(map(str, _paths(paths)))}")
    reports = [("memory", run_scenario_files(project))]
    reports[0][1].file_findings[:0] = unreadable
    if on_nats:
        from esfsm.runtime.testing import NatsBackend

        with NatsBackend(project.aggregates.values()) as backend:
            reports.append(("nats", run_scenario_files(project, backend.engine)))
    for engine, report in reports:
        if on_nats:
            click.echo(f"-- {engine} engine")
        for line in report.lines(verbose):
            click.echo(line)
    passed = sum(r.passed for _, r in reports)
    failed = sum(r.failed for _, r in reports)
    click.echo(f"{passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


# -- NATS ------------------------------------------------------------------


def connection_options(function: Any) -> Any:
    """The usual NATS options, shared by every command that talks to a server."""
    options = [
        click.option("--server", "-s", "servers", multiple=True, metavar="URL",
                     help="NATS server URL (repeatable). Default: $NATS_URL, else the embedded server of `esfsm run`."),
        click.option("--user", envvar="NATS_USER", help="User name ($NATS_USER)."),
        click.option("--password", envvar="NATS_PASSWORD", help="Password ($NATS_PASSWORD)."),
        click.option("--token", envvar="NATS_TOKEN", help="Authentication token ($NATS_TOKEN)."),
        click.option("--nkey", "nkey_seed", type=click.Path(exists=True, dir_okay=False), help="File holding an nkey seed."),
        click.option("--creds", type=click.Path(exists=True, dir_okay=False), help="NATS .creds file (JWT + seed)."),
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA certificate to verify the server."),
        click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (mutual TLS)."),
        click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Client certificate's private key."),
        click.option("--js-domain", help="JetStream domain."),
        click.option("--store-dir", type=click.Path(path_type=Path), default=Path(".esfsm"), show_default=True,
                     help="Where the embedded server keeps its data (and says where it listens)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _options(kwargs: dict[str, Any], name: str) -> Any:
    from esfsm.runtime.connection import ConnectOptions

    return ConnectOptions(
        user=kwargs.pop("user"), password=kwargs.pop("password"), token=kwargs.pop("token"),
        nkey_seed=kwargs.pop("nkey_seed"), creds=kwargs.pop("creds"), tls_ca=kwargs.pop("tls_ca"),
        tls_cert=kwargs.pop("tls_cert"), tls_key=kwargs.pop("tls_key"), js_domain=kwargs.pop("js_domain"), name=name,
    )


def _run_async(coroutine: Any) -> Any:
    import asyncio

    try:
        import uvloop  # faster event loop where available (not on Windows)
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@main.command()
@PATHS
@connection_options
@click.option("--port", type=_Integer(0, 65535), default=0,
              help="Port of the embedded server (default 4222 or the next free one); not with --server.")
@click.option("--workers", "-w", type=_Integer(1, 64), default=1, show_default=True,
              help="Worker processes. Each serves every aggregate; entity keys are shared out among them, so "
                   "every entity stays in one process. More than 1 uses more cores (a Python process uses one).")
@click.option("--worker", "worker_spec", hidden=True, help="GROUP:INDEX/COUNT: set by `--workers` on the "
              "worker processes it starts.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def run(paths: tuple[Path, ...], servers: tuple[str, ...], store_dir: Path, port: int, workers: int,
        worker_spec: str | None, log_level: str, **kwargs: Any) -> None:
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

    from esfsm.runtime.partition import Partition
    from esfsm.runtime.runner import RunSettings, serve, setup_logging

    partition = None
    if worker_spec is not None:
        try:
            partition = Partition.parse(worker_spec)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--worker'") from err
        if workers > 1:
            raise click.BadParameter("a worker starts no workers of its own", param_hint="'--workers'")
    project = _check(paths)
    if not project.ok:
        _print_findings(project.findings)
        raise click.ClickException("the definitions have errors; not starting")
    if not project.aggregates:
        raise click.ClickException(f"no definitions under {', '.join(map(str, _paths(paths)))}")
    from esfsm.runtime.connection import check_server_urls

    env = os.environ.get("NATS_URL")
    chosen = servers or tuple(s.strip() for s in (env or "").split(",") if s.strip())
    check_server_urls(chosen)
    if port and chosen:
        raise click.BadParameter(f"the embedded server's port; with {'--server' if servers else '$NATS_URL'} "
                                 "no server is started", param_hint="'--port'")
    if partition is not None and not chosen:
        raise click.BadParameter("a worker needs --server", param_hint="'--worker'")
    setup_logging(log_level, worker=partition.index if partition else (0 if workers > 1 else None))
    worker_args = (*map(str, paths), "--store-dir", str(store_dir), "--log-level", log_level)
    settings = RunSettings(chosen, _options(kwargs, "esfsm-run"), store_dir, port, workers, worker_args, partition)
    _run_async(serve(project.aggregates.values(), settings))


async def _client(servers: tuple[str, ...], store_dir: Path, kwargs: dict[str, Any], timeout: float = 5.0) -> Any:
    from esfsm.client import Client

    return await Client.connect(servers, _options(kwargs, "esfsm-cli"), store_dir, timeout)


def _parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, text = value.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint="'--header'")
        if not HEADER_NAME.fullmatch(name):
            raise click.BadParameter(f"{name!r} is not a header name: printable ASCII without spaces or ':'",
                                     param_hint="'--header'")
        if "\r" in text or "\n" in text:
            raise click.BadParameter(f"the value of {name!r} holds a line break, which a NATS header cannot carry",
                                     param_hint="'--header'")
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
                raise click.BadParameter(f"{value[1:]!r} is not UTF-8 text (byte {err.start})",
                                         param_hint="'--data'") from err
            except OSError as err:
                what = "give a file name after '@'" if not value[1:] else err.strerror
                raise click.BadParameter(f"cannot read {value[1:]!r}: {what}", param_hint="'--data'") from err
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as err:
        raise click.BadParameter(f"not valid JSON: {err}", param_hint="'--data'") from err


@main.command()
@click.argument("aggregate")
@click.argument("command")
@click.option("--key", "-k", required=True, help="The entity key (x-ergonats-entity-key).")
@click.option("--data", "-d", help="The JSON payload, or @FILE to read it from a file (@- standard input). "
              "Default: {}.")
@click.option("--header", "-H", "header_values", multiple=True, metavar="NAME=VALUE", help="A header (repeatable).")
@click.option("--command-id", callback=_no_line_break,
              help="Idempotency id (x-esfsm-command-id): a retry is applied once.")
@click.option("--expected-version", type=_Integer(min=0), help="Reject unless the entity is at this version.")
@click.option("--timeout", type=_Number(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to wait for the reply.")
@connection_options
def send(aggregate: str, command: str, key: str, data: str | None, header_values: tuple[str, ...],
         command_id: str | None, expected_version: int | None, timeout: float, servers: tuple[str, ...],
         store_dir: Path, **kwargs: Any) -> None:
    """Send COMMAND to an entity of AGGREGATE and print the reply (JSON).

    Exits 0 when the command is accepted, 1 when it is rejected.

    \b
    esfsm send bankaccount open_account --key acc-1 \\
      --data '{"owner": "ann", "initial_balance": 150}' --header x-username=ann
    """
    payload = _parse_data(data)
    headers = _parse_headers(header_values)

    async def go() -> dict[str, Any]:
        client = await _client(servers, store_dir, kwargs, timeout)
        try:
            return await client.send(aggregate, command, key, payload, headers, command_id, expected_version)
        finally:
            await client.close()

    reply = _run_async(go())
    click.echo(json.dumps(reply, indent=2))
    sys.exit(0 if reply.get("accepted") else 1)


@main.command()
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
    async def go() -> Any:
        client = await _client(servers, store_dir, kwargs)
        try:
            return await client.state(aggregate, key)
        finally:
            await client.close()

    value = _run_async(go())
    if value is None:
        raise click.ClickException(f"entity {key!r} of aggregate {aggregate!r} has no event yet")
    click.echo(json.dumps(value, indent=2))


@main.command()
@click.argument("aggregate")
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@connection_options
def history(aggregate: str, key: str, fmt: str, servers: tuple[str, ...], store_dir: Path, **kwargs: Any) -> None:
    """Print the events of one entity, oldest first: a table (seq, version, type,
    time, data), or with --format json the CloudEvents, each with its stream `seq`.

    Exits 1 when the entity has no event yet.
    """
    async def go() -> Any:
        client = await _client(servers, store_dir, kwargs)
        try:
            return await client.history(aggregate, key)
        finally:
            await client.close()

    events = _run_async(go())
    if not events:
        raise click.ClickException(f"entity {key!r} of aggregate {aggregate!r} has no event yet")
    if fmt == "json":
        click.echo(json.dumps(events, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"{aggregate} {key}: {len(events)} event(s)"))
    for column in ("seq", "version", "type", "time", "data"):
        table.add_column(column, no_wrap=column != "data")
    for event in events:  # Text: stored data is shown as it is, never read as Rich markup
        table.add_row(*(Text(cell) for cell in (
            str(event["seq"]), str(event.get("aggversion", "")), str(event.get("type", "")),
            str(event.get("time", "")), json.dumps(event.get("data"), sort_keys=True, ensure_ascii=False))))
    console = Console()
    if not console.is_terminal:  # piped: as wide as the table needs, not cut at 80 columns
        console = Console(width=100_000)
    console.print(table)


@main.command()
@click.argument("aggregate")
@PATHS
@connection_options
def rebuild(aggregate: str, paths: tuple[Path, ...], servers: tuple[str, ...], store_dir: Path, **kwargs: Any) -> None:
    """Replay AGGREGATE's event stream into its KV bucket, entity by entity.

    PATHS hold the definitions (default ./definitions): the state is folded
    with the same compiled aggregate the runtime runs.
    """
    from nats.js.errors import NotFoundError
    from rich.progress import Progress

    from esfsm.runtime.connection import connect, resolve_servers
    from esfsm.runtime.rebuild import entity_keys
    from esfsm.runtime.rebuild import rebuild as replay
    from esfsm.runtime.store import AggregateStore

    project = _check(paths)
    if not project.ok:
        _print_findings(project.findings)
        raise click.ClickException("the definitions have errors")
    if not project.aggregates:
        raise click.ClickException(f"no definitions under {', '.join(map(str, _paths(paths)))}")
    if aggregate not in project.aggregates:
        from esfsm.engine import unknown_aggregate

        raise click.ClickException(unknown_aggregate(aggregate, project.aggregates).message)
    options = _options(kwargs, "esfsm-rebuild")
    found = resolve_servers(servers, store_dir)
    if not found:
        raise click.ClickException("no NATS server: pass --server, set NATS_URL or start `esfsm run`")

    async def go() -> int:
        nc = await connect(found, options, max_reconnect_attempts=2)
        try:
            store = AggregateStore(nc, project.aggregates[aggregate], domain=options.js_domain)
            stream = store.names.stream
            try:
                await nc.jetstream(domain=options.js_domain).stream_info(stream)
            except NotFoundError:  # nothing to replay; and never create a stream from a definition that may be wrong
                raise click.ClickException(
                    f"there is no stream {stream!r} on this server, so nothing to rebuild: is "
                    f"{project.aggregates[aggregate].model.file} the definition `esfsm run` serves?"
                ) from None
            await store.ensure()
            total = len(await entity_keys(store))
            with Progress(transient=True) as bar:
                task = bar.add_task(f"rebuilding {aggregate}", total=total)
                return await replay(store, lambda key: bar.advance(task))
        finally:
            await nc.close()

    count = _run_async(go())
    click.echo(f"rebuilt {count} entit{'y' if count == 1 else 'ies'} of {aggregate}")


# -- authoring ---------------------------------------------------------------

from esfsm.authoring import explain, graph, init  # noqa: E402  (each defines its own click command)
from esfsm.docgen import docs  # noqa: E402

for _command in (graph, explain, init, docs):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
