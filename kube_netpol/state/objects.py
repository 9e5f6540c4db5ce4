"""Pods, namespaces and nodes reduced to what policy evaluation needs.

Built from Kubernetes JSON (a dict as the API server or a manifest gives it);
malformed objects raise InvalidObject.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.api.podinfo import Namespace, Node, PodInfo
from kube_netpol.policy.errors import InvalidObject

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    labels: Mapping[str, str]
    ips: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PodRecord:
    """One pod. ``info`` is rebuilt (never mutated) when the pod or its namespace changes."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[bytes, ...]
    node_name: str
    host_network: bool
    terminal: bool
    container_ports: tuple[tuple[str, int, str], ...]  # (name, port, protocol)
    info: PodInfo

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def is_policy_target(self) -> bool:
        """hostNetwork pods share the node's addresses and are not pods for policy purposes."""
        return not self.host_network and not self.terminal


def metadata_of(obj: Mapping[str, Any], namespaced: bool) -> tuple[str, str, dict[str, str]]:
    """(namespace, name, labels) of an object, validated."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidObject("metadata is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("metadata.name is required")
    namespace = meta.get("namespace") or ""
    if namespaced and not namespace:
        raise InvalidObject("metadata.namespace is required")
    if not isinstance(namespace, str):
        raise InvalidObject("metadata.namespace must be a string")
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidObject("metadata.labels must map strings to strings")
    return (namespace if namespaced else "", name, dict(labels))


def _packed(text: object, where: str) -> bytes:
    try:
        return ipaddress.ip_address(text).packed  # type: ignore[arg-type]
    except ValueError:
        raise InvalidObject(f"invalid IP address {text!r}", where) from None


def namespace_from_object(obj: Mapping[str, Any]) -> NamespaceRecord:
    _, name, labels = metadata_of(obj, namespaced=False)
    # The API server always sets this label; objects from manifests may lack it.
    labels["kubernetes.io/metadata.name"] = name
    return NamespaceRecord(name, labels)


def node_from_object(obj: Mapping[str, Any]) -> NodeRecord:
    _, name, labels = metadata_of(obj, namespaced=False)
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        raise InvalidObject("must be an object", "status")
    addresses = status.get("addresses") or []
    if not isinstance(addresses, list):
        raise InvalidObject("must be a list", "status.addresses")
    ips = tuple(
        _packed(a.get("address"), "status.addresses")
        for a in addresses
        if isinstance(a, Mapping) and a.get("type") in _NODE_ADDRESS_TYPES
    )
    return NodeRecord(name, labels, ips)


def pod_from_object(
    obj: Mapping[str, Any],
    namespace: NamespaceRecord | None,
    node: NodeRecord | None,
    cluster_id: str,
    now_ns: int,
) -> PodRecord:
    ns_name, name, labels = metadata_of(obj, namespaced=True)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise InvalidObject("spec and status must be objects")
    pod_ips = status.get("podIPs") or []
    if not isinstance(pod_ips, list):
        raise InvalidObject("must be a list", "status.podIPs")
    ip_texts: list[object] = [entry.get("ip") if isinstance(entry, Mapping) else entry for entry in pod_ips]
    if not ip_texts and status.get("podIP"):
        ip_texts = [status["podIP"]]
    ips = tuple(dict.fromkeys(_packed(text, "status.podIPs") for text in ip_texts))
    ports: list[tuple[str, int, str]] = []
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        raise InvalidObject("must be a list", "spec.containers")
    for c, container in enumerate(containers):
        if not isinstance(container, Mapping):
            raise InvalidObject("must be an object", f"spec.containers[{c}]")
        container_ports = container.get("ports") or []
        if not isinstance(container_ports, list):
            raise InvalidObject("must be a list", f"spec.containers[{c}].ports")
        for p, port in enumerate(container_ports):
            where = f"spec.containers[{c}].ports[{p}]"
            if not isinstance(port, Mapping):
                raise InvalidObject("must be an object", where)
            number = port.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                raise InvalidObject(f"invalid containerPort {number!r}", where)
            protocol = port.get("protocol") or "TCP"
            if protocol not in ("TCP", "UDP", "SCTP"):
                raise InvalidObject(f"unsupported protocol {protocol!r}", where)
            port_name = port.get("name") or ""
            if not isinstance(port_name, str):
                raise InvalidObject(f"invalid port name {port_name!r}", where)
            ports.append((port_name, number, protocol))
    node_name = spec.get("nodeName") or ""
    if not isinstance(node_name, str):
        raise InvalidObject("must be a string", "spec.nodeName")
    info = PodInfo(name=name, labels=labels, last_updated=now_ns, cluster_id=cluster_id)
    info.namespace.name = ns_name
    if namespace is not None:
        info.namespace.labels.update(namespace.labels)
    if node_name:
        info.node.name = node_name
        if node is not None:
            info.node.labels.update(node.labels)
    for port_name, number, protocol in ports:
        info.container_ports.add(name=port_name, port=number, protocol=protocol)
    return PodRecord(
        namespace=ns_name,
        name=name,
        labels=labels,
        ips=ips,
        node_name=node_name,
        host_network=bool(spec.get("hostNetwork")),
        terminal=status.get("phase") in _TERMINAL_PHASES,
        container_ports=tuple(ports),
        info=info,
    )


def rebuild_pod_info(pod: PodRecord, namespace: NamespaceRecord | None, node: NodeRecord | None, now_ns: int) -> PodRecord:
    """The same pod with its PodInfo refreshed after its namespace or node changed."""
    info = PodInfo()
    info.CopyFrom(pod.info)
    info.last_updated = now_ns
    info.namespace.labels.clear()
    if namespace is not None:
        info.namespace.labels.update(namespace.labels)
    info.node.labels.clear()
    if node is not None:
        info.node.labels.update(node.labels)
    return PodRecord(
        pod.namespace, pod.name, pod.labels, pod.ips, pod.node_name, pod.host_network, pod.terminal,
        pod.container_ports, info,
    )
