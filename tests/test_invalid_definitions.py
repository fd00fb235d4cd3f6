"""Every kind of mistake in a definition: its exact message, line, column and exit code.

Each fixture in tests/fixtures/invalid/ is a small valid aggregate with one
mistake; its leading comment lines say what ``esfsm validate`` must print::

    # what the mistake is
    # expect: <line>:<col>: <severity>: <message> [<pointer>]
    # exit: 1

The test adds the file path in front of each expected line. A folder holds a
mistake that needs several files; its ``expect.txt`` has the same lines with
paths relative to the folder. The invalid UTF-8 case is written by its test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result

from helpers import validate

ROOT = Path(__file__).resolve().parent.parent
INVALID = Path(__file__).resolve().parent / "fixtures" / "invalid"
SINGLE = sorted(INVALID.glob("*.yaml"))
MULTI = sorted(p for p in INVALID.iterdir() if p.is_dir())


@dataclass(frozen=True)
class Expected:
    lines: list[str]
    exit_code: int


def expected(text: str) -> Expected:
    lines = [line.removeprefix("# expect: ") for line in text.splitlines() if line.startswith("# expect: ")]
    codes = [int(line.removeprefix("# exit: ")) for line in text.splitlines() if line.startswith("# exit: ")]
    assert len(codes) == 1, "a fixture needs exactly one '# exit: N' line"
    return Expected(lines, codes[0])


def split_output(result: Result, prefix: str) -> tuple[list[str], list[str]]:
    """(finding lines, other lines) of stdout; findings are the lines starting with prefix."""
    lines = result.stdout.splitlines()
    return [line for line in lines if line.startswith(prefix)], [line for line in lines if not line.startswith(prefix)]


def assert_reported(result: Result, prefix: str, want: Expected) -> None:
    findings, others = split_output(result, prefix)
    assert findings == [prefix + line for line in want.lines]
    assert result.exit_code == want.exit_code, result.output
    if want.exit_code == 0:
        assert len(others) == 1 and " valid: " in others[0], others  # the one-line summary
    else:
        assert others == []


def test_the_corpus_has_one_fixture_per_kind_of_mistake() -> None:
    assert len(SINGLE) + len(MULTI) + 1 >= 30  # + invalid UTF-8, written by its test
    for path in [*SINGLE, *(d / "expect.txt" for d in MULTI)]:
        assert expected(path.read_text(encoding="utf-8")).lines, f"{path} expects no finding"


@pytest.mark.parametrize("path", SINGLE, ids=lambda p: p.stem)
def test_a_definition_mistake_is_reported_exactly(path: Path) -> None:
    assert_reported(validate(str(path)), f"{path}:", expected(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("folder", MULTI, ids=lambda p: p.name)
def test_a_mistake_across_files_is_reported_exactly(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    want = expected((folder / "expect.txt").read_text(encoding="utf-8"))
    result = validate(".")
    assert result.exit_code == want.exit_code
    assert result.stdout.splitlines() == want.lines


def test_invalid_utf8_is_reported_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"aggregate: ticket\ndescription: caf\xe9 tickets\n")
    result = validate(str(path))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        (
            f"{path}:2:17: error: the file is not valid UTF-8: byte 0xe9 at offset 34 cannot be decoded; "
            "save the file as UTF-8"
        ),
    ]


def test_the_example_definitions_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = validate("definitions/")
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stdout.splitlines() if ": error: " in line]


def test_all_mistakes_of_a_file_are_reported_at_once_sorted_by_position() -> None:
    path = INVALID / "several-mistakes.yaml"
    findings, _ = split_output(validate(str(path)), f"{path}:")
    assert len(findings) == 3
    positions = [tuple(int(n) for n in line.split(":")[1:3]) for line in findings]
    assert positions == sorted(positions)
    assert len({line.split(": ", 2)[2] for line in findings}) == 3


def test_json_format_gives_each_finding_as_data() -> None:
    path = INVALID / "several-mistakes.yaml"
    result = validate("--format", "json", str(path))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["errors"] == 3 and report["warnings"] == 0
    assert [set(f) for f in report["findings"]] == [
        {"file", "line", "column", "pointer", "rule", "severity", "message"}
    ] * 3
    first = report["findings"][0]
    assert first == {
        "file": str(path),
        "line": 7,
        "column": 10,
        "pointer": "/initial",
        "rule": "unknown-state",
        "severity": "error",
        "message": "'opened' is not a declared state; did you mean 'open'?",
    }
    rendered = [
        f"{f['line']}:{f['column']}: {f['severity']}: {f['message']} [{f['pointer']}]" for f in report["findings"]
    ]
    assert rendered == expected(path.read_text(encoding="utf-8")).lines
    assert [f["rule"] for f in report["findings"]] == ["unknown-state", "cel-unknown-field", "unknown-state"]


def test_json_format_of_a_valid_definition_with_a_warning() -> None:
    path = INVALID / "unused-event.yaml"
    report = json.loads(validate("--format", "json", str(path)).stdout)
    assert report["valid"] is True
    assert report["aggregates"] == ["ticket"]
    assert [(f["rule"], f["severity"], f["pointer"]) for f in report["findings"]] == [
        ("unused-event", "warning", "/events/noted"),
    ]


def test_the_whole_corpus_at_once_reports_without_a_traceback() -> None:
    """Dozens of broken files together (and clashing with each other) still give findings, not a crash."""
    result = validate(str(INVALID))
    assert result.exit_code == 1
    findings = result.stdout.splitlines()
    for path in SINGLE:
        for line in expected(path.read_text(encoding="utf-8")).lines:
            assert f"{path}:{line}" in findings
