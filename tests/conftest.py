"""Shared fixtures: the example definitions, compiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from esfsm.project import Project, load_project

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "definitions"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def project() -> Project:
    """The examples in definitions/ plus the test-only aggregate in fixtures/valid/."""
    return load_project([DEFINITIONS, FIXTURES / "valid"])
