"""The checker on versioned events: upcast steps, former names and retired events.

Each test writes one mistake into a small valid definition and asserts the exact
finding (line:col, message, pointer) `esfsm validate` prints for it.
"""

from __future__ import annotations

from esfsm.checks import check_documents
from esfsm.loader import load_text

BASE = """\
aggregate: account
initial: none
states: {none: {}, open: {}}
data:
  type: object
  properties:
    balance: {type: integer}
    currency: {type: string}
initial_data: {balance: 0}
commands:
  open:
    emit: [{event: opened, data: {currency: "'EUR'"}}]
  deposit:
    emit: [{event: deposited, data: {amount: 1, currency: "'EUR'"}}]
events:
  opened:
    from: none
    to: open
    apply: {currency: event.currency}
    schema:
      type: object
      required: [currency]
      properties: {currency: {type: string}}
      additionalProperties: false
  deposited:
    from: open
    apply: {balance: data.balance + event.amount}
    schema:
      type: object
      required: [amount, currency]
      properties: {amount: {type: integer}, currency: {type: string}}
"""

DEPOSITED_V2 = """\
  deposited:
    from: open
    apply: {balance: data.balance + event.amount}
    version: 2
"""


def findings(text: str) -> list[str]:
    doc, problems = load_text(text, "t.yaml")
    assert doc is not None, [str(p) for p in problems]
    return [str(f) for f in check_documents([doc]).findings]


def with_deposited(tail: str) -> str:
    """BASE with deposited at version 2, tail lines added to its definition."""
    return BASE.replace(
        "  deposited:\n    from: open\n    apply: {balance: data.balance + event.amount}\n", DEPOSITED_V2 + tail
    )


def test_the_base_definition_and_a_complete_upcast_are_valid() -> None:
    assert findings(BASE) == []
    text = with_deposited(
        "    upcast:\n"
        "      - version: 1\n"
        "        schema: {type: object, required: [amount], properties: {amount: {type: integer}}}\n"
        "        data: {currency: \"'EUR'\"}\n"
    )
    assert findings(text) == []


def test_a_version_without_upcast_steps_is_an_error_naming_the_versions() -> None:
    assert findings(with_deposited("")) == [
        (
            "t.yaml:28:14: error: event 'deposited' is at version 2 but has no 'upcast' steps: stored events of "
            "version 1 could not be read; add a step with 'version: 1' (it gives version 2) [/events/deposited/version]"
        )
    ]
    text = BASE.replace("    from: none\n", "    from: none\n    version: 4\n    upcast: [{version: 2}]\n")
    assert findings(text) == [
        (
            "t.yaml:18:14: error: event 'opened' is at version 4 but no upcast step reads versions 1, 3: stored events "
            "of versions 1, 3 could not be read; add a step with 'version: 1' (it gives version 2) "
            "[/events/opened/version]"
        )
    ]


def test_steps_must_read_older_versions_once_each() -> None:
    text = with_deposited("    upcast: [{version: 1}, {version: 1}, {version: 2}]\n")
    assert findings(text) == [
        (
            "t.yaml:29:38: error: version 1 of event 'deposited' already has an upcast step (upcast/0); give one step "
            "per older version [/events/deposited/upcast/1/version]"
        ),
        (
            "t.yaml:29:52: error: event 'deposited' is at version 2: an upcast step reads an older version (1 to 1), "
            "not version 2 [/events/deposited/upcast/2/version]"
        ),
    ]


def test_upcast_on_a_version_1_event_is_an_error() -> None:
    text = BASE.replace("    to: open\n", "    to: open\n    upcast: [{version: 1}]\n")
    assert findings(text) == [
        (
            "t.yaml:19:5: error: event 'opened' is at version 1, so it has no older version to upcast; raise its "
            "'version' when its data changes shape [/events/opened/upcast]"
        )
    ]


def test_upcast_cel_is_checked_for_syntax_variables_and_now() -> None:
    text = with_deposited(
        "    upcast:\n"
        "      - version: 1\n"
        '        data: {currency: "event.cur +", at: now, who: data.owner, k: key + type}\n'
    )
    assert findings(text) == [
        (
            "t.yaml:31:26: error: CEL syntax error in 'event.cur +': expected a value, got the end of the "
            "expression (at character 12) [/events/deposited/upcast/0/data/currency]"
        ),
        (
            "t.yaml:31:45: error: 'now' cannot be used in 'upcast': replaying events must give the same data every "
            "time; put the time in the event data instead [/events/deposited/upcast/0/data/at]"
        ),
        (
            "t.yaml:31:55: error: unknown variable 'data' in 'data.owner'; expected one of 'event', 'key', 'type' "
            "[/events/deposited/upcast/0/data/who]"
        ),
    ]


def test_event_fields_are_checked_against_the_step_schema_with_a_hint() -> None:
    text = with_deposited(
        "    upcast:\n"
        "      - version: 1\n"
        "        schema: {type: object, properties: {amount: {type: integer}, cur: {type: string}}}\n"
        "        data: {currency: event.curency}\n"
        "        drop: [cur, amunt]\n"
    )
    assert findings(text) == [
        (
            "t.yaml:32:26: error: event.curency: event 'deposited' at version 1 declares no field 'curency'; "
            "did you mean 'cur'? [/events/deposited/upcast/0/data/currency]"
        ),
        (
            "t.yaml:33:21: error: event 'deposited' at version 1 declares no field 'amunt'; did you mean 'amount'? "
            "[/events/deposited/upcast/0/drop/1]"
        ),
    ]


def test_without_a_step_schema_event_fields_are_not_checked() -> None:
    text = with_deposited("    upcast: [{version: 1, data: {currency: event.anything}}]\n")
    assert findings(text) == []


