"""An example order handler: parse and check each order, then wait as a call to another service would.

`lagpilot-worker --handler orders.handlers:handle` runs it in the worker's pool. A record that is not a
JSON object with an integer `id` can never succeed, so it raises `PermanentError` (dead-lettered at once
when the resource enables a dead-letter topic, skipped and counted otherwise); anything else it raises
would be retried in place. `ORDERS_WORK_MS` (default 20) sets the simulated I/O per order.
"""

from __future__ import annotations

import json
import os
import time

from lagpilot_worker import PermanentError, Record

WORK_SECONDS = int(os.environ.get("ORDERS_WORK_MS", "20")) / 1000


def handle(record: Record) -> None:
    try:
        order = json.loads(record.value or b"")
    except ValueError as exc:
        raise PermanentError(f"not JSON: {exc}") from exc
    if not isinstance(order, dict) or not isinstance(order.get("id"), int):
        raise PermanentError("an order is a JSON object with an integer id")
    time.sleep(WORK_SECONDS)  # stands in for the service call an order handler makes
