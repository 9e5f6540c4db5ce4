"""Egress by domain name with the real agent: a real DNS server's answer, through the queue, teaches the agent.

dnsmasq (a real DNS server process) answers at 10.96.0.10 outside the
cluster; x/a sends a real query from its namespace; the agent queues the
answer (the DNS observation), learns api.example.com -> 192.168.200.20 for
x/a, and x/a's next connection there is accepted by the names rule. x/b,
which did not ask, stays blocked. Runs with whichever queue backend the
kernel has (xt here).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

import pytest
from e2e_agentlab import agent_lab, requires_root

from kube_netpol.dns.message import parse_answer
from kube_netpol.tools.lab.dnswire import TYPE_A, query

pytestmark = [*requires_root, pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed")]

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"]}
DNS = "10.96.0.10"
API = "192.168.200.20"
POLICY: dict[str, Any] = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "x-names"},
    "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
             "egress": [
                 {"name": "dns", "action": "Accept", "to": [{"networks": [DNS + "/32"]}],
                  "protocols": [{"udp": {"destinationPort": {"number": 53}}}]},
                 {"name": "api", "action": "Accept", "to": [{"domainNames": ["api.example.com"]}]},
                 {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]},
             ]},
}  # fmt: skip


def resolve(env: Any, pod: str, name: str) -> bytes:
    sock = env.host_socket(pod, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(2.0)
        for attempt in range(5):
            sock.sendto(query(name, TYPE_A, 0x4000 + attempt), (DNS, 53))
            try:
                return sock.recv(4096)
            except TimeoutError:
                continue
        raise AssertionError(f"no DNS answer for {name} from {DNS}")
    finally:
        sock.close()


def test_a_real_answer_through_the_queue_teaches_the_agent() -> None:
    with agent_lab(PODS, served=((80, "TCP"),), policies=[POLICY], extra_args=("--observe-dns=true",)) as env:
        env.lab.add_host("api", [API])
        env.lab.add_host("dns", [DNS])
        server = subprocess.Popen(env.lab.host_command("dns", [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--bind-interfaces", f"--listen-address={DNS}", "--host-record=api.example.com," + API,
            "--local-ttl=300", "--user=root", "--pid-file=",
        ]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert not env.lab.probe("x/a", API, 80, "TCP"), "the name is not learnt yet"
            answer = parse_answer(resolve(env, "x/a", "api.example.com"))
            assert answer.addresses and answer.addresses[0][1][0] == (socket.inet_aton(API), 300)
            assert env.lab.probe("x/a", API, 80, "TCP"), "the answer taught the agent the name"
            assert not env.lab.probe("x/b", API, 80, "TCP"), "per pod: x/b did not ask"
        finally:
            server.terminate()
            server.wait(timeout=10)
