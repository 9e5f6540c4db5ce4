"""Shared pieces of the Kubernetes source tests: the agent's control loop in miniature and object builders."""

from __future__ import annotations

import ipaddress
import queue
import dataclasses
import time
from typing import Any, Callable

from kube_netpol.sources.kube_reflector import WatchSettings
from kube_netpol.state import ClusterState

ANP_API = "policy.networking.k8s.io/v1alpha1"

#: Small pages (to exercise continue), short backoff, short timeouts: every test runs in a few seconds.
#: Paged lists (the fallback protocol); STREAM streams the initial state (tests/k8s/test_watch_list.py).
FAST = WatchSettings(
    watch_list=False,
    page_size=2,
    watch_timeout=30,
    connect_timeout=1.0,
    list_read_timeout=2.0,
    watch_read_timeout=60.0,
    backoff_initial=0.02,
    backoff_max=0.2,
    healthy_watch=0.2,
)
#: FAST with watch-lists (pages of two still: the initial events are handed on two at a time).
STREAM = dataclasses.replace(FAST, watch_list=True, watch_list_silence=1.0, watch_list_timeout=5.0)


class Driver:
    """Runs a source the way the agent's control thread does: queued work, then poll(), every few ms."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.applied = 0

    def submit(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def start(self) -> None:
        self.source.start(self.submit)

    def step(self) -> None:
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            work()  # an exception fails the test: the source's work must not raise
            self.applied += 1
        self.source.poll()

    def run_until(self, condition: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
            time.sleep(0.005)

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(0.005)
        self.step()


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, ip: str, node: str = "node-1", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {"big": "x" * 2000},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "c", "image": "registry.example/app:1", "env": [{"name": "A", "value": "1"}],
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]},
            ],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def node(name: str, ip: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}


def network_policy(ns: str, name: str, types: tuple[str, ...] = ("Ingress",)) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, "policyTypes": list(types)}}


def admin_network_policy(name: str, priority: int) -> dict[str, Any]:
    return {"apiVersion": ANP_API, "kind": "AdminNetworkPolicy", "metadata": {"name": name},
            "spec": {"priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}}


def baseline_admin_network_policy(rule_names: tuple[str, ...] = ("deny",)) -> dict[str, Any]:
    return {"apiVersion": ANP_API, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}},
                     "ingress": [{"name": n, "action": "Deny", "from": [{"namespaces": {}}]} for n in rule_names]}}


ALL_KINDS = ("Namespace", "Node", "Pod", "NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")


def state_view(state: ClusterState) -> dict[str, dict[tuple[str, str], Any]]:
    """What the state holds, per kind, in a comparable form."""
    return {
        "Namespace": {("", n): {k: v for k, v in r.labels.items() if k != "kubernetes.io/metadata.name"}
                      for r in state.namespaces() for n in [r.name]},
        "Node": {("", r.name): (dict(r.labels), r.ips) for r in state.nodes()},
        "Pod": {r.key: (dict(r.labels), r.ips, r.node_name) for r in state.pods()},
        "NetworkPolicy": {k: p.policy_types for k, p in state.objects("NetworkPolicy").items()},
        "AdminNetworkPolicy": {k: p.priority for k, p in state.objects("AdminNetworkPolicy").items()},
        "BaselineAdminNetworkPolicy": {k: tuple(r.name for r in p.ingress)
                                       for k, p in state.objects("BaselineAdminNetworkPolicy").items()},
    }


def server_view(objects_of: Callable[[str], list[dict[str, Any]]]) -> dict[str, dict[tuple[str, str], Any]]:
    """The same view computed from the fake API server's objects (all assumed valid)."""
    view: dict[str, dict[tuple[str, str], Any]] = {kind: {} for kind in ALL_KINDS}
    for obj in objects_of("Namespace"):
        view["Namespace"][("", obj["metadata"]["name"])] = obj["metadata"].get("labels") or {}
    for obj in objects_of("Node"):
        ips = tuple(packed(a["address"]) for a in obj["status"]["addresses"] if a["type"] == "InternalIP")
        view["Node"][("", obj["metadata"]["name"])] = (obj["metadata"].get("labels") or {}, ips)
    for obj in objects_of("Pod"):
        meta = obj["metadata"]
        ips = tuple(packed(entry["ip"]) for entry in obj["status"]["podIPs"])
        view["Pod"][(meta["namespace"], meta["name"])] = (meta.get("labels") or {}, ips, obj["spec"]["nodeName"])
    for obj in objects_of("NetworkPolicy"):
        meta = obj["metadata"]
        view["NetworkPolicy"][(meta["namespace"], meta["name"])] = tuple(obj["spec"]["policyTypes"])
    for obj in objects_of("AdminNetworkPolicy"):
        view["AdminNetworkPolicy"][("", obj["metadata"]["name"])] = obj["spec"]["priority"]
    for obj in objects_of("BaselineAdminNetworkPolicy"):
        view["BaselineAdminNetworkPolicy"][("", "default")] = tuple(r["name"] for r in obj["spec"]["ingress"])
    return view
