"""/metrics, /healthz, /readyz and /statusz on the metrics bind address.

/statusz is JSON for tools that drive the agent (the lab waits on it until the
agent enforces exactly the manifests it wrote).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry

from kube_netpol.observability.exposition import CONTENT_TYPE, generate_text


def serve_http(
    address: tuple[str, int],
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    registry: CollectorRegistry = REGISTRY,
    status: Callable[[], Mapping[str, Any]] | None = None,
) -> ThreadingHTTPServer:
    """Start the server on a daemon thread; ``shutdown()`` the result to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_text(registry), CONTENT_TYPE)
            elif path in ("/healthz", "/livez"):
                ok = healthy()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                ok = ready()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
            elif path == "/statusz" and status is not None:
                self._reply(200, json.dumps(status()).encode() + b"\n", "application/json")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would flood the log

    host, port = address
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = V6Server
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    # shutdown() waits for the serving loop to notice; its default 0.5 s poll would delay every agent exit.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True).start()
    return server
