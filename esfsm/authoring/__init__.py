"""Authoring tools: draw an aggregate (``graph``), start one (``init``), explain a command (``explain``).

The CLI registers the three click commands::

    from esfsm.authoring import explain, graph, init
    main.add_command(graph)

The work is done by plain functions importable on their own:
:mod:`esfsm.authoring.analysis` (paths and edges of the compiled Machine),
:mod:`esfsm.authoring.diagram` (Mermaid, dot, SVG, PNG),
:mod:`esfsm.authoring.explanation` (one command's facts, as JSON data or text) and
:mod:`esfsm.authoring.scaffold` (the files ``init`` writes).
"""

from esfsm.authoring.commands import explain, graph, init

__all__ = ["explain", "graph", "init"]
