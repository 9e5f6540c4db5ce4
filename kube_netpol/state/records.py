"""Pods, namespaces and nodes read from Kubernetes JSON and reduced to what policy evaluation needs.

Malformed objects raise InvalidObject with the field path. A pod is read in
two steps: ``read_pod`` validates the object into a ``PodObject`` (what the
object itself says), and the state combines it with its namespace and node
into a PodRecord.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from kube_netpol.api.cluster import ContainerPortTuple, NamespaceRecord, NodeRecord
from kube_netpol.api.errors import InvalidObject

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
_PROTOCOLS = ("TCP", "UDP", "SCTP")
#: Set by the API server on every namespace; objects from manifests may lack it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class PodObject:
    """What a Pod object says, validated; the state adds its namespace's and node's labels."""

    namespace: str
    name: str
    labels: dict[str, str]
    ips: tuple[bytes, ...]
    node_name: str
    host_network: bool
    terminal: bool
    container_ports: tuple[ContainerPortTuple, ...]
    annotations: dict[str, str]
    #: ``Kind/name`` of the controller owner, "" for none (see PodRecord.owner).
    owner: str = ""
    #: ``metadata.uid``, "" when absent (see PodRecord.uid).
    uid: str = ""


def metadata_of(obj: Mapping[str, Any], namespaced: bool) -> tuple[str, str]:
    """(namespace or "", name) of an object, validated."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidObject("metadata is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("metadata.name is required")
    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        raise InvalidObject("metadata.namespace must be a string")
    if namespaced and not namespace:
        raise InvalidObject("metadata.namespace is required")
    return (namespace if namespaced else "", name)


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    labels = (meta.get("labels") if isinstance(meta, Mapping) else None) or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidObject("metadata.labels must map strings to strings")
    return dict(labels)


def annotations_of(obj: Mapping[str, Any], keys: frozenset[str]) -> dict[str, str]:
    """The annotations among ``keys`` (non-string values are left out)."""
    if not keys:
        return {}
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping):
        return {}
    return {k: v for k, v in annotations.items() if k in keys and isinstance(v, str)}


def controller_owner(obj: Mapping[str, Any]) -> str:
    """``Kind/name`` of the object's controller (the ownerReference with ``controller: true``), else "".

    Lenient on purpose: policies never read owners, so a malformed
    ownerReferences list must not refuse the pod; it only loses its owner.
    The result is interned, so the pods of one controller share one string.
    """
    meta = obj.get("metadata")
    references = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    if not isinstance(references, list):
        return ""
    for reference in references:
        if isinstance(reference, Mapping) and reference.get("controller") is True:
            kind, name = reference.get("kind"), reference.get("name")
            if isinstance(kind, str) and isinstance(name, str) and kind and name and "/" not in kind + name:
                return sys.intern(f"{kind}/{name}")
            return ""
    return ""


_UID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def uid_of(obj: Mapping[str, Any]) -> str:
    """``metadata.uid`` when it is a plausible UID, else "" (lenient: policies never read it)."""
    meta = obj.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) and _UID.match(uid) else ""


def packed_address(text: object, where: str) -> bytes:
    if type(text) is str and "." in text:
        # Fast path for the usual IPv4 text; only its canonical form (what ipaddress takes too) is accepted here.
        try:
            packed = socket.inet_pton(socket.AF_INET, text)
        except OSError:
            packed = b""
        if packed and socket.inet_ntop(socket.AF_INET, packed) == text:
            return packed
    try:
        return ipaddress.ip_address(text).packed  # type: ignore[arg-type]
    except ValueError:
        raise InvalidObject(f"invalid IP address {text!r}", where) from None


def read_namespace(obj: Mapping[str, Any]) -> NamespaceRecord:
    _, name = metadata_of(obj, namespaced=False)
    labels = labels_of(obj)
    labels[NAMESPACE_NAME_LABEL] = name
    return NamespaceRecord(name, labels)


