"""PyYAML's complaints as a finding's position and sentence (used by loader.py).

PyYAML reports where the scanner or parser stopped; this module turns that into
a line and column that exist in the file, a sentence without PyYAML's jargon
where it can, and a hint for the YAML traps of docs/dsl.md.
"""

from __future__ import annotations

import yaml


class LoadFailed(Exception):
    """Why a file cannot be read as one YAML document, and where (1-based line and column)."""

    def __init__(self, line: int, column: int, message: str, rule: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message, self.rule = line, column, message, rule


def position(text: str, mark: yaml.Mark) -> tuple[int, int]:
    """The 1-based line and column of mark in text.

    At the end of the stream, PyYAML's mark lies on the line after the file's
    last line break (or after trailing blank lines), which no editor shows: the
    error is reported just after the last character of the last line with text.
    """
    lines = text.splitlines()
    if mark.line < len(lines):
        return mark.line + 1, mark.column + 1
    written = [i for i, line in enumerate(lines) if line.strip()]
    if not written:
        return max(len(lines), 1), 1
    last = written[-1]
    return last + 1, len(lines[last].rstrip()) + 1


def syntax_failed(text: str, err: yaml.MarkedYAMLError) -> LoadFailed:
    """A scanner or parser error: where it stopped, what it expected, and what was open."""
    mark = err.problem_mark or err.context_mark
    line, col = position(text, mark) if mark else (1, 1)
    problem = err.problem or "invalid YAML"
    if "but found another document" in problem:
        problem = "expected a single YAML document, found several (remove the '---' separators)"
    elif err.context and err.context_mark and err.problem_mark:
        open_line, open_col = position(text, err.context_mark)
        problem += f" ({err.context} at line {open_line}, column {open_col})"
        at_end = "<stream end>" in problem or "end of stream" in problem
        if err.context in _FLOW_CONTEXTS and (at_end or err.context_mark.line != err.problem_mark.line):
            problem += f"; is the {_FLOW_CONTEXTS[err.context]!r} there closed?"
        else:
            problem += _YAML_HINTS.get(err.context, "")
    return LoadFailed(line, col, f"invalid YAML: {problem}", "yaml-syntax")


_FLOW_HINT = (
    "; inside {…} or […], a comma or a bracket ends the value: quote an expression that holds one, "
    "or write the mapping in block style"
)
_FLOW_CONTEXTS = {"while parsing a flow mapping": "{", "while parsing a flow sequence": "["}
_YAML_HINTS = {  # the traps of docs/dsl.md, by PyYAML's context (on the line where the error is)
    "while parsing a flow mapping": _FLOW_HINT,
    "while parsing a flow sequence": _FLOW_HINT,
    "while scanning an alias": "; a value that starts with '*' is a YAML alias: quote it, as in from: '*'",
    "while scanning an anchor": "; a value that starts with '&' is a YAML anchor: quote it",
}


def reader_failed(text: str, err: yaml.reader.ReaderError) -> LoadFailed:
    """A ReaderError (a character YAML does not allow) with its line and column."""
    before = text[: err.position]
    line, column = before.count("\n") + 1, err.position - (before.rfind("\n") + 1) + 1
    char = chr(err.character) if isinstance(err.character, int) else str(err.character)
    return LoadFailed(
        line,
        column,
        f"invalid YAML: the character {char!r} (#x{ord(char[:1] or ' '):04x}) "
        "is not allowed; remove it or write it as an escape in a double-quoted string",
        "yaml-syntax",
    )
