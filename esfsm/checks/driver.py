"""The driver: runs every rule over every definition, then the rules across files, and sorts the findings.

Rules yield; the driver decides: the DSL schema first (a definition that does
not fit it is not built), then each module's rules, then command acceptance
only on a definition with no errors (it compiles the aggregate).
"""

from __future__ import annotations

from dataclasses import dataclass

from esfsm import model as m
from esfsm.checks import cel, emits, evolution, json_schemas, names, states
from esfsm.checks.context import Context, Rule
from esfsm.checks.dsl import schema_findings
from esfsm.findings import Finding, has_errors
from esfsm.loader import Document

RULES: tuple[Rule, ...] = (
    *states.RULES,
    *cel.RULES,
    *emits.RULES,
    *json_schemas.RULES,
    *names.RULES,
    *evolution.RULES,
)


@dataclass
class CheckResult:
    aggregates: list[tuple[Document, m.Aggregate]]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)


def check_documents(documents: list[Document]) -> CheckResult:
    findings: list[Finding] = []
    contexts: list[Context] = []
    for doc in documents:
        if doc.kind != "definition":
            continue
        problems = schema_findings(doc)
        findings.extend(problems)
        if problems:
            continue
        ctx = Context(doc, m.build(doc.data, doc.path))
        mine = [f for check in RULES for f in check(ctx)]
        if not has_errors(mine):
            mine.extend(emits.command_acceptance(ctx))
        findings.extend(mine)
        contexts.append(ctx)
    findings.extend(names.across_files(contexts))
    broken = {f.file for f in findings if f.severity == "error"}
    return CheckResult(
        [(c.doc, c.aggregate) for c in contexts if c.doc.path not in broken],
        sorted(set(findings)),
    )
