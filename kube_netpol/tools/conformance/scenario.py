"""Reading scenario files (../shared/conformance/SCENARIO_FORMAT.md) into typed, validated values.

Everything that can be checked without evolving the cluster is checked here,
strictly: unknown fields, wrong types, bad names, patterns and tables are
errors, because a typo in a scenario would otherwise silently test nothing.
What depends on the cluster at a given step (does this pod exist, does this
pattern match anything) is checked by ``plan.plan_scenario``.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

import yaml

from kube_netpol.tools.conformance import fields
from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance.networks import (
    NETWORK_KINDS,
    NetworkSpec,
    network_key,
    networks_of_pod_object,
    parse_network_names,
    parse_networks,
)
from kube_netpol.plugins import BUILTIN_ORDER, registry_for
from kube_netpol.sources.manifests import yaml_problem
from kube_netpol.state.kinds import RECORD_KINDS

FAMILIES = ("IPv4", "IPv6")
PROTOCOLS = ("TCP", "UDP", "SCTP")
#: The kinds of every built-in evaluator (ClusterNetworkPolicy included: format v2), whose objects scenarios write.
KINDS = registry_for(BUILTIN_ORDER)
#: Kinds handed to the implementation as written (policies): every kind but the state's own records.
POLICY_KINDS = tuple(name for name in KINDS.names if name not in RECORD_KINDS)
#: The kinds a step may apply or delete.
SUPPORTED_KINDS = ("Namespace", "Pod", "Node", *POLICY_KINDS, *NETWORK_KINDS)
#: What the model uses when it leaves ports or protocols out: the e2e suite's model.
DEFAULT_MODEL_PORTS = (80, 81)
DEFAULT_MODEL_PROTOCOLS = PROTOCOLS

_TABLE_MARKS = {".": True, "X": False}


# ---------------------------------------------------------------------- values


@dataclass(frozen=True)
class ContainerPort:
    name: str  # "" when the port has no name
    port: int
    protocol: str

    def to_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"containerPort": self.port, "protocol": self.protocol}
        if self.name:
            obj = {"name": self.name, **obj}
        return obj


@dataclass(frozen=True)
class ModelSpec:
    namespaces: tuple[str, ...]
    pods: tuple[str, ...]
    ports: tuple[int, ...]
    protocols: tuple[str, ...]
    ip_families: tuple[str, ...]
    networks: tuple[str, ...] = ()  # every model pod attaches to these (v2 secondary networks)


@dataclass(frozen=True)
class NamespaceSpec:
    """A namespace of the cluster, or a Namespace object a step applies."""

    name: str
    labels: Mapping[str, str]
    where: str = ""


@dataclass(frozen=True)
class PodSpec:
    """A pod of the cluster, or a Pod object a step applies.

    ``ips`` and ``container_ports`` are None when not described: a new pod then
    gets the next free address and no container ports; an existing pod keeps
    its own.
    """

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[str, ...] | None = None
    container_ports: tuple[ContainerPort, ...] | None = None
    where: str = ""
    networks: tuple[str, ...] | None = None  # secondary networks as written (None: not described)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ExternalSpec:
    name: str
    ips: tuple[str, ...]
    dns_names: tuple[str, ...] = ()  # format v2: names the lab's DNS server answers with ``ips``


@dataclass(frozen=True)
class NodeSpec:
    """A node of ``cluster.nodes`` (format v2): a Node object and a host that is not a pod."""

    name: str
    labels: Mapping[str, str]
    ips: tuple[str, ...]


@dataclass(frozen=True)
class ClusterSpec:
    model: ModelSpec | None
    namespaces: tuple[NamespaceSpec, ...]
    pods: tuple[PodSpec, ...]
    externals: tuple[ExternalSpec, ...]
    networks: tuple[NetworkSpec, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()

    @property
    def families(self) -> tuple[str, ...]:
        """The families automatic addresses are given in."""
        return self.model.ip_families if self.model is not None else ("IPv4",)


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class PolicySpec:
    """A policy object a step applies, kept exactly as written."""

    ref: ObjectRef
    obj: Mapping[str, Any]
    where: str = ""


ApplyItem = NamespaceSpec | PodSpec | PolicySpec | NodeSpec


@dataclass(frozen=True)
class Override:
    source: str
    destination: str
    allowed: bool
    where: str = ""


@dataclass(frozen=True)
class Table:
    """A reachability table: ``cells[(source, destination)]`` is True where the table says `.`."""

    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    cells: Mapping[tuple[str, str], bool]


@dataclass(frozen=True)
class ExpectSpec:
    """One probe set: a port, protocol and family, the endpoints, and the expectation.

    ``sources``/``destinations`` are the patterns as written (None: the default).
    Exactly one of ``table`` and ``default`` is set.
    """

    where: str
    port: int | str
    protocol: str
    family: str
    sources: tuple[str, ...] | None
    destinations: tuple[str, ...] | None
    table: Table | None
    default: bool | None
    overrides: tuple[Override, ...]
    network: str | None = None  # a secondary network's ns/name (None: the cluster network)
    resolve: str | None = None  # format v2: the DNS name a destination with dnsNames is resolved by


@dataclass(frozen=True)
class StepSpec:
    where: str
    name: str
    delete: tuple[ObjectRef, ...]
    apply: tuple[ApplyItem, ...]
    expect: tuple[ExpectSpec, ...]


@dataclass(frozen=True)
class Scenario:
    source: str  # the file it was read from
    name: str
    description: str
    tags: tuple[str, ...]
    cluster: ClusterSpec
    steps: tuple[StepSpec, ...]


# --------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file; ScenarioError names the file and the problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(f"cannot read the file: {err}", source=source) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ScenarioError(f"not valid YAML: {_yaml_problem(err)}", source=source) from None
    try:
        return parse_scenario(data, source)
    except ScenarioError as err:
        raise err.in_file(source) from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    return yaml_problem(err) if isinstance(err, yaml.MarkedYAMLError) else " ".join(str(err).split())


def parse_scenario(data: object, source: str = "") -> Scenario:
    """Validate the parsed YAML of one scenario."""
    if data is None:
        raise ScenarioError("the file is empty")
    top = fields.as_mapping(data, "")
    fields.check_fields(top, "", required=("name", "cluster", "steps"), optional=("description", "tags"))
    name = fields.valid_name(top["name"], "name", fields.DNS_SUBDOMAIN, "a scenario name")
    description = fields.as_string(top.get("description", ""), "description", allow_empty=True)
    tags = tuple(fields.as_string(t, f"tags[{i}]") for i, t in enumerate(fields.as_list(top.get("tags", []), "tags")))
    cluster = _parse_cluster(top["cluster"], "cluster")
    steps_data = fields.as_list(top["steps"], "steps")
    if not steps_data:
        raise ScenarioError("at least one step is required", "steps")
    steps = tuple(_parse_step(step, f"steps[{i}]", i) for i, step in enumerate(steps_data))
    return Scenario(source, name, description, tags, cluster, steps)


# --------------------------------------------------------------------- cluster


def _parse_cluster(data: object, where: str) -> ClusterSpec:
    cluster = fields.as_mapping(data, where)
    fields.check_fields(cluster, where, optional=("model", "namespaces", "pods", "externals", "networks", "nodes"))
    model = _parse_model(cluster["model"], f"{where}.model") if "model" in cluster else None
    namespaces = tuple(
        _parse_namespace(ns, f"{where}.namespaces[{i}]")
        for i, ns in enumerate(fields.as_list(cluster.get("namespaces", []), f"{where}.namespaces"))
    )
    pods = tuple(
        _parse_cluster_pod(pod, f"{where}.pods[{i}]")
        for i, pod in enumerate(fields.as_list(cluster.get("pods", []), f"{where}.pods"))
    )
    externals = tuple(
        _parse_external(ext, f"{where}.externals[{i}]")
        for i, ext in enumerate(fields.as_list(cluster.get("externals", []), f"{where}.externals"))
    )
    fields.no_duplicates([e.name for e in externals], f"{where}.externals", "external")
    nodes = _parse_cluster_nodes(cluster.get("nodes", []), f"{where}.nodes")
    fields.no_duplicates([e.name for e in externals] + [n.name for n in nodes], where, "external or node name")
    networks = parse_networks(cluster.get("networks", []), f"{where}.networks")
    return ClusterSpec(model, namespaces, pods, externals, networks, nodes)


def _parse_cluster_nodes(data: object, where: str) -> tuple[NodeSpec, ...]:
    """``cluster.nodes`` (format v2): name, labels, ips (their InternalIP addresses)."""
    nodes = []
    for i, item in enumerate(fields.as_list(data, where)):
        here = f"{where}[{i}]"
        node = fields.as_mapping(item, here)
        fields.check_fields(node, here, required=("name", "ips"), optional=("labels",))
        name = fields.valid_name(node["name"], f"{here}.name", fields.DNS_SUBDOMAIN, "a node's name")
        labels = fields.as_mapping(node.get("labels", {}), f"{here}.labels")
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ScenarioError("labels must map strings to strings", f"{here}.labels")
        nodes.append(NodeSpec(name, dict(labels), _ips(node["ips"], f"{here}.ips")))
    fields.no_duplicates([n.name for n in nodes], where, "node")
    return tuple(nodes)


def _parse_model(data: object, where: str) -> ModelSpec:
    model = fields.as_mapping(data, where)
    fields.check_fields(model, where, required=("namespaces", "pods"), optional=("ports", "protocols", "ipFamilies", "networks"))
    namespaces = fields.valid_names(model["namespaces"], f"{where}.namespaces", fields.DNS_LABEL, "a namespace name")
    pods = fields.valid_names(model["pods"], f"{where}.pods", fields.DNS_SUBDOMAIN, "a pod name")
    if not namespaces or not pods:
        raise ScenarioError("namespaces and pods must not be empty", where)
    ports = tuple(
        fields.port_number(p, f"{where}.ports[{i}]")
        for i, p in enumerate(fields.as_list(model.get("ports", list(DEFAULT_MODEL_PORTS)), f"{where}.ports"))
    )
    fields.no_duplicates(ports, f"{where}.ports", "port")
    protocols = tuple(
        fields.choice(p, f"{where}.protocols[{i}]", PROTOCOLS)
        for i, p in enumerate(
            fields.as_list(model.get("protocols", list(DEFAULT_MODEL_PROTOCOLS)), f"{where}.protocols")
        )
    )
    fields.no_duplicates(protocols, f"{where}.protocols", "protocol")
    families = tuple(
        fields.choice(f, f"{where}.ipFamilies[{i}]", FAMILIES)
        for i, f in enumerate(fields.as_list(model.get("ipFamilies", ["IPv4"]), f"{where}.ipFamilies"))
    )
    if not families:
        raise ScenarioError("must name at least one family", f"{where}.ipFamilies")
    fields.no_duplicates(families, f"{where}.ipFamilies", "family")
    networks = parse_network_names(model.get("networks", []), f"{where}.networks")
    return ModelSpec(namespaces, pods, ports, protocols, families, networks)


def _parse_namespace(data: object, where: str) -> NamespaceSpec:
    ns = fields.as_mapping(data, where)
    fields.check_fields(ns, where, required=("name",), optional=("labels",))
    name = fields.valid_name(ns["name"], f"{where}.name", fields.DNS_LABEL, "a namespace name")
    return NamespaceSpec(name, fields.label_map(ns.get("labels"), f"{where}.labels"), where)


def _parse_cluster_pod(data: object, where: str) -> PodSpec:
    pod = fields.as_mapping(data, where)
    fields.check_fields(pod, where, required=("namespace", "name"), optional=("labels", "ips", "containerPorts", "networks"))
    namespace = fields.valid_name(pod["namespace"], f"{where}.namespace", fields.DNS_LABEL, "a namespace name")
    name = fields.valid_name(pod["name"], f"{where}.name", fields.DNS_SUBDOMAIN, "a pod name")
    ips = _ips(pod["ips"], f"{where}.ips") if "ips" in pod else None
    ports_where = f"{where}.containerPorts"
    items = fields.as_list(pod.get("containerPorts", []), ports_where)
    ports = _container_ports([(f"{ports_where}[{i}]", p) for i, p in enumerate(items)], ports_where)
    networks = parse_network_names(pod["networks"], f"{where}.networks") if "networks" in pod else None
    labels = fields.label_map(pod.get("labels"), f"{where}.labels")
    return PodSpec(namespace, name, labels, ips, ports, where, networks)


def _parse_external(data: object, where: str) -> ExternalSpec:
    ext = fields.as_mapping(data, where)
    fields.check_fields(ext, where, required=("name", "ips"), optional=("dnsNames",))
    name = fields.valid_name(ext["name"], f"{where}.name", fields.DNS_SUBDOMAIN, "an external's name")
    names = tuple(
        fields.valid_name(text, f"{where}.dnsNames[{i}]", fields.DNS_SUBDOMAIN, "a DNS name").lower()
        for i, text in enumerate(fields.as_list(ext.get("dnsNames", []), f"{where}.dnsNames"))
    )
    fields.no_duplicates(list(names), f"{where}.dnsNames", "DNS name")
    return ExternalSpec(name, _ips(ext["ips"], f"{where}.ips"), names)


def _ips(data: object, where: str) -> tuple[str, ...]:
    """Addresses, at most one per family (as Kubernetes' podIPs), in canonical text."""
    items = fields.as_list(data, where)
    if not items:
        raise ScenarioError("must list at least one address", where)
    seen: dict[int, str] = {}
    result = []
    for i, text in enumerate(items):
        try:
            address = ipaddress.ip_address(fields.as_string(text, f"{where}[{i}]"))
        except ValueError:
            raise ScenarioError(f"{text!r} is not an IP address", f"{where}[{i}]") from None
        if address.version in seen:
            raise ScenarioError(
                f"two IPv{address.version} addresses ({seen[address.version]}, {address}); give one per family", where
            )
        seen[address.version] = str(address)
        result.append(str(address))
    return tuple(result)


def _container_ports(items: Sequence[tuple[str, object]], where: str) -> tuple[ContainerPort, ...]:
    ports = []
    for item_where, data in items:
        port = fields.as_mapping(data, item_where)
        fields.check_fields(
            port, item_where, required=("containerPort",), optional=("name", "protocol", "hostPort", "hostIP")
        )
        name = fields.port_name(port["name"], f"{item_where}.name") if "name" in port else ""
        number = fields.port_number(port["containerPort"], f"{item_where}.containerPort")
        protocol = fields.choice(port.get("protocol", "TCP"), f"{item_where}.protocol", PROTOCOLS)
        ports.append(ContainerPort(name, number, protocol))
    fields.no_duplicates([p.name for p in ports if p.name], where, "port name")
    return tuple(ports)


# ----------------------------------------------------------------------- steps


def _parse_step(data: object, where: str, index: int) -> StepSpec:
    step = fields.as_mapping(data, where)
    fields.check_fields(step, where, optional=("name", "apply", "delete", "expect"))
    name = fields.as_string(step.get("name", f"step {index + 1}"), f"{where}.name")
    delete = tuple(
        _parse_delete(item, f"{where}.delete[{i}]")
        for i, item in enumerate(fields.as_list(step.get("delete", []), f"{where}.delete"))
    )
    apply = tuple(
        _parse_apply(item, f"{where}.apply[{i}]")
        for i, item in enumerate(fields.as_list(step.get("apply", []), f"{where}.apply"))
    )
    expect = tuple(
        _parse_expect(item, f"{where}.expect[{i}]")
        for i, item in enumerate(fields.as_list(step.get("expect", []), f"{where}.expect"))
    )
    if not (delete or apply or expect):
        raise ScenarioError("a step needs at least one of apply, delete and expect", where)
    return StepSpec(where, name, delete, apply, expect)


def _parse_node_relabel(name: str, labels: Mapping[str, str], where: str) -> NodeSpec:
    """A step's Node (format v2): the labels of a node of cluster.nodes, replaced; its addresses are kept."""
    fields.valid_name(name, f"{where}.metadata.name", fields.DNS_SUBDOMAIN, "a node's name")
    return NodeSpec(name, labels, ())


def _kind(data: object, where: str) -> str:
    kind = fields.as_string(data, where)
    if kind not in SUPPORTED_KINDS:
        raise ScenarioError(f"unsupported kind {kind!r} (supported: {', '.join(SUPPORTED_KINDS)})", where)
    return kind


def _reference(
    kind: str, namespace: object, name: object, where: str, namespace_where: str, name_where: str
) -> ObjectRef:
    """(kind, namespace, name) with the namespace required exactly for namespaced kinds."""
    name_text = fields.as_string(name, name_where)
    if kind in NETWORK_KINDS or KINDS[kind].namespaced:
        if namespace is None:
            raise ScenarioError(f"a {kind} needs a namespace", where)
        ns_text = fields.valid_name(namespace, namespace_where, fields.DNS_LABEL, "a namespace name")
    else:
        if namespace not in (None, ""):
            raise ScenarioError(f"a {kind} is cluster-scoped and takes no namespace", namespace_where)
        ns_text = ""
    return ObjectRef(kind, ns_text, name_text)


def _parse_delete(data: object, where: str) -> ObjectRef:
    item = fields.as_mapping(data, where)
    fields.check_fields(item, where, required=("kind", "name"), optional=("namespace",))
    kind = _kind(item["kind"], f"{where}.kind")
    if kind == "Node":
        raise ScenarioError("steps do not delete nodes (list them in cluster.nodes; a step may relabel one)", where)
    return _reference(kind, item.get("namespace"), item["name"], where, f"{where}.namespace", f"{where}.name")


def _parse_apply(data: object, where: str) -> ApplyItem:
    obj = fields.as_mapping(data, where)
    if "kind" not in obj:
        raise ScenarioError("kind is required", where)
    kind = _kind(obj["kind"], f"{where}.kind")
    meta = fields.as_mapping(obj.get("metadata"), f"{where}.metadata")
    if "name" not in meta:
        raise ScenarioError("metadata.name is required", where)
    ref = _reference(
        kind, meta.get("namespace"), meta["name"], where, f"{where}.metadata.namespace", f"{where}.metadata.name"
    )
    if kind in POLICY_KINDS or kind in NETWORK_KINDS:
        # Policies go to the implementation as written: checking them is its job
        # (a scenario may apply an invalid one to see that it is ignored).
        return PolicySpec(ref, copy.deepcopy(dict(obj)), where)
    if obj.get("apiVersion", "v1") != "v1":
        raise ScenarioError(f"apiVersion of a {kind} must be v1", f"{where}.apiVersion")
    labels = fields.label_map(meta.get("labels"), f"{where}.metadata.labels")
    if kind == "Node":
        return _parse_node_relabel(ref.name, labels, where)
    if kind == "Namespace":
        fields.valid_name(ref.name, f"{where}.metadata.name", fields.DNS_LABEL, "a namespace name")
        return NamespaceSpec(ref.name, labels, where)
    fields.valid_name(ref.name, f"{where}.metadata.name", fields.DNS_SUBDOMAIN, "a pod name")
    return PodSpec(ref.namespace, ref.name, labels, _pod_object_ips(obj, where), _pod_object_ports(obj, where), where,
                   networks_of_pod_object(obj, where))


def _pod_object_ips(obj: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    status = fields.as_mapping(obj.get("status") or {}, f"{where}.status")
    if "podIPs" in status:
        entries = fields.as_list(status["podIPs"], f"{where}.status.podIPs")
        texts = [fields.as_mapping(e, f"{where}.status.podIPs[{i}]").get("ip") for i, e in enumerate(entries)]
        return _ips(texts, f"{where}.status.podIPs")
    if "podIP" in status:
        return _ips([status["podIP"]], f"{where}.status.podIP")
    return None


def _pod_object_ports(obj: Mapping[str, Any], where: str) -> tuple[ContainerPort, ...] | None:
    spec = fields.as_mapping(obj.get("spec") or {}, f"{where}.spec")
    if "containers" not in spec:
        return None
    items: list[tuple[str, object]] = []
    for c, container in enumerate(fields.as_list(spec["containers"], f"{where}.spec.containers")):
        container_where = f"{where}.spec.containers[{c}]"
        ports = fields.as_mapping(container, container_where).get("ports") or []
        items.extend(
            (f"{container_where}.ports[{p}]", port)
            for p, port in enumerate(fields.as_list(ports, f"{container_where}.ports"))
        )
    return _container_ports(items, f"{where}.spec.containers")


# ---------------------------------------------------------------------- expect


def _parse_expect(data: object, where: str) -> ExpectSpec:
    entry = fields.as_mapping(data, where)
    fields.check_fields(
        entry,
        where,
        required=("port", "protocol"),
        optional=("family", "from", "to", "reachability", "default", "overrides", "network", "resolve"),
    )
    raw_port = entry["port"]
    port: int | str = (
        fields.port_name(raw_port, f"{where}.port")
        if isinstance(raw_port, str)
        else fields.port_number(raw_port, f"{where}.port")
    )
    protocol = fields.choice(entry["protocol"], f"{where}.protocol", PROTOCOLS)
    family = fields.choice(entry.get("family", "IPv4"), f"{where}.family", FAMILIES)
    sources = _patterns(entry["from"], f"{where}.from") if "from" in entry else None
    destinations = _patterns(entry["to"], f"{where}.to") if "to" in entry else None
    has_table = "reachability" in entry
    if has_table == ("default" in entry):
        raise ScenarioError("give either reachability (a table) or default (with optional overrides)", where)
    if has_table and "overrides" in entry:
        raise ScenarioError("overrides go with default, not with a reachability table", f"{where}.overrides")
    table = _parse_table(entry["reachability"], f"{where}.reachability") if has_table else None
    default = None if has_table else fields.choice(entry["default"], f"{where}.default", ("allow", "deny")) == "allow"
    overrides = tuple(
        _parse_override(o, f"{where}.overrides[{i}]")
        for i, o in enumerate(fields.as_list(entry.get("overrides", []), f"{where}.overrides"))
    )
    # Always ns/name here: a probe set belongs to no namespace.
    network = network_key(fields.as_string(entry["network"], f"{where}.network"), "", f"{where}.network") \
        if "network" in entry else None
    resolve = None
    if "resolve" in entry:
        resolve = fields.valid_name(entry["resolve"], f"{where}.resolve", fields.DNS_SUBDOMAIN, "a DNS name").lower()
    return ExpectSpec(where, port, protocol, family, sources, destinations, table, default, overrides, network, resolve)


def _parse_override(data: object, where: str) -> Override:
    override = fields.as_mapping(data, where)
    fields.check_fields(override, where, required=("from", "to", "allowed"))
    allowed = override["allowed"]
    if not isinstance(allowed, bool):
        raise ScenarioError(f"must be true or false, not {allowed!r}", f"{where}.allowed")
    return Override(
        _pattern(override["from"], f"{where}.from"), _pattern(override["to"], f"{where}.to"), allowed, where
    )


def _patterns(data: object, where: str) -> tuple[str, ...]:
    items = fields.as_list(data, where)
    if not items:
        raise ScenarioError("must list at least one pattern", where)
    return tuple(_pattern(p, f"{where}[{i}]") for i, p in enumerate(items))


def _pattern(data: object, where: str) -> str:
    text = fields.as_string(data, where)
    if not _is_pattern(text):
        raise ScenarioError(f"{text!r} is not a pattern (ns/pod, ns/*, */pod, * or an external's name)", where)
    return text


def _is_pattern(text: str) -> bool:
    """``*``, ``ns/pod``, ``ns/*``, ``*/pod`` or an external's name."""
    if text == "*":
        return True
    parts = text.split("/")
    if len(parts) == 1:
        return bool(fields.DNS_SUBDOMAIN.match(text))
    namespace, pod = parts if len(parts) == 2 else ("", "")
    return (namespace == "*" or bool(fields.DNS_LABEL.match(namespace))) and (
        pod == "*" or bool(fields.DNS_SUBDOMAIN.match(pod))
    )


def _parse_table(data: object, where: str) -> Table:
    text = fields.as_string(data, where)
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) < 2:
        raise ScenarioError("a table needs a header row and at least one row", where)
    header_where = f"{where} (table line {lines[0][0]})"
    destinations = tuple(lines[0][1][1:])
    if not destinations:
        raise ScenarioError("the header row names no destinations (its first cell is a placeholder)", header_where)
    _check_endpoint_names(destinations, header_where)
    fields.no_duplicates(destinations, header_where, "column")
    sources: list[str] = []
    cells: dict[tuple[str, str], bool] = {}
    for number, cells_text in lines[1:]:
        line_where = f"{where} (table line {number})"
        source, marks = cells_text[0], cells_text[1:]
        _check_endpoint_names([source], line_where)
        if source in sources:
            raise ScenarioError(f"row {source!r} appears twice", line_where)
        if len(marks) != len(destinations):
            raise ScenarioError(f"row {source!r} has {len(marks)} marks for {len(destinations)} columns", line_where)
        for destination, mark in zip(destinations, marks):
            if mark not in _TABLE_MARKS:
                raise ScenarioError(f"mark {mark!r} in row {source!r} is neither '.' nor 'X'", line_where)
            cells[(source, destination)] = _TABLE_MARKS[mark]
        sources.append(source)
    return Table(tuple(sources), destinations, cells)


def _check_endpoint_names(names: Iterable[str], where: str) -> None:
    """Table rows and columns name single endpoints: patterns without ``*``."""
    for name in names:
        if "*" in name or not _is_pattern(name):
            raise ScenarioError(f"{name!r} is not a pod (ns/pod) or an external's name", where)
