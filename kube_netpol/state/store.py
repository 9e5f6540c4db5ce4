"""ClusterState: the one store every source writes and every evaluator reads.

Sources (the Kubernetes watch, a manifests folder, the conformance harness)
call ``apply``/``delete``/``replace`` from one control thread. The packet
thread only reads: every change swaps whole values in dicts (atomic under the
GIL) and PodInfo messages are rebuilt, never mutated, so a reader sees either
the old or the new object.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from kube_netpol.api.podinfo import PodInfo
from kube_netpol.policy.errors import InvalidObject
from kube_netpol.state.objects import (
    NamespaceRecord,
    NodeRecord,
    PodRecord,
    metadata_of,
    namespace_from_object,
    node_from_object,
    pod_from_object,
    rebuild_pod_info,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True, slots=True)
class Change:
    """One object added (old None), updated, or removed (new None)."""

    kind: str
    key: Key
    old: Any
    new: Any


Listener = Callable[[Change], None]


@dataclass(frozen=True)
class KindInfo:
    api_version: str
    namespaced: bool


#: The kinds the store understands, with the apiVersion it accepts for each.
KINDS: dict[str, KindInfo] = {
    "Namespace": KindInfo("v1", False),
    "Pod": KindInfo("v1", True),
    "Node": KindInfo("v1", False),
    "NetworkPolicy": KindInfo("networking.k8s.io/v1", True),
    "AdminNetworkPolicy": KindInfo("policy.networking.k8s.io/v1alpha1", False),
    "BaselineAdminNetworkPolicy": KindInfo("policy.networking.k8s.io/v1alpha1", False),
}
POLICY_KINDS = ("NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")


def _policy_parser(kind: str) -> Callable[[Mapping[str, Any]], Any]:
    # Imported on use so that the store does not depend on every policy module at import time.
    if kind == "NetworkPolicy":
        from kube_netpol.policy.networkpolicy import parse_network_policy

        return parse_network_policy
    from kube_netpol.policy import adminnetworkpolicy

    if kind == "AdminNetworkPolicy":
        return adminnetworkpolicy.parse_admin_network_policy
    return adminnetworkpolicy.parse_baseline_admin_network_policy


class ClusterState:
    """Pods, namespaces, nodes and parsed policies, plus the pod-by-address index."""

    def __init__(self, cluster_id: str = "", node_name: str = "") -> None:
        self.cluster_id = cluster_id
        self.node_name = node_name
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[Key, PodRecord] = {}
        self.policies: dict[str, dict[Key, Any]] = {kind: {} for kind in POLICY_KINDS}
        self.invalid_objects: collections.Counter[str] = collections.Counter()
        self.generation = 0
        self._pods_by_ip: dict[bytes, PodRecord] = {}
        # Every live pod claiming an address, so that the index can fall back to
        # another owner when the pod it points to goes away (a replaced pod
        # whose successor arrived first).
        self._ip_owners: dict[bytes, dict[Key, PodRecord]] = collections.defaultdict(dict)
        self._pods_by_namespace: dict[str, dict[str, PodRecord]] = collections.defaultdict(dict)
        self._listeners: list[Listener] = []
        self._invalid_listeners: list[Callable[[str, str, str], None]] = []

    # ----------------------------------------------------------------- reading

    def pod_info_by_ip(self, ip: bytes) -> PodInfo | None:
        pod = self._pods_by_ip.get(ip)
        return pod.info if pod is not None else None

    def pod_by_ip(self, ip: bytes) -> PodRecord | None:
        return self._pods_by_ip.get(ip)

    def pods_in_namespace(self, namespace: str) -> Iterable[PodRecord]:
        return self._pods_by_namespace.get(namespace, {}).values()

    def policy_objects(self, kind: str) -> Mapping[Key, Any]:
        return self.policies[kind]

    def local_pod_ips(self) -> set[bytes]:
        """Addresses of this node's pods (all pods when no node name is set)."""
        return {
            ip
            for ip, pod in self._pods_by_ip.items()
            if not self.node_name or pod.node_name == self.node_name
        }

    def iter_policy_targets(self) -> Iterator[PodRecord]:
        return (pod for pod in self.pods.values() if pod.is_policy_target)

    # ----------------------------------------------------------- subscriptions

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` after every change (from the control thread)."""
        self._listeners.append(listener)

    def subscribe_invalid(self, listener: Callable[[str, str, str], None]) -> None:
        """Call ``listener(kind, ref, reason)`` for every object refused."""
        self._invalid_listeners.append(listener)

    # ---------------------------------------------------------------- changing

    def apply(self, obj: Mapping[str, Any], kind: str | None = None) -> bool:
        """Create or replace one object. Returns False (after logging) if it was refused.

        ``kind`` is for list responses, whose items carry no kind. A refused
        update leaves the last accepted version of the object in force.
        """
        kind = kind or (obj.get("kind") if isinstance(obj, Mapping) else None)
        ref = _reference(obj)
        try:
            if not isinstance(obj, Mapping):
                raise InvalidObject("not an object")
            info = KINDS.get(kind or "")
            if info is None:
                raise InvalidObject(f"unsupported kind {kind!r} (supported: {', '.join(KINDS)})")
            api_version = obj.get("apiVersion")
            if api_version is not None and api_version != info.api_version:
                raise InvalidObject(f"unsupported apiVersion {api_version!r} for {kind} (expected {info.api_version})")
            assert kind is not None
            if kind == "Namespace":
                self._set_namespace(namespace_from_object(obj))
            elif kind == "Node":
                self._set_node(node_from_object(obj))
            elif kind == "Pod":
                self._set_pod(obj)
            else:
                parsed = _policy_parser(kind)(obj)
                key = (getattr(parsed, "namespace", "") or "", parsed.name)
                old = self.policies[kind].get(key)
                self.policies[kind][key] = parsed
                self._emit(Change(kind, key, old, parsed))
        except InvalidObject as err:
            self._refuse(kind or "object", ref, str(err))
            return False
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove an object; True if it existed."""
        key = (namespace or "", name)
        if kind == "Namespace":
            old_ns = self.namespaces.pop(name, None)
            if old_ns is None:
                return False
            # Rebuild the pods first: listeners read them when they hear of the change.
            self._refresh_namespace_pods(name)
            self._emit(Change(kind, ("", name), old_ns, None))
            return True
        if kind == "Node":
            old_node = self.nodes.pop(name, None)
            if old_node is None:
                return False
            self._refresh_node_pods(name)
            self._emit(Change(kind, ("", name), old_node, None))
            return True
        if kind == "Pod":
            old_pod = self.pods.pop(key, None)
            if old_pod is None:
                return False
            self._unindex_pod(old_pod)
            self._emit(Change(kind, key, old_pod, None))
            return True
        if kind in self.policies:
            old = self.policies[kind].pop(key, None)
            if old is None:
                return False
            self._emit(Change(kind, key, old, None))
            return True
        raise ValueError(f"unsupported kind {kind!r}")

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Make the objects of ``kind`` exactly ``objects`` (a fresh list after a relist)."""
        seen: set[Key] = set()
        for obj in objects:
            self.apply(obj, kind)
            meta = obj.get("metadata") or {}
            namespaced = KINDS[kind].namespaced
            seen.add(((meta.get("namespace") or "") if namespaced else "", meta.get("name") or ""))
        for key in list(self._keys_of(kind)):
            if key not in seen:
                self.delete(kind, key[0], key[1])

    # ---------------------------------------------------------------- internal

    def _keys_of(self, kind: str) -> Iterable[Key]:
        if kind == "Namespace":
            return [("", n) for n in self.namespaces]
        if kind == "Node":
            return [("", n) for n in self.nodes]
        if kind == "Pod":
            return list(self.pods)
        return list(self.policies[kind])

    def _refuse(self, kind: str, ref: str, reason: str) -> None:
        self.invalid_objects[kind] += 1
        log.warning("ignoring invalid %s %s: %s", kind, ref, reason, extra={"kind": kind, "object": ref})
        for listener in self._invalid_listeners:
            listener(kind, ref, reason)

    def _emit(self, change: Change) -> None:
        self.generation += 1
        for listener in self._listeners:
            listener(change)

    def _set_namespace(self, record: NamespaceRecord) -> None:
        old = self.namespaces.get(record.name)
        self.namespaces[record.name] = record
        if old is not None and old.labels == record.labels:
            return
        self._refresh_namespace_pods(record.name)
        self._emit(Change("Namespace", ("", record.name), old, record))

    def _set_node(self, record: NodeRecord) -> None:
        old = self.nodes.get(record.name)
        self.nodes[record.name] = record
        if old == record:
            return  # status heartbeats change nothing policies read; keep the verdict cache
        if old is None or old.labels != record.labels:
            self._refresh_node_pods(record.name)
        self._emit(Change("Node", ("", record.name), old, record))

    def _set_pod(self, obj: Mapping[str, Any]) -> None:
        ns_name, _, _ = metadata_of(obj, namespaced=True)
        spec = obj.get("spec") or {}
        node_name = spec.get("nodeName") if isinstance(spec, Mapping) else None
        node = self.nodes.get(node_name) if isinstance(node_name, str) else None
        record = pod_from_object(obj, self.namespaces.get(ns_name), node, self.cluster_id, time.time_ns())
        old = self.pods.get(record.key)
        if old is not None:
            self._unindex_pod(old)
        self.pods[record.key] = record
        self._index_pod(record)
        self._emit(Change("Pod", record.key, old, record))

    def _index_pod(self, pod: PodRecord) -> None:
        self._pods_by_namespace[pod.namespace][pod.name] = pod
        if pod.is_policy_target:
            for ip in pod.ips:
                self._ip_owners[ip][pod.key] = pod
                self._pods_by_ip[ip] = pod

    def _unindex_pod(self, pod: PodRecord) -> None:
        self._pods_by_namespace[pod.namespace].pop(pod.name, None)
        for ip in pod.ips:
            owners = self._ip_owners.get(ip)
            if owners is None:
                continue
            owners.pop(pod.key, None)
            if self._pods_by_ip.get(ip) is pod:
                if owners:
                    self._pods_by_ip[ip] = next(reversed(owners.values()))
                else:
                    del self._pods_by_ip[ip]
            if not owners:
                del self._ip_owners[ip]

    def _replace_pod_record(self, pod: PodRecord, new: PodRecord) -> None:
        self.pods[pod.key] = new
        self._pods_by_namespace[pod.namespace][pod.name] = new
        for ip in pod.ips:
            owners = self._ip_owners.get(ip)
            if owners is not None and pod.key in owners:
                owners[pod.key] = new
            if self._pods_by_ip.get(ip) is pod:
                self._pods_by_ip[ip] = new

    def _refresh_namespace_pods(self, namespace: str) -> None:
        ns = self.namespaces.get(namespace)
        now = time.time_ns()
        for pod in list(self.pods_in_namespace(namespace)):
            node = self.nodes.get(pod.node_name)
            self._replace_pod_record(pod, rebuild_pod_info(pod, ns, node, now))

    def _refresh_node_pods(self, node_name: str) -> None:
        node = self.nodes.get(node_name)
        now = time.time_ns()
        for pod in [p for p in self.pods.values() if p.node_name == node_name]:
            ns = self.namespaces.get(pod.namespace)
            self._replace_pod_record(pod, rebuild_pod_info(pod, ns, node, now))


def _reference(obj: object) -> str:
    """``namespace/name`` or ``name`` of an object, for log lines, whatever its shape."""
    if not isinstance(obj, Mapping):
        return "<not an object>"
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return "<no metadata>"
    name = meta.get("name") or "<no name>"
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)
