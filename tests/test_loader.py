"""The YAML loader: JSON data only, positions for every node, and no way to make it hang or crash."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from esfsm.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    Position,
    discover,
    kind_of,
    load_file,
    load_paths,
    load_text,
)


def load(text: str) -> dict:
    doc, findings = load_text(text, "t.yaml")
    assert findings == [], [str(f) for f in findings]
    assert doc is not None
    return doc.data


def problems(text: str) -> list[str]:
    doc, findings = load_text(text, "t.yaml")
    assert doc is None
    return [str(f) for f in findings]


# -- scalars: the YAML 1.2 core schema ---------------------------------------


def test_on_off_yes_no_stay_strings() -> None:
    data = load("states: {on: {}, off: {}, yes: {}, no: {}, y: {}, n: {}}\nvalues: [on, off, yes, no, On, NO]\n")
    assert list(data["states"]) == ["on", "off", "yes", "no", "y", "n"]
    assert data["values"] == ["on", "off", "yes", "no", "On", "NO"]


def test_only_true_and_false_are_booleans() -> None:
    assert load("a: true\nb: False\nc: TRUE\nd: 'true'\n") == {"a": True, "b": False, "c": True, "d": "true"}


def test_null_is_none_and_an_empty_value_is_null() -> None:
    assert load("a: null\nb: ~\nc:\n") == {"a": None, "b": None, "c": None}


def test_dates_and_sexagesimal_numbers_stay_strings() -> None:
    """JSON has no date type, and '1:30' is not ninety (YAML 1.1 said both)."""
    data = load("a: 2025-01-01\nb: 2025-01-01T09:00:00Z\nc: 1:30\nd: 1_000\n")
    assert data == {"a": "2025-01-01", "b": "2025-01-01T09:00:00Z", "c": "1:30", "d": "1_000"}


def test_numbers_follow_yaml_1_2() -> None:
    data = load("a: 010\nb: 0o17\nc: 0x1F\nd: -5\ne: 1e3\nf: 2.5\ng: .5\n")
    assert data == {"a": 10, "b": 15, "c": 31, "d": -5, "e": 1000.0, "f": 2.5, "g": 0.5}
    assert isinstance(data["a"], int) and isinstance(data["e"], float)


def test_numeric_and_boolean_keys_become_strings() -> None:
    assert load("1: a\n2.5: b\ntrue: c\n") == {"1": "a", "2.5": "b", "true": "c"}


# -- positions ----------------------------------------------------------------

NESTED = """\
aggregate: ticket
states:
  open: {}
  closed:
    final: true
events:
  closed: {from: [open, frozen], to: closed}
  noted:
