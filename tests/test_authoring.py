"""The authoring tools: `esfsm graph`, `esfsm init` and `esfsm explain`.

The commands are invoked directly (the CLI registers them on the `esfsm`
group); each test asserts the exit code and the exact output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import DEFINITIONS, ROOT
from helpers import run_cli as run

from esfsm.authoring import explain, graph, init
from esfsm.authoring.analysis import edges
from esfsm.project import check_paths, load_project
from esfsm.scenarios import run_scenario_files

BANK, ORDER, TICKET = "definitions/bankaccount.yaml", "definitions/order.yaml", "definitions/ticket.yaml"
HAS_DOT = shutil.which("dot") is not None
NEEDS_DOT = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed (apt-get install graphviz)")


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the project root, so the default ./definitions holds the examples."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture
def defs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example definitions (not their scenarios) in tmp_path/definitions, run from tmp_path."""
    shutil.copytree(DEFINITIONS, tmp_path / "definitions", ignore=shutil.ignore_patterns("*.scenarios.yaml"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "definitions"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (graph, "Draw AGGREGATE's state machine."),
        (init, "Start a new aggregate NAME: write NAME.yaml and NAME.scenarios.yaml."),
        (explain, "Explain what COMMAND of AGGREGATE does, in the order it is decided."),
    ],
    ids=["graph", "init", "explain"],
)
def test_each_command_explains_itself_in_its_help(command: click.Command, says: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    assert out.startswith(f"Usage: {command.name} ")
    assert f"\n  {says}\n" in out


# -- esfsm graph -------------------------------------------------------------------

BANKACCOUNT_MERMAID = """\
---
title: bankaccount
---
stateDiagram-v2
    direction LR
    [*] --> none
    none --> open: account_opened (open_account)
    open --> open: funds_deposited (deposit)
    open --> open: funds_withdrawn (withdraw)
    open --> frozen: account_frozen (freeze)
    frozen --> open: account_unfrozen (unfreeze)
    open --> closed: account_closed (close)
    frozen --> closed: account_closed (close)
    closed --> [*]
"""


def test_graph_draws_mermaid_by_default(in_root: Path) -> None:
    assert run(graph, "bankaccount") == (0, BANKACCOUNT_MERMAID, "")


def test_graph_writes_to_a_file_and_takes_the_format_from_its_suffix(in_root: Path, tmp_path: Path) -> None:
    assert run(graph, "bankaccount", BANK, "-o", str(tmp_path / "b.mmd")) == (0, "", "")
    assert (tmp_path / "b.mmd").read_text() == BANKACCOUNT_MERMAID
    assert run(graph, "bankaccount", BANK, "-o", str(tmp_path / "b.dot")) == (0, "", "")
    assert (tmp_path / "b.dot").read_text().startswith('digraph "bankaccount" {\n')


def test_graph_output_dash_is_standard_output_and_an_unknown_suffix_is_refused(in_root: Path, tmp_path: Path) -> None:
    assert run(graph, "bankaccount", BANK, "-o", "-") == (0, BANKACCOUNT_MERMAID, "")
    definition = tmp_path / "order.yaml"
    definition.write_text("aggregate: order\n")
    for args in (["-o", str(definition)], ["-o", str(definition), "-f", "mermaid"], ["-o", str(tmp_path / "x.txt")]):
        code, out, err = run(graph, "bankaccount", BANK, *args)
        assert code == 2 and out == "" and "Invalid value for '--output'" in err, err
    assert definition.read_text() == "aggregate: order\n" and not (tmp_path / "x.txt").exists()


def test_graph_dot_marks_initial_and_final_states_and_labels_every_transition(in_root: Path) -> None:
    code, out, err = run(graph, "bankaccount", BANK, "--format", "dot")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == 'digraph "bankaccount" {' and lines[-1] == "}"
    assert '    "[*]" [shape=point, width=0.15, label=""];' in lines
    assert '    "[*]" -> "none";' in lines
    assert '    "closed" [peripheries=2, tooltip="Closed for good."];' in lines
    assert '    "open" [tooltip="Accepts deposits and withdrawals."];' in lines
    assert [line for line in lines if " -> " in line and "[*]" not in line] == [
        '    "none" -> "open" [label="account_opened (open_account)"];',
        '    "open" -> "open" [label="funds_deposited (deposit)"];',
        '    "open" -> "open" [label="funds_withdrawn (withdraw)"];',
        '    "open" -> "frozen" [label="account_frozen (freeze)"];',
        '    "frozen" -> "open" [label="account_unfrozen (unfreeze)"];',
        '    "open" -> "closed" [label="account_closed (close)"];',
        '    "frozen" -> "closed" [label="account_closed (close)"];',
    ]


def test_a_transition_no_command_can_fire_has_no_command_and_is_dashed(in_root: Path) -> None:
    """comment_added may occur in any non-final state, but `comment` narrows itself with `in`."""
    _, out, _ = run(graph, "ticket", TICKET, "-f", "dot")
    assert '    "none" -> "none" [label="comment_added", style=dashed];' in out.splitlines()
    assert '    "open" -> "open" [label="comment_added (comment)"];' in out.splitlines()
    _, out, _ = run(graph, "ticket", TICKET)
    assert "    resolved --> resolved: comment_added\n" in out


def test_graph_edges_name_only_the_commands_that_reach_them() -> None:
    order = load_project([DEFINITIONS / "order.yaml"]).aggregates["order"]
    labels = [(e.source, e.dest, e.label) for e in edges(order) if e.event in ("order_refunded", "order_cancelled")]
    assert labels == [
        ("placed", "placed", "order_refunded (cancel)"),
        ("open", "cancelled", "order_cancelled (cancel)"),
        ("placed", "cancelled", "order_cancelled (cancel)"),
        ("shipped", "cancelled", "order_cancelled (cancel)"),
    ]


def test_mermaid_renames_states_it_cannot_parse_and_keeps_lone_states(tmp_path: Path) -> None:
    (tmp_path / "lab.yaml").write_text("""\
aggregate: gate
initial: end
states: {end: {}, half-open: {}, limbo: {}, gone: {final: true}}
commands:
  swing: {emit: [{event: swung}]}
  drop: {emit: [{event: dropped}]}
events:
  swung: {from: end, to: half-open}
  dropped: {from: half-open, to: gone}
""")
    code, out, err = run(graph, "gate", str(tmp_path))
    assert (code, err) == (0, "")
    assert (
        out
        == """\
---
title: gate
---
stateDiagram-v2
    direction LR
    state "end" as s0_end
    state "half-open" as s1_half_open
    limbo
    [*] --> s0_end
    s0_end --> s1_half_open: swung (swing)
    s1_half_open --> gone: dropped (drop)
    gone --> [*]
"""
    )


@NEEDS_DOT
def test_graph_renders_svg_and_png_with_graphviz(in_root: Path, tmp_path: Path) -> None:
    code, out, err = run(graph, "order", ORDER, "--format", "svg")
    assert (code, err) == (0, "")
    assert "<svg" in out and "order_cancelled (cancel)" in out
    assert run(graph, "order", ORDER, "-o", str(tmp_path / "order.png")) == (0, "", "")
    assert (tmp_path / "order.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(graph, ["order", ORDER, "-f", "png"])
    assert result.exit_code == 0 and result.stdout_bytes.startswith(b"\x89PNG")


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_graph_says_how_to_get_graphviz_when_dot_is_missing(
    in_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `dot` on PATH
    assert run(graph, "bankaccount", BANK, "--format", fmt, "-o", str(tmp_path / f"b.{fmt}")) == (
        1,
        "",
        (
            f"Error: --format {fmt} needs Graphviz's 'dot' program: install it (e.g. apt-get install graphviz, "
            "brew install graphviz) or use --format mermaid\n"
        ),
    )
    assert not (tmp_path / f"b.{fmt}").exists()


def test_graph_of_an_unknown_aggregate_suggests_the_closest(in_root: Path) -> None:
    assert run(graph, "bankacount", BANK, ORDER, TICKET) == (
        1,
        "",
        "Error: unknown aggregate 'bankacount'; did you mean 'bankaccount'?\n",
    )
    assert run(graph, "zzz", BANK, ORDER, TICKET) == (
        1,
        "",
        "Error: unknown aggregate 'zzz'; expected one of 'bankaccount', 'order', 'ticket'\n",
    )


def test_graph_refuses_an_aggregate_whose_definition_has_errors(defs: Path) -> None:
    path = defs / "bankaccount.yaml"
    path.write_text(
        path.read_text().replace("account_frozen: {from: open, to: frozen}", "account_frozen: {from: open, to: frozn}")
    )
    code, out, err = run(graph, "bankaccount")
    assert (code, out) == (1, "")
    assert err == (
        "definitions/bankaccount.yaml:79:36: error: 'frozn' is not a declared state; did you mean 'frozen'? "
        "[/events/account_frozen/to]\n"
        "Error: aggregate 'bankaccount' in definitions/bankaccount.yaml has errors; fix them first "
        "(see above, or run `esfsm validate`)\n"
    )


def test_graph_still_draws_an_aggregate_when_another_file_has_errors(defs: Path) -> None:
    (defs / "broken.yaml").write_text("aggregate: broken\ninitial: none\nstates: {none: {}}\ncommands: {}\n")
    code, out, err = run(graph, "bankaccount")
    assert (code, out) == (0, BANKACCOUNT_MERMAID)
    assert err == "note: other definitions have 2 error(s); `esfsm validate` shows them\n"
    code, out, err = run(graph, "broken")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "definitions/broken.yaml:1:1: error: missing required key 'events'",
        "definitions/broken.yaml:4:1: error: expected at least 1 entry, got none [/commands]",
        (
            "Error: aggregate 'broken' in definitions/broken.yaml has errors; fix them first (see above, "
            "or run `esfsm validate`)"
        ),
    ]


def test_graph_without_definitions_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(graph, "bankaccount")
    assert code == 2
    assert err.endswith("Error: path 'definitions' does not exist (give the definition files or folders)\n")
    (tmp_path / "definitions").mkdir()
    assert run(graph, "bankaccount") == (1, "", "Error: no definitions under definitions\n")


# -- esfsm init --------------------------------------------------------------------


def test_init_writes_a_definition_that_validates_and_scenarios_that_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(init, "shop") == (
        0,
        (
            "created definitions/shop.yaml\n"
            "created definitions/shop.scenarios.yaml\n"
            "next: edit them, then run `esfsm validate definitions` and `esfsm test definitions`\n"
        ),
        "",
    )
    project = check_paths([tmp_path / "definitions"])
    assert project.findings == []
    assert sorted(project.aggregates) == ["shop"]
    report = run_scenario_files(project)
    assert (report.passed, report.failed) == (6, 0), "\n".join(report.lines())


def test_init_beside_the_examples_clashes_with_none_of_them(defs: Path) -> None:
    assert run(init, "shop_order", "--dir", str(defs))[0] == 0
    project = check_paths([defs])
    assert project.findings == []
    assert sorted(project.aggregates) == ["bankaccount", "order", "shop_order", "ticket"]
    report = run_scenario_files(project)
    assert (report.passed, report.failed) == (6, 0), "\n".join(report.lines())


def test_init_points_editors_at_the_schemas_of_the_project(defs: Path) -> None:
    (defs.parent / "schemas").mkdir()
    (defs.parent / "schemas" / "aggregate.schema.json").write_text("{}")
    assert run(init, "shop")[0] == 0
    first = (defs / "shop.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/aggregate.schema.json"
    first = (defs / "shop.scenarios.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/scenarios.schema.json"


def test_init_never_overwrites_a_file(defs: Path) -> None:
    (defs / "shop.scenarios.yaml").write_text("# mine\n")
    assert run(init, "shop") == (
        1,
        "",
        (
            "Error: definitions/shop.scenarios.yaml already exists; not overwriting it "
            "(choose another name, or move the file away)\n"
        ),
    )
    assert not (defs / "shop.yaml").exists()
    assert (defs / "shop.scenarios.yaml").read_text() == "# mine\n"


def test_init_refuses_a_name_whose_nats_names_clash_with_an_existing_aggregate(defs: Path) -> None:
    """bankaccount.yaml sets its NATS names to bank.*: an aggregate 'bank' would take the same by default."""
    code, out, err = run(init, "bank")
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith("definitions/bank.yaml:4:12: error: commands subject 'bank.cmds'")
    assert "stream 'BANK_EVENTS'" in err
    assert err.endswith(
        "Error: aggregate 'bank' would clash with the definitions in definitions (see above); choose another name\n"
    )
    assert not (defs / "bank.yaml").exists() and not (defs / "bank.scenarios.yaml").exists()


@pytest.mark.parametrize("name", ["Shop", "1shop", "shop-order", "shop.order", "_shop", "a" * 65, "true", "null"])
def test_init_rejects_a_name_that_is_not_an_aggregate_name(tmp_path: Path, name: str) -> None:
    code, out, err = run(init, name, "--dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert f"Error: Invalid value for 'NAME': {name!r} is not a valid aggregate name" in err
    assert list(tmp_path.iterdir()) == []


# -- esfsm explain -----------------------------------------------------------------

WITHDRAW = """\
Command withdraw of aggregate bankaccount (definitions/bankaccount.yaml)

Accepted in: open (else 409)

Authorize (every command of the aggregate, checked first):
  'x-username' in meta && meta['x-username'] != 'unauthorized'
    else 403: unauthorized user

Payload (else 400):
  amount  integer, required, minimum 1, maximum 1000000000000
  no other field allowed

Rules, in order:
  cmd.amount <= data.balance
    else 422: insufficient funds [/amount]

Emits, in order:
  funds_withdrawn
    data: {amount: cmd.amount}
    open → open

Leads to:
  open --funds_withdrawn--> open
"""

CANCEL = """\
Command cancel of aggregate order (definitions/order.yaml)
  Cancel the order; a paid order is refunded first. The machine allows cancelling until
  delivery (a shipment lost in transit is cancelled by the back office), but the
  customer's cancel command is refused once the order has shipped.

Accepted in: open, placed, shipped (else 409)

Payload (else 400):
  reason  string, optional
  no other field allowed

Rules, in order:
  state != 'shipped'
    else 422: cannot cancel after shipped

Emits, in order:
  order_refunded, if data.paid
    data: {amount: data.total}
    placed → placed
  order_cancelled
    data: has(cmd.reason) ? {'reason': cmd.reason} : {}
    open → cancelled, placed → cancelled, shipped → cancelled

Leads to:
  open --order_cancelled--> cancelled (final)
  placed --order_refunded--> placed --order_cancelled--> cancelled (final)
  placed --order_cancelled--> cancelled (final)
  shipped --order_cancelled--> cancelled (final)
"""


def test_explain_withdraw(in_root: Path) -> None:
    assert run(explain, "bankaccount", "withdraw", BANK) == (0, WITHDRAW, "")


def test_explain_a_command_with_a_conditional_emit(in_root: Path) -> None:
    assert run(explain, "order", "cancel", ORDER) == (0, CANCEL, "")


def test_explain_shows_how_in_narrows_the_states(in_root: Path) -> None:
    _, out, _ = run(explain, "ticket", "comment", TICKET)
    assert out.splitlines()[4:7] == [
        "Accepted in: open, in_progress, waiting (else 409)",
        "  'in' lists: open, in_progress, waiting",
        "  without 'in', its events would also allow: none, resolved",
    ]
    assert "  customer_replied, if state == 'waiting' && meta['x-username'] == data.opened_by\n" in out
    assert "  waiting --comment_added--> waiting --customer_replied--> in_progress\n" in out


def test_explain_says_when_every_emit_may_be_skipped(in_root: Path) -> None:
    _, out, _ = run(explain, "order", "add_item", ORDER)
    assert out.endswith(
        "Leads to:\n"
        "  open --item_added--> open --item_quantity_increased--> open\n"
        "  open --item_added--> open\n"
        "  open --item_quantity_increased--> open\n"
        "  open: no event, when no condition holds\n"
    )


def test_explain_as_json(in_root: Path) -> None:
    code, out, err = run(explain, "order", "cancel", ORDER, "--format", "json")
    assert (code, err) == (0, "")
    facts = json.loads(out)
    assert facts["accepted_in"] == ["open", "placed", "shipped"]
    assert facts["in"] is None
    assert facts["rules"] == [
        {"rule": "state != 'shipped'", "message": "cannot cancel after shipped", "code": 422, "path": ""}
    ]
    assert facts["payload"]["fields"] == [
        {"name": "reason", "type": "string", "required": False, "constraints": {}, "description": ""}
    ]
    assert facts["payload"]["additional"] is False
    assert [(e["event"], e["if"], e["transitions"]) for e in facts["emits"]] == [
        ("order_refunded", "data.paid", [{"from": "placed", "to": "placed"}]),
        (
            "order_cancelled",
            None,
            [
                {"from": "open", "to": "cancelled"},
                {"from": "placed", "to": "cancelled"},
                {"from": "shipped", "to": "cancelled"},
            ],
        ),
    ]
    assert facts["paths"][1] == {
        "from": "placed",
        "to": "cancelled",
        "final": True,
        "steps": [
            {"event": "order_refunded", "from": "placed", "to": "placed"},
            {"event": "order_cancelled", "from": "placed", "to": "cancelled"},
        ],
    }


def test_explain_summarises_enums_and_optional_fields(in_root: Path) -> None:
    _, out, _ = run(explain, "ticket", "open", TICKET)
    assert (
        "Payload (else 400):\n"
        "  title     string, required, minLength 1, maxLength 200\n"
        "  priority  one of 'low', 'normal', 'high', 'urgent', optional\n"
        "  no other field allowed\n"
    ) in out
    _, out, _ = run(explain, "bankaccount", "close", BANK)
    assert "Payload (else 400):\n  any object\n" in out


def test_explain_an_unknown_command_suggests_the_closest(in_root: Path) -> None:
    assert run(explain, "bankaccount", "withdrw", BANK) == (
        1,
        "",
        "Error: unknown command 'withdrw' for aggregate 'bankaccount'; did you mean 'withdraw'?\n",
    )
    assert run(explain, "order", "zzz", ORDER) == (
        1,
        "",
        (
            "Error: unknown command 'zzz' for aggregate 'order'; expected one of 'add_item', 'cancel', "
            "'create', 'deliver', 'pay', 'place', 'remove_item', 'ship'\n"
        ),
    )


def _journal(folder: Path, notes: int) -> Path:
    """An aggregate whose one command may close the journal, then may add any of `notes` notes
    (a note is valid only while open): every conditional emit doubles its paths."""
    emits = "".join(f"      - {{event: noted, if: cmd.n{i}}}\n" for i in range(notes))
    (folder / "journal.yaml").write_text(f"""\
aggregate: journal
initial: open
states: {{open: {{}}, closed: {{final: true}}}}
commands:
  write:
    emit:
      - {{event: closed, if: cmd.close}}
{emits}events:
  noted: {{from: open}}
  closed: {{from: open, to: closed}}
""")
    return folder


def test_explain_says_how_many_paths_it_does_not_show(tmp_path: Path) -> None:
    # Closing leaves no note valid (1 path); not closing allows any subset of 6 notes (64).
    folder = _journal(tmp_path, 6)
    code, out, err = run(explain, "journal", "write", str(folder))
    assert (code, err) == (0, "")
    leads = out.split("Leads to:\n")[1].splitlines()
    assert len(leads) == 33
    assert leads[0] == "  open --closed--> closed (final)"
    assert leads[-1] == "  … and 33 more paths not shown"
    facts = json.loads(run(explain, "journal", "write", str(folder), "--format", "json")[1])
    assert (len(facts["paths"]), facts["paths_not_shown"]) == (32, 33)
    assert facts["emits"][1]["transitions"] == [{"from": "open", "to": "open"}]


def test_explain_shows_every_path_when_they_are_few(in_root: Path) -> None:
    facts = json.loads(run(explain, "order", "add_item", ORDER, "--format", "json")[1])
    assert (len(facts["paths"]), facts["paths_not_shown"]) == (4, 0)


def test_graph_follows_every_choice_of_many_conditional_emits(tmp_path: Path) -> None:
    """Past 12 conditional emits, only "every emit taken" used to be followed: closing
    and then noting is no path, so `write` lost its `closed` edge."""
    code, out, err = run(graph, "journal", str(_journal(tmp_path, 13)))
    assert (code, err) == (0, "")
    assert "    open --> open: noted (write)\n    open --> closed: closed (write)\n" in out


# -- AGGREGATE as a definition file or folder ------------------------------------------


def test_graph_takes_a_definition_file_where_the_aggregate_is_named(in_root: Path) -> None:
    assert run(graph, BANK) == (0, BANKACCOUNT_MERMAID, "")
    assert run(graph, f"./{BANK}", "--format", "dot") == run(graph, "bankaccount", "--format", "dot")


def test_graph_takes_a_folder_that_defines_one_aggregate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bank").mkdir()
    shutil.copy(DEFINITIONS / "bankaccount.yaml", tmp_path / "bank" / "bankaccount.yaml")
    monkeypatch.chdir(tmp_path)  # no ./definitions here: the folder is all there is to read
    assert run(graph, "bank/") == (0, BANKACCOUNT_MERMAID, "")
    assert run(graph, "bank") == (0, BANKACCOUNT_MERMAID, "")  # a folder, since no aggregate is called bank


def test_a_folder_of_several_aggregates_asks_for_a_name(in_root: Path) -> None:
    assert run(graph, "definitions/") == (
        1,
        "",
        (
            "Error: definitions/ defines 3 aggregates ('bankaccount', 'order', 'ticket'): give the name of one, "
            "and definitions/ as PATHS\n"
        ),
    )
    assert run(graph, "definitions")[2] == (
        "Error: definitions defines 3 aggregates ('bankaccount', 'order', 'ticket'): give the name of one, "
        "and definitions as PATHS\n"
    )


def test_a_bare_word_names_the_aggregate_even_when_a_folder_has_that_name(defs: Path) -> None:
    (defs.parent / "order").mkdir()
    (defs.parent / "order" / "notes.yaml").write_text("aggregate: elsewhere\n")
    assert run(graph, "order")[:2] == run(graph, "order", str(defs))[:2]
    assert run(graph, "order")[1].startswith("---\ntitle: order\n")


def test_a_file_that_defines_no_aggregate_says_so(in_root: Path, tmp_path: Path) -> None:
    assert run(graph, "definitions/bankaccount.scenarios.yaml") == (
        1,
        "",
        (
            "Error: definitions/bankaccount.scenarios.yaml defines no aggregate (give an aggregate's name or its "
            "definition file)\n"
        ),
    )
    (tmp_path / "broken.yaml").write_text("aggregate: [\n")
    code, out, err = run(graph, str(tmp_path / "broken.yaml"))
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == f"Error: no aggregate could be read from {tmp_path / 'broken.yaml'} (see above)"
    assert "broken.yaml:1:13: error: invalid YAML: " in err.splitlines()[0]


def test_graph_of_a_definition_file_with_errors_shows_them(defs: Path) -> None:
    path = defs / "bankaccount.yaml"
    path.write_text(
        path.read_text().replace("account_frozen: {from: open, to: frozen}", "account_frozen: {from: open, to: frozn}")
    )
    code, out, err = run(graph, "definitions/bankaccount.yaml")
    assert (code, out) == (1, "")
    assert err.endswith(
        "Error: aggregate 'bankaccount' in definitions/bankaccount.yaml has errors; fix them first "
        "(see above, or run `esfsm validate`)\n"
    )


def test_explain_takes_a_definition_file_where_the_aggregate_is_named(in_root: Path) -> None:
    assert run(explain, BANK, "withdraw") == (0, WITHDRAW, "")
    assert run(explain, ORDER, "zzz")[2].startswith("Error: unknown command 'zzz' for aggregate 'order'; ")
