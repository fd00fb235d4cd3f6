"""``esfsm validate`` (alias ``check``) and ``esfsm test``: the definitions and their scenarios,
without a server (``test --nats`` starts one of its own)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from esfsm.cli.common import (
    PATHS,
    Number,
    check_definitions,
    connect_options,
    connection_options,
    default_paths,
    described,
    print_findings,
)
from esfsm.findings import Finding, has_errors
from esfsm.project import Project


@click.command()
@PATHS
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format: one line per finding, or one JSON document.",
)
@click.option(
    "--against",
    metavar="REF",
    help="Also check that the definitions can replay what REF may have stored: a folder or file of older "
    "definitions, git:<rev> (PATHS at that revision, e.g. git:HEAD~1), or nats://host:port (what each "
    "stream holds; `nats`: the server --server names).",
)
@click.option(
    "--timeout",
    type=Number(min=0.1),
    default=5.0,
    show_default=True,
    help="With --against nats://…: seconds to wait for each answer of the server.",
)
@connection_options
def validate(paths: tuple[Path, ...], fmt: str, against: str | None, timeout: float, **nats: Any) -> None:
    """Check definitions: YAML, the DSL schema, states, events, CEL and NATS names (alias: check).

    PATHS are definition files or folders (searched recursively for *.yaml
    and *.yml; scenario files are skipped). Default: ./definitions.
    Prints every finding as `file:line:col: severity: message [/json/pointer]`.
    Exits 0 when there is no error (warnings allowed), 1 otherwise, and 1
    when there is no definition to check.

    \b
    With --against REF, also the breaking-change check: could the definitions
    replay every event the older ones REF names may have stored? REF is
      DIR or FILE   older definitions (aggregates matched by name);
      git:<rev>     PATHS as they were at a git revision (git:HEAD~1, git:v1.2,
                    git:main), read with `git show` from the repository holding
                    PATHS; findings in them are named <rev>:<path>;
      nats://…      a live server: the event types, versions and states each
                    aggregate's stream holds (the catalog `esfsm run` keeps);
                    `--against nats` takes the server from --server, $NATS_URL
                    or the embedded server of `esfsm run`. The NATS options
                    below (credentials, TLS) apply to it.
    Errors: a stored event type or version nothing replays, a field a changed
    apply or upcast step reads that stored events may lack, an event valid in
    the older state machine but not where the new one has the entity, a state
    removed with entities in it, a renamed stream, bucket or subject prefix, a
    removed aggregate. Warnings: a removed command, a changed apply or initial
    data/state (snapshots are refreshed), entities mapped to another state, a
    stricter schema nothing reads. A finding about something removed points
    into the older definition's file; anything else into the new one.
    """
    project = check_definitions(paths)
    if project.ok and not any(d.kind == "definition" for d in project.documents):
        raise click.ClickException(
            f"no definitions under {described(default_paths(paths))} (definition files "
            "are *.yaml or *.yml, other than *.scenarios.yaml)"
        )
    findings = project.findings
    if against is not None:
        findings = sorted(set(findings) | set(_against(project, against, default_paths(paths), timeout, nats)))
    ok = not has_errors(findings)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "valid": ok,
                    "aggregates": sorted(project.aggregates),
                    **({"against": against} if against is not None else {}),
                    "errors": errors,
                    "warnings": warnings,
                    "findings": [f.as_dict() for f in findings],
                },
                indent=2,
            )
        )
    else:
        print_findings(findings)
        definitions = sum(d.kind == "definition" for d in project.documents)
        if ok:
            click.echo(
                f"{definitions} definition(s) valid"
                + (f" against {against}" if against is not None else "")
                + f": {', '.join(sorted(project.aggregates)) or '(none)'}"
                + (f" ({warnings} warning(s))" if warnings else "")
            )
        else:
            click.echo(f"{errors} error(s), {warnings} warning(s)", err=True)
    sys.exit(0 if ok else 1)


def _against(project: Project, ref: str, paths: list[Path], timeout: float, nats: dict[str, Any]) -> list[Finding]:
    from esfsm.cli import against as reference

    if not reference.is_server(ref):
        return reference.against_findings(project, ref, paths)
    from esfsm.runtime.connection import resolve_servers

    servers = [ref] if ref != reference.NATS_DEFAULT else resolve_servers(nats["servers"], nats["store_dir"])
    if not servers:
        raise click.ClickException("--against nats: no NATS server: pass --server, set NATS_URL or start `esfsm run`")
    options = connect_options(nats, "esfsm-validate")
    return reference.stream_findings(project, servers, options, timeout)


def definitions_beside(paths: list[Path]) -> list[Path]:
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


@click.command()
@PATHS
@click.option("--verbose", "-v", is_flag=True, help="Print each scenario's steps.")
@click.option(
    "--nats",
    "on_nats",
    is_flag=True,
    help="Also run every scenario against the real runtime on an embedded nats-server.",
)
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

    project = check_definitions((*paths, *definitions_beside(default_paths(paths))))
    unreadable = [f for f in project.findings if kind_of(f.file) == "scenarios"]  # a scenario file that won't load
    if has_errors([f for f in project.findings if f not in unreadable]):
        print_findings(project.findings)
        raise click.ClickException("the definitions have errors; fix them before running scenarios")
    if not project.scenario_documents and not unreadable:
        raise click.ClickException(f"no scenario files (*.scenarios.yaml) under {described(default_paths(paths))}")
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
