"""`esfsm validate --against REF` end to end: REF as a folder, a file and git:<rev>; the findings,
their file:line:col, the summary and the exit code. The judge of what it reports is
tests/test_evolution_property.py (replay); these pin down the forms and the messages."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nats_support import ephemeral_port, run, start_server

from esfsm.cli import main
from esfsm.project import check_paths
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.store import AggregateStore

CORPUS = Path(__file__).resolve().parent / "evolution_corpus"
BASE = (CORPUS / "narrow_from" / "before.yaml").read_text()
OTHER = """\
aggregate: ticket
initial: open
states: {open: {}}
commands:
  note: {emit: [{event: noted}]}
events:
  noted: {from: open}
"""


def validate(*args: str) -> Result:
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def test_against_a_folder_a_removed_aggregate_and_a_renamed_bucket_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "old", {"account.yaml": BASE, "ticket.yaml": OTHER})
    renamed = BASE.replace("aggregate: account\n", "aggregate: account\nnats: {bucket: ACCOUNTS}\n")
    write(tmp_path / "new", {"account.yaml": renamed})
    monkeypatch.chdir(tmp_path)
    result = validate("new", "--against", "old")
    assert result.stdout.splitlines() == [
        (
            "new/account.yaml:2:16: error: the bucket changed from 'AGG_account' to 'ACCOUNTS': the snapshots "
            "stored in 'AGG_account' stay behind; keep 'AGG_account' (set 'nats.bucket'), or move the data "
            "yourself before deploying [/nats/bucket]"
        ),
        (
            "old/ticket.yaml:1:12: error: aggregate 'ticket' is no longer defined: its events (stream 'TICKET_EVENTS') "
            "and snapshots (bucket 'AGG_ticket') stay behind and nothing serves its commands; keep its definition, or "
            "delete the stream and bucket on purpose [/aggregate]"
        ),
    ]
    assert result.stderr == "2 error(s), 0 warning(s)\n"
    assert result.exit_code == 1


def test_against_a_file_warnings_keep_exit_0_and_the_summary_names_the_ref(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"old.yaml": BASE, "new.yaml": BASE.replace("initial_data: {balance: 0}", "initial_data: {}")})
    monkeypatch.chdir(tmp_path)
    result = validate("new.yaml", "--against", "old.yaml")
    assert result.stdout.splitlines() == [
        (
            "new.yaml:13:1: warning: the initial data changed: every snapshot is refreshed from the events (the "
            "state fingerprint differs), so every entity's data is recomputed from the new initial data [/initial_data]"
        ),
        "1 definition(s) valid against old.yaml: account (1 warning(s))",
    ]
    assert result.exit_code == 0


def test_the_same_definitions_are_valid_against_themselves(tmp_path: Path) -> None:
    path = write(tmp_path, {"account.yaml": BASE, "ticket.yaml": OTHER})
    result = validate(str(path), "--against", str(path))
    assert result.stdout == f"2 definition(s) valid against {path}: account, ticket\n"
    assert result.exit_code == 0


def test_json_output_carries_the_ref_and_the_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"old.yaml": BASE, "new.yaml": (CORPUS / "narrow_from" / "after.yaml").read_text()})
    monkeypatch.chdir(tmp_path)
    result = validate("new.yaml", "--against", "old.yaml", "--format", "json")
    report = json.loads(result.stdout)
    assert (report["valid"], report["against"], report["errors"], report["warnings"]) == (False, "old.yaml", 1, 0)
    assert report["findings"][0]["rule"] == "replay-transition"
    assert (report["findings"][0]["line"], report["findings"][0]["column"]) == (40, 18)
    assert result.exit_code == 1


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with definitions/account.yaml committed (HEAD), the working directory."""
    write(tmp_path / "definitions", {"account.yaml": BASE})
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "definitions")
    git(tmp_path, "commit", "-q", "-m", "v1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_against_git_head_names_the_older_file_rev_colon_path(repo: Path) -> None:
    renamed = (CORPUS / "rename_without_formerly" / "after.yaml").read_text()
    (repo / "definitions" / "account.yaml").write_text(renamed)
    result = validate("--against", "git:HEAD")
    assert result.stdout.splitlines() == [
        (
            "HEAD:definitions/account.yaml:33:3: error: event 'deposited' may be stored, but nothing in the new "
            "definition reads it, so replaying an entity holding one fails; keep the event (with `retired: true` if "
            "no command emits it any more), or list 'deposited' under `formerly` of the event it became; was it "
            "renamed to 'credited'? [/events/deposited]"
        )
    ]
    assert result.exit_code == 1


def test_against_an_older_git_revision_of_a_folder_given_by_path(repo: Path) -> None:
    (repo / "definitions" / "account.yaml").write_text(BASE.replace("from: [open, frozen]", "from: open"))
    git(repo, "commit", "-q", "-am", "v2")
    (repo / "definitions" / "account.yaml").write_text(BASE)
    assert validate("definitions", "--against", "git:HEAD").exit_code == 0  # widening `from` replays everything
    result = validate("definitions/account.yaml", "--against", "git:HEAD~1")
    assert result.stdout == "1 definition(s) valid against git:HEAD~1: account\n"
    narrowed = validate("definitions", "--against", "git:HEAD~1")
    assert narrowed.exit_code == 0
    (repo / "definitions" / "account.yaml").write_text(BASE.replace("from: [open, frozen]", "from: frozen"))
    assert "after opened, 'closed' occurs in state 'open'" in validate("--against", "git:HEAD~1").stdout


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("git:nope", "Error: --against git:nope: the repository at {repo} has no revision 'nope'"),
        ("git:", "Error: --against git:: give a revision, such as git:HEAD~1"),
    ],
)
def test_a_bad_git_revision_is_a_clear_error(repo: Path, ref: str, message: str) -> None:
    result = validate("--against", ref)
    assert result.exit_code in (1, 2)
    assert message.format(repo=repo.resolve()) in result.stderr


