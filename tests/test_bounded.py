"""Bounded evaluation: definitions run CEL only, and no expression can stall the runtime.

CEL here has no cost limit, and its map/filter take time growing with the
square of the list (10,000 items: seconds; nested: minutes). So the checker
refuses what could stall — nested comprehensions, comprehensions over lists
whose schema sets no maxItems (≤ 1000), over the payload in authorize rules,
and functions CEL does not have — and the payload schema is checked before
any command rule runs.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from esfsm.cli import main
from esfsm.engine import MemoryEngine
from esfsm.project import check_paths

DEFINITION = """\
aggregate: tags
initial: open
states: {open: {}}
commands:
  tag:
    schema:
      type: object
      required: [tags]
      properties:
        tags: {type: array, maxItems: 1000, items: {type: integer}}
    rules:
      - rule: cmd.tags.map(t, t * 2).filter(t, t < 0).size() == 0
        message: no negative tag
    emit: [{event: tagged, data: {count: size(cmd.tags)}}]
events:
  tagged:
    schema: {type: object, properties: {count: {type: integer}}}
"""

PATHOLOGICAL = {
    "nested": ("cmd.tags.map(a, cmd.tags.map(b, a * b)).size() > 0", "a comprehension (map) inside another"),
    "unbounded": ("cmd.more.map(a, a).size() > 0", "cmd.more is iterated by a comprehension"),
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tags.yaml"
    path.write_text(text)
    return path


def test_pathological_expressions_are_refused_before_anything_runs(tmp_path: Path) -> None:
    for name, (rule, message) in PATHOLOGICAL.items():
        text = DEFINITION.replace("cmd.tags.map(t, t * 2).filter(t, t < 0).size() == 0", rule)
        text = text.replace("        tags: {type: array", "        more: {type: array}\n        tags: {type: array")
        result = CliRunner().invoke(main, ["validate", str(write(tmp_path, text))])
        assert result.exit_code == 1, (name, result.output)
        assert message in result.output, (name, result.output)


def test_payload_comprehension_in_authorize_is_refused(tmp_path: Path) -> None:
    text = DEFINITION.replace("commands:", "authorize:\n  - rule: cmd.tags.all(t, t > 0)\n    message: no\ncommands:")
    result = CliRunner().invoke(main, ["validate", str(write(tmp_path, text))])
    assert result.exit_code == 1
    assert "authorize runs before the payload is checked" in result.output


def test_an_oversized_list_is_refused_by_the_schema_before_any_rule(tmp_path: Path) -> None:
    project = check_paths([write(tmp_path, DEFINITION)])
    assert project.ok, [str(f) for f in project.findings]
    engine = MemoryEngine(project.aggregates.values())
    reply = engine.handle("tags", "tag", "k", {"tags": list(range(100_000))})
    assert (reply.accepted, reply.code) == (False, 400)
    assert reply.errors[0].path == "/tags"


def test_the_largest_allowed_list_is_evaluated(tmp_path: Path) -> None:
    project = check_paths([write(tmp_path, DEFINITION)])
    engine = MemoryEngine(project.aggregates.values())
    reply = engine.handle("tags", "tag", "k", {"tags": list(range(1000))})
    assert reply.accepted and reply.events[0].get_data() == {"count": 1000}


def test_only_cel_functions_exist_and_none_reaches_the_system(tmp_path: Path) -> None:
    text = DEFINITION.replace("cmd.tags.map(t, t * 2).filter(t, t < 0).size() == 0", "system('rm -rf /') == 0")
    result = CliRunner().invoke(main, ["validate", str(write(tmp_path, text))])
    assert result.exit_code == 1
    assert "unknown CEL function 'system'" in result.output
