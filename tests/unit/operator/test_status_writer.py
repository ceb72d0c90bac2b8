"""The background status writer (no API server: the patch is a function that records, blocks or fails)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from lagpilot_operator.kube.status_writer import StatusWriter


class Patches:
    """Records each patch; `gate` (when set up) holds a patch until released; `failing` raises."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.failing: Exception | None = None

    def __call__(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.failing is not None:
            raise self.failing
        self.written.append(status)


def test_the_poll_goes_on_and_every_loop_woken_together_decides_before_the_first_write() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []

        def patch(namespace: str, name: str, status: dict[str, Any]) -> None:
            order.append(f"patched {name}")

        writers = [StatusWriter(patch=patch) for _ in range(3)]
        woken = asyncio.Event()

        async def loop(index: int) -> None:
            # As the loops a cluster read wakes: each decides and hands its status over without waiting.
            await woken.wait()
            order.append(f"decided r{index}")
            writers[index].submit("ns", f"r{index}", {"n": index}, "first", 100.0)

        loops = [asyncio.create_task(loop(i)) for i in range(3)]
        await asyncio.sleep(0)
        woken.set()
        await asyncio.gather(*loops)
        for writer in writers:
            await writer.settle(5)
        return order

    order = asyncio.run(scenario())
    # The writes run in threads side by side: their order among themselves is not given.
    assert order[:3] == ["decided r0", "decided r1", "decided r2"]
    assert sorted(order[3:]) == ["patched r0", "patched r1", "patched r2"]


def test_a_status_handed_over_during_a_write_replaces_the_one_waiting() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        patches = Patches()
        patches.gate = threading.Event()
        writer = StatusWriter(patch=patches)
        writer.submit("ns", "r", {"n": 1}, "first", 100.0)
        await asyncio.to_thread(patches.started.wait, 5)   # the first write is under way, held
        writer.submit("ns", "r", {"n": 2}, "totalLag", 105.0)
        writer.submit("ns", "r", {"n": 3}, "totalLag", 110.0)
        patches.gate.set()
        await writer.settle(5)
        return patches.written, writer.written

    written, last = asyncio.run(scenario())
    assert written == [{"n": 1}, {"n": 3}]
    assert last == {"n": 3}


def test_a_failed_write_puts_back_the_last_status_the_api_server_took() -> None:
    async def scenario() -> tuple[Any, ...]:
        patches = Patches()
        writer = StatusWriter(patch=patches)
        writer.submit("ns", "r", {"n": 1}, "first", 100.0)
        await writer.settle(5)
        patches.failing = ApiException(status=500, reason="etcd timeout")
        writer.submit("ns", "r", {"n": 2}, "totalLag", 105.0)
        assert writer.written == {"n": 2}   # the next poll compares with it while it is being written
        await writer.settle(5)
        after_failure = (writer.written, writer.written_at)
        patches.failing = ApiException(status=404, reason="Not Found")   # deleted meanwhile: no error
        writer.submit("ns", "r", {"n": 3}, "totalLag", 110.0)
        await writer.settle(5)
        return after_failure, (writer.written, writer.written_at), patches.written

    after_failure, after_gone, written = asyncio.run(scenario())
    assert after_failure == ({"n": 1}, 100.0)   # so the next poll writes {"n": 2}'s news again
    assert after_gone == ({"n": 1}, 100.0)
    assert written == [{"n": 1}]


def test_a_status_decided_under_an_ended_shard_term_is_not_written() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], Any]:
        patches = Patches()
        writer = StatusWriter(patch=patches)
        writer.submit("ns", "r", {"n": 1}, "first", 100.0, holds=lambda: True)
        await writer.settle(5)
        writer.submit("ns", "r", {"n": 2}, "totalLag", 105.0, holds=lambda: False)
        await writer.settle(5)
        return patches.written, writer.written

    written, last = asyncio.run(scenario())
    assert written == [{"n": 1}]
    assert last == {"n": 1}
