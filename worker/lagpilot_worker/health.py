"""One HTTP port for /healthz (liveness), /readyz (readiness) and /metrics (Prometheus)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    """Serves the probes and the metrics registry from a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, liveness: Probe, readiness: Probe) -> None:
        self._registry = registry
        self._liveness = liveness
        self._readiness = readiness
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    self._probe(server._liveness)
                elif path == "/readyz":
                    self._probe(server._readiness)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _probe(self, probe: Probe) -> None:
                try:
                    ok, detail = probe()
                except Exception as exc:   # a probe must answer, even when the worker is broken
                    ok, detail = False, {"error": str(exc)}
                body = json.dumps({"ok": ok, **detail}, default=str).encode() + b"\n"
                self._send(200 if ok else 503, body, "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass   # probes every few seconds would drown the logs

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="lagpilot-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
