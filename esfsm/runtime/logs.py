"""The runtime's log lines, through structlog: logfmt (the default) or JSON, one record a line.

Every module logs with the standard library (`logging.getLogger("esfsm.<part>")`,
structured fields in `extra={"fields": {...}}`); `configure_logging` puts a
structlog `ProcessorFormatter` on the `esfsm` logger's handler, so those records
and structlog's own loggers (`structlog.get_logger("esfsm.<part>")`, fields as
keyword arguments) come out the same way:

    ts=2025-01-02T03:04:05.678Z level=info logger=esfsm.run worker=1 msg=ready aggregates=bankaccount
    {"ts":"2025-01-02T03:04:05.678Z","level":"info","logger":"esfsm.run","worker":1,"msg":"ready",...}

`worker=` appears only in the processes of `esfsm run --workers N`; an
exception's traceback goes in `error=`.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Literal, TextIO

import orjson
import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["logfmt", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("logfmt", "json")
ROOT = "esfsm"

log = logging.getLogger("esfsm.run")
_traceback = logging.Formatter()  # formats an exception as logging always did


def info(message: str, **fields: object) -> None:
    """One info line of esfsm.run with fields (key=value)."""
    log.info(message, extra={"fields": fields})


class _Record:
    """A structlog processor: the record's time, level, logger and worker, then the message, its
    fields and the exception, in that order (the order of the keys is the order on the line)."""

    def __init__(self, worker: int | None) -> None:
        self.worker = worker

    def __call__(self, _: WrappedLogger, method: str, event: EventDict) -> EventDict:
        record: logging.LogRecord = event.pop("_record")
        from_structlog = event.pop("_from_structlog", False)
        message = event.pop("event", "")
        exc_info = event.pop("exc_info", None) or record.exc_info
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        line: EventDict = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name}
        if self.worker is not None:
            line["worker"] = self.worker
        line["msg"] = str(message)
        line.update(getattr(record, "fields", None) or {})
        if from_structlog:  # keyword arguments of a structlog logger
            line.update((key, value) for key, value in event.items() if key not in ("positional_args", "stack_info"))
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            line["error"] = _traceback.formatException(exc_info)
        return line


def render_logfmt(_: WrappedLogger, __: str, event: EventDict) -> str:
    """key=value pairs; a value is quoted unless it is one plain word (booleans in lower case)."""
    return " ".join(
        f"{key}={_quote(str(value).lower() if isinstance(value, bool) else str(value))}" for key, value in event.items()
    )


def render_json(_: WrappedLogger, __: str, event: EventDict) -> str:
    """One JSON object; a value JSON cannot hold is written as its str()."""
    return orjson.dumps(event, default=str).decode()


def _quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def formatter(fmt: LogFormat = "logfmt", worker: int | None = None) -> logging.Formatter:
    """The logging.Formatter of one line per record, logfmt or JSON."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"{fmt!r} is not a log format: use one of {', '.join(LOG_FORMATS)}")
    renderer = render_json if fmt == "json" else render_logfmt
    return ProcessorFormatter(processors=[_Record(worker), renderer])


def configure_logging(
    level: str = "info", fmt: LogFormat = "logfmt", worker: int | None = None, stream: TextIO | None = None
) -> None:
    """Log the `esfsm` loggers at level and above to stream (stderr), one line a record in fmt
    ("logfmt" or "json"); worker: this process's number among `esfsm run --workers N`'s."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt, worker))
    root = logging.getLogger(ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    processors: list[Processor] = [structlog.stdlib.filter_by_level, ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def setup_logging(level: str = "info", worker: int | None = None) -> None:
    """configure_logging in logfmt (the name `esfsm run` calls)."""
    configure_logging(level, "logfmt", worker)


__all__ = [
    "LOG_FORMATS",
    "LogFormat",
    "configure_logging",
    "formatter",
    "info",
    "render_json",
    "render_logfmt",
    "setup_logging",
]
