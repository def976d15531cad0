"""Log lines as text or JSON: one per request, one per model event, uvicorn's own through the same format.

A structured line is a record whose message is the event's name and whose `fields` extra holds the
rest; JSON writes them as one object per line, text as `key=value` pairs after the event.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any

import orjson

from serve.http import Request

ACCESS = logging.getLogger("mme.access")
EVENTS = logging.getLogger("mme.models")
# Health checks and scrapes arrive every few seconds and say nothing; --log-level debug shows them.
QUIET_PATHS = frozenset({"/ping", "/metrics"})
_PLAIN = re.compile(r"[^\s\"=\\]+")


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _timestamp(created: float) -> str:
    # Every request logs a line: formatting the date once per second instead of per line halves its cost.
    return f"{_second(int(created))}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            line["event"] = record.msg
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            text += "".join(f" {key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else f"{value:.3f}" if isinstance(value, float) else str(value)
    # Quoted and escaped unless plain, so a path or an error message can never break the line apart.
    return text if _PLAIN.fullmatch(text) else orjson.dumps(text).decode()


def _access_text(level: int, fields: dict[str, Any]) -> str:
    # Spelled out rather than looped over the fields: this line is written for every request.
    return (
        f"{_timestamp(time.time())} {logging.getLevelName(level)} {ACCESS.name}: request"
        f" method={fields['method']} path={_text_value(fields['path'])} model={_text_value(fields['model'])}"
        f" status={fields['status']} ms={fields['ms']:.3f} bytes_in={fields['bytes_in']}"
        f" bytes_out={fields['bytes_out']}\n"
    )


def _access_json(level: int, fields: dict[str, Any]) -> str:
    line = {
        "ts": _timestamp(time.time()),
        "level": logging.getLevelName(level).lower(),
        "logger": ACCESS.name,
    }
    return orjson.dumps({**line, "event": "request", **fields}, default=str).decode() + "\n"


# The same line the formatters would make, written without a LogRecord: the logging machinery was a
# fifth of a small request's cost.
_format_access = _access_text


def setup(log_format: str, level: str) -> None:
    """Send every logger, uvicorn's included, through one stderr handler in the chosen format."""
    global _format_access
    _format_access = _access_json if log_format == "json" else _access_text
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Neither format shows them, and looking them up is a good part of what a log record costs.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # XGBoost reports through the warnings module, which would print raw lines between the JSON ones.
    logging.captureWarnings(True)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    logger.log(level, name, extra={"fields": fields})


def access(request: Request, model: str | None, status: int, seconds: float, bytes_out: int) -> None:
    """One line per request; never the body."""
    path = request.path
    level = logging.DEBUG if path in QUIET_PATHS else logging.WARNING if status >= 500 else logging.INFO
    if not ACCESS.isEnabledFor(level):
        return
    fields = {
        "method": request.method,
        "path": path,
        "model": model,
        "status": status,
        "ms": round(seconds * 1000, 3),
        "bytes_in": int(request.headers.get("content-length") or 0),
        "bytes_out": bytes_out,
    }
    sys.stderr.write(_format_access(level, fields))


def model_event(name: str, event_name: str, details: dict[str, Any]) -> None:
    """A model cache listener: load, reload, evict, unload and load_failed, each on one line."""
    level = logging.WARNING if event_name == "load_failed" else logging.INFO
    if EVENTS.isEnabledFor(level):
        EVENTS.log(level, event_name, extra={"fields": {"model": name, **details}})
