"""/metrics, /healthz, /livez, /readyz and /statusz on the metrics bind address.

/statusz is JSON for tools that drive the agent (the lab waits on it until the
agent enforces exactly the manifests it wrote).

Every pod of the node can reach this server (the DaemonSet is hostNetwork), so
it holds nothing per client beyond a bounded buffer, and no client for long:
one asyncio loop on one thread serves every connection (an idle client costs a
few KiB, not a thread), answers come from one worker thread (a /metrics scrape
must not stall the loop), a client must send its request headers within
``header_timeout`` and be done within ``request_timeout``, and connections are
bounded per source address (beyond, closed at once) and in all (beyond, the
oldest one still waiting for its request is closed to make room, so that the
kubelet's probe is answered while idle clients pile up). One request per
connection (``Connection: close``): probes and scrapes reconnect anyway.

An unspecified host (``:9080``, ``0.0.0.0:9080``, ``[::]:9080``) listens on
IPv4 and IPv6 with one dual-stack socket, as the reference's Go listener
does; where the kernel has no IPv6, on IPv4 alone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry

from kube_netpol.observability.exposition import CONTENT_TYPE, generate_text

log = logging.getLogger(__name__)

_UNSPECIFIED: Final = ("", "0.0.0.0", "::")
_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    #: Seconds a client has to send its request line and headers.
    header_timeout: float = 5.0
    #: Seconds from accepting a connection to the last byte of the answer.
    request_timeout: float = 15.0
    #: Connections held at once; beyond, the oldest one still waiting for its request is closed.
    max_connections: int = 512
    #: Connections held at once from one source address; beyond, a new one is closed at once.
    max_per_source: int = 32
    #: Bytes of request line and headers.
    max_header_bytes: int = 8192
    listen_backlog: int = 128

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.request_timeout) <= 0 or self.header_timeout > self.request_timeout:
            raise ValueError("timeouts must be positive, the header timeout at most the request timeout")
        if min(self.max_connections, self.max_per_source, self.max_header_bytes, self.listen_backlog) < 1:
            raise ValueError("limits must be at least 1")


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket: dual-stack for an unspecified host (IPv4 alone without IPv6), else that address."""
    if host in _UNSPECIFIED:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise
            log.info("no IPv6 in this kernel: serving HTTP on IPv4 only")
            return _listen(socket.AF_INET, ("0.0.0.0", port), backlog)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            return _listen_on(sock, ("::", port), backlog)
        except OSError as e:
            sock.close()
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
            log.info("IPv6 is disabled here: serving HTTP on IPv4 only")
            return _listen(socket.AF_INET, ("0.0.0.0", port), backlog)
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # a host name
    return _listen(family, (host, port), backlog)


def _listen(family: int, address: tuple[str, int], backlog: int) -> socket.socket:
    return _listen_on(socket.socket(family, socket.SOCK_STREAM), address, backlog)


