"""The checker's hints for mistakes YAML makes easy, found through esfsm.checks.check_documents."""

from __future__ import annotations

import pytest

from esfsm import contract
from esfsm.checks import check_documents
from esfsm.loader import load_text

BASE = """\
aggregate: ticket
initial: open
states: {open: {}}
data:
  type: object
  properties:
    title: {type: string}
    tags: {type: array, maxItems: 5, items: {type: string}}
commands:
  rename:
    schema:
      type: object
      properties: {title: {type: string}}
    emit: [{event: renamed, data: {title: cmd.title}}]
events:
  renamed: {from: open, apply: {title: event.title}}
"""


def findings(text: str) -> list[str]:
    doc, problems = load_text(text, "t.yaml")
    assert doc is not None, [str(p) for p in problems]
    return [str(f) for f in check_documents([doc]).findings]


NULL_HINT = (
    "error: not a valid JSON Schema: YAML reads an unquoted null as nothing, not as the type name; quote it: 'null'"
)


def test_the_base_definition_is_valid() -> None:
    assert findings(BASE) == []


@pytest.mark.parametrize(
    ("written", "where"),
    [
        ("{type: [string, null]}", "7:28: {} [/data/properties/title/type/1]"),
        ("{type: [string, ~]}", "7:28: {} [/data/properties/title/type/1]"),
        ("{type: [null, string]}", "7:20: {} [/data/properties/title/type/0]"),
        ("{type: null}", "7:19: {} [/data/properties/title/type]"),
    ],
)
def test_an_unquoted_null_type_is_told_to_be_quoted_where_it_is(written: str, where: str) -> None:
    text = BASE.replace("title: {type: string}\n", f"title: {written}\n", 1)
    assert findings(text) == ["t.yaml:" + where.format(NULL_HINT)]


def test_an_unquoted_null_type_is_found_in_nested_and_command_schemas() -> None:
    text = BASE.replace("items: {type: string}", "items: {type: [string, null]}")
    text = text.replace("properties: {title: {type: string}}", "properties: {title: {type: [string, NULL]}}")
    assert findings(text) == [
        f"t.yaml:8:61: {NULL_HINT} [/data/properties/tags/items/type/1]",
        f"t.yaml:13:43: {NULL_HINT} [/commands/rename/schema/properties/title/type/1]",
    ]


def test_a_quoted_null_type_is_the_type_name() -> None:
    assert findings(BASE.replace("title: {type: string}", "title: {type: [string, 'null']}", 1)) == []


def test_other_mistakes_in_a_type_list_keep_their_message() -> None:
    text = BASE.replace("title: {type: string}", "title: {type: [string, strin]}", 1)
    assert findings(text) == [
        (
            "t.yaml:7:13: error: not a valid JSON Schema: the list ['string', 'strin'] is not one of 'array', "
            "'boolean', 'integer', 'null', 'number', 'object', 'string' [/data/properties/title/type]"
        ),
    ]


def test_a_clash_with_a_defaulted_name_quotes_the_contract_s_names() -> None:
    """The names the checker reports for an unwritten 'nats:' block are the ones the runtime will use."""
    other = BASE.replace("aggregate: ticket", "aggregate: issue").replace(
        "initial: open", f"nats: {{events: {contract.default_events('ticket')}.issues}}\ninitial: open"
    )
    docs = [load_text(BASE, "a.yaml")[0], load_text(other, "b.yaml")[0]]
    assert [str(f) for f in check_documents(docs).findings] == [
        (
            f"b.yaml:2:16: error: events subject '{contract.default_events('ticket')}.issues' lies inside "
            f"{contract.stream_subjects(contract.default_events('ticket'))!r}, the events of aggregate 'ticket' "
            "in a.yaml; that stream would also capture these events [/nats/events]"
        ),
    ]
    written = BASE.replace("initial: open", f"nats: {{bucket: {contract.default_bucket('issue')}}}\ninitial: open")
    defaulted = BASE.replace("aggregate: ticket", "aggregate: issue")
    docs = [load_text(written, "a.yaml")[0], load_text(defaulted, "b.yaml")[0]]
    assert [str(f) for f in check_documents(docs).findings] == [
        (
            f"b.yaml:1:12: error: bucket {contract.default_bucket('issue')!r} (the default for aggregate 'issue'; set "
            "'nats.bucket' to choose another) is already used by aggregate 'ticket' in a.yaml [/aggregate]"
        ),
    ]
