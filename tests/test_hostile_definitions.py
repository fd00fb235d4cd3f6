"""Hostile definition files: mutated definitions and YAML-ish text thrown at
`esfsm.project.check_paths` and `esfsm validate`. The answer is always findings or
success (exit 0 or 1), never an exception.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from helpers import validate
from hostile_support import BANKACCOUNT, CHECKER, DEFINITION, SCALE

from esfsm.project import check_paths

BASE = DEFINITION
DSL_WORDS = [
    "type",
    "from",
    "to",
    "emit",
    "event",
    "data",
    "rule",
    "message",
    "schema",
    "apply",
    "in",
    "if",
    "code",
    "path",
    "final",
    "properties",
    "required",
    "$ref",
    "items",
    "initial",
    "states",
    "commands",
    "events",
    "nats",
    "authorize",
    "initial_data",
    "replicas",
    "description",
    "x-note",
    "<<",
]
CEL = st.one_of(
    st.text(alphabet="cmdataevntkyo.+-*/%()[]{}'\"=<>!&|?:, 0123456789_x", max_size=30),
    st.sampled_from(
        [
            "cmd.amount <= data.balance",
            "now",
            "cmd",
            "data",
            "meta",
            "event",
            "state == 'open'",
            "key.size() > 1",
            "version + 1",
            "[1, 2][5]",
            "{'a': 1}",
            "1 / 0",
            "duration('1h')",
            "timestamp('x')",
            "cmd.all(x, x)",
            "b'\\xff'",
            "9223372036854775807 + 1",
            "'x' * 3",
            "[[[[[[[[[[1]]]]]]]]]]",
            "cmd.amount.exists(x, y)",
            "dyn(1)",
            "type(1) == int",
            "has(cmd.",
            "cmd.",
            "",
            " ",
            "\x00",
            "cmd.no_such_field",
            "data.nope + 1",
            "event.amount",
            "meta['x-username']",
            "now + duration('1s')",
            "size(cmd)",
            "cmd.amount in [1, 2]",
        ]
    ),
)
YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            " ",
            "none",
            "open",
            "closed",
            "frozen",
            "account_opened",
            "object",
            "integer",
            "*",
            ">",
            "a.b",
            "bank.cmds",
            "${x}",
            "~",
            "-",
            "off",
            "BANK_EVENTS",
            "é",
            "\x00",
            "\t",
        ]
    ),
)
DSL_VALUES = st.recursive(
    st.one_of(YAML_SCALARS, CEL),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(DSL_WORDS)), children, max_size=3)
    ),
    max_leaves=8,
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nodes(value, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def mutated_definitions(draw: st.DrawFn) -> Any:
    """bankaccount with one to three nodes mutated: deleted, retyped, renamed, garbage inserted, CEL replaced."""
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_nodes(document))))
        node = _at(document, path)
        parent = _at(document, path[:-1]) if path else None
        operation = draw(st.sampled_from(["delete", "replace", "cel", "rename", "insert"]))
        if operation == "insert" or not path:
            if isinstance(node, dict):
                node[draw(st.one_of(st.text(max_size=10), st.sampled_from(DSL_WORDS)))] = draw(DSL_VALUES)
            elif isinstance(node, list):
                node.insert(draw(st.integers(0, len(node))), draw(DSL_VALUES))
        elif operation == "delete":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(DSL_VALUES)
        elif operation == "cel":
            parent[path[-1]] = draw(CEL)
        elif isinstance(parent, dict):  # rename
            parent[draw(st.one_of(st.text(max_size=10), st.sampled_from(DSL_WORDS)))] = parent.pop(path[-1])
    return document


def assert_findings_or_success(path: Path) -> None:
    project = check_paths([path])  # must not raise
    errors = [f for f in project.findings if f.severity == "error"]
    assert project.ok == (not errors)
    if project.ok:
        assert project.aggregates, "a valid definition compiles to an aggregate"
    for finding in project.findings:
        assert finding.line >= 1 and finding.column >= 1 and finding.message


def assert_cli_findings_or_success(path: Path) -> None:
    for fmt in ("text", "json"):
        result = validate("--format", fmt, str(path))
        if fmt == "json":
            assert json.loads(result.stdout)["valid"] == (result.exit_code == 0)


def _write_yaml(tmp_path: Path, document: Any) -> Path | None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return None
    path = tmp_path / "bankaccount.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@CHECKER
@given(document=mutated_definitions())
def test_mutated_definitions_give_findings_or_success(tmp_path: Path, document: Any) -> None:
    path = _write_yaml(tmp_path, document)
    assume(path is not None)
    assert_findings_or_success(path)


@settings(CHECKER, max_examples=30 * SCALE)
@given(document=mutated_definitions())
def test_validate_on_mutated_definitions_exits_0_or_1(tmp_path: Path, document: Any) -> None:
    path = _write_yaml(tmp_path, document)
    assume(path is not None)
    assert_cli_findings_or_success(path)


LINES = BANKACCOUNT.read_text().splitlines(keepends=True)
YAML_PIECES = [
    *"abcxyz019 :-[]{},'\"&*!|>#%@`?\n\t\\.~<=",  # one character each
    "\u00e9",
    "\x00",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x1b",
    "<<: *a",
    "&a ",
    "*a",
    "!!int ",
    "!!str ",
    "!!float ",
    "!!python/object:os.system ",
    "!custom ",
    "---\n",
    "...\n",
    "? ",
    "cmd.amount",
    "{a: ",
    "[",
    ".nan",
    ".inf",
    "0x",
    "0o",
    "1e400",
    "9" * 30,
    "true",
    "null",
    "~",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
]
yaml_ish = st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        operation = draw(st.sampled_from(["insert", "replace", "delete", "splice", "indent"]))
        if operation == "insert":
            lines.insert(at, draw(yaml_ish) + "\n")
        elif at == len(lines):
            continue
        elif operation == "replace":
            lines[at] = draw(yaml_ish) + "\n"
        elif operation == "delete":
            del lines[at]
        elif operation == "indent":
            lines[at] = " " * draw(st.integers(0, 5)) + lines[at].lstrip(" ")
        else:
            cut = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:cut] + draw(yaml_ish) + lines[at][cut:]
    return "".join(lines)


@CHECKER
@given(text=st.one_of(mutated_text(), yaml_ish, st.text(max_size=200)))
@example(text="[" * 10_000)
@example(text="a:\n" + "".join(" " * i + "- \n" for i in range(2000)))
@example(text="a: &a [*a]")
@example(text="a: !!binary aGVsbG8=")
@example(text="!!float ")  # found by this test: PyYAML's float constructor raised IndexError on ''
@example(text="aggregate: !!int\n")
def test_yaml_ish_text_gives_findings_or_success(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agg.yaml"
    path.write_text(text, encoding="utf-8")
    assert_findings_or_success(path)


@settings(CHECKER, max_examples=30 * SCALE)
@given(raw=st.one_of(mutated_text().map(lambda t: t.encode("utf-8")), st.binary(max_size=200)))
def test_validate_on_arbitrary_bytes_exits_0_or_1(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "agg.yaml"
    path.write_bytes(raw)
    assert_cli_findings_or_success(path)


def test_an_invalid_type_in_the_data_schema_with_initial_data_is_a_finding(tmp_path: Path) -> None:
    """Found by the fuzzer: initial_data was checked against a data schema whose `type` is a
    mapping, and the message builder raised TypeError (unhashable type: 'dict')."""
    document = copy.deepcopy(BASE)
    document["data"]["type"] = {}
    path = _write_yaml(tmp_path, document)
    assert path is not None
    assert_findings_or_success(path)
    assert_cli_findings_or_success(path)
    assert not check_paths([path]).ok


def test_strategies_reach_valid_definitions() -> None:
    """The unmutated base is valid, so mutations start from a definition that passes."""
    assert check_paths([BANKACCOUNT]).ok
