"""`esfsm docs`: a Markdown page and an AsyncAPI 3.0 document per aggregate, and an index.

The AsyncAPI documents are validated against the official AsyncAPI 3.0.0 JSON
Schema from the npm package @asyncapi/specs, fetched once with `npm pack` and
cached under pytest's cache directory (not copied into the repository).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from esfsm.authoring.diagram import mermaid
from esfsm.cli import main
from esfsm.docgen import docs, render_docs, write_docs
from esfsm.engine import MemoryEngine
from esfsm.project import Project, load_project

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "generated"
SPECS_PACKAGE = "@asyncapi/specs@6.11.1"
SPECS_MEMBER = "package/schemas/3.0.0.json"
ASYNCAPI_ID = "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
STALE = "docs/generated is stale: run `esfsm docs definitions/ -o docs/generated`"

# What the examples do not show: a hyphenated state and one named like a Mermaid
# keyword, a local $ref into $defs, pipes in a rule and a description.
EDGE = """\
aggregate: edge
initial: draft
states:
  draft: {}
  in-review: {description: "Reviewed | pending"}
  state: {final: true}
commands:
  submit:
    schema:
      type: object
      required: [item]
      properties:
        item: {$ref: "#/$defs/item"}
        level: {type: [integer, "null"], maximum: 10}
      $defs:
        item: {type: object, required: [sku], properties: {sku: {type: string}}}
    rules:
      - rule: "!has(cmd.level) || cmd.level == null || cmd.level > 1"
        message: level too low
    emit:
      - event: submitted
        data: {sku: cmd.item.sku}
  finish:
    emit: [{event: done}]
events:
  submitted:
    schema: {type: object, properties: {sku: {type: string}}}
    from: draft
    to: in-review
  done: {from: in-review, to: state}
"""


# -- fixtures ------------------------------------------------------------------


def _cache_dir(config: pytest.Config) -> Path:
    name = "esfsm-asyncapi-specs-" + SPECS_PACKAGE.rsplit("@", 1)[1]
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "esfsm-test" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fetch_asyncapi_schema(cache: Path) -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON Schema: from the cache, or `npm pack` once."""
    cached = cache / "3.0.0.json"
    if not cached.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                f"cannot fetch the AsyncAPI 3.0 JSON Schema: npm is not on PATH (needed for `npm pack "
                f"{SPECS_PACKAGE}`)",
                pytrace=False,
            )
        with tempfile.TemporaryDirectory() as tmp:
            try:
                done = subprocess.run(
                    [npm, "pack", SPECS_PACKAGE, "--json", "--pack-destination", tmp],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    cwd=tmp,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"cannot fetch the AsyncAPI 3.0 JSON Schema: `npm pack {SPECS_PACKAGE}` timed out", pytrace=False
                )
            if done.returncode != 0:
                pytest.fail(
                    f"cannot fetch the AsyncAPI 3.0 JSON Schema: `npm pack {SPECS_PACKAGE}` exited "
                    f"{done.returncode}:\n{done.stderr.strip()[-2000:]}",
                    pytrace=False,
                )
            tarball = Path(tmp) / json.loads(done.stdout)[0]["filename"]
            with tarfile.open(tarball) as tar:
                member = tar.extractfile(SPECS_MEMBER)
                assert member is not None, f"{SPECS_MEMBER} is missing from {tarball.name}"
                raw = member.read()
        partial = cached.with_suffix(".partial")
        partial.write_bytes(raw)
        partial.replace(cached)
    schema: dict[str, Any] = json.loads(cached.read_text(encoding="utf-8"))
    assert schema.get("$id") == ASYNCAPI_ID, f"{cached} is not the AsyncAPI 3.0.0 schema; delete it and rerun"
    return schema


