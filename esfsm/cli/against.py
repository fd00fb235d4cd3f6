"""`esfsm validate --against REF`: read the older definitions REF names and compare.

REF is a folder or a file of older definitions, `git:<rev>` (the definition files
under PATHS at that revision of the repository holding them, read with `git show`,
named `<rev>:<path>` in findings), or `nats://…` (what each stream holds). The
comparison itself is :mod:`esfsm.evolution`; this module only finds what to compare.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esfsm import model as m
from esfsm.checks.dsl import schema_findings
from esfsm.compiler import CompiledAggregate
from esfsm.evolution import Definition, against_stream, compare
from esfsm.findings import Finding
from esfsm.loader import GENERATED_SUFFIXES, YAML_SUFFIXES, Document, load_paths, load_text
from esfsm.project import Project

if TYPE_CHECKING:
    from esfsm.runtime.connection import ConnectOptions

GIT_PREFIX = "git:"
NATS_PREFIXES = ("nats://", "tls://", "ws://", "wss://")
NATS_DEFAULT = "nats"  # --against nats: the server --server, $NATS_URL or `esfsm run`'s embedded one names


def is_server(ref: str) -> bool:
    return ref == NATS_DEFAULT or ref.lower().startswith(NATS_PREFIXES)


def stream_findings(project: Project, servers: list[str], options: ConnectOptions, timeout: float) -> list[Finding]:
    """What each aggregate's stream on the server holds that its definition cannot replay (the catalog
    the runtime keeps: stored type x version, states); read-only."""
    from esfsm.cli.common import run_async
    from esfsm.runtime.catalog import stream_contents
    from esfsm.runtime.connection import ConnectError, connect

    async def read() -> list[Finding]:
        nc = await connect(servers, options, max_reconnect_attempts=2)
        try:
            found: list[Finding] = []
            for definition in newer(project):
                contents = await stream_contents(nc, definition.compiled, timeout, options.js_domain)
                found.extend(against_stream(definition, contents))
            return found
        finally:
            await nc.close()

    try:
        return sorted(set(run_async(read())))
    except ConnectError as err:
        raise click.ClickException(f"--against {', '.join(servers)}: {err}") from None
    except TimeoutError:
        raise click.ClickException(
            f"--against {', '.join(servers)}: the server did not answer in {timeout:g} s (is JetStream enabled?)"
        ) from None


def against_findings(project: Project, ref: str, paths: list[Path]) -> list[Finding]:
    """The findings of comparing project's valid definitions with those REF names (not nats://)."""
    if ref.startswith(GIT_PREFIX):
        documents, findings = read_git(ref.removeprefix(GIT_PREFIX), paths)
    else:
        if not Path(ref).exists():
            raise click.UsageError(
                f"--against {ref!r}: no such file or folder (give older definitions, git:<rev> or nats://host:port)"
            )
        documents, findings = load_paths(ref)
    older, problems = definitions(documents)
    return sorted(set(findings + problems + compare(older, newer(project), broken(project))))


def newer(project: Project) -> list[Definition]:
    """The project's definitions that have no error, with their documents."""
    by_path = {d.path: d for d in project.documents}
    return [Definition(by_path[c.model.file], c) for c in project.aggregates.values() if c.model.file in by_path]


def broken(project: Project) -> set[str]:
    """Names of aggregates the project defines but could not compile (errors): not 'removed'."""
    names = {d.data.get("aggregate") for d in project.documents if d.kind == "definition" and isinstance(d.data, dict)}
    return {n for n in names if isinstance(n, str)} - set(project.aggregates)


def definitions(documents: list[Document]) -> tuple[list[Definition], list[Finding]]:
    """The older definitions that can be read (the DSL schema, then compiled); an error for each that cannot."""
    found: list[Definition] = []
    problems: list[Finding] = []
    for doc in documents:
        if doc.kind != "definition":
            continue
        schema = schema_findings(doc)
        try:
            if schema:
                raise ValueError(f"{schema[0].line}:{schema[0].column}: {schema[0].message}")
            found.append(Definition(doc, CompiledAggregate(m.build(doc.data, doc.path))))
        except Exception as err:  # noqa: BLE001 - any older definition that cannot be built is one finding
            problems.append(
                doc.finding(
                    "",
                    f"this older definition cannot be read, so nothing is compared with it ({err})",
                    "against-unreadable",
                )
            )
    return found, problems


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, check=False)


def read_git(rev: str, paths: list[Path]) -> tuple[list[Document], list[Finding]]:
    """The definition files under paths at revision rev of the git repository holding them."""
    where = f"--against git:{rev}"
    if not rev:
        raise click.UsageError(f"{where}: give a revision, such as git:HEAD~1")
    first = paths[0].resolve()
    folder = first if first.is_dir() else first.parent
    try:
        top_run = _git(folder, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        raise click.ClickException(f"{where}: git is not installed") from None
    if top_run.returncode != 0:
        raise click.ClickException(f"{where}: {folder} is not inside a git repository")
    top = Path(top_run.stdout.decode().strip())
    if _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise click.ClickException(f"{where}: the repository at {top} has no revision {rev!r}")
    documents: list[Document] = []
    findings: list[Finding] = []
    for path in paths:
        try:
            inside = path.resolve().relative_to(top.resolve()).as_posix()
        except ValueError:
            raise click.ClickException(f"{where}: {path} is not inside the repository at {top}") from None
        listing = _git(top, "ls-tree", "-r", "-z", "--name-only", rev, "--", inside or ".")
        names = [n for n in listing.stdout.decode().split("\0") if n]
        if listing.returncode != 0 or not names:
            raise click.ClickException(f"{where}: {path} does not exist at {rev}")
        for name in names:
            if not name.endswith(YAML_SUFFIXES) or name.endswith(GENERATED_SUFFIXES):
                continue
            shown = _git(top, "show", f"{rev}:{name}")
            doc, problems = load_text(shown.stdout.decode("utf-8", "replace"), f"{rev}:{name}")
            findings.extend(problems)
            if doc is not None:
                documents.append(doc)
    return documents, findings