def _listen_on(sock: socket.socket, address: tuple[str, int], backlog: int) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _RequestError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class HttpServer:
    """The endpoints on one listening socket, served from a daemon thread; ``shutdown()`` stops it."""

    def __init__(
        self,
        sock: socket.socket,
        routes: Callable[[str], tuple[int, bytes, str]],
        limits: HttpLimits = HttpLimits(),
    ) -> None:
        self._sock = sock
        self._routes = routes
        self.limits = limits
        self.server_address: tuple[Any, ...] = sock.getsockname()
        self._loop = asyncio.new_event_loop()
        # Answers are built here, off the loop: a slow /metrics scrape does not stall other clients.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="http-answer")
        # Connection task -> (source, writer); those still waiting for their request in arrival order.
        self._held: dict[asyncio.Task[None], tuple[str, asyncio.StreamWriter]] = {}
        self._waiting: collections.OrderedDict[asyncio.Task[None], None] = collections.OrderedDict()
        self._per_source: collections.Counter[str] = collections.Counter()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self.refused = 0  # connections closed at once: over the per-source bound
        self.evicted = 0  # connections closed to make room: over the total bound
        self.timed_out = 0

    def start(self) -> HttpServer:
        self._thread.start()
        self._started.wait()
        return self

    def shutdown(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def connections(self) -> int:
        """Connections held now (for tests and a gauge)."""
        return len(self._held)

    # --- the loop thread ------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accepted, sock=self._sock, limit=self.limits.max_header_bytes,
                                 backlog=self.limits.listen_backlog)
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = list(self._held)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self._per_source[source] >= self.limits.max_per_source:
            self.refused += 1
            writer.transport.abort()
            return
        if len(self._held) >= self.limits.max_connections:
            if not self._waiting:
                self.refused += 1
                writer.transport.abort()
                return
            oldest = next(iter(self._waiting))
            _, oldest_writer = self._held[oldest]
            self._release(oldest)  # its slot is free now, not when its task next runs
            oldest_writer.transport.abort()
            oldest.cancel()
            self.evicted += 1
        task = self._loop.create_task(self._serve(reader, writer))
        self._held[task] = (source, writer)
        self._waiting[task] = None
        self._per_source[source] += 1

    def _release(self, task: asyncio.Task[None]) -> None:
        """Forget a connection (once: eviction and the task's end both call this)."""
        held = self._held.pop(task, None)
        self._waiting.pop(task, None)
        if held is not None:
            source = held[0]
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                try:
                    try:
                        async with asyncio.timeout(self.limits.header_timeout):
                            method, path = await self._read_request(reader)
                    except TimeoutError:
                        self.timed_out += 1
                        raise _RequestError(408) from None
                    finally:
                        self._waiting.pop(task, None)
                    status, body, content_type = await self._loop.run_in_executor(self._worker, self._answer, path)
                    head = method == "HEAD"
                except _RequestError as e:
                    status, body, content_type, head = e.status, f"{_REASONS[e.status].lower()}\n".encode(), _TEXT, False
                await self._send(writer, status, body, content_type, head)
                writer.close()
                await writer.wait_closed()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            self.timed_out += 1
        except asyncio.CancelledError:
            pass  # evicted to make room, or shutting down
        finally:
            self._release(task)
            if not writer.is_closing():
                writer.transport.abort()

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        try:
            return self._routes(path)
        except Exception:  # noqa: BLE001 - one failing endpoint must not stop the server
            log.exception("HTTP %s failed", path)
            return 500, b"internal server error\n", _TEXT

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _RequestError(431) from None
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise _RequestError(400) from None
            raise
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _RequestError(400)
        method = parts[0].decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            raise _RequestError(405)
        return method, parts[1].decode("ascii", "replace").split("?", 1)[0]

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                    head: bool = False) -> None:
        header = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
        writer.write(header if head else header + body)
        await writer.drain()


def agent_routes(
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    registry: CollectorRegistry = REGISTRY,
    status: Callable[[], Mapping[str, Any]] | None = None,
) -> Callable[[str], tuple[int, bytes, str]]:
    """path -> (status, body, content type): what each endpoint answers."""

    def route(path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_text(registry), CONTENT_TYPE
        if path in ("/healthz", "/livez"):
            ok = healthy()
            return (200, b"ok\n", _TEXT) if ok else (503, b"unhealthy\n", _TEXT)
        if path == "/readyz":
            ok = ready()
            return (200, b"ok\n", _TEXT) if ok else (503, b"not ready\n", _TEXT)
        if path == "/statusz" and status is not None:
            return 200, json.dumps(status()).encode() + b"\n", "application/json"
        return 404, b"not found\n", _TEXT

    return route


def serve_http(
    address: tuple[str, int],
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    registry: CollectorRegistry = REGISTRY,
    status: Callable[[], Mapping[str, Any]] | None = None,
    limits: HttpLimits = HttpLimits(),
) -> HttpServer:
    """Start the server on a daemon thread; ``shutdown()`` the result to stop it."""
    host, port = address
    sock = bind_listener(host, port, limits.listen_backlog)
    return HttpServer(sock, agent_routes(healthy, ready, registry, status), limits).start()
