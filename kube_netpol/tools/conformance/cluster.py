"""The scenario's cluster: model expansion, addresses, and its evolution across steps.

``Cluster`` is mutable and only used while planning; what leaves this module
is immutable: ``ClusterSnapshot`` (the whole cluster after a step, as
Kubernetes objects and addresses) and ``StepChange`` (what a step deletes and
applies, in order, as complete objects). Backends consume both.
"""

from __future__ import annotations

import copy
import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance import networks as secondary
from kube_netpol.tools.conformance.networks import AttachmentState, NetworkSpec
from kube_netpol.tools.conformance.scenario import (
    ApplyItem,
    ClusterSpec,
    ContainerPort,
    NamespaceSpec,
    NodeSpec,
    ObjectRef,
    PodSpec,
    PolicySpec,
    StepSpec,
)

METADATA_NAME_LABEL = "kubernetes.io/metadata.name"
#: The image written into Pod objects; only there because a Pod needs one.
POD_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.53"
#: Automatic addresses: pod p of namespace n is 10.244.n.(p+9) and fd00:10:244:n::(p+9).
FIRST_HOST = 10
MAX_OCTET = 255


def automatic_address(family: str, namespace_number: int, pod_number: int) -> str:
    """The address the format assigns to pod ``pod_number`` of namespace ``namespace_number`` (both from 1)."""
    host = pod_number + FIRST_HOST - 1
    if namespace_number > MAX_OCTET or host > MAX_OCTET:
        raise ValueError(
            f"namespace {namespace_number}, pod {pod_number} is beyond the automatic range 10.244.<1-255>.<10-255>"
        )
    if family == "IPv4":
        return f"10.244.{namespace_number}.{host}"
    # The numbers are written with decimal digits inside the hexadecimal groups, as the format says.
    return str(ipaddress.IPv6Address(f"fd00:10:244:{namespace_number}::{host}"))


def family_of(address: str) -> str:
    return f"IPv{ipaddress.ip_address(address).version}"


# ------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class NamespaceState:
    name: str
    labels: Mapping[str, str]
    number: int  # the n of its pods' automatic addresses

    def to_object(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.name, "labels": dict(self.labels)}}


