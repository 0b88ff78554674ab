"""Structured logs of the server: one JSON object per line, with the fields a log record carries as `extra`."""

from __future__ import annotations

import json
import logging
import time


FIELDS = ("event", "adapter", "status", "texts", "seconds", "batch", "source", "client", "error")


class JsonFormatter(logging.Formatter):
    """Format a record as JSON: time, level, logger, message and the known `extra` fields it has."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: getattr(record, k) for k in FIELDS if hasattr(record, k)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO) -> None:
    """Send the `peft_dect.serving` logs to stderr as JSON lines (what `peft-dect serve` does)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("peft_dect.serving")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
