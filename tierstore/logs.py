"""Where log records go and how they are written: the setting `log_format`.

json (default): one JSON object per line (python-json-logger) with `time` (RFC 3339 UTC), `level`,
`logger`, `message`, `request_id` and every field a record carries as `extra` — a request's tenant,
route, method, path, status, took_ms (router/request_log.py), a job run's event, job, run_id,
status, progress, took_ms, stats (scheduler/runner.py). text: `time level logger [request_id]
message key=value ...` for a terminal.

The entry points configure it: the CLI, each gunicorn worker (tierstore.app.wsgi) and the gunicorn
master through `logconfig_dict` (tierstore/gunicorn_conf.py: gunicorn's own error log then comes
out in the same format; its access log, when asked for, keeps gunicorn's combined text lines).
Library code only logs.
"""
from __future__ import annotations

import logging
import sys
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from router.request_log import RequestIdFilter

HANDLER_NAME = "tierstore"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "request_id", "request_id_text"}


class TextFormatter(logging.Formatter):
    """A human line; the record's extra fields follow as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id_text)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id_text = getattr(record, "request_id", None) or "-"
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {' '.join(extras)}{sep}{tail}"


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "text":
        return TextFormatter()
    if log_format != "json":
        raise ValueError(f"log_format must be json or text, not {log_format!r}")
    return JsonFormatter("%(levelname)s %(name)s %(message)s %(request_id)s", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False)


def make_handler(log_format: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `log_format` lines, records given a request_id."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.name = HANDLER_NAME
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(log_format: str = "json", level: str = "INFO", stream: IO[str] | None = None,
                      logger: logging.Logger | None = None) -> logging.Handler:
    """Send `logger`'s records (the root's by default) to one handler of `log_format`, replacing the
    one an earlier call installed (idempotent). Returns the handler."""
    target = logger if logger is not None else logging.getLogger()
    for old in [h for h in target.handlers if h.name == HANDLER_NAME]:
        target.removeHandler(old)
    handler = make_handler(log_format, stream)
    target.addHandler(handler)
    target.setLevel(level)
    logging.captureWarnings(True)  # a library's warning becomes a record in the same format
    return handler


def configure_from_settings(settings: Any) -> logging.Handler:
    return configure_logging(settings.log_format, settings.log_level)


def gunicorn_logconfig(log_format: str, level: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: the root and gunicorn.error through the tierstore handler.
    gunicorn.access is left to gunicorn (--access-logfile decides where, and whether, it goes)."""
    handler = {"()": "tierstore.logs.make_handler", "log_format": log_format}
    return {"version": 1, "disable_existing_loggers": False,
            "root": {"level": level, "handlers": [HANDLER_NAME]},
            "loggers": {"gunicorn.error": {"level": level, "handlers": [HANDLER_NAME], "propagate": False}},
            "handlers": {HANDLER_NAME: handler}, "formatters": {}}
