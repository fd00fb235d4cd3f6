"""What the ``esfsm`` commands share: the PATHS argument and the definitions under it,
the AGGREGATE argument, option types, the NATS connection options, printing findings
and running a coroutine.

Every command module of the CLI uses these, and so do the commands the authoring
tools (:mod:`esfsm.authoring.commands`) and the docs (:mod:`esfsm.docgen`) define.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from esfsm.findings import Finding, one_of
from esfsm.project import Project, check_paths
from esfsm.values import AGGREGATE_NAME

if TYPE_CHECKING:
    from esfsm.runtime.connection import ConnectOptions

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"]}
DEFAULT_PATH = Path("definitions")

PATHS = click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
"""Definition files or folders; none given means ./definitions."""


# -- definitions -----------------------------------------------------------------


def default_paths(paths: Iterable[Path]) -> list[Path]:
    return list(paths) or [DEFAULT_PATH]


def described(paths: Iterable[Path]) -> str:
    """The paths as an error message names them."""
    return ", ".join(map(str, paths))


def check_definitions(paths: Iterable[Path]) -> Project:
    """Load and check the definitions under paths (default ./definitions); a path that does
    not exist is a usage error (PATHS checks the ones given; this one, the default)."""
    chosen = default_paths(paths)
    missing = [p for p in chosen if not p.exists()]
    if missing:
        raise click.UsageError(f"path {str(missing[0])!r} does not exist (give the definition files or folders)")
    return check_paths(chosen)


def valid_definitions(paths: Iterable[Path], refusal: str) -> Project:
    """The checked definitions under paths (default ./definitions), through :func:`require_valid`."""
    return require_valid(check_definitions(paths), paths, refusal)


def require_valid(project: Project, paths: Iterable[Path], refusal: str) -> Project:
    """The project, when it defines some aggregate and has no error.

    Otherwise the findings are printed and the command stops with refusal (errors),
    or says there is no definition under paths.
    """
    if not project.ok:
        print_findings(project.findings)
        raise click.ClickException(refusal)
    if not project.aggregates:
        raise click.ClickException(f"no definitions under {described(default_paths(paths))}")
    return project


def print_findings(findings: Iterable[Finding], err: bool = False) -> None:
    for finding in findings:
        click.echo(str(finding), err=err)


# -- the AGGREGATE argument ------------------------------------------------------


def resolve_aggregate(argument: str, paths: tuple[Path, ...]) -> tuple[str, Project]:
    """The aggregate AGGREGATE means, and the checked definitions to look it up in.

    AGGREGATE is an aggregate's name, looked up under PATHS (default:
    ./definitions); or a definition file, or a folder defining one aggregate,
    which is read as well (and alone when no PATHS are given). A bare word is a
    name, unless it is a folder and no aggregate under PATHS has that name.
    """
    given = Path(argument)
    if not given.exists() or (AGGREGATE_NAME.fullmatch(argument) and not given.is_dir()):
        return argument, check_definitions(paths)
    if AGGREGATE_NAME.fullmatch(argument) and all(p.exists() for p in default_paths(paths)):
        project = check_definitions(paths)
        if argument in _defined(project):
            return argument, project
    project = check_definitions([given, *paths])
    names = _defined(project, under=given)
    if len(names) == 1:
        return names[0], project
    if names:
        raise click.ClickException(
            f"{argument} defines {len(names)} aggregates ({one_of(names)}): give the name "
            f"of one, and {argument} as PATHS"
        )
    errors = [f for f in project.findings if f.severity == "error" and _lies_under(Path(f.file), given)]
    if errors:
        print_findings(errors, err=True)
        raise click.ClickException(f"no aggregate could be read from {argument} (see above)")
    raise click.ClickException(f"{argument} defines no aggregate (give an aggregate's name or its definition file)")


def _defined(project: Project, under: Path | None = None) -> list[str]:
    """The names the definitions under a path (or anywhere) give their aggregates, errors or not."""
    names = []
    for document in project.documents:
        if document.kind != "definition" or not isinstance(document.data, dict):
            continue
        name = document.data.get("aggregate")
        if isinstance(name, str) and (under is None or _lies_under(Path(document.path), under)):
            names.append(name)
    return sorted(set(names))


def _lies_under(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or path.resolve().is_relative_to(folder.resolve())


# -- option types ----------------------------------------------------------------


class Integer(click.IntRange):
    name = "integer"  # click's own says "'abc' is not a valid integer range."


class Number(click.FloatRange):
    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# -- NATS ------------------------------------------------------------------------


def connection_options(function: F) -> F:
    """The usual NATS options, shared by every command that talks to a server."""
    a_file = click.Path(exists=True, dir_okay=False)
    options = [
        click.option(
            "--server",
            "-s",
            "servers",
            multiple=True,
            metavar="URL",
            help="NATS server URL (repeatable). Default: $NATS_URL, else the embedded server of `esfsm run`.",
        ),
        click.option("--user", envvar="NATS_USER", help="User name ($NATS_USER)."),
        click.option("--password", envvar="NATS_PASSWORD", help="Password ($NATS_PASSWORD)."),
        click.option("--token", envvar="NATS_TOKEN", help="Authentication token ($NATS_TOKEN)."),
        click.option("--nkey", "nkey_seed", type=a_file, help="File holding an nkey seed."),
        click.option("--creds", type=a_file, help="NATS .creds file (JWT + seed)."),
        click.option("--tls-ca", type=a_file, help="CA certificate to verify the server."),
        click.option("--tls-cert", type=a_file, help="Client certificate (mutual TLS)."),
        click.option("--tls-key", type=a_file, help="Client certificate's private key."),
        click.option("--js-domain", help="JetStream domain."),
        click.option(
            "--store-dir",
            type=click.Path(path_type=Path),
            default=Path(".esfsm"),
            show_default=True,
            help="Where the embedded server keeps its data (and says where it listens).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def connect_options(kwargs: dict[str, Any], name: str) -> ConnectOptions:
    """The ConnectOptions the options of :func:`connection_options` give (popped from kwargs)."""
    from esfsm.runtime.connection import ConnectOptions

    return ConnectOptions(
        user=kwargs.pop("user"),
        password=kwargs.pop("password"),
        token=kwargs.pop("token"),
        nkey_seed=kwargs.pop("nkey_seed"),
        creds=kwargs.pop("creds"),
        tls_ca=kwargs.pop("tls_ca"),
        tls_cert=kwargs.pop("tls_cert"),
        tls_key=kwargs.pop("tls_key"),
        js_domain=kwargs.pop("js_domain"),
        name=name,
    )


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run coroutine to its end on a fresh event loop (uvloop's where it is installed)."""
    import asyncio

    try:
        import uvloop  # faster event loop where available (not on Windows)
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
