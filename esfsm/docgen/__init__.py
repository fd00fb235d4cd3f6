"""``esfsm docs``: documentation generated from the definitions.

Per aggregate, ``<name>.md`` (states, commands, rules, events, NATS names and a
Mermaid diagram of the machine) and ``<name>.asyncapi.yaml`` (an AsyncAPI 3.0
document of its commands, replies, events and state); ``index.md`` links them.
The output is deterministic, so a folder of generated docs can be committed and
checked for staleness by regenerating it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import yaml

from esfsm.compiler import CompiledAggregate
from esfsm.docgen.asyncapi import asyncapi_document
from esfsm.docgen.facts import GENERATED, definition_path
from esfsm.docgen.markdown import aggregate_page, index_page
from esfsm.project import check_paths

__all__ = ["asyncapi_document", "docs", "render_docs", "write_docs"]


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors: a schema shared through a YAML alias in the
    definition is written out in full at each place."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000,
                     default_flow_style=False)


def render_docs(aggregates: Iterable[CompiledAggregate]) -> dict[str, str]:
    """Every generated file by name: the pages, the AsyncAPI documents and the index."""
    ordered = sorted(aggregates, key=lambda c: c.name)
    files = {"index.md": index_page(ordered)}
    for compiled in ordered:
        files[f"{compiled.name}.md"] = aggregate_page(compiled)
        files[f"{compiled.name}.asyncapi.yaml"] = (
            f"# {GENERATED} from {definition_path(compiled)}: do not edit, run `esfsm docs` again.\n"
            + dump_yaml(asyncapi_document(compiled))
        )
    return files


def _generated(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return GENERATED in f.readline()
    except (OSError, UnicodeDecodeError):
        return False


def write_docs(files: dict[str, str], output: Path) -> tuple[list[Path], list[Path]]:
    """Write files into output (created if needed). Returns what was written and the
    files of an earlier run that are no longer generated (an aggregate renamed or
    removed), which are deleted; nothing else in output is touched."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = output / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    stale = sorted(
        p for p in output.iterdir()
        if p.is_file() and p.name not in files and p.name.endswith((".md", ".asyncapi.yaml")) and _generated(p)
    )
    for path in stale:
        path.unlink()
    return written, stale


@click.command("docs")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/generated"),
              show_default=True, help="The folder to write into (created if needed).")
def docs(paths: tuple[Path, ...], output: Path) -> None:
    """Generate documentation for the definitions under PATHS (default: ./definitions).

    Writes, per aggregate, OUTPUT/<aggregate>.md (states, commands with their
    payload, rules and events, events with their data and transitions, NATS
    names, a Mermaid diagram of the state machine) and
    OUTPUT/<aggregate>.asyncapi.yaml (an AsyncAPI 3.0 document of its
    commands, replies, events and state), and OUTPUT/index.md linking them.
    Files an earlier run generated for aggregates that are gone are removed.
    Refuses to run while the definitions have errors.
    """
    chosen = list(paths) or [Path("definitions")]
    missing = [p for p in chosen if not p.exists()]
    if missing:
        raise click.UsageError(f"path {str(missing[0])!r} does not exist (give the definition files or folders)")
    project = check_paths(chosen)
    if not project.ok:
        for finding in project.findings:
            click.echo(str(finding))
        raise click.ClickException("the definitions have errors; fix them before generating docs")
    if not project.aggregates:
        raise click.ClickException(f"no definitions under {', '.join(map(str, chosen))}")
    read_from = [p.resolve() for p in chosen if p.is_dir()]
    if any(output.resolve() == folder or folder in output.resolve().parents for folder in read_from):
        raise click.UsageError(f"--output {str(output)!r} lies inside the definitions folder: the generated "
                               "*.asyncapi.yaml files would be read as definitions; choose another folder")
    files = render_docs(project.aggregates.values())
    taken = sorted(name for name in files if (output / name).exists() and not _generated(output / name))
    if taken:
        which = ", ".join(str(output / name) for name in taken)
        raise click.ClickException(f"{which} {'was' if len(taken) == 1 else 'were'} not generated by `esfsm docs`; "
                                   "not overwriting: move it away or choose another --output")
    written, removed = write_docs(files, output)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"wrote {len(written)} files for {len(project.aggregates)} aggregate(s) to {output}: "
               + ", ".join(sorted(project.aggregates)))
