"""ClusterState: the one store every source writes and the engine reads.

Sources call ``apply``/``delete``/``replace`` from one control thread. Every
accepted change is recorded in the pending batch; the control thread hands
``take_changes()`` to the engine, which publishes one snapshot for it. The
packet thread only reads ``pod_by_ip``: records are immutable and indexes are
updated by replacing single dict values (atomic under the GIL).

Memory (docs/scale.md): a pod costs its record and its index entries, no
more. Pods of one namespace with the same labels (in the same order, as one
template's pods have them) share one labels dict (held
by a refcount, released with the last pod), pods with the same container
ports share one ports tuple and one port-name map, namespace and node names
are interned; no copy of the object is kept: a namespace's or node's relabel
rebuilds its pods' records from the records themselves. An address has one
index entry; only an address two live pods claim (a replaced pod whose
successor arrived first) has a second one. Pods are found by namespace, then
name (no second table keyed by the pair, no key tuple held per pod), and a
node's pods are a list of their records (a set's table cost about 80 bytes a
pod at 100 pods a node).
"""

from __future__ import annotations

import collections
import itertools
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Generic, Hashable, Iterable, Iterator, Mapping, TypeVar

from kube_netpol.api.cluster import (
    NO_LABELS,
    NO_PORT_NAMES,
    Change,
    ContainerPortTuple,
    Labels,
    NamespaceRecord,
    NodeRecord,
    ObjectKey,
    PodKey,
    PodRecord,
    PortNames,
)
from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.packet import PROTOCOL_BY_NAME
from kube_netpol.state.kinds import KindRegistry
from kube_netpol.state.records import PodObject, metadata_of, read_pod, reference, salvage_pod

log = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An object the state did not take as written: ``kind``, ``namespace/name``, why."""

    kind: str
    reference: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}: {self.reason}"


class Interner(Generic[V]):
    """Shares one value between the records that would hold equal ones, and lets it go with the last."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Hashable, list[Any]] = {}  # key -> [value, users]

    def acquire(self, key: Hashable, make: Any) -> V:
        slot = self._values.get(key)
        if slot is None:
            slot = self._values[key] = [make(), 0]
        slot[1] += 1
        return slot[0]  # type: ignore[no-any-return]

    def release(self, key: Hashable) -> None:
        slot = self._values.get(key)
        if slot is not None:
            slot[1] -= 1
            if slot[1] <= 0:
                del self._values[key]

    def __len__(self) -> int:
        return len(self._values)


def port_names_of(ports: tuple[ContainerPortTuple, ...]) -> PortNames:
    """Container port names by (protocol number, port)."""
    names: dict[tuple[int, int], tuple[str, ...]] = {}
    for name, port, protocol in ports:
        number = PROTOCOL_BY_NAME.get(protocol or "TCP")
        if number is None or not name:
            continue  # matches no rule's named port
        key = (number, port)
        names[key] = names.get(key, ()) + (name,)
    return names if names else NO_PORT_NAMES


