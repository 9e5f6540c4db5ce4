"""AdminNetworkPolicy and BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1), compiled.

Follows the v1alpha1 Go types of kubernetes-sigs/network-policy-api (the
latest shapes: ``subject: {namespaces | pods}``, peers ``namespaces``,
``pods``, and for egress also ``nodes`` and ``networks``; ports
``portNumber | namedPort | portRange``). Whatever this agent cannot enforce
exactly is refused with InvalidObject (field path and reason) rather than
half-enforced: unknown fields (older v1alpha1 shapes, fields of newer API
versions such as ``domainNames``), peers or ports with zero or several kinds
set, bad CIDRs, protocols, port numbers or actions.

Everything the evaluators need per packet is built here once: label
selectors, AddressRanges, PortMatchers and the Decision each rule returns.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from kube_netpol.api.cluster import PodRecord
from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.policy.cidrs import AddressRanges, parse_cidr
from kube_netpol.api.errors import InvalidObject
from kube_netpol.policy.ports import PortMatcher, PortNames, check_port_number, parse_protocol
from kube_netpol.policy.selectors import MATCH_ALL, LabelSelector, parse_label_selector

MAX_PRIORITY = 1000
MAX_RULES = 100  # per direction
MAX_PEERS = 100  # per rule
MAX_PORTS = 100  # per rule
MAX_NETWORKS = 25  # CIDRs per networks peer
MAX_RULE_NAME = 100
BANP_NAME = "default"

ANP_ACTIONS = ("Allow", "Deny", "Pass")
BANP_ACTIONS = ("Allow", "Deny")
_VERDICT_OF_ACTION = {"Allow": Verdict.ACCEPT, "Deny": Verdict.DENY, "Pass": Verdict.NEXT}

_INGRESS_PEER_KINDS = ("namespaces", "pods")
_EGRESS_PEER_KINDS = ("namespaces", "pods", "nodes", "networks")
#: Peer kinds of newer API versions that this agent recognises but does not enforce.
_UNSUPPORTED_PEER_KINDS = {
    "domainNames": "domainNames peers need DNS-aware enforcement, which kube-netpol does not implement",
}

#: A source or destination pod peer: (namespace selector, pod selector).
PodPeer = tuple[LabelSelector, LabelSelector]


class Subject:
    """The pods a policy applies to: namespace labels AND pod labels (pod selector is match-all for ``namespaces``)."""

    __slots__ = ("namespace_selector", "pod_selector")

    def __init__(self, namespace_selector: LabelSelector, pod_selector: LabelSelector = MATCH_ALL) -> None:
        self.namespace_selector = namespace_selector
        self.pod_selector = pod_selector

    def selects(self, pod: PodRecord) -> bool:
        return self.namespace_selector.matches(pod.namespace_labels) and self.pod_selector.matches(pod.labels)

    def __repr__(self) -> str:
        return f"Subject(namespaces={self.namespace_selector!r}, pods={self.pod_selector!r})"


class IngressRule:
    """One ingress rule: the first rule whose ``matches`` is true gives ``decision``.

    ``ports`` is None when the rule does not filter by port.
    """

    __slots__ = ("name", "action", "decision", "peers", "ports")

    def __init__(
        self, name: str, action: str, decision: Decision, peers: tuple[PodPeer, ...], ports: PortMatcher | None
    ) -> None:
        self.name = name
        self.action = action
        self.decision = decision
        self.peers = peers
        self.ports = ports

    def matches(
        self,
        protocol: int,
        port: int,
        src_labels: Mapping[str, str],
        src_namespace_labels: Mapping[str, str],
        dst_port_names: PortNames,
    ) -> bool:
        """Does traffic from a pod with these labels on (protocol, port) match? Named ports resolve on ``dst_port_names``."""
        ports = self.ports
        if ports is not None and not ports.matches(protocol, port, dst_port_names):
            return False
        for namespace_selector, pod_selector in self.peers:
            if namespace_selector.matches(src_namespace_labels) and pod_selector.matches(src_labels):
                return True
        return False

    def __repr__(self) -> str:
        return f"IngressRule({self.name!r}, {self.action})"


class EgressRule:
    """One egress rule. Its peers are split by kind, each precompiled.

    ``pod_peers`` match a destination pod; ``networks`` (the union of the
    rule's ``networks`` peers, None if it has none) match the destination
    address whether or not it is a pod; ``node_selectors`` match when the
    destination address belongs to a Node whose labels they select.
    """

    __slots__ = ("name", "action", "decision", "pod_peers", "networks", "node_selectors", "ports")

    def __init__(
        self,
        name: str,
        action: str,
        decision: Decision,
        pod_peers: tuple[PodPeer, ...],
        networks: AddressRanges | None,
        node_selectors: tuple[LabelSelector, ...],
        ports: PortMatcher | None,
    ) -> None:
        self.name = name
        self.action = action
        self.decision = decision
        self.pod_peers = pod_peers
        self.networks = networks
        self.node_selectors = node_selectors
        self.ports = ports

    def matches(
        self,
        protocol: int,
        port: int,
        address: bytes,
        dst_port_names: PortNames,
        dst_labels: Mapping[str, str] | None,
        dst_namespace_labels: Mapping[str, str] | None,
        node_labels: tuple[Mapping[str, str], ...],
    ) -> bool:
        """Does traffic to ``address`` (a pod with these labels and port names, or labels None; owned by
        nodes with ``node_labels``) match?"""
        ports = self.ports
        if ports is not None and not ports.matches(protocol, port, dst_port_names):
            return False
        if dst_labels is not None and dst_namespace_labels is not None:
            for namespace_selector, pod_selector in self.pod_peers:
                if namespace_selector.matches(dst_namespace_labels) and pod_selector.matches(dst_labels):
                    return True
        networks = self.networks
        if networks is not None and networks.contains(address):
            return True
        if node_labels:
            for selector in self.node_selectors:
                for labels in node_labels:
                    if selector.matches(labels):
                        return True
        return False

    def __repr__(self) -> str:
        return f"EgressRule({self.name!r}, {self.action})"


class AdminNetworkPolicy:
    """A parsed AdminNetworkPolicy; cluster-scoped, so ``namespace`` is ""."""

    __slots__ = ("name", "namespace", "priority", "subject", "ingress", "egress")

    def __init__(
        self,
        name: str,
        priority: int,
        subject: Subject,
        ingress: tuple[IngressRule, ...],
        egress: tuple[EgressRule, ...],
    ) -> None:
        self.name = name
        self.namespace = ""
        self.priority = priority
        self.subject = subject
        self.ingress = ingress
        self.egress = egress

    def __repr__(self) -> str:
        return f"AdminNetworkPolicy({self.name!r}, priority={self.priority})"


class BaselineAdminNetworkPolicy:
    """The parsed cluster singleton BaselineAdminNetworkPolicy (always named ``default``)."""

    __slots__ = ("name", "namespace", "subject", "ingress", "egress")

    def __init__(
        self, name: str, subject: Subject, ingress: tuple[IngressRule, ...], egress: tuple[EgressRule, ...]
    ) -> None:
        self.name = name
        self.namespace = ""
        self.subject = subject
        self.ingress = ingress
        self.egress = egress

    def __repr__(self) -> str:
        return f"BaselineAdminNetworkPolicy({self.name!r})"


# --------------------------------------------------------------------- parsing


def parse_admin_network_policy(obj: Mapping[str, Any]) -> AdminNetworkPolicy:
    """Compile an AdminNetworkPolicy object; raise InvalidObject if it cannot be enforced exactly."""
    name = _name_of(obj)
    spec = _spec_of(obj, ("priority", "subject", "ingress", "egress"))
    priority = spec.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidObject(f"priority is required and must be an integer, got {priority!r}", "spec.priority")
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidObject(f"priority {priority} is out of range 0..{MAX_PRIORITY}", "spec.priority")
    subject = _parse_subject(spec.get("subject"), "spec.subject")
    ingress, egress = _parse_rules(spec, name, ANP_ACTIONS, "AdminNetworkPolicy")
    return AdminNetworkPolicy(name, priority, subject, ingress, egress)


def parse_baseline_admin_network_policy(obj: Mapping[str, Any]) -> BaselineAdminNetworkPolicy:
    """Compile the BaselineAdminNetworkPolicy; only ``default`` is valid, and there is no Pass."""
    name = _name_of(obj)
    if name != BANP_NAME:
        raise InvalidObject(
            f"a BaselineAdminNetworkPolicy must be named {BANP_NAME!r} (the cluster singleton), not {name!r}",
            "metadata.name",
        )
    spec = _spec_of(obj, ("subject", "ingress", "egress"))
    subject = _parse_subject(spec.get("subject"), "spec.subject")
    ingress, egress = _parse_rules(spec, name, BANP_ACTIONS, "BaselineAdminNetworkPolicy")
    return BaselineAdminNetworkPolicy(name, subject, ingress, egress)


def _name_of(obj: Mapping[str, Any]) -> str:
    if not isinstance(obj, Mapping):
        raise InvalidObject("not an object")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidObject("metadata is required", "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("metadata.name is required", "metadata.name")
    return name


def _spec_of(obj: Mapping[str, Any], known: tuple[str, ...]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidObject("spec is required and must be an object", "spec")
    _no_unknown_fields(spec, known, "spec")
    return spec


def _no_unknown_fields(obj: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    unknown = sorted(str(key) for key in obj if key not in known)
    if unknown:
        raise InvalidObject(
            f"unknown field(s) {unknown} (the API defines {', '.join(known)}); refusing rather than ignoring them",
            path,
        )


def _exactly_one(
    obj: Any, kinds: tuple[str, ...], path: str, what: str, unsupported: Mapping[str, str] | None = None
) -> str:
    """The single kind set in ``obj``; refuses none, several, or fields this agent does not know.

    ``unsupported`` names kinds of newer API versions, with why they are refused.
    """
    if not isinstance(obj, Mapping):
        raise InvalidObject("must be an object", path)
    for key in obj:
        if unsupported and key in unsupported:
            raise InvalidObject(f"{key}: {unsupported[key]}; refusing the policy", f"{path}.{key}")
    _no_unknown_fields(obj, kinds, path)
    present = [kind for kind in kinds if obj.get(kind) is not None]
    if len(present) != 1:
        found = f"found {', '.join(present)}" if present else "found none"
        raise InvalidObject(f"a {what} must set exactly one of {', '.join(kinds)} ({found})", path)
    return present[0]


def _parse_namespaced_pod(obj: Any, path: str) -> PodPeer:
    if not isinstance(obj, Mapping):
        raise InvalidObject("must be an object", path)
    _no_unknown_fields(obj, ("namespaceSelector", "podSelector"), path)
    for field in ("namespaceSelector", "podSelector"):
        if obj.get(field) is None:
            raise InvalidObject(f"{field} is required (an empty selector {{}} selects all)", f"{path}.{field}")
    return (
        parse_label_selector(obj["namespaceSelector"], f"{path}.namespaceSelector"),
        parse_label_selector(obj["podSelector"], f"{path}.podSelector"),
    )


def _parse_subject(obj: Any, path: str) -> Subject:
    if obj is None:
        raise InvalidObject("subject is required", path)
    kind = _exactly_one(obj, ("namespaces", "pods"), path, "subject")
    if kind == "namespaces":
        return Subject(parse_label_selector(obj["namespaces"], f"{path}.namespaces"))
    namespace_selector, pod_selector = _parse_namespaced_pod(obj["pods"], f"{path}.pods")
    return Subject(namespace_selector, pod_selector)


def _list_field(rule: Mapping[str, Any], field: str, path: str, required: bool, limit: int) -> list[Any]:
    value = rule.get(field)
    if value is None:
        if required:
            raise InvalidObject(f"{field} is required and must list at least one entry", f"{path}.{field}")
        return []
    if not isinstance(value, list):
        raise InvalidObject("must be a list", f"{path}.{field}")
    if required and not value:
        raise InvalidObject(f"{field} must list at least one entry", f"{path}.{field}")
    if len(value) > limit:
        raise InvalidObject(f"at most {limit} entries are allowed, got {len(value)}", f"{path}.{field}")
    return value


def _parse_rules(
    spec: Mapping[str, Any], policy: str, actions: tuple[str, ...], kind: str
) -> tuple[tuple[IngressRule, ...], tuple[EgressRule, ...]]:
    ingress: list[IngressRule] = []
    egress: list[EgressRule] = []
    for direction in ("ingress", "egress"):
        rules = _list_field(spec, direction, "spec", required=False, limit=MAX_RULES)
        for i, rule in enumerate(rules):
            path = f"spec.{direction}[{i}]"
            if direction == "ingress":
                ingress.append(_parse_ingress_rule(rule, i, path, policy, actions, kind))
            else:
                egress.append(_parse_egress_rule(rule, i, path, policy, actions, kind))
    return tuple(ingress), tuple(egress)


def _rule_header(
    rule: Any, index: int, direction: str, path: str, policy: str, actions: tuple[str, ...], kind: str, peers: str,
    ports: str = "ports", verdicts: Mapping[str, Verdict] = _VERDICT_OF_ACTION,
) -> tuple[str, str, Decision]:
    """(name, action, decision) of a rule, after checking its fields; shared with ClusterNetworkPolicy
    (whose ports field is ``protocols`` and whose actions are Accept, Deny, Pass)."""
    if not isinstance(rule, Mapping):
        raise InvalidObject("must be an object", path)
    _no_unknown_fields(rule, ("name", "action", peers, ports), path)
    name = rule.get("name")
    if name is None or name == "":
        # Rules may be unnamed; name them by position so that decisions stay traceable.
        name = f"{direction}[{index}]"
    elif not isinstance(name, str):
        raise InvalidObject("must be a string", f"{path}.name")
    elif len(name) > MAX_RULE_NAME:
        raise InvalidObject(f"must be at most {MAX_RULE_NAME} characters", f"{path}.name")
    action = rule.get("action")
    if action is None:
        raise InvalidObject(f"action is required (one of {', '.join(actions)})", f"{path}.action")
    if action not in actions:
        hint = " (Pass exists only in AdminNetworkPolicy)" if action == "Pass" else ""
        raise InvalidObject(
            f"unsupported action {action!r} for {kind} (expected {', '.join(actions)}){hint}", f"{path}.action"
        )
    verdict = verdicts[action]
    # Pass is a NEXT verdict that still names its policy and rule, for `explain`.
    decision = Decision(verdict, policy=policy, rule=name, reason=action)
    return name, action, decision


def _parse_ingress_rule(
    rule: Any, index: int, path: str, policy: str, actions: tuple[str, ...], kind: str
) -> IngressRule:
    name, action, decision = _rule_header(rule, index, "ingress", path, policy, actions, kind, "from")
    peers: list[PodPeer] = []
    for j, peer in enumerate(_list_field(rule, "from", path, required=True, limit=MAX_PEERS)):
        where = f"{path}.from[{j}]"
        peer_kind = _exactly_one(peer, _INGRESS_PEER_KINDS, where, "peer", _UNSUPPORTED_PEER_KINDS)
        peers.append(_parse_pod_peer(peer, peer_kind, where))
    ports, _ = _parse_ports(rule, path)
    return IngressRule(name, action, decision, tuple(peers), ports)


def _parse_egress_rule(
    rule: Any, index: int, path: str, policy: str, actions: tuple[str, ...], kind: str
) -> EgressRule:
    name, action, decision = _rule_header(rule, index, "egress", path, policy, actions, kind, "to")
    pod_peers: list[PodPeer] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    network_texts: list[str] = []
    node_selectors: list[LabelSelector] = []
    address_peer: str | None = None
    for j, peer in enumerate(_list_field(rule, "to", path, required=True, limit=MAX_PEERS)):
        where = f"{path}.to[{j}]"
        peer_kind = _exactly_one(peer, _EGRESS_PEER_KINDS, where, "peer", _UNSUPPORTED_PEER_KINDS)
        if peer_kind in ("namespaces", "pods"):
            pod_peers.append(_parse_pod_peer(peer, peer_kind, where))
        elif peer_kind == "nodes":
            node_selectors.append(parse_label_selector(peer["nodes"], f"{where}.nodes"))
            address_peer = address_peer or f"{where}.nodes"
        else:
            cidrs = _list_field(peer, "networks", where, required=True, limit=MAX_NETWORKS)
            for k, text in enumerate(cidrs):
                networks.append(_parse_network(text, f"{where}.networks[{k}]"))
                network_texts.append(text)
            address_peer = address_peer or f"{where}.networks"
    ports, named_at = _parse_ports(rule, path)
    if named_at is not None and address_peer is not None:
        # The API refuses this too: nodes and networks have no named ports.
        raise InvalidObject(
            f"namedPort cannot be used in a rule with networks or nodes peers ({address_peer})", named_at
        )
    ranges = AddressRanges(networks, source=", ".join(network_texts)) if networks else None
    return EgressRule(name, action, decision, tuple(pod_peers), ranges, tuple(node_selectors), ports)


def _parse_pod_peer(peer: Mapping[str, Any], kind: str, path: str) -> PodPeer:
    if kind == "namespaces":
        return (parse_label_selector(peer["namespaces"], f"{path}.namespaces"), MATCH_ALL)
    return _parse_namespaced_pod(peer["pods"], f"{path}.pods")


def _parse_network(text: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(text, str) and ":" in text and "." in text:
        # The CRD refuses IPv4 addresses embedded in IPv6 ones.
        raise InvalidObject(f"invalid CIDR {text!r}: IPv4 embedded in IPv6 is not supported", path)
    return parse_cidr(text, path)


def _parse_ports(rule: Mapping[str, Any], path: str) -> tuple[PortMatcher | None, str | None]:
    """The rule's PortMatcher (None: all ports) and the path of its first namedPort, if any."""
    entries = _list_field(rule, "ports", path, required=False, limit=MAX_PORTS)
    if not entries:
        return None, None
    ranges: list[tuple[int, int, int]] = []
    named: list[tuple[str, int | None]] = []
    named_at: str | None = None
    for k, entry in enumerate(entries):
        where = f"{path}.ports[{k}]"
        kind = _exactly_one(entry, ("portNumber", "namedPort", "portRange"), where, "port")
        value = entry[kind]
        where = f"{where}.{kind}"
        if kind == "namedPort":
            if not isinstance(value, str) or not value:
                raise InvalidObject("must be a non-empty port name", where)
            # Resolved on the destination pod with the packet's own protocol.
            named.append((value, None))
            named_at = named_at or where
            continue
        if not isinstance(value, Mapping):
            raise InvalidObject("must be an object", where)
        if kind == "portNumber":
            _no_unknown_fields(value, ("protocol", "port"), where)
            protocol = parse_protocol(value.get("protocol"), f"{where}.protocol")
            port = check_port_number(value.get("port"), f"{where}.port")
            ranges.append((protocol, port, port))
        else:
            _no_unknown_fields(value, ("protocol", "start", "end"), where)
            protocol = parse_protocol(value.get("protocol"), f"{where}.protocol")
            start = check_port_number(value.get("start"), f"{where}.start")
            end = check_port_number(value.get("end"), f"{where}.end")
            if start > end:
                raise InvalidObject(f"start {start} is greater than end {end}", where)
            ranges.append((protocol, start, end))
    return PortMatcher(ranges, named), named_at