@pytest.fixture(scope="session")
def asyncapi_validator(request: pytest.FixtureRequest) -> Draft7Validator:
    """A validator for the official AsyncAPI 3.0.0 JSON Schema (draft 07, every definition
    bundled under its own $id, which the registry resolves)."""
    schema = _fetch_asyncapi_schema(_cache_dir(request.config))
    registry: Registry[Any] = (Resource.from_contents(schema, default_specification=DRAFT7) @ Registry()).crawl()
    return Draft7Validator(schema, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def rendered(project: Project) -> Iterator[dict[str, str]]:
    """The files for the examples and the test aggregate, generated from the repository root."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        yield render_docs(project.aggregates.values())


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("edge")
    (folder / "edge.yaml").write_text(EDGE, encoding="utf-8")
    return load_project([folder])


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # reading only: the output is written in pure Python


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _asyncapi(files: dict[str, str], name: str) -> dict[str, Any]:
    document: dict[str, Any] = _load(files[f"{name}.asyncapi.yaml"])
    return document


def _errors(validator: Draft7Validator, document: Any) -> list[str]:
    errors = list(validator.iter_errors(document))
    if not errors:
        return []
    best = best_match(errors)
    return [f"{len(errors)} error(s); best match at {best.json_path}: {best.message[:500]}"]


def _resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), f"not a local reference: {ref!r}"
    node = document
    for escaped in ref[2:].split("/"):
        part = escaped.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref!r} does not resolve (no {part!r})"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _schema_validator(document: dict[str, Any], component: str) -> Draft7Validator:
    """A validator for one schema of a generated document, its $refs resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(document, default_specification=DRAFT7)
    )
    return Draft7Validator(
        {"$ref": f"urn:doc#/components/schemas/{component}"},
        registry=registry,
        format_checker=Draft7Validator.FORMAT_CHECKER,
    )


# -- AsyncAPI --------------------------------------------------------------------


def test_every_asyncapi_document_is_valid_against_the_official_asyncapi_3_schema(
    rendered: dict[str, str],
    edge: Project,
    asyncapi_validator: Draft7Validator,
) -> None:
    documents = {n: text for n, text in rendered.items() if n.endswith(".asyncapi.yaml")}
    documents.update({n: t for n, t in render_docs(edge.aggregates.values()).items() if n.endswith(".asyncapi.yaml")})
    assert {
        "bankaccount.asyncapi.yaml",
        "order.asyncapi.yaml",
        "ticket.asyncapi.yaml",
        "lab.asyncapi.yaml",
        "edge.asyncapi.yaml",
    } <= set(documents)
    problems = {name: _errors(asyncapi_validator, _load(text)) for name, text in documents.items()}
    assert not {n: p for n, p in problems.items() if p}


def test_the_official_schema_rejects_a_broken_document(
    rendered: dict[str, str],
    asyncapi_validator: Draft7Validator,
) -> None:
    """The validation is not vacuous: AsyncAPI 2's `publish`, an unknown channel key and
    a payload schema with a bad type are each caught."""
    for breaks in (
        lambda d: d["operations"]["command.deposit"].update(action="publish"),
        lambda d: d["channels"]["command.deposit"].update(topic="bank.cmds.deposit"),
        lambda d: d["components"]["schemas"]["command.deposit.payload"]["properties"]["amount"].update(type=5),
    ):
        document = _asyncapi(rendered, "bankaccount")
        breaks(document)
        assert _errors(asyncapi_validator, document)


def test_references_resolve_and_operations_use_their_own_channels_messages(
    rendered: dict[str, str],
    edge: Project,
) -> None:
    """What the JSON Schema cannot check and an AsyncAPI parser does."""
    files = {**rendered, **render_docs(edge.aggregates.values())}
    for name in [n.removesuffix(".asyncapi.yaml") for n in files if n.endswith(".asyncapi.yaml")]:
        document = _asyncapi(files, name)
        for ref in _refs(document):
            _resolve(document, ref)
        for op_id, operation in document["operations"].items():
            channel = operation["channel"]["$ref"]
            for message in operation["messages"]:
                assert message["$ref"].startswith(channel + "/messages/"), (name, op_id)
            if "reply" in operation:
                reply = operation["reply"]["channel"]["$ref"]
                assert [m["$ref"] for m in operation["reply"]["messages"]] == [
                    f"{reply}/messages/accepted",
                    f"{reply}/messages/rejected",
                ]
        for channel in document["channels"].values():
            placeholders = set(re.findall(r"\{([^}]+)\}", channel["address"] or ""))
            assert placeholders == set(channel.get("parameters", {})), channel["address"]


