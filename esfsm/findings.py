"""Findings: what the loader and the checker report about a definition.

A finding is data (file, line, column, JSON pointer, rule, severity) with a
sentence; ``str(finding)`` renders it the way compilers do::

    definitions/order.yaml:14:9: error: 'shiped' is not a declared state; did you mean 'shipped'? [/events/shipped/to]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    column: int
    pointer: str
    message: str
    rule: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f" [{self.pointer}]" if self.pointer else ""
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}{where}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "pointer": self.pointer,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
        }


def did_you_mean(value: str, candidates: Iterable[str]) -> str:
    """'; did you mean 'x'?' when a candidate is close to value, else ''."""
    close = difflib.get_close_matches(value, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def one_of(candidates: Iterable[str]) -> str:
    names = sorted(candidates)
    return ", ".join(repr(n) for n in names) if names else "(none)"


def pointer(*parts: object) -> str:
    """A JSON pointer (RFC 6901) from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
