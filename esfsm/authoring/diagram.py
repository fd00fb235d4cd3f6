"""Draw an aggregate's state machine: Mermaid and Graphviz dot text, SVG and PNG.

The diagram is read off the compiled ``transitions`` Machine (see
:mod:`esfsm.authoring.analysis`): one node per state, the initial state marked
by an arrow from a start point, final states marked, one labelled edge per
transition, ``event (command, …)``. An event without ``to`` is a self-loop.

The text is written here rather than by ``transitions.extensions.diagrams``:
its Mermaid engine styles the model's current state as "active" and does not
mark final states of a flat machine, and its Graphviz engines need the
``graphviz`` or ``pygraphviz`` package. SVG and PNG pipe the dot text through
Graphviz's ``dot`` program.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from esfsm.authoring.analysis import Edge, edges
from esfsm.compiler import CompiledAggregate
from esfsm.errors import EsfsmError

TEXT_FORMATS = ("mermaid", "dot")
IMAGE_FORMATS = ("svg", "png")
FORMATS = TEXT_FORMATS + IMAGE_FORMATS
SUFFIXES = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}

_MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words the Mermaid state-diagram grammar reads as keywords where a state id is expected.
_MERMAID_KEYWORDS = frozenset(
    {
        "state",
        "note",
        "class",
        "classdef",
        "style",
        "direction",
        "end",
        "as",
        "click",
        "hide",
        "accdescr",
        "acctitle",
        "left",
        "right",
        "of",
        "over",
        "default",
    }
)


class GraphvizError(EsfsmError):
    """Graphviz's ``dot`` program is missing or failed."""


class GraphvizMissing(GraphvizError):
    def __init__(self, fmt: str) -> None:
        self.format = fmt
        super().__init__(
            f"--format {fmt} needs Graphviz's 'dot' program: install it "
            "(e.g. apt-get install graphviz, brew install graphviz) or use --format mermaid"
        )


def mermaid(aggregate: CompiledAggregate) -> str:
    """The machine as a Mermaid ``stateDiagram-v2``, ending with a newline."""
    model = aggregate.model
    ids = _mermaid_ids(list(model.states))
    transitions = edges(aggregate)
    lines = ["---", f"title: {model.name}", "---", "stateDiagram-v2", "    direction LR"]
    connected = {model.initial} | {e.source for e in transitions} | {e.dest for e in transitions}
    for name, state in model.states.items():
        if ids[name] != name:
            lines.append(f'    state "{name}" as {ids[name]}')
        elif name not in connected and not state.final:
            lines.append(f"    {name}")
    lines.append(f"    [*] --> {ids[model.initial]}")
    lines += [f"    {ids[e.source]} --> {ids[e.dest]}: {e.label}" for e in transitions]
    lines += [f"    {ids[name]} --> [*]" for name, state in model.states.items() if state.final]
    return "\n".join(lines) + "\n"


def _mermaid_ids(states: list[str]) -> dict[str, str]:
    """Each state's Mermaid id: its name, unless the name would not parse as one (then s<n>)."""
    ids = {}
    for index, name in enumerate(states):
        plain = _MERMAID_ID.fullmatch(name) and name.lower() not in _MERMAID_KEYWORDS
        ids[name] = name if plain else f"s{index}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
    return ids


def dot(aggregate: CompiledAggregate) -> str:
    """The machine as a Graphviz digraph, ending with a newline."""
    model = aggregate.model
    lines = [
        f"digraph {_quote(model.name)} {{",
        f'    graph [label={_quote(model.name)}, labelloc=t, rankdir=LR, fontname="Helvetica"];',
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    "[*]" [shape=point, width=0.15, label=""];',
    ]
    for name, state in model.states.items():
        attributes = []
        if state.final:
            attributes.append("peripheries=2")
        if state.description:
            attributes.append(f"tooltip={_quote(state.description)}")
        lines.append(f"    {_quote(name)}" + (f" [{', '.join(attributes)}]" if attributes else "") + ";")
    lines.append(f'    "[*]" -> {_quote(model.initial)};')
    lines += [_dot_edge(e) for e in edges(aggregate)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_edge(edge: Edge) -> str:
    # A transition no command can fire is dashed: the machine allows it, nothing sends it.
    style = "" if edge.commands else ", style=dashed"
    return f"    {_quote(edge.source)} -> {_quote(edge.dest)} [label={_quote(edge.label)}{style}];"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render(aggregate: CompiledAggregate, fmt: str) -> bytes:
    """The diagram in fmt: UTF-8 text for mermaid and dot, what ``dot -T<fmt>`` gives for svg and png."""
    if fmt == "mermaid":
        return mermaid(aggregate).encode()
    source = dot(aggregate)
    if fmt == "dot":
        return source.encode()
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissing(fmt)
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GraphvizError(f"Graphviz's 'dot' program could not draw the diagram: {err}") from err
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise GraphvizError(f"Graphviz's 'dot' program failed: {reason}")
    return done.stdout
