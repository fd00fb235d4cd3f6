"""A wheel must carry what esfsm reads at run time, and work where the checkout is not.

The DSL's JSON Schemas live in the repository's ``schemas/``; ``esfsm/schemas`` links
there, so the package data ``schemas/*.json`` of the ``esfsm`` package picks them up
when a wheel is built (without it, a non-editable install failed on every definition).

The `installed` fixture builds the wheel with ``pip wheel`` from a copy of the package
sources (so the build writes no ``build/`` or ``*.egg-info`` into the checkout), creates
a fresh venv without the system site-packages, and installs the wheel into it with the
dependencies its metadata names, from the package index: 20 to 30 s, once per session.
The venv gets no pip of its own (this environment's pip installs into it with --python)
and no bytecode (--no-compile): together they halve the time. Its `esfsm` script then
runs from a folder outside the checkout, so nothing can come from the sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import esfsm
from esfsm.checks import SCHEMA_DIR, dsl_schema

PACKAGE = Path(esfsm.__file__).resolve().parent
ROOT = PACKAGE.parent
# What the build reads: the project file, the readme it names, the package (with its schemas link).
SOURCES = ["pyproject.toml", "README.md", "esfsm", "schemas"]
# The child processes see neither this venv nor the checkout.
ENV = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NATS_URL"}}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from the sources, installed into a fresh venv."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(
                path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(path, source / name)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", "."],
        cwd=source,
        timeout=180,
    )
    [wheel] = (work / "dist").glob("esfsm-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, timeout=120)
    _run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-compile", wheel],
        cwd=work,
        timeout=420,
    )
    return Installed(wheel, venv)


def test_the_wheel_carries_py_typed_and_the_schemas(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert "esfsm/py.typed" in names
    schemas = sorted(n.removeprefix("esfsm/schemas/") for n in names if n.startswith("esfsm/schemas/"))
    assert schemas == sorted(path.name for path in (ROOT / "schemas").glob("*.json"))
    assert "aggregate.schema.json" in schemas and "scenarios.schema.json" in schemas


def test_the_installed_esfsm_validates_the_examples(installed: Installed, tmp_path: Path) -> None:
    """`esfsm validate definitions/` with the venv's script, from a folder that is not the checkout."""
    shutil.copytree(ROOT / "definitions", tmp_path / "definitions")
    where = _run([installed.bin / "python", "-c", "import esfsm; print(esfsm.__file__)"], cwd=tmp_path, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout
    done = subprocess.run(
        [str(installed.bin / "esfsm"), "validate", "definitions/"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = [
        yaml.safe_load(path.read_text(encoding="utf-8"))["aggregate"]
        for path in sorted((ROOT / "definitions").glob("*.yaml"))
        if not path.name.endswith(".scenarios.yaml")
    ]
    assert names == ["bankaccount", "order", "ticket"]
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"{len(names)} definition(s) valid: {', '.join(names)}\n",
        "",
    )


def test_the_schemas_are_inside_the_package() -> None:
    inside = sorted(path.name for path in (PACKAGE / "schemas").glob("*.json"))
    assert inside == sorted(path.name for path in (ROOT / "schemas").glob("*.json"))
    assert "aggregate.schema.json" in inside and "scenarios.schema.json" in inside


def test_the_wheel_takes_them_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "schemas/*.json" in config["tool"]["setuptools"]["package-data"]["esfsm"]


def test_the_checks_read_them_from_the_repository_in_a_checkout() -> None:
    assert (ROOT / "schemas").resolve() == SCHEMA_DIR
    assert dsl_schema("aggregate")["$schema"].startswith("https://json-schema.org/")


def test_loading_cel_leaves_its_interactive_shell_out() -> None:
    """`cel`'s package imports its shell (typer, prompt_toolkit: ~0.3 s of every esfsm
    command's start); esfsm loads the engine without it, and `import cel.cli` still works."""
    probe = (
        "import sys, esfsm.expressions as e\n"
        "assert 'prompt_toolkit' not in sys.modules and 'typer' not in sys.modules, 'shell loaded'\n"
        "assert e.compile_expression('cmd.a + 1').execute({'cmd': {'a': 2}}) == 3\n"
        "import cel.cli\n"
        "assert hasattr(cel.cli, 'typer'), 'the placeholder stayed'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
