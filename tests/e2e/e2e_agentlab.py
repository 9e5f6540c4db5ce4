"""Helpers of the end-to-end tests: the real agent process in a lab's node namespace, real traffic between pod namespaces.

Every test builds its own lab (unique namespace names, a table name of its
own) through ``agent_lab`` and tears it down on the way out, also when the
test fails; the teardown then checks that nothing of the lab is left in the
root namespace.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import pytest

from kube_netpol.tools.conformance.dataplane_agent import AgentProcess
from kube_netpol.tools.conformance.dataplane_leaks import root_leaks
from kube_netpol.tools.conformance.dataplane_manifests import ManifestFolder
from kube_netpol.tools.lab import Lab, Probe
from kube_netpol.tools.lab.netns import open_netns, socket_in

NODE = "e2e-node"
TOOLS = ("ip", "nft", "iptables", "ip6tables", "conntrack")

requires_root = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
        reason="needs root, iproute2, nft, iptables, ip6tables and conntrack",
    ),
]


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"ns": name, "kubernetes.io/metadata.name": name}}}


def pod_object(key: str, ips: Sequence[str], node: str = NODE) -> dict[str, Any]:
    namespace, name = key.split("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "agnhost"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


def deny_ingress(namespace: str, pod: str | None = None, name: str = "deny-ingress") -> dict[str, Any]:
    """Isolates the pod (or the whole namespace) for ingress, allowing nothing."""
    selector = {"matchLabels": {"pod": pod}} if pod else {}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"]}}


def allow_ingress_from_pod(
    namespace: str, pod: str, peer: str, name: str = "allow-from-peer", ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Isolates ``pod`` for ingress and admits only pod ``peer`` of the same namespace (on ``ports`` if given)."""
    policy = deny_ingress(namespace, pod, name)
    rule: dict[str, Any] = {"from": [{"podSelector": {"matchLabels": {"pod": peer}}}]}
    if ports is not None:
        rule["ports"] = ports
    policy["spec"]["ingress"] = [rule]
    return policy


#: Three pods in two namespaces, each with an IPv4 and an IPv6 address.
DUAL_STACK_PODS = {
    "x/a": ["10.244.1.10", "fd00:10:244:1::10"],
    "x/b": ["10.244.1.11", "fd00:10:244:1::11"],
    "y/a": ["10.244.2.10", "fd00:10:244:2::10"],
}
#: x/a admits x/b on TCP/80 only.
B_ON_TCP_80 = allow_ingress_from_pod("x", "a", "b", name="b-on-tcp-80", ports=[{"protocol": "TCP", "port": 80}])


@dataclass
class AgentLab:
    lab: Lab
    folder: ManifestFolder
    agent: AgentProcess
    pods: dict[str, list[str]]
    _workers: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="e2e-netns")
    )

    def objects(self, policies: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        namespaces = sorted({key.split("/")[0] for key in self.pods})
        return [namespace_object(ns) for ns in namespaces] + [
            pod_object(key, ips) for key, ips in self.pods.items()
        ] + list(policies)

    def apply(self, *policies: dict[str, Any]) -> None:
        """Write the pods plus ``policies`` as the whole cluster; return once the agent enforces them."""
        self.agent.wait_enforced(self.folder.write(self.objects(policies)))

    def ip(self, pod: str, version: int = 4) -> str:
        return self.lab.host(pod).ips_of(version)[0]

    def probe(self, src: str, dst: str, port: int = 80, protocol: str = "TCP", version: int = 4,
              timeout: float | None = None) -> bool:
        return self.lab.probe(src, self.ip(dst, version), port, protocol, timeout)

    def probe_many(self, pairs: Sequence[tuple[str, str]], port: int = 80, protocol: str = "TCP") -> list[bool]:
        return self.lab.probe_many([Probe(src, self.ip(dst), port, protocol) for src, dst in pairs])

    def host_socket(self, host: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A blocking socket living in ``host``'s namespace (made by a helper thread: setns moves only it)."""
        fd = open_netns(self.lab.host(host).netns)
        try:
            sock = self._workers.submit(socket_in, fd, family, kind, proto).result()
        finally:
            os.close(fd)
        sock.setblocking(True)
        return sock

    def node(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the node namespace."""
        return subprocess.run(self.lab.node_command(argv), capture_output=True, text=True, check=check, timeout=60)

    def host(self, name: str, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.lab.host_command(name, argv), capture_output=True, text=True, timeout=timeout)

    def counter_packets(self, name: str) -> int | None:
        """Packets the named counter of the agent's table holds; None when the table has no such counter."""
        listed = self.node(["nft", "-j", "list", "counter", "inet", self.agent.table, name], check=False)
        if listed.returncode != 0:
            return None
        return next(int(o["counter"]["packets"]) for o in json.loads(listed.stdout)["nftables"] if "counter" in o)

    def table_exists(self) -> bool:
        return self.node(["nft", "list", "table", "inet", self.agent.table], check=False).returncode == 0

    def xt_rules(self) -> list[str]:
        """Our rules (they carry the table name as comment) in every table of both families, in the node."""
        found = []
        for binary in ("iptables-save", "ip6tables-save"):
            lines = self.node([binary]).stdout.splitlines()
            found += [line for line in lines if line.startswith("-A ") and self.agent.table in line]
        return found


@contextmanager
def agent_lab(
    pods: dict[str, list[str]],
    served: Sequence[tuple[int, str]] = ((80, "TCP"), (80, "UDP")),
    *,
    fail_open: bool = False,
    strict_mode: bool = True,
    probe_timeout: float = 0.5,
    policies: Sequence[dict[str, Any]] = (),
    extra_args: Sequence[str] = (),
) -> Iterator[AgentLab]:
    """A lab with ``pods`` serving ``served``, the agent running and enforcing ``policies``."""
    folder = ManifestFolder()
    lab = Lab("knle2e", probe_timeout=probe_timeout)
    agent = None
    env = None
    failed = False
    try:
        folder.write([])
        agent = AgentProcess(lab, folder.path, folder.path.parent / f"{folder.path.name}.log", node_name=NODE,
                             table=f"knle2e-{lab.lab_id}", fail_open=fail_open, strict_mode=strict_mode,
                             extra_args=extra_args)
        lab.serve(served)
        for key, ips in pods.items():
            lab.add_host(key, ips)
        env = AgentLab(lab, folder, agent, dict(pods))
        env.agent.wait_enforced(folder.write(env.objects(policies)), timeout=20)
        yield env
    except BaseException:
        failed = True
        raise
    finally:
        if env is not None:
            env._workers.shutdown()
        if agent is not None:
            agent.stop()
            if failed:
                print(agent.log_tail(200))
        lab.close()
        folder.remove()
        if agent is not None:
            agent.log_path.unlink(missing_ok=True)
        leaks = root_leaks(lab.lab_id, f"knle2e-{lab.lab_id}")
        assert not leaks, leaks