def read_node(obj: Mapping[str, Any]) -> NodeRecord:
    _, name = metadata_of(obj, namespaced=False)
    labels = labels_of(obj)
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        raise InvalidObject("must be an object", "status")
    addresses = status.get("addresses") or []
    if not isinstance(addresses, list):
        raise InvalidObject("must be a list", "status.addresses")
    ips = tuple(dict.fromkeys(
        packed_address(a.get("address"), "status.addresses")
        for a in addresses
        if isinstance(a, Mapping) and a.get("type") in _NODE_ADDRESS_TYPES
    ))  # fmt: skip
    return NodeRecord(name, labels, ips)


def pod_addresses(status: Mapping[str, Any]) -> tuple[bytes, ...]:
    pod_ips = status.get("podIPs") or []
    if not isinstance(pod_ips, list):
        raise InvalidObject("must be a list", "status.podIPs")
    texts: list[object] = [entry.get("ip") if isinstance(entry, Mapping) else entry for entry in pod_ips]
    if not texts and status.get("podIP"):
        texts = [status["podIP"]]
    return tuple(dict.fromkeys(packed_address(text, "status.podIPs") for text in texts))


def read_pod(obj: Mapping[str, Any], annotation_keys: frozenset[str] = frozenset()) -> PodObject:
    namespace, name = metadata_of(obj, namespaced=True)
    labels = labels_of(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise InvalidObject("spec and status must be objects")
    ips = pod_addresses(status)
    ports: list[ContainerPortTuple] = []
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
            if protocol not in _PROTOCOLS:
                raise InvalidObject(f"unsupported protocol {protocol!r}", where)
            port_name = port.get("name") or ""
            if not isinstance(port_name, str):
                raise InvalidObject(f"invalid port name {port_name!r}", where)
            ports.append((port_name, number, protocol))
    node_name = spec.get("nodeName") or ""
    if not isinstance(node_name, str):
        raise InvalidObject("must be a string", "spec.nodeName")
    return PodObject(
        namespace=namespace,
        name=name,
        labels=labels,
        ips=ips,
        node_name=node_name,
        host_network=bool(spec.get("hostNetwork")),
        terminal=status.get("phase") in _TERMINAL_PHASES,
        container_ports=tuple(ports),
        annotations=annotations_of(obj, annotation_keys),
        owner=controller_owner(obj),
        uid=uid_of(obj),
    )


def salvage_pod(obj: Mapping[str, Any]) -> PodObject | None:
    """What can be kept of a Pod that ``read_pod`` refused: its name and usable addresses, nothing else.

    A refused pod must not escape its namespace's isolation, so when its
    addresses can be read it stays in the state with no labels and no ports
    (docs/semantics.md). None when not even that can be read.
    """
    try:
        namespace, name = metadata_of(obj, namespaced=True)
    except InvalidObject:
        return None
    spec = obj.get("spec")
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return None
    ips: list[bytes] = []
    raw = status.get("podIPs")
    texts = [e.get("ip") if isinstance(e, Mapping) else e for e in raw] if isinstance(raw, list) else []
    if not texts and status.get("podIP"):
        texts = [status.get("podIP")]
    for text in texts:
        try:
            ips.append(packed_address(text, "status.podIPs"))
        except InvalidObject:
            continue
    if not ips:
        return None
    spec = spec if isinstance(spec, Mapping) else {}
    node_name = spec.get("nodeName")
    return PodObject(
        namespace=namespace,
        name=name,
        labels={},
        ips=tuple(dict.fromkeys(ips)),
        node_name=node_name if isinstance(node_name, str) else "",
        host_network=spec.get("hostNetwork") is True,
        terminal=status.get("phase") in _TERMINAL_PHASES,
        container_ports=(),
        annotations={},
    )


def reference(obj: object) -> str:
    """``namespace/name`` or ``name`` of an object, for log lines, whatever its shape."""
    if not isinstance(obj, Mapping):
        return "<not an object>"
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return "<no metadata>"
    name = meta.get("name") or "<no name>"
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)
