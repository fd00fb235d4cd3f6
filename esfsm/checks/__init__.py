"""Check definitions: the DSL's JSON Schema first, then semantic rules.

Each semantic rule is a small named function that yields findings; the driver
runs all of them and returns every finding at once, sorted by position. Rules
never stop at the first problem and never lose the JSON pointer.

One module per thing checked:

- ``dsl``: the definition against the DSL's own JSON Schema;
- ``states``: states, events and transitions;
- ``cel``: CEL expressions (syntax, names, fields, cost);
- ``emits``: what commands emit and events apply, and whether a command can be accepted;
- ``json_schemas``: the JSON Schemas a definition writes, and its initial data;
- ``names``: NATS names, alone and across all definitions;
- ``evolution``: versioned events: upcast steps, former names, retired events;
- ``driver``: runs them all and sorts what they find.
"""

from __future__ import annotations

from esfsm.checks.cel import MAX_ITEMS
from esfsm.checks.context import Context, Rule
from esfsm.checks.driver import RULES, CheckResult, check_documents
from esfsm.checks.dsl import HEADER_NAME_PATTERN, NO_LINE_BREAK_PATTERN, SCHEMA_DIR, dsl_schema, schema_findings
from esfsm.checks.json_schemas import JSON_SCHEMA_KEYWORDS
from esfsm.checks.names import BUCKET_NAME, STREAM_NAME, SUBJECT_TOKEN
from esfsm.checks.schema_errors import schema_error_message

__all__ = [
    "BUCKET_NAME",
    "HEADER_NAME_PATTERN",
    "JSON_SCHEMA_KEYWORDS",
    "MAX_ITEMS",
    "NO_LINE_BREAK_PATTERN",
    "RULES",
    "SCHEMA_DIR",
    "STREAM_NAME",
    "SUBJECT_TOKEN",
    "CheckResult",
    "Context",
    "Rule",
    "check_documents",
    "dsl_schema",
    "schema_error_message",
    "schema_findings",
]
