"""The ``esfsm`` command line.

A user mistake prints ``Error: …`` on stderr and exits 1 (invalid input) or 2
(usage), never a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from esfsm import __version__
from esfsm.errors import EsfsmError
from esfsm.findings import Finding
from esfsm.project import Project, check_paths

PATHS = click.argument(
    "paths", nargs=-1, type=click.Path(exists=True, path_type=Path),
)


class _Group(click.Group):
    """Turns unexpected exceptions into one line unless --debug is set."""

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


def _print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        click.echo(str(finding))


@main.command()
@PATHS
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format: one line per finding, or one JSON document.")
def validate(paths: tuple[Path, ...], fmt: str) -> None:
    """Check definitions: YAML, the DSL schema, states, events, CEL and NATS names.

    PATHS are definition files or folders (searched recursively for *.yaml
    and *.yml; scenario files are skipped). Default: ./definitions.
    Prints every finding as `file:line:col: severity: message [/json/pointer]`.
    Exits 0 when there is no error (warnings allowed), 1 otherwise.
    """
    project = _check(paths)
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
def test(paths: tuple[Path, ...], verbose: bool) -> None:
    """Run the scenario files (*.scenarios.yaml) under PATHS against the in-memory engine.

    PATHS are files or folders holding the definitions and their scenario
    files (default: ./definitions). Prints one line per scenario, a diff for
    each failure, and `N passed, N failed`. Exits 1 on any failure.
    """
    from esfsm.scenarios import run_scenario_files

    project = _check(paths)
    if not project.ok:
        _print_findings(project.findings)
        raise click.ClickException("the definitions have errors; fix them before running scenarios")
    if not project.scenario_documents:
        raise click.ClickException(f"no scenario files (*.scenarios.yaml) under {', '.join(map(str, _paths(paths)))}")
    report = run_scenario_files(project)
    for line in report.lines(verbose):
        click.echo(line)
    click.echo(f"{report.passed} passed, {report.failed} failed")
    sys.exit(0 if report.failed == 0 else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
