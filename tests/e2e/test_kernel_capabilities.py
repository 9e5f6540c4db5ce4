"""What the agent makes of the kernel it runs on: the queue backend ``auto`` picks, and real SCTP associations.

Both run everywhere the e2e tests run. On this project's VMs the kernel has no
nftables ``queue`` expression and no SCTP sockets, so ``auto`` must pick xt and
the SCTP test skips; the real-kernel tier (tests/realkernel) runs them on
Debian's kernel, where ``auto`` must pick nft and SCTP associations are real.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from e2e_agentlab import AgentLab, agent_lab, allow_ingress_from_pod, requires_root

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"]}
SCTP_PORT = 80


def kernel_has_native_queue(env: AgentLab) -> bool:
    """Independent oracle: does the nft CLI accept (``-c``, nothing is committed) a rule with a queue statement?"""
    probe = "add table inet kn_oracle\nadd chain inet kn_oracle c\nadd rule inet kn_oracle c queue num 0\n"
    result = subprocess.run(env.lab.node_command(["nft", "-c", "-f", "-"]), input=probe, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    if result.returncode != 0:
        assert "No such file or directory" in result.stderr, result.stderr
    return result.returncode == 0


def test_auto_picks_the_native_queue_backend_exactly_when_the_kernel_has_it() -> None:
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")]) as env:
        expected = "nft" if kernel_has_native_queue(env) else "xt"
        status = env.agent.status()
        assert status is not None and status["queue_backend"] == expected
        assert f"queue backend {expected}" in env.agent.log_text()
        # Whichever it is, it enforces.
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")]) == [True, False]
        if expected == "nft":
            assert env.xt_rules() == [], "the native backend must not add xtables rules"
        else:
            assert env.xt_rules()


def _release_before_6_12(release: str) -> bool:
    """Independent oracle for ``auto``: the release's first two numbers, compared by hand."""
    major, minor = release.split("-", 1)[0].split(".")[:2]
    return (int(major), int(minor)) < (6, 12)


def test_auto_turns_the_bug_1766_workaround_on_exactly_before_kernel_6_12() -> None:
    """The default ``--netfilter-bug-1766-fix=auto``: the prerouting chain (and with xt its mangle PREROUTING
    rules) exists on kernels before 6.12 and not after (the lab: 6.18; the real-kernel tier: Debian's 6.1)."""
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    with agent_lab(PODS, served=((80, "TCP"), (53, "UDP")), policies=[allow_ingress_from_pod("x", "a", "b")]) as env:
        expected = _release_before_6_12(release)
        table = env.node(["nft", "list", "table", "inet", env.agent.table]).stdout
        assert ("chain prerouting {" in table) is expected, table
        assert f"netfilter bug 1766 workaround {'on' if expected else 'off'}: kernel {release}" in env.agent.log_text()
        if env.agent.status()["queue_backend"] == "xt":
            assert any("PREROUTING" in rule for rule in env.xt_rules()) is expected, env.xt_rules()
        # Either way DNS is judged: a UDP request to port 53 of a pod the policy does not admit it from is dropped.
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")], port=53, protocol="UDP") == [True, False]


def _kernel_has_sctp_sockets() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


def _sctp_connects(env: AgentLab, src: str, dst: str) -> bool:
    """A real SCTP association (INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK) from ``src`` to ``dst``'s listener."""
    sock = env.host_socket(src, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    try:
        sock.settimeout(1.0)  # less than rto_initial (3 s): a dropped INIT is not resent
        sock.bind((env.ip(src), 0))
        sock.connect((env.ip(dst), SCTP_PORT))
        return True
    except (TimeoutError, ConnectionError):
        return False
    finally:
        sock.close()


@pytest.mark.skipif(not _kernel_has_sctp_sockets(), reason="this kernel has no SCTP sockets (CONFIG_IP_SCTP); "
                    "the real-kernel tier runs this test")  # fmt: skip
def test_real_sctp_associations_follow_the_policy() -> None:
    policy = allow_ingress_from_pod("x", "a", "b", ports=[{"protocol": "SCTP", "port": SCTP_PORT}])
    with agent_lab(PODS, served=[(SCTP_PORT, "TCP")], policies=[policy]) as env:
        listener = env.host_socket("x/a", socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        try:
            listener.bind((env.ip("x/a"), SCTP_PORT))
            listener.listen(8)  # the kernel completes associations without accept()
            assert _sctp_connects(env, "x/b", "x/a")
            assert not _sctp_connects(env, "y/a", "x/a")
            # The policy admits SCTP only: TCP to the same port from the same peer is denied.
            assert not env.probe("x/b", "x/a", port=SCTP_PORT, protocol="TCP")
            assert env.probe("x/b", "y/a", port=SCTP_PORT, protocol="TCP")
        finally:
            listener.close()
