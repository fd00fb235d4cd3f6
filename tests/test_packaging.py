"""A wheel must carry what esfsm reads at run time: the DSL's JSON Schemas.

They live in the repository's ``schemas/``; ``esfsm/schemas`` links there, so the
package data ``schemas/*.json`` of the ``esfsm`` package picks them up when a wheel
is built (without it, a non-editable install failed on every definition).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import esfsm
from esfsm.checks import SCHEMA_DIR, dsl_schema

PACKAGE = Path(esfsm.__file__).resolve().parent
ROOT = PACKAGE.parent


def test_the_schemas_are_inside_the_package() -> None:
    inside = sorted(path.name for path in (PACKAGE / "schemas").glob("*.json"))
    assert inside == sorted(path.name for path in (ROOT / "schemas").glob("*.json"))
    assert "aggregate.schema.json" in inside and "scenarios.schema.json" in inside


def test_the_wheel_takes_them_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "schemas/*.json" in config["tool"]["setuptools"]["package-data"]["esfsm"]


def test_the_checks_read_them_from_the_repository_in_a_checkout() -> None:
    assert SCHEMA_DIR == (ROOT / "schemas").resolve()
    assert dsl_schema("aggregate")["$schema"].startswith("https://json-schema.org/")


def test_loading_cel_leaves_its_interactive_shell_out() -> None:
    """`cel`'s package imports its shell (typer, prompt_toolkit: ~0.3 s of every esfsm
    command's start); esfsm loads the engine without it, and `import cel.cli` still works."""
    import subprocess
    import sys

    probe = (
        "import sys, esfsm.expressions as e\n"
        "assert 'prompt_toolkit' not in sys.modules and 'typer' not in sys.modules, 'shell loaded'\n"
        "assert e.compile_expression('cmd.a + 1').execute({'cmd': {'a': 2}}) == 3\n"
        "import cel.cli\n"
        "assert hasattr(cel.cli, 'typer'), 'the placeholder stayed'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