def pod_uid(key: str) -> str:
    """The ``metadata.uid`` the harness gives pod ``ns/name`` (stable: a UUID named by the key)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kube-netpol-conformance:{key}"))


@dataclass(frozen=True)
class PodState:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: Mapping[str, str]  # family -> address, IPv4 first
    container_ports: tuple[ContainerPort, ...]
    order: tuple[int, int]  # (namespace number, pod number): the order tables list pods in
    networks: tuple[AttachmentState, ...] = ()  # secondary networks, in interface order

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_number(self, name: str, protocol: str) -> int | None:
        """The container port called ``name`` for ``protocol`` (None: no such port)."""
        return next((p.port for p in self.container_ports if p.name == name and p.protocol == protocol), None)

    def to_object(self, node_name: str = "") -> dict[str, Any]:
        addresses = list(self.ips.values())
        spec: dict[str, Any] = {
            "containers": [{"name": "main", "image": POD_IMAGE, "ports": [p.to_object() for p in self.container_ports]}]
        }
        if node_name:
            spec["nodeName"] = node_name
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "uid": pod_uid(self.key),
                                    "labels": dict(self.labels)}
        if self.networks:
            metadata["annotations"] = secondary.pod_annotations(self.ips, self.networks)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": addresses[0] if addresses else "",
                "podIPs": [{"ip": ip} for ip in addresses],
            },
        }


@dataclass(frozen=True)
class External:
    """A host outside the cluster: addresses only, no labels."""

    name: str
    ips: Mapping[str, str]  # family -> address
    dns_names: tuple[str, ...] = ()  # what the lab's DNS server answers with ``ips`` (format v2)


@dataclass(frozen=True)
class ClusterSnapshot:
    """The whole cluster at one point: what a backend needs to build or check it."""

    families: tuple[str, ...]
    namespaces: tuple[NamespaceState, ...]
    pods: tuple[PodState, ...]  # in table order
    externals: tuple[External, ...]
    policies: tuple[tuple[ObjectRef, Mapping[str, Any]], ...]  # as the steps gave them, oldest first
    networks: tuple[NetworkSpec, ...] = ()  # secondary networks, in declaration order

    def pod(self, key: str) -> PodState | None:
        return next((p for p in self.pods if p.key == key), None)

    def network(self, key: str) -> NetworkSpec | None:
        return next((n for n in self.networks if n.key == key), None)

    def network_addresses(self, network: str) -> dict[str, dict[str, str]]:
        """Attached pod (``ns/pod``) -> {family: address} on a secondary network, in table order."""
        return {p.key: dict(a.ips) for p in self.pods for a in p.networks if a.network == network}

    def endpoint_names(self) -> tuple[str, ...]:
        """Every pod (``ns/pod``) then every external, in table order."""
        return tuple(p.key for p in self.pods) + tuple(e.name for e in self.externals)

    def addresses(self) -> dict[str, dict[str, str]]:
        """Endpoint name -> {family: address} for every pod and external."""
        result = {p.key: dict(p.ips) for p in self.pods}
        result.update({e.name: dict(e.ips) for e in self.externals})
        return result

    def objects(self, node_name: str = "") -> list[dict[str, Any]]:
        """Every Namespace, Pod and policy as a Kubernetes object, namespaces first.

        The policies are exactly as the scenario wrote them (possibly invalid on
        purpose). ``node_name`` sets the pods' spec.nodeName.
        """
        return (
            [ns.to_object() for ns in self.namespaces]
            + [network.to_object() for network in self.networks]
            + [pod.to_object(node_name) for pod in self.pods]
            + [copy.deepcopy(dict(obj)) for _, obj in self.policies]
        )


@dataclass(frozen=True)
class StepChange:
    """What one step does: ``deletes`` run first, then ``applies`` (complete objects), in order.

    Deleting a namespace is spelled out: its pods and NetworkPolicies are
    deleted first, then the namespace. ``cluster`` is the cluster afterwards.
    """

    name: str
    deletes: tuple[ObjectRef, ...]
    applies: tuple[dict[str, Any], ...]
    cluster: ClusterSnapshot


# -------------------------------------------------------------------- builder


@dataclass
class _NamespaceSlot:
    state: NamespaceState
    last_pod_number: int = 0
    pods: dict[str, PodState] = field(default_factory=dict)


class Cluster:
    """The cluster while a scenario is planned; every method raises ScenarioError on a bad request."""

    def __init__(self, families: tuple[str, ...]) -> None:
        self.families = families
        self._namespaces: dict[str, _NamespaceSlot] = {}
        self._last_namespace_number = 0
        self._externals: dict[str, External] = {}
        self._policies: dict[ObjectRef, Mapping[str, Any]] = {}
        self._networks: dict[str, NetworkSpec] = {}
        # Who holds each address ("pod ns/name", "external name"): two owners would make probes ambiguous.
        self._owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> tuple["Cluster", StepChange]:
        """The initial cluster, and the change that creates it (every namespace and pod)."""
        cluster = cls(spec.families)
        namespaces: list[NamespaceSpec] = []
        pods: list[PodSpec] = []
        if spec.model is not None:
            model = spec.model
            ports = tuple(
                ContainerPort(f"serve-{port}-{protocol.lower()}", port, protocol)
                for port in model.ports
                for protocol in model.protocols
            )
            for ns in model.namespaces:
                namespaces.append(NamespaceSpec(ns, {"ns": ns}, "cluster.model.namespaces"))
                pods.extend(PodSpec(ns, pod, {"pod": pod}, None, ports, "cluster.model.pods", model.networks)
                            for pod in model.pods)  # fmt: skip
        namespaces.extend(spec.namespaces)
        cluster._networks = {network.key: network for network in spec.networks}
        declared = {ns.name for ns in namespaces}
        for network in spec.networks:  # the namespaces holding the definitions, if not declared
            if network.namespace not in declared:
                declared.add(network.namespace)
                namespaces.append(NamespaceSpec(network.namespace, {}, network.where))
        pods.extend(spec.pods)
        for i, ext in enumerate(spec.externals):
            cluster._claim(ext.ips, f"external {ext.name}", f"cluster.externals[{i}]")
            cluster._externals[ext.name] = External(ext.name, _by_family(ext.ips), ext.dns_names)
        node_objects = cluster._add_nodes(spec)
        # Explicit addresses are claimed first, so that an automatic address colliding with one is reported.
        for pod_spec in pods:
            if pod_spec.ips is not None:
                cluster._claim(pod_spec.ips, f"pod {pod_spec.key}", pod_spec.where)
        applies = []
        for ns_spec in namespaces:
            if ns_spec.name in cluster._namespaces:
                raise ScenarioError(f"namespace {ns_spec.name!r} is declared twice", ns_spec.where)
            applies.append(cluster._apply_namespace(ns_spec))
        applies.extend(network.to_object() for network in spec.networks)
        for pod_spec in pods:
            if pod_spec.name in cluster._slot(pod_spec).pods:
                raise ScenarioError(f"pod {pod_spec.key} is declared twice", pod_spec.where)
            applies.append(cluster._apply_pod(pod_spec, next_free=False))
        applies[len(namespaces):len(namespaces)] = node_objects  # nodes before the pods, as the API server has them
        return cluster, StepChange("cluster setup", (), tuple(applies), cluster.snapshot())

    def _add_nodes(self, spec: ClusterSpec) -> list[dict[str, Any]]:
        """``cluster.nodes``: each a host probed like an external, and a Node object kept with the policies."""
        objects = []
        for i, node in enumerate(spec.nodes):
            self._claim(node.ips, f"node {node.name}", f"cluster.nodes[{i}]")
            self._externals[node.name] = External(node.name, _by_family(node.ips))
            obj = node_object(node.name, node.labels, node.ips)
            self._policies[ObjectRef("Node", "", node.name)] = obj
            objects.append(copy.deepcopy(obj))
        return objects

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> ClusterSnapshot:
        pods = sorted((pod for slot in self._namespaces.values() for pod in slot.pods.values()), key=lambda p: p.order)
        return ClusterSnapshot(
            families=self.families,
            namespaces=tuple(slot.state for slot in self._namespaces.values()),
            pods=tuple(pods),
            externals=tuple(self._externals.values()),
            policies=tuple(self._policies.items()),
            networks=tuple(self._networks.values()),
        )

    # --------------------------------------------------------------- changing

    def apply_step(self, step: StepSpec) -> StepChange:
        """Run one step on the cluster: its deletes, then its applies."""
        deletes: list[ObjectRef] = []
        for i, ref in enumerate(step.delete):
            deletes.extend(self._delete(ref, f"{step.where}.delete[{i}]"))
        applies = [self._apply(item) for item in step.apply]
        return StepChange(step.name, tuple(deletes), tuple(applies), self.snapshot())

    def _delete(self, ref: ObjectRef, where: str) -> list[ObjectRef]:
        missing = ScenarioError(f"cannot delete {ref}: it does not exist", where)
        if ref.kind == "Namespace":
            slot = self._namespaces.pop(ref.name, None)
            if slot is None:
                raise missing
            # As the API server does: the namespace's pods and NetworkPolicies go with it.
            pods = [ObjectRef("Pod", ref.name, name) for name in slot.pods]
            for pod in slot.pods.values():
                self._release(f"pod {pod.key}")
            policies = [r for r in self._policies
                        if r.kind in ("NetworkPolicy", secondary.NETWORK_POLICY_KIND) and r.namespace == ref.name]
            for policy in policies:
                del self._policies[policy]
            return [*pods, *policies, ref]
        if ref.kind == "Pod":
            slot = self._namespaces.get(ref.namespace)
            if slot is None or slot.pods.pop(ref.name, None) is None:
                raise missing
            self._release(f"pod {ref.namespace}/{ref.name}")
            return [ref]
        if ref.kind == secondary.ATTACHMENT_KIND:
            raise ScenarioError(f"cannot delete {ref}: steps do not create or delete networks", where)
        if self._policies.pop(ref, None) is None:
            raise missing
        return [ref]

    def _apply(self, item: ApplyItem) -> dict[str, Any]:
        if isinstance(item, NamespaceSpec):
            return self._apply_namespace(item)
        if isinstance(item, PodSpec):
            return self._apply_pod(item, next_free=True)
        if isinstance(item, NodeSpec):
            return self._relabel_node(item)
        return self._apply_policy(item)

    def _relabel_node(self, spec: NodeSpec) -> dict[str, Any]:
        """A step's Node: labels replaced, addresses kept (steps do not create nodes)."""
        ref = ObjectRef("Node", "", spec.name)
        known = self._policies.get(ref)
        if known is None:
            raise ScenarioError(f"node {spec.name!r} is not in cluster.nodes (steps do not create nodes)", "a step's Node")
        ips = tuple(entry["address"] for entry in known["status"]["addresses"])
        obj = node_object(spec.name, spec.labels, ips)
        self._policies[ref] = obj
        return copy.deepcopy(obj)

    def _apply_namespace(self, spec: NamespaceSpec) -> dict[str, Any]:
        # Labels become exactly the given ones, but the API server always keeps this one.
        labels = {**spec.labels, METADATA_NAME_LABEL: spec.name}
        slot = self._namespaces.get(spec.name)
        if slot is None:
            self._last_namespace_number += 1
            slot = self._namespaces[spec.name] = _NamespaceSlot(
                NamespaceState(spec.name, labels, self._last_namespace_number)
            )
        else:
            slot.state = NamespaceState(spec.name, labels, slot.state.number)
        return slot.state.to_object()

    def _apply_pod(self, spec: PodSpec, next_free: bool) -> dict[str, Any]:
        """Create or update a pod; ``next_free`` skips automatic addresses already taken (later steps)."""
        slot = self._slot(spec)
        owner = f"pod {spec.key}"
        old = slot.pods.get(spec.name)
        if old is not None:
            # An update: labels are replaced; what the object leaves out stays.
            number = old.order[1]
            ips = spec.ips if spec.ips is not None else tuple(old.ips.values())
            ports = spec.container_ports if spec.container_ports is not None else old.container_ports
            wanted = spec.networks if spec.networks is not None else tuple(a.network for a in old.networks)
        else:
            slot.last_pod_number += 1
            while next_free and spec.ips is None and not self._free(self._automatic(slot, spec)):
                slot.last_pod_number += 1  # numbers are never reused and taken addresses are skipped
            number = slot.last_pod_number
            ips = spec.ips if spec.ips is not None else self._automatic(slot, spec)
            ports = spec.container_ports or ()
            wanted = spec.networks or ()
        self._claim(ips, owner, spec.where)
        attachments = secondary.attach(self._networks, wanted, spec.namespace, spec.key, self.families,
                                       slot.state.number, number + FIRST_HOST - 1, spec.where)  # fmt: skip
        pod = PodState(
            spec.namespace, spec.name, dict(spec.labels), _by_family(ips), ports, (slot.state.number, number),
            attachments,
        )
        slot.pods[spec.name] = pod
        return pod.to_object()

    def _apply_policy(self, spec: PolicySpec) -> dict[str, Any]:
        if spec.ref.namespace and spec.ref.namespace not in self._namespaces:
            raise ScenarioError(f"{spec.ref}: namespace {spec.ref.namespace!r} does not exist", spec.where)
        if spec.ref.kind == secondary.ATTACHMENT_KIND:
            return self._apply_attachment_definition(spec)
        self._policies[spec.ref] = spec.obj
        return copy.deepcopy(dict(spec.obj))

    def _apply_attachment_definition(self, spec: PolicySpec) -> dict[str, Any]:
        """A declared network's definition applied by a step: its type may change (the object goes as written)."""
        key = f"{spec.ref.namespace}/{spec.ref.name}"
        network = self._networks.get(key)
        if network is None:
            raise ScenarioError(f"{spec.ref}: only networks declared in cluster.networks may be applied", spec.where)
        plugin_type = secondary.attachment_type(spec.obj, spec.where)
        self._networks[key] = NetworkSpec(network.namespace, network.name, plugin_type, network.number, network.where)
        return copy.deepcopy(dict(spec.obj))

    # --------------------------------------------------------------- helpers

    def _slot(self, spec: PodSpec) -> _NamespaceSlot:
        slot = self._namespaces.get(spec.namespace)
        if slot is None:
            raise ScenarioError(f"pod {spec.key}: namespace {spec.namespace!r} does not exist", spec.where)
        return slot

    def _automatic(self, slot: _NamespaceSlot, spec: PodSpec) -> tuple[str, ...]:
        try:
            return tuple(automatic_address(f, slot.state.number, slot.last_pod_number) for f in self.families)
        except ValueError as err:
            raise ScenarioError(f"pod {spec.key} gets no automatic address: {err}; give it ips", spec.where) from None

    def _free(self, ips: tuple[str, ...]) -> bool:
        return all(ipaddress.ip_address(ip) not in self._owners for ip in ips)

    def _claim(self, ips: tuple[str, ...], owner: str, where: str) -> None:
        wanted = {ipaddress.ip_address(ip) for ip in ips}
        for address in wanted:
            holder = self._owners.get(address)
            if holder is not None and holder != owner:
                raise ScenarioError(f"{owner} would get {address}, which {holder} already has", where)
        self._release(owner)
        self._owners.update((address, owner) for address in wanted)

    def _release(self, owner: str) -> None:
        for address in [a for a, holder in self._owners.items() if holder == owner]:
            del self._owners[address]


def node_object(name: str, labels: Mapping[str, str], ips: tuple[str, ...]) -> dict[str, Any]:
    """A Node as the API server stores it: labels, and the addresses as InternalIP entries."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels)},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]},
    }


def _by_family(ips: tuple[str, ...]) -> dict[str, str]:
    """{family: address}, IPv4 first (the order of status.podIPs)."""
    found = {family_of(ip): ip for ip in ips}
    return {family: found[family] for family in ("IPv4", "IPv6") if family in found}