class ClusterState:
    """Pods, namespaces, nodes and parsed objects of the registry's other kinds; the pod-by-address index."""

    def __init__(self, kinds: KindRegistry | None = None, cluster_id: str = "", node_name: str = "") -> None:
        self.kinds = kinds or KindRegistry()
        self.cluster_id = cluster_id
        self._node_name = node_name
        self._namespaces: dict[str, NamespaceRecord] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._objects: dict[str, dict[ObjectKey, object]] = {
            spec.kind: {} for spec in self.kinds if spec.kind not in ("Namespace", "Node", "Pod")
        }
        self._pods_by_ip: dict[bytes, PodRecord] = {}
        # The other live pods claiming an address the index gives to another pod, so that
        # it can fall back to one of them when that pod goes away (a replaced pod whose
        # successor arrived first). Only contested addresses have an entry.
        self._ip_others: dict[bytes, dict[PodKey, PodRecord]] = {}
        # The pods: namespace -> name -> record (pod(), pods() and keys("Pod") read it).
        self._pods_by_namespace: dict[str, dict[str, PodRecord]] = {}
        # node -> its pods' records (a node's hundred-odd, searched on each new record of one of them).
        self._pods_by_node: dict[str, list[PodRecord]] = {}
        # Only a pipeline that reads nodes can see a node relabel, the one use of that index.
        self._index_nodes = "Node" in self.kinds
        self._labels: Interner[Labels] = Interner()
        self._ports: Interner[tuple[tuple[ContainerPortTuple, ...], PortNames]] = Interner()
        self._stamp = 0
        self._pending: dict[tuple[str, ObjectKey], Change[object]] = {}
        self._refusals: list[Refusal] = []
        self.invalid_objects: collections.Counter[str] = collections.Counter()

    # ----------------------------------------------------------------- reading (ClusterView)

    @property
    def node_name(self) -> str:
        return self._node_name

    def pod(self, key: PodKey) -> PodRecord | None:
        pods = self._pods_by_namespace.get(key[0])
        return pods.get(key[1]) if pods is not None else None

    def pod_by_ip(self, ip: bytes) -> PodRecord | None:
        return self._pods_by_ip.get(ip)

    def pods_in_namespace(self, namespace: str) -> Iterable[PodRecord]:
        pods = self._pods_by_namespace.get(namespace)
        return list(pods.values()) if pods else ()

    def pods(self) -> Iterator[PodRecord]:
        return iter([pod for pods in self._pods_by_namespace.values() for pod in pods.values()])

    def namespace(self, name: str) -> NamespaceRecord | None:
        return self._namespaces.get(name)

    def namespaces(self) -> Iterable[NamespaceRecord]:
        return list(self._namespaces.values())

    def node(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def nodes(self) -> Iterable[NodeRecord]:
        return list(self._nodes.values())

    def objects(self, kind: str) -> Mapping[ObjectKey, object]:
        return self._objects.get(kind, {})

    def keys(self, kind: str) -> list[ObjectKey]:
        """The keys of every object of ``kind`` held now."""
        if kind == "Namespace":
            return [("", name) for name in self._namespaces]
        if kind == "Node":
            return [("", name) for name in self._nodes]
        if kind == "Pod":
            return [pod.key for pods in self._pods_by_namespace.values() for pod in pods.values()]
        return list(self._objects.get(kind, ()))

    def is_local(self, pod: PodRecord) -> bool:
        """A pod of this node (every pod when the state has no node name)."""
        return not self._node_name or pod.node_name == self._node_name

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take_changes(self) -> list[Change[object]]:
        """The changes since the last call, one per object (its first old and last new value)."""
        changes = list(self._pending.values())
        self._pending = {}
        return changes

    def take_refusals(self) -> list[Refusal]:
        """Objects refused since the last call."""
        refusals, self._refusals = self._refusals, []
        return refusals

    # ---------------------------------------------------------------- changing

    def apply(self, obj: Mapping[str, Any], kind: str | None = None) -> bool:
        """Create or replace one object. Returns False if it was refused (logged) or its kind is not used.

        ``kind`` is for list responses, whose items carry no kind. A refused
        update leaves the last accepted version of the object in force.
        """
        if not isinstance(obj, Mapping):
            self._refuse(kind or "object", "<not an object>", "not an object")
            return False
        kind = kind or obj.get("kind")
        spec = self.kinds.get(kind) if isinstance(kind, str) else None
        if spec is None:
            # Objects of kinds the pipeline does not read (Services, ConfigMaps in a manifests folder).
            log.debug("ignoring %s %s: no evaluator of the pipeline reads this kind", kind, reference(obj))
            return False
        try:
            api_version = obj.get("apiVersion")
            if api_version is not None and api_version != spec.api_version:
                raise InvalidObject(f"unsupported apiVersion {api_version!r} for {spec.kind} (expected {spec.api_version})")
            if spec.kind == "Namespace":
                self._set_namespace(spec.parse(obj))  # type: ignore[arg-type]
            elif spec.kind == "Node":
                self._set_node(spec.parse(obj))  # type: ignore[arg-type]
            elif spec.kind == "Pod":
                return self._set_pod(obj)
            else:
                parsed = spec.parse(obj)
                key = metadata_of(obj, spec.namespaced)
                objects = self._objects[spec.kind]
                old = objects.get(key)
                objects[key] = parsed
                self._record(spec.kind, key, old, parsed)
        except InvalidObject as err:
            kept = self._holds(spec.kind, obj)
            self._refuse(spec.kind, reference(obj), f"{err}; the last valid version stays in force" if kept else str(err))
            return False
        return True

    def _holds(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Whether the state already has a version of ``obj`` (a refused update then leaves it in force)."""
        spec = self.kinds.get(kind)
        try:
            key = metadata_of(obj, spec.namespaced if spec is not None else True)
        except InvalidObject:
            return False
        if kind == "Namespace":
            return key[1] in self._namespaces
        if kind == "Node":
            return key[1] in self._nodes
        if kind == "Pod":
            return self.pod(key) is not None
        return key in self._objects.get(kind, {})

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove an object; True if it existed (objects of kinds not in the registry never do)."""
        spec = self.kinds.get(kind)
        if spec is None:
            return False
        key = (namespace if spec.namespaced else "", name)
        if kind == "Namespace":
            old_ns = self._namespaces.pop(name, None)
            if old_ns is None:
                return False
            self._record("Namespace", key, old_ns, None)
            self._rebuild_pods(self._pods_by_namespace.get(name, {}).values())
            return True
        if kind == "Node":
            old_node = self._nodes.pop(name, None)
            if old_node is None:
                return False
            self._record("Node", key, old_node, None)
            self._rebuild_pods_of_node(name)
            return True
        if kind == "Pod":
            old_pod = self.pod(key)
            if old_pod is None:
                return False
            self._unindex_pod(old_pod)
            self._release_pod(old_pod)
            self._record("Pod", key, old_pod, None)
            return True
        old = self._objects[kind].pop(key, None)
        if old is None:
            return False
        self._record(kind, key, old, None)
        return True

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Make the objects of ``kind`` exactly ``objects`` (a fresh list after a relist)."""
        spec = self.kinds.get(kind)
        if spec is None:
            return
        seen: set[ObjectKey] = set()
        for obj in objects:
            self.apply(obj, kind)
            try:
                seen.add(metadata_of(obj, spec.namespaced))
            except (InvalidObject, AttributeError):
                continue
        for key in self.keys(kind):
            if key not in seen:
                self.delete(kind, key[0], key[1])

    # ---------------------------------------------------------------- internal

    def _record(self, kind: str, key: ObjectKey, old: object, new: object) -> None:
        slot = (kind, key)
        earlier = self._pending.get(slot)
        if earlier is not None:
            old = earlier.old
        if old is None and new is None:
            self._pending.pop(slot, None)  # created and deleted within one batch
            return
        self._pending[slot] = Change(kind, key, old, new)

    def _refuse(self, kind: str, ref: str, reason: str) -> None:
        self.invalid_objects[kind] += 1
        self._refusals.append(Refusal(kind, ref, reason))
        log.warning("refusing %s %s: %s", kind, ref, reason, extra={"kind": kind, "object": ref})

    def _set_namespace(self, record: NamespaceRecord) -> None:
        old = self._namespaces.get(record.name)
        if old is not None and old.labels == record.labels:
            return
        self._namespaces[record.name] = record
        self._record("Namespace", ("", record.name), old, record)
        self._rebuild_pods(self._pods_by_namespace.get(record.name, {}).values())

    def _set_node(self, record: NodeRecord) -> None:
        old = self._nodes.get(record.name)
        if old == record:
            return  # status heartbeats change nothing policies read
        self._nodes[record.name] = record
        self._record("Node", ("", record.name), old, record)
        if old is None or old.labels != record.labels:
            self._rebuild_pods_of_node(record.name)

    def _set_pod(self, obj: Mapping[str, Any]) -> bool:
        """False when the object was refused (a new pod with usable addresses is still kept, see salvage_pod)."""
        try:
            pod_object = read_pod(obj, self.kinds.pod_annotations)
        except InvalidObject as err:
            key = _pod_key(obj)
            if key is None or self.pod(key) is not None:
                raise  # an invalid update keeps the last valid version
            salvaged = salvage_pod(obj)
            if salvaged is None:
                raise
            # Kept without labels or ports, so that its namespace's isolation applies to it.
            self._refuse("Pod", reference(obj), f"{err}; kept with no labels and no ports")
            self._store_pod(salvaged, valid=False)
            return False
        self._store_pod(pod_object, valid=True)
        return True

    def _store_pod(self, pod_object: PodObject, valid: bool) -> None:
        record = self._build_pod(pod_object, valid)
        key = record.key
        old = self.pod(key)
        if old is not None and old.same_as(record):
            # Nothing policies read changed (a status heartbeat, an annotation we do not keep).
            self._release_pod(record)
            return
        if old is not None and old.node_name == record.node_name:
            self._replace_on_node(old, record)
            self._unindex_pod(old, node=False)
            self._index_pod(record, node=False)
        else:
            if old is not None:
                self._unindex_pod(old)
            self._index_pod(record)
        if old is not None:
            self._release_pod(old)
        self._record("Pod", key, old, record)

    def _acquire_pod(self, pod: PodObject) -> tuple[Labels, tuple[tuple[ContainerPortTuple, ...], PortNames]]:
        # Interned per namespace, empty labels too: evaluators key memos on the labels dict's identity,
        # and a pod's rules depend on its namespace.
        labels = self._labels.acquire(_labels_key(pod.namespace, pod.labels), lambda: pod.labels)
        ports = self._ports.acquire(pod.container_ports, lambda: (pod.container_ports, port_names_of(pod.container_ports)))
        return labels, ports

    def _now_ns(self) -> int:
        """time.time_ns(), but the same int object for every pod updated within a millisecond (a list page's):
        32 bytes a pod less (tracemalloc, bench/bench_scale.py)."""
        now = time.time_ns()
        if 0 <= now - self._stamp < 1_000_000:
            return self._stamp
        self._stamp = now
        return now

    def _release_pod(self, pod: PodRecord) -> None:
        self._labels.release(_labels_key(pod.namespace, pod.labels))
        self._ports.release(pod.container_ports)

    def _build_pod(self, pod: PodObject, valid: bool) -> PodRecord:
        labels, (ports, port_names) = self._acquire_pod(pod)
        namespace = self._namespaces.get(pod.namespace)
        node = self._nodes.get(pod.node_name) if pod.node_name else None
        return PodRecord(
            namespace=sys.intern(pod.namespace),
            name=pod.name,
            labels=labels,
            namespace_labels=namespace.labels if namespace is not None else NO_LABELS,
            node_name=sys.intern(pod.node_name),
            node_labels=node.labels if node is not None else NO_LABELS,
            ips=pod.ips,
            host_network=pod.host_network,
            terminal=pod.terminal,
            container_ports=ports,
            port_names=port_names,
            updated_ns=self._now_ns(),
            cluster_id=self.cluster_id,
            valid=valid,
            annotations=pod.annotations or NO_LABELS,
            owner=pod.owner,
            # Only this node's pods need it (finding their network namespace): others share "".
            uid=pod.uid if not self._node_name or pod.node_name == self._node_name else "",
        )

    def _rebuild_pods(self, pods: Iterable[PodRecord]) -> None:
        """New records for pods whose namespace or node changed (their labels live in the record)."""
        for old in list(pods):
            namespace = self._namespaces.get(old.namespace)
            node = self._nodes.get(old.node_name) if old.node_name else None
            record = PodRecord(
                old.namespace, old.name, old.labels,
                namespace.labels if namespace is not None else NO_LABELS,
                old.node_name, node.labels if node is not None else NO_LABELS,
                old.ips, old.host_network, old.terminal, old.container_ports, old.port_names,
                updated_ns=self._now_ns(), cluster_id=old.cluster_id, valid=old.valid,
                annotations=old.annotations, owner=old.owner, uid=old.uid,
            )  # fmt: skip
            self._replace_pod_record(old, record)
            self._record("Pod", record.key, old, record)

    def _rebuild_pods_of_node(self, node_name: str) -> None:
        self._rebuild_pods(self._pods_by_node.get(node_name, ()))

    def _index_pod(self, pod: PodRecord, node: bool = True) -> None:
        """Index a pod; ``node`` False when its node's list has it already (``_replace_on_node``)."""
        self._pods_by_namespace.setdefault(pod.namespace, {})[pod.name] = pod
        if node and pod.node_name and self._index_nodes:
            self._pods_by_node.setdefault(pod.node_name, []).append(pod)
        if pod.is_policy_target:
            for ip in pod.ips:
                current = self._pods_by_ip.get(ip)
                if current is not None and current.key != pod.key:
                    self._ip_others.setdefault(ip, {})[current.key] = current
                self._pods_by_ip[ip] = pod  # the newest claimant wins

    def _unindex_pod(self, pod: PodRecord, node: bool = True) -> None:
        """Unindex a pod; ``node`` False to leave its node's list alone (``_replace_on_node`` did it)."""
        in_namespace = self._pods_by_namespace.get(pod.namespace)
        if in_namespace is not None:
            in_namespace.pop(pod.name, None)
            if not in_namespace:
                del self._pods_by_namespace[pod.namespace]
        on_node = self._pods_by_node.get(pod.node_name) if node else None
        if on_node is not None:
            i = _place(on_node, pod)
            if i is not None:
                del on_node[i]
            if not on_node:
                del self._pods_by_node[pod.node_name]
        for ip in pod.ips:
            others = self._ip_others.get(ip)
            if self._pods_by_ip.get(ip) is pod:
                if others:
                    self._pods_by_ip[ip] = others.popitem()[1]  # the newest of the other claimants
                else:
                    del self._pods_by_ip[ip]
            elif others:
                others.pop(pod.key, None)
            if others is not None and not others:
                del self._ip_others[ip]

    def _replace_on_node(self, pod: PodRecord, new: PodRecord) -> None:
        """Put ``new`` in the place of ``pod`` (the same pod, on the same node) in its node's list."""
        on_node = self._pods_by_node.get(pod.node_name)
        i = _place(on_node, pod) if on_node is not None else None
        if on_node is not None and i is not None:
            on_node[i] = new

    def _replace_pod_record(self, pod: PodRecord, new: PodRecord) -> None:
        self._replace_on_node(pod, new)
        self._pods_by_namespace[pod.namespace][pod.name] = new
        for ip in pod.ips:
            if self._pods_by_ip.get(ip) is pod:
                self._pods_by_ip[ip] = new
            else:
                others = self._ip_others.get(ip)
                if others is not None and pod.key in others:
                    others[pod.key] = new


def _place(pods: list[PodRecord], pod: PodRecord) -> int | None:
    """Where ``pod`` is in ``pods`` (records have no ``__eq__``: ``index`` compares identities, in C)."""
    try:
        return pods.index(pod)
    except ValueError:
        return None


def _labels_key(namespace: str, labels: Labels) -> tuple[str, ...]:
    """The interner's key of a pod's labels: (namespace, key, value, key, value...) in the labels' order.

    One flat tuple, not a frozenset of item tuples (112 bytes for four labels instead of about 500,
    per label set: per pod when the labels differ). Pods from one template list their labels in the
    same order; equal labels in another order get a dict of their own, which nothing relies on.
    """
    return (namespace, *itertools.chain.from_iterable(labels.items()))


def _pod_key(obj: Mapping[str, Any]) -> PodKey | None:
    try:
        return metadata_of(obj, namespaced=True)
    except InvalidObject:
        return None