def test_commands_are_request_reply_operations_with_the_entity_key_headers(rendered: dict[str, str]) -> None:
    document = _asyncapi(rendered, "bankaccount")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "aggregate-bankaccount"
    assert document["channels"]["command.withdraw"]["address"] == "bank.cmds.withdraw"
    operation = document["operations"]["command.withdraw"]
    assert operation["action"] == "receive"
    assert operation["bindings"] == {"nats": {"queue": "bankaccount", "bindingVersion": "0.1.0"}}
    assert operation["x-esfsm-accepted-in"] == ["open"]
    request = _resolve(document, document["channels"]["command.withdraw"]["messages"]["request"]["$ref"])
    headers = _resolve(document, request["headers"]["$ref"])
    assert headers["required"] == ["x-ergonats-entity-key"]
    assert {"x-esfsm-command-id", "x-esfsm-expected-version"} <= set(headers["properties"])
    payload = _resolve(document, request["payload"]["$ref"])
    assert payload == {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "integer", "minimum": 1, "maximum": 1000000000000}},
        "additionalProperties": False,
    }
    rejected = _resolve(document, "#/components/messages/rejected")
    assert _resolve(document, rejected["headers"]["$ref"])["required"] == [
        "Nats-Service-Error",
        "Nats-Service-Error-Code",
    ]
    assert _resolve(document, rejected["payload"]["$ref"])["required"] == ["accepted", "message", "code", "errors"]


def test_events_are_cloudevents_on_the_entity_subjects(rendered: dict[str, str]) -> None:
    document = _asyncapi(rendered, "order")
    channel = document["channels"]["event.order_cancelled"]
    assert channel["address"] == "order.events.{key}.order_cancelled"
    assert document["operations"]["event.order_cancelled"]["action"] == "send"
    message = _resolve(document, channel["messages"]["event"]["$ref"])
    assert message["contentType"] == "application/cloudevents+json"
    envelope = _resolve(document, message["payload"]["$ref"])
    assert envelope["required"] == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "entitykey",
        "aggversion",
        "data",
    ]
    assert "commandid" in envelope["properties"]
    assert envelope["properties"]["type"] == {"const": "order_cancelled"}
    assert _resolve(document, envelope["properties"]["data"]["$ref"]) == {
        "type": "object",
        "properties": {"reason": {"type": "string"}},
    }


def test_real_replies_and_events_match_the_documented_schemas(project: Project, rendered: dict[str, str]) -> None:
    document = _asyncapi(rendered, "bankaccount")
    engine = MemoryEngine(project.aggregates.values())
    accepted = engine.handle(
        "bankaccount",
        "open_account",
        "acc-1",
        {"owner": "ann", "initial_balance": 150},
        {"x-username": "ann", "x-esfsm-command-id": "c-1"},
    ).as_dict()
    rejected = engine.handle("bankaccount", "withdraw", "acc-1", {"amount": 500}, {"x-username": "ann"}).as_dict()
    assert accepted["accepted"] and not rejected["accepted"]
    for reply, schema in ((accepted, "command.open_account.accepted"), (rejected, "rejection")):
        assert not list(_schema_validator(document, schema).iter_errors(reply)), reply
    assert list(_schema_validator(document, "command.withdraw.accepted").iter_errors(accepted)), (
        "an open_account reply must not pass as a withdraw reply (state and event type differ)"
    )


def test_local_refs_of_a_definition_schema_point_into_its_component(edge: Project) -> None:
    document = _asyncapi(render_docs(edge.aggregates.values()), "edge")
    payload = document["components"]["schemas"]["command.submit.payload"]
    assert payload["properties"]["item"] == {"$ref": "#/components/schemas/command.submit.payload/$defs/item"}
    assert _resolve(document, payload["properties"]["item"]["$ref"])["required"] == ["sku"]


# -- Markdown --------------------------------------------------------------------


