"""Imports flow one way: core → runtime → CLI (DESIGN.md, "The pipeline")."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "esfsm",
    "esfsm.loader",
    "esfsm.model",
    "esfsm.compiler",
    "esfsm.engine",
    "esfsm.scenarios",
    "esfsm.checks",
    "esfsm.checks.driver",
    "esfsm.checks.context",
    "esfsm.checks.dsl",
    "esfsm.checks.schema_errors",
    "esfsm.checks.states",
    "esfsm.checks.cel",
    "esfsm.checks.emits",
    "esfsm.checks.json_schemas",
    "esfsm.checks.names",
    "esfsm.command_path",
    "esfsm.reading",
    "esfsm.contract",
    "esfsm.paths",
    "esfsm.seam",
    "esfsm.cel_errors",
    "esfsm.yaml_errors",
]
RUNTIME = [
    "esfsm.runtime.runner",
    "esfsm.runtime.testing",
    "esfsm.client",
    "esfsm.runtime.pipeline",
    "esfsm.runtime.turns",
    "esfsm.runtime.answers",
    "esfsm.runtime.workers",
    "esfsm.runtime.logs",
]


def loaded_after_importing(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_core_imports_neither_nats_nor_the_runtime_nor_the_cli() -> None:
    loaded = loaded_after_importing(CORE)
    assert not {m for m in loaded if m == "nats" or m.startswith(("nats.", "esfsm.runtime", "esfsm.cli"))}


def test_the_runtime_never_imports_the_cli() -> None:
    loaded = loaded_after_importing(RUNTIME)
    assert "esfsm.runtime.service" in loaded
    assert "esfsm.cli" not in loaded
