"""Glue for the pipeline: paths → documents → findings → compiled aggregates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from esfsm.checks import check_documents
from esfsm.compiler import CompiledAggregate
from esfsm.errors import DefinitionError
from esfsm.findings import Finding, has_errors
from esfsm.loader import Document, load_paths


@dataclass
class Project:
    """Everything found under some paths: definitions, scenario files and findings."""

    documents: list[Document]
    findings: list[Finding]
    aggregates: dict[str, CompiledAggregate]

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)

    @property
    def scenario_documents(self) -> list[Document]:
        return [d for d in self.documents if d.kind == "scenarios"]


def check_paths(paths: Iterable[Path | str] | Path | str) -> Project:
    """Load and check every definition under paths; compile those without errors."""
    documents, findings = load_paths(paths)
    result = check_documents(documents)
    findings = sorted(set(findings) | set(result.findings))
    aggregates = {agg.name: CompiledAggregate(agg) for _, agg in result.aggregates}
    return Project(documents, findings, aggregates)


def load_project(paths: Iterable[Path | str] | Path | str) -> Project:
    """Like check_paths, but raise DefinitionError when any definition has an error."""
    project = check_paths(paths)
    if not project.ok:
        raise DefinitionError(project.findings)
    return project
