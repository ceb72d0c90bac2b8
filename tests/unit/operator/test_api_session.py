"""`api_session`: kopf's requests in flight are bounded, its watches are not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import kopf
from yarl import URL

from lagpilot_operator.kube.api_session import bounded_session, is_watch, request_bound

API = "https://10.0.0.1:6443"


def request(path: str) -> Any:
    return SimpleNamespace(url=URL(API + path))


def test_a_watch_is_told_from_other_requests_by_its_query() -> None:
    assert is_watch(request("/apis/lagpilot.io/v1alpha1/kafkaconsumergroups?watch=true&resourceVersion=5"))
    assert not is_watch(request("/apis/lagpilot.io/v1alpha1/namespaces/a/kafkaconsumergroups/b"))
    assert not is_watch(request("/apis/lagpilot.io/v1alpha1/kafkaconsumergroups?watch=false"))


def test_at_most_the_bound_of_requests_run_at_once_and_watches_do_not_count() -> None:
    async def scenario() -> tuple[int, int]:
        bounded = request_bound(3)
        running = most = 0
        release = asyncio.Event()

        async def handler(_: Any) -> Any:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            return "response"

        watches = [asyncio.create_task(bounded(request(f"/api/v1/configmaps?watch=true&n={i}"), handler))
                   for i in range(5)]
        patches = [asyncio.create_task(bounded(request(f"/api/v1/namespaces/a/configmaps/c{i}"), handler))
                   for i in range(10)]
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight = running  # 5 watches, and 3 of the 10 patches
        release.set()
        assert set(await asyncio.gather(*watches, *patches)) == {"response"}
        return in_flight, most

    assert asyncio.run(scenario()) == (8, 8)


def test_the_session_keeps_what_kopf_logged_in_with() -> None:
    async def scenario() -> Any:
        info = kopf.ConnectionInfo(server=API, scheme="Bearer", token="secret-token", insecure=True,
                                   default_namespace="team-a")
        made = bounded_session(info, max_requests=4)
        try:
            return (made.server, made.default_namespace, made.aiohttp_session.headers.get("Authorization"),
                    len(made.aiohttp_session._middlewares))
        finally:
            await made.aiohttp_session.close()

    assert asyncio.run(scenario()) == (API, "team-a", "Bearer secret-token", 1)
