"""The authoring commands: ``esfsm graph``, ``esfsm init`` and ``esfsm explain``.

Plain ``click`` commands, registered on the ``esfsm`` group by the CLI. As
everywhere in esfsm, a user mistake prints ``Error: …`` and exits 1 (invalid
input) or 2 (usage), without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from esfsm.authoring import diagram, scaffold
from esfsm.authoring.explanation import explain as explain_command
from esfsm.authoring.explanation import render_text
from esfsm.cli.common import CONTEXT, PATHS, default_paths, described, print_findings, resolve_aggregate
from esfsm.compiler import CompiledAggregate
from esfsm.engine import unknown_aggregate
from esfsm.findings import did_you_mean, one_of


def load_aggregate(argument: str, paths: Iterable[Path]) -> CompiledAggregate:
    """The compiled aggregate AGGREGATE means under paths (default ./definitions), or a clear error.

    AGGREGATE is a name or a definition file or folder (see
    :func:`esfsm.cli.common.resolve_aggregate`). Errors in other files do not
    stop the authoring tools (a note says they exist); errors in the
    aggregate's own file do, and are printed.
    """
    paths = tuple(paths)
    name, project = resolve_aggregate(argument, paths)
    errors = [f for f in project.findings if f.severity == "error"]
    if name in project.aggregates:
        if errors:
            click.echo(f"note: other definitions have {len(errors)} error(s); `esfsm validate` shows them", err=True)
        return project.aggregates[name]
    definitions = [d for d in project.documents if d.kind == "definition" and isinstance(d.data, dict)]
    mine = [d.path for d in definitions if d.data.get("aggregate") == name]
    if mine:
        print_findings([f for f in errors if f.file in mine], err=True)
        raise click.ClickException(
            f"aggregate {name!r} in {mine[0]} has errors; fix them first (see above, or run `esfsm validate`)"
        )
    named = {str(d.data["aggregate"]) for d in definitions if isinstance(d.data.get("aggregate"), str)}
    if not named and not errors:
        raise click.ClickException(f"no definitions under {described(default_paths(paths))}")
    message = unknown_aggregate(name, sorted(named)).message
    if errors:
        broken = len({f.file for f in errors})
        message += f" ({broken} file(s) with errors may hide it: run `esfsm validate`)"
    raise click.ClickException(message)


# -- esfsm graph -----------------------------------------------------------------


@click.command(context_settings=CONTEXT, short_help="Draw an aggregate's state machine (Mermaid, dot, SVG, PNG).")
@click.argument("aggregate")
@PATHS
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(diagram.FORMATS),
    default=None,
    help="mermaid, dot, svg or png. Default: taken from the -o suffix (.mmd, .dot, .gv, .svg, .png), else mermaid.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the diagram to FILE instead of standard output ('-': standard output).",
)
def graph(aggregate: str, paths: tuple[Path, ...], fmt: str | None, output: Path | None) -> None:
    """Draw AGGREGATE's state machine.

    Every state, the initial one marked by an arrow from a start point, final
    ones marked; every event as a labelled transition from each state it may
    occur in, with the commands that emit it there:
    `account_opened (open_account)`. An event without `to` is a loop on its
    state; a transition no command can fire has no command in its label (and
    is dashed in dot, svg and png).

    --format mermaid (a stateDiagram-v2 that GitHub, GitLab and most Markdown
    tools render) and dot (Graphviz source) need nothing installed; svg and
    png run Graphviz's `dot` program. PATHS hold the definitions (default:
    ./definitions). AGGREGATE is the aggregate's name, or its definition
    file (or a folder defining one aggregate).

    \b
    esfsm graph bankaccount                    # Mermaid on standard output
    esfsm graph definitions/bankaccount.yaml   # the same
    esfsm graph order --format svg -o order.svg
    """
    if output is not None and str(output) == "-":
        output = None  # the usual spelling of standard output
    if fmt is None and output is not None and output.suffix.lower() not in diagram.SUFFIXES:
        raise click.BadParameter(
            f"cannot tell the format from {str(output)!r}: name the file "
            f"{', '.join(sorted(diagram.SUFFIXES))} or give --format",
            param_hint="'--output'",
        )
    if output is not None and output.suffix.lower() in (".yaml", ".yml"):
        raise click.BadParameter(
            f"{str(output)!r} is a YAML file: a definition, maybe; not writing a diagram over it",
            param_hint="'--output'",
        )
    chosen = fmt or (diagram.SUFFIXES[output.suffix.lower()] if output else "mermaid")
    compiled = load_aggregate(aggregate, paths)
    if chosen == "png" and output is None and sys.stdout.isatty():
        raise click.UsageError("--format png writes binary data: give -o FILE or redirect the output")
    try:
        content = diagram.render(compiled, chosen)
    except diagram.GraphvizError as err:
        raise click.ClickException(str(err)) from err
    if output is None:
        if chosen == "png":
            stdout = sys.stdout.buffer  # click.get_binary_stream is deprecated from Click 8.5
            stdout.write(content)
            stdout.flush()
        else:
            click.echo(content.decode(), nl=False)
        return
    try:
        output.write_bytes(content)
    except OSError as err:
        raise click.ClickException(f"cannot write {str(output)!r}: {err.strerror}") from err


# -- esfsm init ------------------------------------------------------------------


def _aggregate_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    problem = scaffold.name_problem(value)
    if problem:
        raise click.BadParameter(problem, ctx=ctx, param=param)
    return value


@click.command(context_settings=CONTEXT, short_help="Start a new aggregate: a definition and its scenarios.")
@click.argument("name", callback=_aggregate_name)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("definitions"),
    show_default=True,
    help="The folder to write the two files in (created if missing).",
)
def init(name: str, folder: Path) -> None:
    """Start a new aggregate NAME: write NAME.yaml and NAME.scenarios.yaml.

    The definition is a small, commented aggregate (states none → active →
    archived; a create command with a payload schema and a rule; events with
    `apply`; an `authorize` example, commented out) that `esfsm validate`
    accepts as written, and the scenario file holds examples that `esfsm test`
    passes as written: edit both from there.

    NAME is the aggregate's name: lowercase letters, digits and `_`, starting
    with a letter. Existing files are never overwritten, and a NAME whose NATS
    names (NAME.cmds, NAME.events, NAME_EVENTS, AGG_NAME) clash with a
    definition already in the folder is refused.
    """
    for path in scaffold.file_paths(name, folder):
        if path.exists():
            raise click.ClickException(
                f"{path} already exists; not overwriting it (choose another name, or move the file away)"
            )
    planned = scaffold.plan(name, folder)
    errors = [f for f in planned.findings if f.severity == "error"]
    if errors:
        print_findings(errors, err=True)
        raise click.ClickException(
            f"aggregate {name!r} would clash with the definitions in {folder} (see above); choose another name"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in planned.texts.items():
            with path.open("x", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
    except OSError as err:
        raise click.ClickException(f"cannot write {err.filename!r}: {err.strerror}") from err
    for path in planned.texts:
        click.echo(f"created {path}")
    click.echo(f"next: edit them, then run `esfsm validate {folder}` and `esfsm test {folder}`")


# -- esfsm explain ---------------------------------------------------------------


@click.command(context_settings=CONTEXT, short_help="Explain a command: states, checks, events, transitions.")
@click.argument("aggregate")
@click.argument("command")
@PATHS
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format: readable text, or one JSON document.",
)
def explain(aggregate: str, command: str, paths: tuple[Path, ...], fmt: str) -> None:
    """Explain what COMMAND of AGGREGATE does, in the order it is decided.

    \b
    - the states it is accepted in (and how `in` narrows them);
    - the aggregate's authorize rules;
    - its payload: each field's type, whether it is required, its limits;
    - its rules, with the code and message of each rejection;
    - the events it emits, conditional ones with their `if`, and the
      transition (from → to) each makes;
    - where it leads from each state it is accepted in.

    PATHS hold the definitions (default: ./definitions). AGGREGATE is the
    aggregate's name, or its definition file (or a folder defining one
    aggregate).
    """
    compiled = load_aggregate(aggregate, paths)
    if command not in compiled.commands:
        hint = did_you_mean(command, compiled.commands) or f"; expected one of {one_of(compiled.commands)}"
        raise click.ClickException(f"unknown command {command!r} for aggregate {compiled.name!r}{hint}")
    facts = explain_command(compiled, command)
    if fmt == "json":
        click.echo(json.dumps(facts, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(facts), nl=False)
