"""The node's small HTTP endpoint for operations: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

``/healthz`` answers 200 while the process runs its main loop (liveness: restart it if not).
``/readyz`` answers 200 only when the node can do its job: the DICOM listener is up, the journal
answers, and both model kinds are active; otherwise 503 with the reasons, so a load balancer or
an orchestrator sends no studies to a node that would only queue them. Bodies are JSON without
patient data. It binds to loopback by default (``[http] bind``): put a reverse proxy in front
if it must be reached from elsewhere.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger("mammo_node.http")


class HttpApi:
    """Serves the three endpoints from callables the node provides."""

    def __init__(self, bind: str, port: int, metrics: Callable[[], bytes],
                 health: Callable[[], dict[str, Any]], readiness: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, api.metrics(), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    self._send(200, json.dumps(api.health()).encode(), "application/json")
                elif path == "/readyz":
                    ready, body = api.readiness()
                    self._send(200 if ready else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep quiet
                log.debug("http: " + format, *args)

        self.metrics, self.health, self.readiness = metrics, health, readiness
        self._server = ThreadingHTTPServer((bind, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