def test_the_result_must_hold_the_required_fields_of_the_next_version() -> None:
    text = with_deposited(
        "    upcast:\n"
        "      - version: 1\n"
        "        schema: {type: object, properties: {amount: {type: integer}, cur: {type: string}}}\n"
        "        drop: [amount]\n"
    )
    assert findings(text) == [
        (
            "t.yaml:30:9: error: event 'deposited' at version 2 requires field 'amount', but this step drops it; "
            "set it in 'data' [/events/deposited/upcast/0]"
        ),
        (
            "t.yaml:30:9: error: event 'deposited' at version 2 requires field 'currency', but this step neither "
            "sets it nor finds it in version 1's schema; set it in 'data' [/events/deposited/upcast/0]"
        ),
    ]


def test_an_intermediate_step_is_checked_against_the_next_step_schema() -> None:
    text = BASE.replace(
        "    from: none\n",
        "    from: none\n"
        "    version: 3\n"
        "    upcast:\n"
        "      - version: 1\n"
        "        schema: {type: object, properties: {cur: {type: string}}}\n"
        "        data: {code: event.cur}\n"
        "      - version: 2\n"
        "        schema: {type: object, required: [code, region], properties: {code: {}, region: {}}}\n"
        "        data: {currency: event.code}\n"
        "        drop: [code, region]\n",
    )
    assert findings(text) == [
        (
            "t.yaml:22:9: error: event 'opened' at version 2 requires field 'region', but this step neither sets it "
            "nor finds it in version 1's schema; set it in 'data' [/events/opened/upcast/0/data]"
        )
    ]


def test_fields_the_next_version_does_not_allow_and_wrong_constants_are_errors() -> None:
    text = BASE.replace(
        "    from: none\n",
        "    from: none\n"
        "    version: 2\n"
        "    upcast: [{version: 1, data: {currency: 978, region: \"'EU'\", cur: \"'x'\"}, drop: [cur]}]\n",
    )
    assert findings(text) == [
        (
            "t.yaml:19:44: error: 978 does not fit field 'currency' of event 'opened' at version 2: expected a "
            "string, got 978 [/events/opened/upcast/0/data/currency]"
        ),
        (
            "t.yaml:19:49: error: event 'opened' at version 2 allows no field 'region' (additionalProperties: "
            "false); expected one of 'currency' [/events/opened/upcast/0/data/region]"
        ),
        (
            "t.yaml:19:85: warning: field 'cur' is set by this step's 'data' and dropped after it, so it ends up "
            "absent [/events/opened/upcast/0/drop/0]"
        ),
    ]
    constant_cel = text.replace("currency: 978", 'currency: "1 + 2"')
    assert findings(constant_cel)[0] == (
        "t.yaml:19:44: error: 3 does not fit field 'currency' of event 'opened' at version 2: expected a string, "
        "got 3 [/events/opened/upcast/0/data/currency]"
    )


def test_upcast_data_that_is_not_a_mapping_or_expression_is_an_error() -> None:
    text = with_deposited("    upcast: [{version: 1, data: [1, 2]}]\n")
    assert findings(text) == [
        (
            "t.yaml:29:27: error: expected a mapping of field to CEL expression, or one CEL expression giving a map; "
            "got the list [1, 2] [/events/deposited/upcast/0/data]"
        )
    ]


def test_an_invalid_step_schema_is_an_error() -> None:
    text = with_deposited("    upcast: [{version: 1, schema: {type: objet}}]\n")
    assert findings(text) == [
        (
            "t.yaml:29:42: error: not a valid JSON Schema: 'objet' is not one of 'array', 'boolean', 'integer', "
            "'null', 'number', 'object', 'string'; did you mean 'object'? [/events/deposited/upcast/0/schema/type]"
        )
    ]


def test_former_names_must_be_free_and_listed_once() -> None:
    text = BASE.replace("    from: none\n", "    from: none\n    formerly: [created, deposited, opened]\n")
    text = text.replace("    from: open\n", "    from: open\n    formerly: [created]\n")
    assert findings(text) == [
        (
            "t.yaml:18:25: error: 'deposited' is the name of a current event: stored events named 'deposited' are "
            "read as that event, so it cannot also be a former name of 'opened' [/events/opened/formerly/1]"
        ),
        "t.yaml:18:36: error: 'opened' is this event's own name, not a former one [/events/opened/formerly/2]",
        (
            "t.yaml:28:16: error: 'created' is already a former name of event 'opened': stored events of one name "
            "are read as one event [/events/deposited/formerly/0]"
        ),
    ]


def test_a_former_name_must_be_a_valid_name() -> None:
    text = BASE.replace("    from: none\n", "    from: none\n    formerly: [old.name]\n")
    assert findings(text) == [
        "t.yaml:18:16: error: 'old.name' does not match '^[A-Za-z_][A-Za-z0-9_-]*$' [/events/opened/formerly/0]"
    ]


def test_emitting_a_retired_event_is_an_error_at_the_emit() -> None:
    text = BASE.replace("    from: open\n", "    from: open\n    retired: true\n")
    assert findings(text) == [
        (
            "t.yaml:14:20: error: event 'deposited' is retired: the events already stored only replay, and no command "
            "may emit it; emit another event, or remove 'retired: true' [/commands/deposit/emit/0/event]"
        )
    ]


def test_a_retired_event_no_command_emits_is_not_an_unused_event() -> None:
    text = BASE.replace("  deposit:\n    emit: [{event: deposited, data: {amount: 1, currency: \"'EUR'\"}}]\n", "")
    assert findings(text) == ["t.yaml:23:3: warning: event 'deposited' is emitted by no command [/events/deposited]"]
    assert findings(text.replace("    from: open\n", "    from: open\n    retired: true\n")) == []
