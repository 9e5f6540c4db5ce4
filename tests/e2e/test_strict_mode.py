"""Strict mode: an established connection that a new policy denies is cut; without strict mode it stays."""

from __future__ import annotations

import socket
import time

import pytest
from e2e_agentlab import agent_lab, deny_ingress, requires_root

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"]}


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

            written = time.monotonic()
            env.apply(deny_ingress("x", "a"))  # returns once the dataplane, and in strict mode conntrack, follow
            enforced = time.monotonic() - written
            assert enforced < 1.0, f"the deny policy took {enforced:.2f} s to be enforced"
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