def test_a_path_missing_at_the_revision_is_a_clear_error(repo: Path) -> None:
    write(repo / "more", {"ticket.yaml": OTHER})
    result = validate("more", "--against", "git:HEAD")
    assert result.exit_code == 1
    assert result.stderr == "Error: --against git:HEAD: more does not exist at HEAD\n"


def test_outside_a_git_repository_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "defs", {"account.yaml": BASE})
    result = validate(str(path), "--against", "git:HEAD")
    assert result.exit_code == 1
    assert result.stderr == f"Error: --against git:HEAD: {path.resolve()} is not inside a git repository\n"


def test_a_missing_ref_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, {"account.yaml": BASE})
    result = validate(str(path), "--against", str(tmp_path / "nothing"))
    assert result.exit_code == 2
    assert "no such file or folder (give older definitions, git:<rev> or nats://host:port)" in result.stderr


def test_an_older_definition_that_cannot_be_read_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"old.yaml": "aggregate: account\n", "new.yaml": BASE})
    monkeypatch.chdir(tmp_path)
    result = validate("new.yaml", "--against", "old.yaml")
    assert result.stdout.splitlines() == [
        (
            "old.yaml:1:1: error: this older definition cannot be read, so nothing is compared with it (1:1: missing "
            "required key 'initial')"
        )
    ]
    assert result.exit_code == 1


def test_a_type_change_a_changed_apply_reads_is_an_error_and_one_nothing_reads_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = BASE.replace(
        "owner: {type: string}}}\n    from: none", "owner: {type: string}, age: {type: integer}}}\n    from: none"
    )
    new = old.replace("age: {type: integer}}}", "age: {type: string}}}").replace(
        "owner: {type: string}, age: {type: string}}}", "owner: {type: integer}, age: {type: string}}}"
    )
    new = new.replace("apply: {owner: event.owner}", "apply: {owner: string(event.owner + 1)}")
    write(tmp_path, {"old.yaml": old, "new.yaml": new})
    monkeypatch.chdir(tmp_path)
    result = validate("new.yaml", "--against", "old.yaml")
    assert result.stdout.splitlines() == [
        (
            "new.yaml:29:5: warning: field 'age' of event 'opened' changed type from 'integer' to 'string' without a "
            "new version: stored events still hold the older type; replay does not depend on it [/events/opened/schema]"
        ),
        (
            "new.yaml:32:5: warning: the apply of event 'opened' changed: every snapshot is refreshed from the events "
            "(the state fingerprint differs), so entities' data becomes what the new apply computes from their events "
            "[/events/opened/apply]"
        ),
        (
            "new.yaml:32:20: error: field 'owner' of event 'opened' changed type from 'string' to 'integer' without a "
            "new version: stored events still hold the older type, and this changed apply reads it, so replaying "
            "them fails or differs; raise 'version' and add an upcast step that converts 'owner' "
            "[/events/opened/apply/owner]"
        ),
    ]
    assert result.exit_code == 1


