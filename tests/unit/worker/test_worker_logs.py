"""The worker's JSON log lines: python-json-logger with Lagpilot's field names."""

from __future__ import annotations

import json
import logging
import sys

from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from lagpilot_worker.logs import JsonFormatter


def record(level: int, message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad value")
        except ValueError:
            info = sys.exc_info()
    made = logging.LogRecord("lagpilot_worker", level, __file__, 1, message, args, info)
    made.created, made.msecs = 1_700_000_000.25, 250.0
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_fields_keep_their_names_and_order() -> None:
    line = JsonFormatter().format(record(logging.WARNING, "dead-lettering record (%s)", "permanent",
                                         topic="orders", partition=3, offset=42))
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message", "topic", "partition", "offset"]
    assert entry == {"time": "2023-11-14T22:13:20.250Z", "level": "warning", "logger": "lagpilot_worker",
                     "message": "dead-lettering record (permanent)", "topic": "orders", "partition": 3,
                     "offset": 42}
    assert "\n" not in line


def test_exception_and_unserializable_extras() -> None:
    entry = json.loads(JsonFormatter().format(record(logging.ERROR, "failed", exc=True, thing=object())))
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback") and "ValueError: bad value" in entry["exception"]
    assert entry["thing"].startswith("<object object")


def test_is_the_library_formatter() -> None:
    assert isinstance(JsonFormatter(), LibraryJsonFormatter)
