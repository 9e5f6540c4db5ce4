"""What evaluators know of the cluster: compact records, typed changes, a read-only view.

The agent keeps one record per pod, namespace and node, reduced to what policy
evaluation reads. Records are immutable: a change makes a new record, so an
evaluator may key memos on a record's identity (or its ``labels`` mapping's,
which pods with the same labels in one namespace share). Label mappings are
plain dicts for speed; treat them as read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterable, Iterator, Mapping, Protocol, TypeVar, runtime_checkable

from kube_netpol.api.podinfo import PodInfo

#: (namespace, name); namespace "" for cluster-scoped objects.
ObjectKey = tuple[str, str]
PodKey = tuple[str, str]
Labels = Mapping[str, str]
#: A pod's container port names by (protocol number, port): named ports in rules
#: resolve against the receiving pod's.
PortNames = Mapping[tuple[int, int], tuple[str, ...]]
#: (name, port, protocol name) of one container port.
ContainerPortTuple = tuple[str, int, str]

NO_LABELS: Labels = {}
NO_PORT_NAMES: PortNames = {}


class NamespaceRecord:
    """A Namespace: its name and labels (``kubernetes.io/metadata.name`` always among them)."""

    __slots__ = ("name", "labels")

    def __init__(self, name: str, labels: Labels) -> None:
        self.name = name
        self.labels = labels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamespaceRecord) and (self.name, self.labels) == (other.name, other.labels)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NamespaceRecord({self.name!r}, {dict(self.labels)!r})"


class NodeRecord:
    """A Node: name, labels, and its InternalIP/ExternalIP addresses (packed)."""

    __slots__ = ("name", "labels", "ips")

    def __init__(self, name: str, labels: Labels, ips: tuple[bytes, ...]) -> None:
        self.name = name
        self.labels = labels
        self.ips = ips

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeRecord) and (self.name, self.labels, self.ips) == (
            other.name, other.labels, other.ips)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NodeRecord({self.name!r}, {dict(self.labels)!r})"


class PodRecord:
    """One pod, as policy evaluation sees it.

    ``namespace_labels`` and ``node_labels`` are the labels of its namespace and
    node now (a relabel makes new records of their pods); ``ips`` are packed
    addresses; ``port_names`` is derived from ``container_ports``. ``valid`` is
    False for a pod whose object could not be parsed but whose addresses could:
    it keeps no labels and no ports (docs/semantics.md says what it gets).
    ``annotations`` holds only the annotations some evaluator of the pipeline
    declared in its ``pod_annotations``. ``owner`` is ``Kind/name`` of the
    pod's controller (its ownerReference with ``controller: true``), e.g.
    ``ReplicaSet/web-7d4b9c``, or "" for a pod no controller owns; policies do
    not read it (decision records and ``kube-netpol advise`` do). The string is
    interned: the pods of one controller share it. ``uid`` is ``metadata.uid``
    ("" when absent): the container runtime names the pod's cgroups after it,
    which is how the agent finds a pod's network namespace on a node
    (``kube_netpol.agent.podnetns``); policies do not read it.

    ``ips`` is kept as the one address itself when there is one (most pods):
    the tuple around it would be 48 bytes a pod (docs/performance.md); ``key``
    is built when read, for the same reason (56 bytes).
    """

    __slots__ = (
        "namespace", "name", "labels", "namespace_labels", "node_name", "node_labels", "_ips",
        "host_network", "terminal", "container_ports", "port_names", "updated_ns", "cluster_id", "valid",
        "annotations", "owner", "uid",
    )  # fmt: skip

    def __init__(
        self,
        namespace: str,
        name: str,
        labels: Labels,
        namespace_labels: Labels,
        node_name: str,
        node_labels: Labels,
        ips: tuple[bytes, ...],
        host_network: bool,
        terminal: bool,
        container_ports: tuple[ContainerPortTuple, ...],
        port_names: PortNames,
        updated_ns: int = 0,
        cluster_id: str = "",
        valid: bool = True,
        annotations: Mapping[str, str] = NO_LABELS,
        owner: str = "",
        uid: str = "",
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.namespace_labels = namespace_labels
        self.node_name = node_name
        self.node_labels = node_labels
        self._ips: bytes | tuple[bytes, ...] = ips[0] if len(ips) == 1 else ips
        self.host_network = host_network
        self.terminal = terminal
        self.container_ports = container_ports
        self.port_names = port_names
        self.updated_ns = updated_ns
        self.cluster_id = cluster_id
        self.valid = valid
        self.annotations = annotations
        self.owner = owner
        self.uid = uid

    @property
    def key(self) -> PodKey:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def ips(self) -> tuple[bytes, ...]:
        """The pod's addresses, packed (4 bytes IPv4, 16 IPv6), in the object's order."""
        ips = self._ips
        return (ips,) if isinstance(ips, bytes) else ips

    @property
    def is_policy_target(self) -> bool:
        """hostNetwork pods share the node's addresses, finished pods have none: neither is a pod for policy."""
        return not self.host_network and not self.terminal

    def info(self) -> PodInfo:
        """This pod as the reference implementation's PodInfo message (built on each call)."""
        info = PodInfo(name=self.name, labels=self.labels, last_updated=self.updated_ns, cluster_id=self.cluster_id)
        info.namespace.name = self.namespace
        info.namespace.labels.update(self.namespace_labels)
        if self.node_name:
            info.node.name = self.node_name
            info.node.labels.update(self.node_labels)
        for name, port, protocol in self.container_ports:
            info.container_ports.add(name=name, port=port, protocol=protocol)
        return info

    def same_as(self, other: PodRecord) -> bool:
        """Whether ``other`` says the same about the pod (the update time aside)."""
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__ if f != "updated_ns")  # fmt: skip

    def __repr__(self) -> str:
        return f"PodRecord({self.namespace}/{self.name}, {dict(self.labels)!r})"


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """One object added (``old`` None), updated, or removed (``new`` None).

    ``kind`` is the object's kind (``Pod``, ``NetworkPolicy``...); ``old`` and
    ``new`` are records for Pod, Namespace and Node, and what the kind's
    ``parse`` returned for every other kind. Within one batch there is at most
    one change per object: the first ``old`` and the last ``new``.
    """

    kind: str
    key: ObjectKey
    old: T | None
    new: T | None


@runtime_checkable
class ClusterView(Protocol):
    """The cluster as the state holds it now, read-only (the control thread's view).

    Evaluators read it in ``update``; none of its methods walks every pod of
    the cluster except ``pods``, which an incremental evaluator never needs.
    """

    @property
    def node_name(self) -> str:
        """The node this agent enforces on ("" when it enforces for every pod)."""
        ...

    def pod(self, key: PodKey) -> PodRecord | None: ...

    def pod_by_ip(self, ip: bytes) -> PodRecord | None: ...

    def pods_in_namespace(self, namespace: str) -> Iterable[PodRecord]: ...

    def pods(self) -> Iterator[PodRecord]: ...

    def namespace(self, name: str) -> NamespaceRecord | None: ...

    def namespaces(self) -> Iterable[NamespaceRecord]: ...

    def node(self, name: str) -> NodeRecord | None: ...

    def nodes(self) -> Iterable[NodeRecord]: ...

    def objects(self, kind: str) -> Mapping[ObjectKey, object]:
        """The parsed objects of a kind that is neither Pod, Namespace nor Node."""
        ...