def test_the_first_event_of_a_history_can_fail_and_a_kept_state_can_be_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = BASE.replace("    from: none\n    to: open\n", "    from: open\n    to: open\n")
    mapped = BASE.replace("  frozen: {from: open, to: frozen}", "  frozen: {from: open}")
    write(tmp_path, {"old.yaml": BASE, "first.yaml": first, "mapped.yaml": mapped})
    monkeypatch.chdir(tmp_path)
    failing = validate("first.yaml", "--against", "old.yaml").stdout.splitlines()
    assert failing[3].startswith(
        "first.yaml:30:11: error: replaying a history valid under the older definition fails: as its first event, "
        "'opened' occurs in state 'none', which this definition no longer allows;"
    )
    assert (
        "mapped.yaml:6:3: warning: state 'frozen': entities the older definition has in 'frozen' are in state "
        "'open' under this one once replayed [/states/frozen]"
    ) in validate("mapped.yaml", "--against", "old.yaml").stdout.splitlines()


def test_help_explains_the_forms_of_ref() -> None:
    text = validate("--help").stdout
    for form in ("DIR or FILE", "git:<rev>", "git:HEAD~1", "nats://"):
        assert form in text


# -- against a live server ----------------------------------------------------------------

BANK = Path(__file__).resolve().parent.parent / "definitions" / "bankaccount.yaml"
STORED = json.loads((Path(__file__).parent / "fixtures" / "stored" / "c75067f.json").read_text())
HISTORY = STORED["bankaccount/acc-1"]["events"]  # opened, deposited, withdrawn, frozen, unfrozen: version 1


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = start_server(tmp_path / "nats")
    yield server
    server.stop()


def store_history(url: str, keys: list[str]) -> None:
    """The fixture's bankaccount history, stored for each of keys as the runtime stores events."""
    compiled = check_paths(BANK).aggregates["bankaccount"]

    async def write() -> None:
        nc = await connect([url], ConnectOptions(name="validate-against-test"))
        try:
            store = AggregateStore(nc, compiled)
            await store.js.add_stream(store.stream_config())
            for key in keys:
                events = [dict(json.loads(line), subject=key, entitykey=key) for line in HISTORY]
                for event in events:
                    event["id"] = f"{key}-{event['id']}"
                outgoing = [Outgoing(store.subject(key, e["type"]), json.dumps(e).encode(), e["id"]) for e in events]
                await store.append(key, 0, outgoing)
        finally:
            await nc.close()

    run(write())


def test_against_a_server_names_the_stored_types_nothing_reads_with_their_counts(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    store_history(server.url, ["acc-1", "acc-2"])
    without_frozen = (
        BANK.read_text()
        .replace("  frozen: {description: Holds its balance; no money moves until it is unfrozen.}\n", "")
        .replace(
            "  freeze:\n    emit: [{event: account_frozen}]\n  unfreeze:\n    emit: [{event: account_unfrozen}]\n", ""
        )
        .replace("  account_frozen: {from: open, to: frozen}\n  account_unfrozen: {from: frozen, to: open}\n", "")
        .replace("account_closed: {from: [open, frozen], to: closed}", "account_closed: {from: open, to: closed}")
    )
    path = write(tmp_path / "v2", {"bankaccount.yaml": without_frozen}) / "bankaccount.yaml"
    result = validate(str(path), "--against", server.url)
    assert result.stdout.splitlines() == [
        f"{path}:2:12: error: the stream holds {name!r} (version 1, 2 events stored): no event of this definition "
        "has that name or lists it under `formerly`; replaying an entity holding one fails: define it again (with "
        "`retired: true` if no command emits it any more), or list it under `formerly` of the event it became "
        "[/aggregate]"
        for name in ("account_frozen", "account_unfrozen")
    ]
    assert result.exit_code == 1
    mapped = (
        without_frozen
        + "  account_frozen: {retired: true, from: open}\n  account_unfrozen: {retired: true, from: open}\n"
    )
    (tmp_path / "v2" / "bankaccount.yaml").write_text(mapped)
    assert (
        validate(str(path), "--against", server.url).stdout
        == f"1 definition(s) valid against {server.url}: bankaccount\n"
    )


def test_against_a_server_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{ephemeral_port()}"
    result = validate(str(BANK), "--against", url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: --against {url}: cannot connect to {url}")
