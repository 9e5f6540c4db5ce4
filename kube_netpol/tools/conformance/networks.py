"""The format's "Secondary networks" section (v2): networks, attachments, their addresses and objects.

What the harness writes, as Multus would: one NetworkAttachmentDefinition per
declared network (its config names the given CNI ``type``), and on each
attached pod the ``k8s.v1.cni.cncf.io/networks`` request and the
``k8s.v1.cni.cncf.io/network-status`` annotation (the cluster network first,
then one entry per attachment). The kinds are known here by name only: the
harness never imports the plugin that enforces them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.tools.conformance import fields
from kube_netpol.tools.conformance.errors import ScenarioError

NETWORK_POLICY_KIND = "MultiNetworkPolicy"
ATTACHMENT_KIND = "NetworkAttachmentDefinition"
NETWORK_GROUP = "k8s.cni.cncf.io"
#: The kinds of this section, all namespaced; steps apply and delete them like policies.
NETWORK_KINDS = (NETWORK_POLICY_KIND, ATTACHMENT_KIND)
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
DEFAULT_NETWORK_NAMESPACE = "default"
CLUSTER_NETWORK_NAME = "cluster-network"
MAX_NETWORKS = 154  # 10.<100+k>: k up to 155 keeps the second octet a byte


@dataclass(frozen=True)
class NetworkSpec:
    """A declared network (a NetworkAttachmentDefinition); ``number`` is k, from 1 in declaration order."""

    namespace: str
    name: str
    plugin_type: str
    number: int
    where: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_object(self) -> dict[str, Any]:
        config = {"cniVersion": "0.4.0", "name": self.name, "type": self.plugin_type}
        return {
            "apiVersion": f"{NETWORK_GROUP}/v1",
            "kind": ATTACHMENT_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"config": json.dumps(config, sort_keys=True)},
        }


@dataclass(frozen=True)
class AttachmentState:
    """One pod's interface on one network: ``ips`` family -> address, IPv4 first."""

    network: str  # namespace/name
    interface: str  # net1, net2... in the order of the pod's networks
    ips: Mapping[str, str]


# ------------------------------------------------------------------- parsing


def parse_networks(data: object, where: str) -> tuple[NetworkSpec, ...]:
    networks = []
    for i, item in enumerate(fields.as_list(data, where)):
        at = f"{where}[{i}]"
        entry = fields.as_mapping(item, at)
        fields.check_fields(entry, at, required=("name", "type"), optional=("namespace",))
        name = fields.valid_name(entry["name"], f"{at}.name", fields.DNS_SUBDOMAIN, "a network name")
        namespace = fields.valid_name(entry.get("namespace", DEFAULT_NETWORK_NAMESPACE), f"{at}.namespace",
                                      fields.DNS_LABEL, "a namespace name")  # fmt: skip
        plugin_type = fields.as_string(entry["type"], f"{at}.type")
        networks.append(NetworkSpec(namespace, name, plugin_type, i + 1, at))
    fields.no_duplicates([n.key for n in networks], where, "network")
    if len(networks) > MAX_NETWORKS:
        raise ScenarioError(f"at most {MAX_NETWORKS} networks", where)
    return tuple(networks)


def network_key(text: str, pod_namespace: str, where: str) -> str:
    """``ns/name``, or ``name`` in the pod's namespace (as Multus reads it)."""
    text = text.strip()
    parts = text.split("/")
    if len(parts) == 1:
        parts = [pod_namespace, parts[0]]
    if len(parts) != 2 or not all(parts):
        raise ScenarioError(f"network {text!r} is neither 'name' nor 'namespace/name'", where)
    return "/".join(parts)


def parse_network_names(data: object, where: str) -> tuple[str, ...]:
    """A list of network names as written (resolved against a pod's namespace later)."""
    names = tuple(fields.as_string(item, f"{where}[{i}]") for i, item in enumerate(fields.as_list(data, where)))
    return names


def networks_of_pod_object(obj: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    """The networks a Pod object asks for in its annotation (None: it has no such annotation)."""
    meta = fields.as_mapping(obj.get("metadata") or {}, f"{where}.metadata")
    annotations = fields.as_mapping(meta.get("annotations") or {}, f"{where}.metadata.annotations")
    if NETWORKS_ANNOTATION not in annotations:
        return None
    text = fields.as_string(annotations[NETWORKS_ANNOTATION], f"{where}.metadata.annotations", allow_empty=True)
    return tuple(part.strip() for part in text.split(",") if part.strip())


def attachment_type(obj: Mapping[str, Any], where: str) -> str:
    """The CNI type a NetworkAttachmentDefinition a step applies gives its network."""
    spec = fields.as_mapping(obj.get("spec") or {}, f"{where}.spec")
    text = fields.as_string(spec.get("config", ""), f"{where}.spec.config")
    try:
        config = json.loads(text)
    except ValueError as err:
        raise ScenarioError(f"is not JSON: {err}", f"{where}.spec.config") from None
    if not isinstance(config, dict):
        raise ScenarioError("must be a JSON object", f"{where}.spec.config")
    found = config.get("type")
    if found is None and isinstance(config.get("plugins"), list) and config["plugins"]:
        first = config["plugins"][0]
        found = first.get("type") if isinstance(first, dict) else None
    return fields.as_string(found, f"{where}.spec.config type")


# ----------------------------------------------------------------- addresses


def network_address(family: str, network_number: int, namespace_number: int, host: int) -> str:
    """Network k gives pod p of namespace n 10.<100+k>.<n>.<p+9> and fd00:<100+k>:<n>::<p+9>."""
    if family == "IPv4":
        return str(ipaddress.IPv4Address(f"10.{100 + network_number}.{namespace_number}.{host}"))
    return str(ipaddress.IPv6Address(f"fd00:{100 + network_number}:{namespace_number}::{host}"))


def attach(networks: Mapping[str, NetworkSpec], wanted: tuple[str, ...], pod_namespace: str, pod_key: str,
           families: tuple[str, ...], namespace_number: int, host: int, where: str) -> tuple[AttachmentState, ...]:
    """The pod's attachments, in the order of ``wanted`` (its interfaces net1, net2...)."""
    found: list[AttachmentState] = []
    seen: set[str] = set()
    for text in wanted:
        key = network_key(text, pod_namespace, where)
        network = networks.get(key)
        if network is None:
            raise ScenarioError(f"pod {pod_key}: network {key} is not declared in cluster.networks", where)
        if key in seen:
            raise ScenarioError(f"pod {pod_key} attaches to network {key} twice", where)
        seen.add(key)
        ips = {f: network_address(f, network.number, namespace_number, host) for f in families}
        found.append(AttachmentState(key, f"net{len(found) + 1}", ips))
    return tuple(found)


# ---------------------------------------------------------------- annotations


def pod_annotations(primary: Mapping[str, str], attachments: tuple[AttachmentState, ...]) -> dict[str, str]:
    """The networks request and the network-status Multus would write for these attachments."""
    status: list[dict[str, Any]] = [
        {"name": CLUSTER_NETWORK_NAME, "interface": "eth0", "ips": list(primary.values()), "default": True}
    ]
    status += [{"name": a.network, "interface": a.interface, "ips": list(a.ips.values())} for a in attachments]
    return {
        NETWORKS_ANNOTATION: ",".join(a.network for a in attachments),
        STATUS_ANNOTATION: json.dumps(status, sort_keys=True),
    }
