"""The DSL's JSON Schemas: valid, documented for editors, and what the examples follow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from conftest import DEFINITIONS, ROOT

SCHEMAS = {
    name: json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text()) for name in ("aggregate", "scenarios")
}
EXAMPLES = sorted(DEFINITIONS.glob("*.yaml"))


def properties(schema: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every declared property of schema and its subschemas, with where it is."""
    if isinstance(schema, dict):
        for name, sub in (schema.get("properties") or {}).items():
            yield f"{where}/properties/{name}", sub
        for key, value in schema.items():
            if isinstance(value, dict):
                yield from properties(value, f"{where}/{key}")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    yield from properties(item, f"{where}/{key}/{i}")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12_with_a_description_on_every_property(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    missing = [where for where, sub in properties(schema) if "description" not in sub and "$ref" not in sub]
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_names_its_schema_for_yaml_language_server_and_follows_it(path: Path) -> None:
    name = "scenarios" if path.name.endswith(".scenarios.yaml") else "aggregate"
    first = path.read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=../schemas/{name}.schema.json"
    errors = list(Draft202012Validator(SCHEMAS[name]).iter_errors(yaml.safe_load(path.read_text())))
    assert [e.message for e in errors] == []
