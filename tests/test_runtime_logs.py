"""The runtime's log lines (runtime/logs.py): logfmt as it always was, or JSON, both through structlog."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from esfsm.runtime.logs import configure_logging, formatter, info

WHEN = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z


def record(
    message: str,
    *args: object,
    level: int = logging.INFO,
    name: str = "esfsm.run",
    fields: dict[str, object] | None = None,
    exc: bool = False,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            import sys

            exc_info = sys.exc_info()
    made = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)
    made.created = WHEN
    if fields is not None:
        made.fields = fields  # type: ignore[attr-defined]
    return made


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """What the esfsm loggers write, the logging set-up restored afterwards."""
    root = logging.getLogger("esfsm")
    saved = root.handlers[:], root.level, root.propagate
    yield io.StringIO()
    root.handlers[:], root.level, root.propagate = saved
    structlog.reset_defaults()


def test_logfmt_lines_are_as_they_always_were() -> None:
    """Byte for byte what the hand-written formatter wrote: tests, benchmarks and operators grep them."""
    assert formatter("logfmt", worker=1).format(record("ready", fields={"aggregates": "a,b", "workers": 2})) == (
        'ts=2023-11-14T22:13:20.123Z level=info logger=esfsm.run worker=1 msg=ready aggregates="a,b" workers=2'
    )
    assert formatter().format(record("worker %d exited with status %s", 1, -9, level=logging.ERROR)) == (
        'ts=2023-11-14T22:13:20.123Z level=error logger=esfsm.run msg="worker 1 exited with status -9"'
    )
    line = formatter().format(
        record(
            'say "hi"\nthere', fields={"accepted": True, "no": False, "code": None, "empty": "", "path": "a/b.c:1@x"}
        )
    )
    assert line == (
        'ts=2023-11-14T22:13:20.123Z level=info logger=esfsm.run msg="say \\"hi\\"\\nthere" '
        'accepted=true no=false code=None empty="" path=a/b.c:1@x'
    )
    failed = formatter().format(record("boom", level=logging.WARNING, name="esfsm.projector", exc=True))
    assert failed.startswith(
        "ts=2023-11-14T22:13:20.123Z level=warning logger=esfsm.projector msg=boom "
        'error="Traceback (most recent call last):\\n'
    )
    assert failed.endswith('ZeroDivisionError: division by zero"') and "\n" not in failed


def test_json_lines_are_one_object_each_with_level_msg_and_logger(stream: io.StringIO) -> None:
    configure_logging("debug", fmt="json", worker=0, stream=stream)
    info("ready", aggregates="bankaccount", workers=2)
    logging.getLogger("esfsm.service").debug("command", extra={"fields": {"key": "k 1", "accepted": False}})
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("esfsm.projector").warning("snapshot of %s failed", "k", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    ready, command, failed = map(json.loads, lines)
    assert ready["ts"].endswith("Z")
    assert {k: v for k, v in ready.items() if k != "ts"} == {
        "level": "info",
        "logger": "esfsm.run",
        "worker": 0,
        "msg": "ready",
        "aggregates": "bankaccount",
        "workers": 2,
    }
    assert command["level"] == "debug" and command["logger"] == "esfsm.service" and command["msg"] == "command"
    assert (command["key"], command["accepted"]) == ("k 1", False)  # values keep their JSON types
    assert failed["msg"] == "snapshot of k failed" and failed["level"] == "warning"
    assert failed["error"].startswith("Traceback") and "ValueError: bad\nvalue" in failed["error"]


def test_the_level_holds_back_lower_records(stream: io.StringIO) -> None:
    configure_logging("warning", stream=stream)
    info("ready")
    logging.getLogger("esfsm.run").warning("trouble")
    assert stream.getvalue().count("\n") == 1 and "level=warning" in stream.getvalue()


def test_structlog_loggers_write_the_same_lines(stream: io.StringIO) -> None:
    for fmt in ("logfmt", "json"):
        configure_logging("info", fmt=fmt, stream=stream)  # type: ignore[arg-type]
        structlog.get_logger("esfsm.example").info("hello there", count=3, ok=True)
        structlog.get_logger("esfsm.example").debug("held back")
    logfmt, as_json = stream.getvalue().splitlines()
    assert logfmt.endswith(' level=info logger=esfsm.example msg="hello there" count=3 ok=true')
    assert {k: v for k, v in json.loads(as_json).items() if k != "ts"} == {
        "level": "info",
        "logger": "esfsm.example",
        "msg": "hello there",
        "count": 3,
        "ok": True,
    }


def test_an_unknown_log_format_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"^'xml' is not a log format: use one of logfmt, json$"):
        formatter("xml")  # type: ignore[arg-type]
