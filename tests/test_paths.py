"""The paths through a command's emits (esfsm.paths): what the compiler, the docs
and the authoring tools all read where a command is accepted and where it leads."""

from __future__ import annotations

import subprocess
import sys
import time

from esfsm.model import Emit
from esfsm.paths import EmitPaths, Path, Step

# A small machine: a --go--> b --go--> c; `note` stays where it is, but only in a and b.
TABLE = {("a", "go"): "b", ("b", "go"): "c", ("a", "note"): "a", ("b", "note"): "b"}


def next_state(state: str, event: str) -> str | None:
    return TABLE.get((state, event))


def emit(event: str, condition: str | None = None) -> Emit:
    return Emit(event, {}, condition, "")


def test_an_unconditional_emit_has_one_path_when_its_event_is_valid_and_none_otherwise() -> None:
    assert list(EmitPaths(next_state, "a", [emit("go")]).paths()) == [Path("a", (Step(0, "go", "a", "b"),))]
    blocked = EmitPaths(next_state, "c", [emit("go")])
    assert (list(blocked.paths()), blocked.count(), blocked.steps(), blocked.ends()) == ([], 0, [], [])
    assert not blocked.emits_an_event()


def test_a_conditional_emit_is_taken_before_it_is_skipped_and_the_first_emit_varies_slowest() -> None:
    paths = EmitPaths(next_state, "a", [emit("go", "cmd.x"), emit("go", "cmd.y")])
    assert [[s.dest for s in p.steps] for p in paths.paths()] == [["b", "c"], ["b"], ["b"], []]
    assert [p.end for p in paths.paths()] == ["c", "b", "b", "a"]
    assert paths.count() == 4
    assert paths.ends() == ["c", "b", "a"]


def test_a_choice_that_leads_to_an_invalid_event_is_no_path() -> None:
    # Taking the first `go` makes the second reach c, where `note` is not valid:
    # only the path that skips it remains.
    paths = EmitPaths(next_state, "a", [emit("go", "cmd.x"), emit("go"), emit("note")])
    assert list(paths.paths()) == [Path("a", (Step(1, "go", "a", "b"), Step(2, "note", "b", "b")))]
    assert paths.count() == 1
    paths = EmitPaths(next_state, "a", [emit("go", "cmd.x"), emit("note"), emit("go")])
    assert [p.end for p in paths.paths()] == ["c", "b"]
    assert paths.steps() == [
        Step(0, "go", "a", "b"),
        Step(1, "note", "b", "b"),
        Step(2, "go", "b", "c"),
        Step(1, "note", "a", "a"),
        Step(2, "go", "a", "b"),
    ]


def test_a_path_that_skips_every_emit_emits_no_event() -> None:
    paths = EmitPaths(next_state, "c", [emit("go", "cmd.x")])
    assert list(paths.paths()) == [Path("c", ())]
    assert paths.ends() == ["c"]
    assert not paths.emits_an_event()


def test_many_conditional_emits_are_counted_and_summed_up_without_listing_their_paths() -> None:
    """Forty conditional emits make 2**40 paths: the compiler's and the docs' questions
    must not walk them one by one (the compiler asks at every load)."""
    paths = EmitPaths(next_state, "a", [emit("note", f"cmd.n{i}") for i in range(40)] + [emit("go")])
    began = time.perf_counter()
    assert paths.count() == 2**40
    assert paths.ends() == ["b"]
    assert len(paths.steps()) == 41
    assert paths.emits_an_event()
    assert next(paths.paths()).end == "b"
    assert time.perf_counter() - began < 1.0


def test_the_paths_module_is_core_it_imports_neither_nats_nor_the_runtime_nor_the_cli() -> None:
    code = "import sys, esfsm.paths\nprint(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "esfsm.paths" in loaded
    assert not [m for m in loaded if m == "nats" or m.startswith(("nats.", "esfsm.runtime", "esfsm.cli"))]
