"""Structured JSON logs: one object per line, with topic/partition/offset when a record is involved.

python-json-logger writes the lines; this module only names the fields (`time`, `level`, `logger`,
`message`, `exception`, then whatever `extra=` a log call adds).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"}


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger with Lagpilot's field names: UTC time in RFC 3339, lower-case level."""

    def __init__(self) -> None:
        super().__init__(FIELDS, rename_fields=RENAMED, json_default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()


def configure_json_logging(level: str = "info") -> None:
    """Route the root logger to stderr as JSON lines (the CLI does this; library users decide)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # librdkafka's own logs come through the client's logger; keep them but at warning and up.
    logging.getLogger("kafka").setLevel(logging.WARNING)
