"""esfsm: event-sourced aggregates described in YAML, run on NATS JetStream."""

from esfsm.compiler import CompiledAggregate, compile_aggregate
from esfsm.engine import MemoryEngine
from esfsm.errors import DefinitionError, EsfsmError, EvaluationError, ReplayError, ScenarioError
from esfsm.findings import Finding
from esfsm.project import Project, check_paths, load_project
from esfsm.values import Accepted, CommandRequest, EntityState, Rejected

__version__ = "0.1.0"

__all__ = [
    "Accepted",
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
    "check_paths",
    "compile_aggregate",
    "load_project",
    "__version__",
]
