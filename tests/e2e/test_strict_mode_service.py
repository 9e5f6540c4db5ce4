"""Strict mode cuts connections made through a Service address (DNAT in the node), masqueraded or not.

The lab's node namespace gets a kube-proxy-like nat table: 10.96.0.10:80 (TCP
and UDP) is DNAT'd to pod x/a, optionally masqueraded on its way. y/a opens
connections to the Service address; a deny written to the manifests folder
then has to cut them, although their conntrack entries' original destination
is the Service address, which no policy and no managed set knows.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from e2e_agentlab import AgentLab, agent_lab, deny_ingress, requires_root
from test_strict_mode import CUT_RE, _allow_from_namespace, _echo_all

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "y/a": ["10.244.2.10"]}
SERVICE = "10.96.0.10"


def add_service(env: AgentLab, masquerade: bool) -> None:
    """A nat table in the node namespace (the lab's own: it goes with the lab)."""
    table = f"knle2e-svc-{env.lab.lab_id}"
    endpoint = env.ip("x/a")
    script = f"""
table ip {table} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {SERVICE} tcp dport 80 dnat to {endpoint}:80
    ip daddr {SERVICE} udp dport 80 dnat to {endpoint}:80
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {"ct status dnat ip daddr " + endpoint + " masquerade" if masquerade else ""}
  }}
}}
"""
    done = subprocess.run(env.lab.node_command(["nft", "-f", "-"]), input=script, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


def connect_to_service(env: AgentLab, kind: int) -> socket.socket:
    sock = env.host_socket("y/a", socket.AF_INET, kind)
    sock.settimeout(5.0)
    sock.bind((env.ip("y/a"), 0))
    sock.connect((SERVICE, 80))
    return sock


def conntrack_destinations(env: AgentLab) -> set[str]:
    out = env.node(["conntrack", "-L", "-s", env.ip("y/a")], check=False).stdout
    return {field.split("=", 1)[1] for line in out.splitlines() for field in line.split()[4:6]
            if field.startswith("dst=")}


@pytest.mark.parametrize("masquerade", [False, True], ids=["dnat", "dnat+masquerade"])
def test_a_deny_cuts_tcp_and_udp_connections_through_a_service_address(masquerade: bool) -> None:
    with agent_lab(PODS, policies=[_allow_from_namespace("x", "a", "y")]) as env:
        add_service(env, masquerade)
        conns = [connect_to_service(env, socket.SOCK_STREAM) for _ in range(3)]
        conns += [connect_to_service(env, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            assert _echo_all(conns, b"before", wait=10.0) == [True] * len(conns)
            # The entries' original destination is the Service address, not the pod's.
            assert SERVICE in conntrack_destinations(env)

            env.apply(deny_ingress("x", "a"))  # returns once the agent's strict-mode pass is done

            assert _echo_all(conns, b"after", wait=1.0) == [False] * len(conns)
            assert sum(int(n) for n in CUT_RE.findall(env.agent.log_text())) >= len(conns)
        finally:
            for conn in conns:
                conn.close()
