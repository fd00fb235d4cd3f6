"""esfsm: event-sourced aggregates described in YAML, run on NATS JetStream."""

from typing import TYPE_CHECKING, Any

from esfsm.compiler import CompiledAggregate, compile_aggregate
from esfsm.engine import MemoryEngine
from esfsm.errors import DefinitionError, EsfsmError, EvaluationError, ReplayError, ScenarioError
from esfsm.findings import Finding
from esfsm.project import Project, check_paths, load_project
from esfsm.values import Accepted, CommandRequest, EntityState, Rejected

__version__ = "0.1.0"

if TYPE_CHECKING:
    from esfsm.client import Client


def __getattr__(name: str) -> Any:
    # The client pulls in the NATS runtime; the core must not, so it loads on first use.
    if name == "Client":
        from esfsm.client import Client

        return Client
    raise AttributeError(f"module 'esfsm' has no attribute {name!r}")


__all__ = [
    "Accepted",
    "Client",
    "CommandRequest",
    "CompiledAggregate",
    "DefinitionError",
    "EntityState",
    "EsfsmError",
    "EvaluationError",
    "Finding",
    "MemoryEngine",
    "Project",
    "Rejected",
    "ReplayError",
    "ScenarioError",
    "__version__",
    "check_paths",
    "compile_aggregate",
    "load_project",
]
