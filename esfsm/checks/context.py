"""What every rule is given: the document (for positions) and the aggregate built from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from esfsm import model as m
from esfsm.findings import Finding
from esfsm.loader import Document


@dataclass
class Context:
    doc: Document
    aggregate: m.Aggregate

    def error(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule)

    def warning(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule, "warning")


Rule = Callable[[Context], Iterator[Finding]]
