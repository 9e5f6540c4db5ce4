"""The metrics/health server: endpoints, bounds on idle and slow clients, dual-stack default bind."""

from __future__ import annotations

import errno
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from kube_netpol.agent import http
from kube_netpol.agent.config import AgentConfig, parse_bind_address
from kube_netpol.agent.http import HttpLimits, HttpServer, bind_listener, serve_http

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: agent\r\n"  # the blank line that ends the headers never comes


def request(address: tuple[str, int], raw: bytes, source: str | None = None, timeout: float = 10.0) -> bytes:
    """Send ``raw``, return everything the server answers before closing."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect(address)
        sock.sendall(raw)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def get(address: tuple[str, int], path: str, source: str | None = None) -> tuple[int, bytes]:
    answer = request(address, f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode(), source)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def server() -> Iterator[HttpServer]:
    registry = CollectorRegistry()
    Counter("kube_network_policies_test", "a test counter", registry=registry).inc()
    state = {"healthy": True, "ready": False}
    srv = serve_http(("127.0.0.1", 0), lambda: state["healthy"], lambda: state["ready"], registry,
                     status=lambda: {"ready": state["ready"]})
    srv.state = state  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.shutdown()


def test_the_endpoints_answer_as_before(server: HttpServer) -> None:
    address = server.server_address[:2]
    assert get(address, "/healthz") == (200, b"ok\n")
    assert get(address, "/livez") == (200, b"ok\n")
    assert get(address, "/readyz") == (503, b"not ready\n")
    server.state["ready"] = True  # type: ignore[attr-defined]
    assert get(address, "/readyz?verbose") == (200, b"ok\n")
    server.state["healthy"] = False  # type: ignore[attr-defined]
    assert get(address, "/healthz") == (503, b"unhealthy\n")
    status, body = get(address, "/statusz")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, body = get(address, "/metrics")
    assert status == 200 and b"kube_network_policies_test_total 1.0" in body
    assert get(address, "/nope")[0] == 404


def test_bad_requests_get_a_clear_status(server: HttpServer) -> None:
    address = server.server_address[:2]
    assert request(address, b"POST /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert request(address, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    too_big = b"GET /healthz HTTP/1.1\r\nX: " + b"x" * 20000 + b"\r\n\r\n"
    assert request(address, too_big).startswith(b"HTTP/1.1 431 ")
    head = request(address, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body


def test_a_slow_client_is_closed_after_the_header_timeout() -> None:
    srv = serve_http(("127.0.0.1", 0), lambda: True, lambda: True, CollectorRegistry(),
                     limits=HttpLimits(header_timeout=0.3, request_timeout=1.0))
    try:
        with socket.create_connection(srv.server_address[:2], timeout=10) as sock:
            # Slowloris: a byte now and then keeps no timer of ours from running out.
            answer = b""
            for byte in HALF_SENT:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.05)
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert srv.timed_out == 1 and srv.connections() == 0
        assert get(srv.server_address[:2], "/healthz")[0] == 200
    finally:
        srv.shutdown()


def test_the_default_timeouts_bound_a_client_to_seconds() -> None:
    limits = HttpLimits()
    assert limits.header_timeout <= 10 and limits.request_timeout <= 30


def test_over_the_per_source_bound_a_connection_is_closed_at_once() -> None:
    srv = serve_http(("127.0.0.1", 0), lambda: True, lambda: True, CollectorRegistry(),
                     limits=HttpLimits(max_per_source=3))
    address = srv.server_address[:2]
    held = []
    try:
        for _ in range(3):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(HALF_SENT)
            held.append(sock)
        wait_for(lambda: srv.connections() == 3)
        with socket.create_connection(address, timeout=10) as fourth:
            assert read_all(fourth) == b""  # closed without an answer
        assert srv.refused == 1
        assert get(address, "/healthz", source="127.0.0.2")[0] == 200  # another source is served
    finally:
        for sock in held:
            sock.close()
        srv.shutdown()


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


CLIENTS = 5000
SOURCES = 200  # 25 clients from each of 127.1.0.1-200: under the per-source bound, far over the total one


def test_five_thousand_idle_clients_hold_no_threads_and_little_memory_and_healthz_answers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * CLIENTS + 1000  # both ends live in this process
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(needed, soft), max(needed, hard)))
        except (ValueError, OSError):
            pytest.skip(f"cannot raise the open file limit to {needed}")
    threads_before = threading.active_count()
    srv = serve_http(("127.0.0.1", 0), lambda: True, lambda: True, CollectorRegistry(),
                     limits=HttpLimits(listen_backlog=4096))
    address = srv.server_address[:2]
    clients: list[socket.socket] = []
    try:
        get(address, "/healthz")  # the worker thread exists from here on
        rss_before = rss_kib()
        for i in range(CLIENTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.1.0.{i % SOURCES + 1}", 0))
            sock.settimeout(10)
            sock.connect(address)
            try:
                sock.sendall(HALF_SENT)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed to make room already
            clients.append(sock)
        wait_for(lambda: srv.evicted + srv.connections() >= CLIENTS)
        held = srv.connections()
        assert held == srv.limits.max_connections  # the bound, not one per client
        assert srv.evicted == CLIENTS - held
        assert get(address, "/healthz", source="127.2.0.1") == (200, b"ok\n")
        # One loop thread and one answer thread, however many clients.
        assert threading.active_count() - threads_before <= 2
        # Measured: about 6 MiB for the 5,000 client sockets and the 512 held connections together
        # (the thread-per-connection server it replaces: 5,004 threads and 168 MiB).
        growth_mib = (rss_kib() - rss_before) / 1024
        assert growth_mib < 40, f"RSS grew {growth_mib:.0f} MiB"
    finally:
        for sock in clients:
            sock.close()
        srv.shutdown()


def test_the_default_bind_serves_ipv4_and_ipv6() -> None:
    if not socket.has_ipv6 or not _loopback6():
        pytest.skip("no IPv6 loopback here")
    assert AgentConfig().metrics_bind_address[0] == "" == parse_bind_address(":9080")[0]
    srv = serve_http(("", 0), lambda: True, lambda: True, CollectorRegistry())
    try:
        port = srv.server_address[1]
        assert get(("127.0.0.1", port), "/healthz")[0] == 200
        assert get(("::1", port), "/healthz")[0] == 200
    finally:
        srv.shutdown()


def _loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_without_ipv6_the_default_bind_falls_back_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args, **kwargs):  # type: ignore[no-untyped-def]
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(http.socket, "socket", no_ipv6)
    sock = bind_listener("", 0)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_a_given_address_is_bound_as_it_is(host: str, family: int) -> None:
    if family == socket.AF_INET6 and not _loopback6():
        pytest.skip("no IPv6 loopback here")
    sock = bind_listener(host, 0)
    try:
        assert sock.family == family and sock.getsockname()[0] == host
    finally:
        sock.close()
