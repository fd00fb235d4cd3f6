"""The snapshot writer's memory of the KV revisions it wrote (projector.py): a bounded LRU."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from nats_support import ROOT, run

from esfsm.project import load_project
from esfsm.runtime import projector as projector_module
from esfsm.runtime.projector import Projector
from esfsm.runtime.store import AggregateStore


def test_the_snapshot_writer_forgets_the_least_recently_used_revision(
    nats_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounded LRU: past the limit one key is forgotten, not all of them (the old dict was
    cleared whole), and a key just looked up is kept."""
    monkeypatch.setattr(projector_module, "REVISIONS", 3)
    compiled = load_project([ROOT / "definitions" / "bankaccount.yaml"]).aggregates["bankaccount"]

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            projector = Projector(AggregateStore(nc, compiled))
            for revision, key in enumerate(["a", "b", "c"], start=1):
                projector._written(key, revision)
            assert projector._revisions.get("a") == 1  # a is now the most recently used
            projector._written("d", 4)
            assert dict(projector._revisions) == {"a": 1, "c": 3, "d": 4}
            assert projector.written == 4
        finally:
            await nc.close()

    run(scenario(), timeout=10)
