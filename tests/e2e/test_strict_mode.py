"""Strict mode: an established connection that a new policy denies is cut; without strict mode it stays."""

from __future__ import annotations

import re
import selectors
import socket
import time

import pytest
from e2e_agentlab import AgentLab, agent_lab, deny_ingress, requires_root

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"]}
DUAL_STACK_PODS = {"x/a": ["10.244.1.10", "fd00:10:244:1::10"], "y/a": ["10.244.2.10", "fd00:10:244:2::10"]}
#: What the agent logs after a strict-mode pass that deleted conntrack entries.
CUT_RE = re.compile(r"strict mode: cut (\d+) connection")


def echo(sock: socket.socket, payload: bytes) -> bytes | None:
    """Send ``payload`` and read its echo; None when nothing comes back in time."""
    sock.sendall(payload)
    try:
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(len(payload) - len(received))
            if not chunk:
                return None
            received += chunk
        return received
    except (TimeoutError, ConnectionError):
        return None


@pytest.mark.parametrize("strict_mode", [True, False])
def test_deny_policy_cuts_an_established_connection_only_in_strict_mode(strict_mode: bool) -> None:
    # x/a is selected from the start and admits namespace y: the connection is judged and accepted.
    with agent_lab(PODS, strict_mode=strict_mode, policies=[_allow_from_namespace("x", "a", "y")]) as env:
        conn = env.host_socket("y/a", socket.AF_INET, socket.SOCK_STREAM)
        try:
            conn.settimeout(1.0)
            conn.bind((env.ip("y/a"), 0))
            conn.connect((env.ip("x/a"), 80))
            assert echo(conn, b"before") == b"before"

            env.apply(deny_ingress("x", "a"))  # returns once the dataplane, and in strict mode conntrack, follow
            conn.settimeout(1.0)
            if strict_mode:
                # Its conntrack entry is gone: the next segment is new, judged, and dropped.
                assert echo(conn, b"after") is None
            else:
                assert echo(conn, b"after") == b"after"
            # New connections are denied either way.
            assert not env.probe("y/a", "x/a")
        finally:
            conn.close()


def _allow_from_namespace(namespace: str, pod: str, peer_namespace: str) -> dict:  # type: ignore[type-arg]
    policy = deny_ingress(namespace, pod, name=f"allow-from-{peer_namespace}")
    policy["spec"]["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"ns": peer_namespace}}}]}]
    return policy


def test_a_deny_cuts_every_one_of_many_open_connections_and_leaves_closed_ones() -> None:
    with agent_lab(DUAL_STACK_PODS, policies=[_allow_from_namespace("x", "a", "y")]) as env:
        kinds = [(4, socket.SOCK_STREAM)] * 120 + [(6, socket.SOCK_STREAM)] * 40
        kinds += [(4, socket.SOCK_DGRAM)] * 10 + [(6, socket.SOCK_DGRAM)] * 10
        conns = [_connect(env, version, kind) for version, kind in kinds]
        # Closed connections leave TIME_WAIT entries: nothing to cut there.
        for _ in range(10):
            _close_gracefully(_connect(env, 4, socket.SOCK_STREAM))
        try:
            assert _echo_all(conns, b"before", wait=10.0) == [True] * len(conns)
            cut_before = _connections_cut(env)

            env.apply(deny_ingress("x", "a"))  # returns once the agent's strict-mode pass is done

            # Every entry is gone: each next segment or datagram is new, judged, and dropped.
            assert _echo_all(conns, b"after", wait=1.0) == [False] * len(conns)
            assert _connections_cut(env) - cut_before == len(conns)
        finally:
            for conn in conns:
                conn.close()


def _connect(env: AgentLab, version: int, kind: int) -> socket.socket:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    sock = env.host_socket("y/a", family, kind)
    sock.settimeout(5.0)
    sock.bind((env.ip("y/a", version), 0))
    sock.connect((env.ip("x/a", version), 80))
    return sock


def _close_gracefully(sock: socket.socket) -> None:
    """Close from our side and wait for the server's close, so that conntrack sees the whole teardown."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1024):
        pass
    sock.close()


def _echo_all(conns: list[socket.socket], payload: bytes, wait: float) -> list[bool]:
    """Send ``payload`` on every connection at once; which ones echo it within ``wait`` seconds."""
    received = {conn: b"" for conn in conns}
    with selectors.DefaultSelector() as selector:
        for conn in conns:
            conn.setblocking(False)
            conn.send(payload)
            selector.register(conn, selectors.EVENT_READ)
        deadline = time.monotonic() + wait
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = conn.recv(len(payload))
                except (BlockingIOError, InterruptedError):
                    continue
                received[conn] += chunk
                if not chunk or len(received[conn]) >= len(payload):
                    selector.unregister(conn)
    return [received[conn] == payload for conn in conns]


def _connections_cut(env: AgentLab) -> int:
    return sum(int(n) for n in CUT_RE.findall(env.agent.log_text()))


def test_a_deny_written_while_no_agent_ran_cuts_the_connection_at_start_up() -> None:
    from kube_netpol.tools.conformance.dataplane_agent import AgentProcess

    # Failing open, a stopped agent leaves its rules and the kernel lets diverted packets through (bypass).
    with agent_lab(PODS, fail_open=True, policies=[_allow_from_namespace("x", "a", "y")]) as env:
        conn = env.host_socket("y/a", socket.AF_INET, socket.SOCK_STREAM)
        try:
            conn.settimeout(1.0)
            conn.bind((env.ip("y/a"), 0))
            conn.connect((env.ip("x/a"), 80))
            assert echo(conn, b"before") == b"before"
            first = env.agent
            assert first.stop() == 0
            # The deny is written while no agent runs: no change will come after the next one starts.
            revision = env.folder.write(env.objects([deny_ingress("x", "a")]))
            assert echo(conn, b"meanwhile") == b"meanwhile"  # nobody judges: the connection is still open
            env.agent = AgentProcess(first.lab, env.folder.path, first.log_path, node_name=first.node_name,
                                     table=first.table, fail_open=True, strict_mode=True)
            env.agent.wait_enforced(revision, timeout=20)
            conn.settimeout(1.0)
            assert echo(conn, b"after") is None  # cut by the start-up pass
            assert CUT_RE.search(env.agent.log_tail(200))
        finally:
            conn.close()
