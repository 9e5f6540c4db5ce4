"""Odd packets on the wire: a malformed flood leaves the verdict loop alive, extension headers are read."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from e2e_agentlab import B_ON_TCP_80, DUAL_STACK_PODS, AgentLab, agent_lab, requires_root

pytestmark = requires_root

FLOOD_SCRIPT = Path(__file__).with_name("e2e_malformed_flood.py")
PODS = DUAL_STACK_PODS
POLICY = B_ON_TCP_80
COPIES = 20


def verdicts(env: AgentLab) -> dict[str, int]:
    status = env.agent.status()
    assert status is not None, "the agent does not answer /statusz"
    return dict(status["verdicts"])


def test_malformed_flood_leaves_the_verdict_loop_alive_and_judging() -> None:
    with agent_lab(PODS, policies=[POLICY]) as env:
        before = verdicts(env)
        flood = env.host("x/b", [sys.executable, str(FLOOD_SCRIPT), env.ip("x/b"), env.ip("x/a"),
                                 env.ip("x/b", 6), env.ip("x/a", 6), str(COPIES)])
        assert flood.returncode == 0, flood.stderr
        sent = int(flood.stdout)
        assert sent > 1000

        assert env.agent.running
        assert env.agent.http_get("/healthz")[0] == 200
        # Good connections are still judged, in both families: x/b is admitted on TCP/80, nothing else is.
        for version in (4, 6):
            assert env.probe("x/b", "x/a", version=version), f"IPv{version}"
            assert not env.probe("y/a", "x/a", version=version), f"IPv{version}"
            assert not env.probe("x/b", "x/a", protocol="UDP", version=version), f"IPv{version}"
        after = verdicts(env)
        # The flood reached the loop (the node's conntrack holds back some, e.g. lone fragments),
        # and the packets it cannot parse were counted as errors, not crashes.
        judged = sum(after.values()) - sum(before.values())
        print(f"sent {sent}, verdicts before {before}, after {after}")
        assert judged > sent // 2, (before, after, sent)
        assert after["errors"] - before["errors"] >= COPIES, (before, after)
        assert "Traceback" not in env.agent.log_text()


def destination_options(total: int) -> bytes:
    """A Destination Options header of ``total`` bytes (a multiple of 8) filled with options to skip.

    Option type 0x1e (RFC 4727, experimental) has its two high bits clear: receivers skip it.
    """
    assert total % 8 == 0 and total >= 8
    options = b""
    remaining = total - 2  # after next header and length
    while remaining:
        size = min(255, remaining - 2)
        if remaining - (size + 2) == 1:
            size -= 1  # never leave a single byte: an option needs two
        options += bytes([0x1E, size]) + bytes(size)
        remaining -= size + 2
    return bytes([0, total // 8 - 1]) + options


@pytest.mark.parametrize("options_bytes", [8, 88, 512])
def test_connections_with_long_extension_header_chains_are_judged_by_their_ports(options_bytes: int) -> None:
    # Fail-open: a packet the agent could not read would be let through, so reading it is what denies it.
    with agent_lab(PODS, fail_open=True, policies=[POLICY]) as env:

        def connects(src: str) -> bool:
            sock = env.host_socket(src, socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, destination_options(options_bytes))
                sock.settimeout(0.5)
                sock.bind((env.ip(src, 6), 0))
                sock.connect((env.ip("x/a", 6), 80))
                sock.sendall(b"hello")
                return sock.recv(16) == b"hello"
            except OSError:
                return False
            finally:
                sock.close()

        assert connects("x/b")
        assert not connects("y/a")
        assert verdicts(env)["errors"] == 0