def test_a_page_shows_the_machine_states_nats_names_commands_and_events(
    project: Project,
    rendered: dict[str, str],
) -> None:
    page = rendered["bankaccount.md"]
    assert page.startswith("<!-- Generated by `esfsm docs` from definitions/bankaccount.yaml")
    assert "An account that is opened, credited, debited, frozen and closed." in page
    diagram = page.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert diagram == mermaid(project.aggregates["bankaccount"]), "the diagram is `esfsm graph`'s"
    assert "stateDiagram-v2" in diagram and "    [*] --> none" in diagram and "    closed --> [*]" in diagram
    assert "    none --> open: account_opened (open_account)" in diagram
    assert "| `none` | initial | Not opened yet. | [`open_account`](#command-open_account) |" in page
    assert "| `closed` | final | Closed for good. | — |" in page
    for line in (
        "| micro service | `aggregate-bankaccount`, queue group `bankaccount` |",
        "| stream | `BANK_EVENTS`, subjects `bank.events.>` |",
        "| KV bucket | `AGG_bankaccount`, key = entity key |",
        "| durable consumer | `AGG_bankaccount` |",
    ):
        assert line in page
    section = page.split("### Command `withdraw`", 1)[1].split("### Command", 1)[0]
    assert "- Subject: `bank.cmds.withdraw`" in section
    assert "- Accepted in: `open`" in section
    assert "| `amount` | integer | yes | ≥ 1; ≤ 1000000000000 |  |" in section
    assert "<details><summary>JSON Schema</summary>" in section
    assert (
        "| authorize | `'x-username' in meta && meta['x-username'] != 'unauthorized'` | unauthorized user "
        '| 403 | `""` |'
    ) in section
    assert "| rule | `cmd.amount <= data.balance` | insufficient funds | 422 | `/amount` |" in section
    assert "| 1 | [`funds_withdrawn`](#event-funds_withdrawn) | always | `amount`: `cmd.amount` |" in section
    event = page.split("### Event `account_closed`", 1)[1]
    assert "- Transitions: `open` → `closed`, `frozen` → `closed`" in event
    assert "- Subject: `bank.events.<key>.account_closed`" in event


def test_conditional_emits_show_their_condition_and_rule_codes_show(rendered: dict[str, str]) -> None:
    order = rendered["order.md"]
    assert ("| 1 | [`order_refunded`](#event-order_refunded) | `data.paid` | `amount`: `data.total` |") in order
    assert "- Accepted in: `open` (narrowed by `in`: `open`)" in order
    assert "One expression giving the map merged into the data:" in order
    ticket = rendered["ticket.md"]
    assert (
        "| rule | `'x-role' in meta && meta['x-role'] == 'agent'` | only agents may assign tickets | 403 | `\"\"` |"
        in ticket
    )
    assert (
        "| rule | `!has(data.assignee) \\|\\| data.assignee != cmd.assignee` | the ticket is already assigned "
        "to this agent | 409 | `/assignee` |"
    ) in ticket


def test_awkward_names_and_pipes_stay_valid_markdown_and_mermaid(edge: Project) -> None:
    page = render_docs(edge.aggregates.values())["edge.md"]
    assert 'state "in-review" as ' in page and 'state "state" as ' in page  # aliased, not bare ids
    assert "| `in-review` |  | Reviewed \\| pending |" in page
    assert "`!has(cmd.level) \\|\\| cmd.level == null \\|\\| cmd.level > 1`" in page
    assert "| `level` | integer or null |  | ≤ 10 |  |" in page


def test_the_index_links_every_page_and_document(rendered: dict[str, str]) -> None:
    index = rendered["index.md"]
    for name in ("bankaccount", "order", "ticket", "lab"):
        assert f"[{name}]({name}.md)" in index
        assert f"[{name}.asyncapi.yaml]({name}.asyncapi.yaml)" in index
    for target in re.findall(r"\]\(([^)#]+)\)", index):
        assert target in rendered


# -- the command, determinism, staleness -------------------------------------------


