"""The ``esfsm`` command line.

A user mistake prints ``Error: …`` on stderr and exits 1 (invalid input) or 2
(usage), never a traceback unless ``--debug`` is given.

The group is defined here; each command lives in the module of its group and is
imported when it is asked for (``esfsm send`` loads neither the docs nor the
authoring tools):

* :mod:`esfsm.cli.definitions` — ``validate`` (alias ``check``), ``test``;
* :mod:`esfsm.cli.runtime` — ``run``;
* :mod:`esfsm.cli.client` — ``send``, ``state``, ``history``, ``rebuild``;
* :mod:`esfsm.authoring.commands` — ``graph``, ``explain``, ``init``;
* :mod:`esfsm.docgen` — ``docs``.

What they share (PATHS, AGGREGATE, option types, NATS options) is in
:mod:`esfsm.cli.common`.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from esfsm import __version__
from esfsm.cli.common import CONTEXT
from esfsm.errors import EsfsmError

__all__ = ["main"]

# Each command: the module that defines it and its name there.
COMMANDS = {
    "validate": "esfsm.cli.definitions:validate",
    "test": "esfsm.cli.definitions:test",
    "run": "esfsm.cli.runtime:run",
    "send": "esfsm.cli.client:send",
    "state": "esfsm.cli.client:state",
    "history": "esfsm.cli.client:history",
    "rebuild": "esfsm.cli.client:rebuild",
    "graph": "esfsm.authoring.commands:graph",
    "explain": "esfsm.authoring.commands:explain",
    "init": "esfsm.authoring.commands:init",
    "docs": "esfsm.docgen:docs",
}
ALIASES = {"check": "validate"}


class _Group(click.Group):
    """Loads each command from its module when asked for; `check` is `validate`; turns
    unexpected exceptions into one line unless --debug is set."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = ALIASES.get(cmd_name, cmd_name)
        if name not in self.commands and name in COMMANDS:
            module, attribute = COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

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
            raise click.ClickException(
                f"internal error: {type(err).__name__}: {err} (run with --debug for details)"
            ) from err


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="esfsm")
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
def main(debug: bool) -> None:
    """esfsm: event-sourced aggregates described in YAML, run on NATS JetStream.

    Write a definition (see docs/dsl.md), check it with `esfsm validate`,
    prove its behaviour with `esfsm test`.
    """