"""


def test_positions_of_nested_keys_point_at_scalar_values_and_at_keys_of_containers() -> None:
    doc, _ = load_text(NESTED, "t.yaml")
    assert doc is not None
    assert doc.position("/aggregate") == Position(1, 12)  # the value 'ticket'
    assert doc.position("/states") == Position(2, 1)  # a mapping: its key
    assert doc.position("/states/closed") == Position(4, 3)
    assert doc.position("/states/closed/final") == Position(5, 12)
    assert doc.position("/events/closed/from") == Position(7, 12)  # a flow list: its key
    assert doc.position("/events/closed/from/1") == Position(7, 25)  # 'frozen'
    assert doc.position("/events/closed/to") == Position(7, 38)
    assert doc.position("/events/noted") == Position(8, 3)  # 'noted:' with no value: its key


def test_key_positions_point_at_the_key_itself() -> None:
    doc, _ = load_text(NESTED, "t.yaml")
    assert doc is not None
    assert doc.key_position("/aggregate") == Position(1, 1)
    assert doc.key_position("/states/closed/final") == Position(5, 5)
    assert doc.key_position("/events/closed/to") == Position(7, 34)


def test_a_missing_pointer_falls_back_to_its_nearest_ancestor() -> None:
    doc, _ = load_text(NESTED, "t.yaml")
    assert doc is not None
    assert doc.position("/states/closed/description") == Position(4, 3)
    assert doc.position("/nothing/here") == Position(1, 1)


def test_a_finding_carries_file_position_pointer_and_rule() -> None:
    doc, _ = load_text(NESTED, "t.yaml")
    assert doc is not None
    finding = doc.finding("/states/closed/final", "bad", "some-rule")
    assert str(finding) == "t.yaml:5:12: error: bad [/states/closed/final]"
    at_key = doc.finding("/states/closed/final", "bad", "r", "warning", key=True)
    assert str(at_key) == "t.yaml:5:5: warning: bad [/states/closed/final]"


# -- refused input ------------------------------------------------------------


def test_a_duplicate_key_is_an_error_at_the_second_key() -> None:
    assert problems("a: 1\nb:\n  c: 1\n  c: 2\n") == ["t.yaml:4:3: error: duplicate key 'c' (first defined on line 3)"]


def test_keys_that_only_differ_in_spelling_of_true_are_duplicates() -> None:
    assert problems("true: a\nTrue: b\n") == ["t.yaml:2:1: error: duplicate key 'true' (first defined on line 1)"]


def test_a_merge_key_may_be_overridden_by_an_explicit_key() -> None:
    data = load("base: &base {x: 1, y: 1}\nmine:\n  <<: *base\n  x: 2\nagain: {<<: [{x: 1}, {x: 2, z: 3}]}\n")
    assert data["mine"] == {"x": 2, "y": 1}
    assert data["again"] == {"x": 1, "z": 3}  # the first merged mapping wins
    assert data["base"] == {"x": 1, "y": 1}


def test_a_merge_of_a_scalar_is_an_error() -> None:
    assert problems("a: {<<: 3}\n") == [
        "t.yaml:1:9: error: a merge key '<<' takes a mapping or a list of mappings, got a scalar",
    ]


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: !!python/object:os.system x\n", "!!python/object:os.system"),
        ("a: !!python/name:os.system\n", "!!python/name:os.system"),
        ("a: !!binary aGVsbG8=\n", "!!binary"),
        ("a: !!timestamp 2025-01-01\n", "!!timestamp"),
        ("a: !!set {x, y}\n", "!!set"),
        ("a: !Ref x\n", "!Ref"),
    ],
    ids=["python-object", "python-name", "binary", "timestamp", "set", "custom"],
)
def test_tags_other_than_plain_json_data_are_refused(text: str, tag: str) -> None:
    assert problems(text) == [
        (
            f"t.yaml:1:4: error: the tag {tag!r} is not allowed; only plain YAML data is "
            "(strings, numbers, true/false, null, lists and mappings)"
        ),
    ]


def test_a_key_that_is_not_a_scalar_is_refused() -> None:
    assert problems("[a, b]: 1\n") == ["t.yaml:1:1: error: mapping keys must be strings, got a list"]


def test_a_syntax_error_says_where_and_what_was_open() -> None:
    assert problems("a: {b: 1\nc: 2\n") == [
        (
            "t.yaml:2:2: error: invalid YAML: expected ',' or '}', but got ':' "
            "(while parsing a flow mapping at line 1, column 4); is the '{' there closed?"
        ),
    ]


def test_the_yaml_traps_of_the_docs_get_a_hint() -> None:
    assert problems("a: {b: x.filter(i, i > 1)[0]}\n") == [
        (
            "t.yaml:1:26: error: invalid YAML: expected ',' or '}', but got '[' (while parsing a flow mapping at "
            "line 1, column 4); inside {…} or […], a comma or a bracket ends the value: quote an expression that "
            "holds one, or write the mapping in block style"
        )
    ]
    assert problems("a: {from: *, to: b}\n") == [
        (
            "t.yaml:1:12: error: invalid YAML: expected alphabetic or numeric character, but found ',' (while scanning "
            "an alias at line 1, column 11); a value that starts with '*' is a YAML alias: quote it, as in from: '*'"
        )
    ]


def test_an_error_at_the_end_of_the_file_is_reported_on_its_last_line() -> None:
    """PyYAML puts the end of the stream on the line after the final line break, which no editor shows."""
    unclosed = (
        "t.yaml:1:9: error: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 1, column 4); is the '[' there closed?"
    )
    assert problems("a: [1, 2\n") == [unclosed]
    assert problems("a: [1, 2\n\n  \n") == [unclosed]  # trailing blank lines too
    assert problems("a: [1, 2\r\n") == [unclosed]
    assert problems("a: [1, 2") == [unclosed]  # no final line break: already on the last line
    assert problems("a: b\nc: 'text\n") == [
        (
            "t.yaml:2:9: error: invalid YAML: found unexpected end of stream (while scanning a quoted scalar "
            "at line 2, column 4)"
        ),
    ]
    assert problems("a: {\n") == [  # the open bracket's own position is past the end too
        (
            "t.yaml:1:5: error: invalid YAML: expected the node content, but found '<stream end>' "
            "(while parsing a flow node at line 1, column 5)"
        ),
    ]


def test_a_control_character_is_reported_where_it_is() -> None:
    assert problems("a: 1\nb: x\x07y\n") == [
        (
            "t.yaml:2:5: error: invalid YAML: the character '\\x07' (#x0007) is not allowed; "
            "remove it or write it as an escape in a double-quoted string"
        ),
    ]


def test_an_empty_file_and_a_list_root_are_reported() -> None:
    assert problems("# just a comment\n") == ["t.yaml:1:1: error: the file is empty; expected an aggregate definition"]
    assert problems("- a\n") == ["t.yaml:1:1: error: the root must be a mapping (an aggregate definition), got a list"]
    doc, findings = load_text("", "x.scenarios.yaml")
    assert doc is None and "expected a scenario file" in str(findings[0])


def test_several_documents_are_refused() -> None:
    assert problems("a: 1\n---\nb: 2\n") == [
        "t.yaml:2:1: error: invalid YAML: expected a single YAML document, found several (remove the '---' separators)",
    ]


# -- bounded: no hang, no crash ----------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


def test_billion_laughs_gives_a_finding_fast() -> None:
    started = time.perf_counter()
    found = problems(BILLION_LAUGHS)
    assert time.perf_counter() - started < 5
    assert len(found) == 1
    assert found[0].startswith("t.yaml:")
    assert f"the document expands to more than {MAX_NODES} values" in found[0]


def test_billion_laughs_through_merge_keys_gives_a_finding_fast() -> None:
    text = "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}\n" + "".join(
        f"m{i + 1}: &m{i + 1} {{<<: [{', '.join([f'*m{i}'] * 10)}]}}\n" for i in range(8)
    )
    started = time.perf_counter()
    found = problems(text)
    assert time.perf_counter() - started < 5
    assert "expands to more than" in found[0]


def test_a_recursive_alias_is_an_error_not_a_recursion_error() -> None:
    assert problems("a: &a [1, *a]\n") == [
        "t.yaml:1:4: error: this anchored node contains an alias to itself (a recursive alias)",
    ]
    assert problems("a: &a {<<: *a}\n") == [
        "t.yaml:1:4: error: this anchored node contains an alias to itself (a recursive alias)",
    ]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_an_error_not_a_recursion_error(depth: int) -> None:
    found = problems("a: " + "[" * depth + "]" * depth + "\n")
    assert len(found) == 1 and f"nested more than {MAX_DEPTH} levels deep" in found[0]


# -- files --------------------------------------------------------------------


def test_invalid_utf8_gives_line_column_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: 1\nb: \xff\xfe\n")
    doc, findings = load_file(path)
    assert doc is None
    assert [str(f) for f in findings] == [
        (
            f"{path}:2:4: error: the file is not valid UTF-8: byte 0xff at offset 8 cannot be decoded; "
            "save the file as UTF-8"
        ),
    ]


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffa: café\n".encode())
    doc, findings = load_file(path)
    assert findings == [] and doc is not None and doc.data == {"a": "café"}


def test_discover_finds_yaml_and_yml_recursively_sorted_and_tells_scenarios_apart(tmp_path: Path) -> None:
    for name in [
        "b.yaml",
        "a.yml",
        "notes.txt",
        "b.scenarios.yaml",
        "sub/c.yaml",
        "sub/deeper/d.scenarios.yml",
        "sub/e.json",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("aggregate: x\n")
    found = discover([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.yml",
        "b.scenarios.yaml",
        "b.yaml",
        "sub/c.yaml",
        "sub/deeper/d.scenarios.yml",
    ]
    assert {p.name: kind_of(p) for p in found} == {
        "a.yml": "definition",
        "b.scenarios.yaml": "scenarios",
        "b.yaml": "definition",
        "c.yaml": "definition",
        "d.scenarios.yml": "scenarios",
    }
    docs, findings = load_paths([tmp_path])
    assert findings == []
    assert [(Path(d.path).name, d.kind) for d in docs] == [
        ("a.yml", "definition"),
        ("b.scenarios.yaml", "scenarios"),
        ("b.yaml", "definition"),
        ("c.yaml", "definition"),
        ("d.scenarios.yml", "scenarios"),
    ]


def test_discover_keeps_files_as_given_and_lists_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "odd.txt").write_text("a: 1\n")
    found = discover([tmp_path / "odd.txt", tmp_path, tmp_path / "a.yaml"])
    assert found == [tmp_path / "odd.txt", tmp_path / "a.yaml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!float abc\n", "t.yaml:1:4: error: 'abc' is not a valid value for the tag '!!float'"),
        ("a: !!bool maybe\n", "t.yaml:1:4: error: 'maybe' is not a valid value for the tag '!!bool'"),
        ("!!int x: 1\n", "t.yaml:1:1: error: 'x' is not a valid value for the tag '!!int'"),
    ],
    ids=["float", "bool", "int-key"],
)
def test_an_explicit_core_tag_on_a_wrong_value_is_an_error_not_a_crash(text: str, message: str) -> None:
    assert problems(text) == [message]


def test_a_pipe_is_refused_rather_than_read_for_ever(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    doc, findings = load_file(fifo)
    assert doc is None and [f.message for f in findings] == [
        "not a regular file (a pipe, a socket or a device?); give definition files or folders"
    ]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_FILE_BYTES + "\n")
    started = time.monotonic()
    doc, findings = load_file(big)
    assert doc is None and findings[0].rule == "yaml-size" and "larger than 1024 KiB" in findings[0].message
    assert time.monotonic() - started < 5  # not parsed first
    fits = tmp_path / "fits.yaml"
    fits.write_text("a: " + "x" * (MAX_FILE_BYTES - 100) + "\n")
    assert load_file(fits)[0] is not None


def test_one_path_given_bare_is_one_path_and_a_missing_one_says_so(tmp_path: Path) -> None:
    from conftest import DEFINITIONS

    from esfsm import load_project

    assert sorted(load_project(str(DEFINITIONS)).aggregates) == sorted(load_project([DEFINITIONS]).aggregates)
    assert sorted(load_project(DEFINITIONS).aggregates) == ["bankaccount", "order", "ticket"]
    doc, findings = load_file(tmp_path / "nowhere.yaml")
    assert doc is None and [f.message for f in findings] == ["no such file or folder"]