def test_the_output_does_not_depend_on_the_order_of_the_aggregates(
    project: Project,
    rendered: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    aggregates = list(project.aggregates.values())
    random.Random(7).shuffle(aggregates)
    assert render_docs(aggregates) == rendered


def test_docs_refuses_invalid_definitions_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "defs"
    bad.mkdir()
    (bad / "bad.yaml").write_text(
        "aggregate: bad\ninitial: nowhere\nstates: {a: {}}\n"
        "commands: {go: {emit: [{event: went}]}}\nevents: {went: {from: a}}\n"
    )
    result = CliRunner().invoke(docs, [str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "'nowhere' is not a declared state" in result.output
    assert "Error: the definitions have errors; fix them before generating docs" in result.output
    assert not (tmp_path / "out").exists()


def test_a_rerun_removes_the_pages_of_aggregates_that_are_gone_and_nothing_else(
    tmp_path: Path,
    edge: Project,
) -> None:
    (tmp_path / "old.md").write_text("<!-- Generated by `esfsm docs` from x.yaml -->\n# old\n")
    (tmp_path / "old.asyncapi.yaml").write_text("# Generated by `esfsm docs` from x.yaml\nasyncapi: 3.0.0\n")
    (tmp_path / "notes.md").write_text("# my notes\n")
    written, removed = write_docs(render_docs(edge.aggregates.values()), tmp_path)
    assert sorted(p.name for p in written) == ["edge.asyncapi.yaml", "edge.md", "index.md"]
    assert sorted(p.name for p in removed) == ["old.asyncapi.yaml", "old.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.asyncapi.yaml", "edge.md", "index.md", "notes.md"]


def test_docs_generated_is_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(docs, ["definitions/", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in COMMITTED.iterdir()} if COMMITTED.is_dir() else {}
    differ = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not differ, f"{STALE} ({', '.join(differ)} differ)"


def test_docs_never_overwrites_a_file_it_did_not_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.md").write_text("# my own index\n")
    result = CliRunner().invoke(docs, ["definitions/", "-o", str(out)])
    assert result.exit_code == 1
    assert f"{out / 'index.md'} was not generated by `esfsm docs`; not overwriting" in result.output
    assert (out / "index.md").read_text() == "# my own index\n" and sorted(out.iterdir()) == [out / "index.md"]
    (out / "index.md").unlink()
    assert CliRunner().invoke(docs, ["definitions/", "-o", str(out)]).exit_code == 0
    assert CliRunner().invoke(docs, ["definitions/", "-o", str(out)]).exit_code == 0  # its own files: rewritten


def test_generated_asyncapi_documents_are_never_read_as_definitions(tmp_path: Path) -> None:
    """`esfsm docs` then `esfsm validate .` on a project root, or docs written beside the
    definitions: the *.asyncapi.yaml files it wrote are left out of the definitions."""
    defs = tmp_path / "defs"
    shutil.copytree(ROOT / "definitions", defs)
    for output in (defs, defs / "generated"):
        assert CliRunner().invoke(docs, [str(defs), "-o", str(output)]).exit_code == 0
    assert len(list(defs.rglob("*.asyncapi.yaml"))) == 6
    validated = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert (validated.exit_code, validated.output) == (0, "3 definition(s) valid: bankaccount, order, ticket\n")


def test_an_event_shows_its_version_former_names_retired_flag_and_upcast_steps(
    asyncapi_validator: Draft7Validator,
) -> None:
    """tests/fixtures/upcast/ledger.yaml: ledger_opened at version 2 (an upcast step), credited
    formerly money_added (a step that drops a field), ledger_frozen retired."""
    files = render_docs(load_project([ROOT / "tests" / "fixtures" / "upcast"]).aggregates.values())
    page = files["ledger.md"]
    assert "| [`ledger_frozen`](#event-ledger_frozen) | 1 (retired) |" in page
    assert "| [`ledger_opened`](#event-ledger_opened) | 2 |" in page
    assert "- Version: 2 (the `eventversion` extension; an event without it is version 1)" in page
    assert "- Formerly: `money_added` (stored events of those types" in page
    assert "- Retired: no command emits it any more; the events already stored still replay" in page
    assert "| 1 → 2 | `currency`: `'EUR'` | — |" in page
    assert "| 1 → 2 | `cents`: `event.amount * 100` | `amount` |" in page
    document = _asyncapi(files, "ledger")
    assert not _errors(asyncapi_validator, document)
    operations = document["operations"]
    assert operations["event.credited"]["x-esfsm-version"] == 2
    assert operations["event.credited"]["x-esfsm-formerly"] == ["money_added"]
    assert "Formerly `money_added`" in operations["event.credited"]["description"]
    assert operations["event.ledger_frozen"]["x-esfsm-retired"] is True
    assert operations["event.ledger_frozen"]["description"].startswith("Retired: no command emits it")
    assert "x-esfsm-retired" not in operations["event.credited"]
    version = document["components"]["schemas"]["event.ledger_opened.cloudevent"]["properties"]["eventversion"]
    assert (version["minimum"], version["maximum"]) == (1, 2)
