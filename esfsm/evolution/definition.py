"""One side of a comparison: an aggregate's definition, its document (for positions) and compiled form."""

from __future__ import annotations

from dataclasses import dataclass

from esfsm import model as m
from esfsm.compiler import CompiledAggregate
from esfsm.findings import Finding, one_of
from esfsm.loader import Document


@dataclass(frozen=True)
class Definition:
    """One aggregate's definition: the document (for positions) and the compiled aggregate."""

    doc: Document
    compiled: CompiledAggregate

    @property
    def model(self) -> m.Aggregate:
        return self.compiled.model

    def error(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule)

    def warning(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule, "warning")

    def written(self, ptr: str, fallback: str) -> str:
        """ptr when the definition writes it, else fallback (a default is not written anywhere)."""
        return ptr if ptr in self.doc.positions else fallback


def states_phrase(names: list[str]) -> str:
    return ("state " if len(names) == 1 else "states ") + one_of(names)
