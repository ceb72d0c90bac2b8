"""kopf's HTTP session to the API server, with a bound on its requests in flight (I/O).

kopf 1.45 makes its aiohttp session with `TCPConnector(limit=0)`: as many connections as requests in
flight. When the operator starts on many resources, kopf patches each of them at once (its finalizer,
its annotations) and opens about one TLS connection per resource. Each connection holds a 128 KiB read
buffer in asyncio's SSL protocol plus OpenSSL's own state, and stays open for aiohttp's 15 s keep-alive.
Measured at 200 resources (`bench/fleet_bench.py --groups 200`): 273 sockets for the first ~30 s, then 73,
and the RSS fell from 226 to 172 MiB when they closed; tracemalloc put 52 MiB in 410 such buffers. At
1,000 resources that first-round bulge was the operator's peak RSS.

`bounded_session` gives kopf a session of its own (`kopf.AiohttpSession`, returned by a login handler)
with the credentials, TLS context, headers and proxy kopf would have used, and a client middleware that
lets at most `max_requests` requests run at once. Watch requests are not counted: a watch holds its
connection for minutes, and with one watch per kind and namespace they could take every slot and block
the patches for good. The kubernetes client the reconciles use has its own pool (`kube_io`).
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import kopf

MAX_REQUESTS = int(os.environ.get("LAGPILOT_KOPF_API_REQUESTS", "128"))


def is_watch(request: aiohttp.ClientRequest) -> bool:
    return request.url.query.get("watch") in ("true", "1")


def request_bound(max_requests: int) -> aiohttp.ClientMiddlewareType:
    """A client middleware: a request other than a watch waits while `max_requests` are in flight. The slot
    is held until the response's headers are in; kopf reads the (small) body of a patch or a post at once."""
    slots = asyncio.Semaphore(max_requests)

    async def bounded(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if is_watch(request):
            return await handler(request)
        async with slots:
            return await handler(request)

    return bounded


def bounded_session(info: kopf.ConnectionInfo, max_requests: int = MAX_REQUESTS) -> kopf.AiohttpSession:
    """kopf's session for `info` as kopf 1.45 makes it (`kopf._cogs.clients.auth.APIContext`), its requests
    bounded."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),  # the Authorization header: a token, or basic auth (kopf 1.45)
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        middlewares=(request_bound(max_requests),),
    )
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, priority=info.priority,
                               default_namespace=info.default_namespace, expiration=info.expiration)
