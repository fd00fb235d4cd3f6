"""The exceptions esfsm raises. All derive from :class:`EsfsmError`."""

from __future__ import annotations

from collections.abc import Sequence

from esfsm.findings import Finding


class EsfsmError(Exception):
    """Root of every esfsm error."""


class DefinitionError(EsfsmError):
    """One or more definitions are invalid; ``findings`` says where and why."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        errors = [f for f in self.findings if f.severity == "error"]
        lines = "\n".join(str(f) for f in errors)
        super().__init__(f"{len(errors)} error(s) in the definitions:\n{lines}")


class EvaluationError(EsfsmError):
    """A CEL expression failed while it was evaluated."""

    def __init__(self, where: str, source: str, reason: str) -> None:
        self.where = where
        self.source = source
        self.reason = reason
        super().__init__(f"{where}: {source!r} failed: {reason}")


class ReplayError(EsfsmError):
    """An event cannot be applied to an entity's state (wrong state or broken data)."""

    def __init__(self, key: str, event_type: str, state: str, reason: str) -> None:
        self.key = key
        self.event_type = event_type
        self.state = state
        super().__init__(f"entity {key!r}: cannot apply event {event_type!r} in state {state!r}: {reason}")


class UnreadableEvent(ReplayError):
    """A stored event this definition cannot read: a type it does not know under any name, or a
    version newer than it knows (written by a newer definition, during a rolling upgrade, or by a
    definition that has since lost it). It is never applied; `reason` says which."""

    def __init__(self, key: str, event_type: str, version: int, state: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(key, event_type, state, reason)


class ScenarioError(EsfsmError):
    """A scenario file is malformed or refers to something that does not exist."""


class UnknownAggregateError(EsfsmError, KeyError):
    """An engine was asked about an aggregate it does not run (a KeyError too, as it was before)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
