"""NetworkPolicy (networking.k8s.io/v1) parsed, validated and compiled for the hot path.

Validation follows the API server (pkg/apis/networking/validation) and its
defaulting: anything the agent cannot enforce exactly as the API server would
accept it raises InvalidObject with the field path. Everything a packet needs
(selectors, address ranges, port matchers and the Decision each rule returns)
is built here, once per policy version.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.policy.cidrs import AddressRanges, parse_cidr
from kube_netpol.api.errors import InvalidObject
from kube_netpol.policy.ports import ALL_PORTS, PortMatcher, PortNames, check_port_number, parse_protocol
from kube_netpol.policy.selectors import MATCH_ALL, LabelSelector, parse_label_selector

INGRESS = "Ingress"
EGRESS = "Egress"
_POLICY_TYPES = (INGRESS, EGRESS)

_SPEC_FIELDS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_PEER_FIELDS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})
_IPBLOCK_FIELDS = frozenset({"cidr", "except"})
_PORT_FIELDS = frozenset({"protocol", "port", "endPort"})

_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")
_HAS_LETTER = re.compile(r"[a-z]")

#: A port entry without ``port`` admits every port of its protocol. 0 included:
#: a crafted packet may carry it and the API's "all ports" means all of them.
_ALL_PORT_NUMBERS = (0, 65535)


@dataclass(frozen=True, slots=True)
class NetworkPolicyPeer:
    """One ``from``/``to`` entry.

    Exactly one shape: ``addresses`` (ipBlock), or selectors. For selectors,
    ``namespace`` is set when the peer has no namespaceSelector (the pods of
    the policy's own namespace); otherwise ``namespace_selector`` picks the
    namespaces. ``pod_selector`` is MATCH_ALL when the peer has none.
    """

    addresses: AddressRanges | None = None
    namespace: str | None = None
    namespace_selector: LabelSelector = MATCH_ALL
    pod_selector: LabelSelector = MATCH_ALL

    def matches(
        self,
        address: bytes,
        labels: Mapping[str, str] | None,
        namespace: str,
        namespace_labels: Mapping[str, str],
    ) -> bool:
        """Whether the peer covers ``address``; ``labels`` None means the address is not a pod."""
        if self.addresses is not None:
            return self.addresses.contains(address)
        if labels is None:
            return False
        if self.namespace is not None:
            if namespace != self.namespace:
                return False
        elif not self.namespace_selector.matches(namespace_labels):
            return False
        return self.pod_selector.matches(labels)


@dataclass(frozen=True, slots=True)
class NetworkPolicyRule:
    """One ingress or egress rule; ``peers`` None means every peer (empty or absent list).

    ``ports`` decides; ``port_ranges`` (None: every port of every protocol) and
    ``named_ports`` hold the same ports as data, for the evaluator's index of
    which rules can match a protocol and port (kube_netpol.policy.rule_index).
    Build both with ``NetworkPolicyRule.create`` so they cannot disagree.
    """

    peers: tuple[NetworkPolicyPeer, ...] | None
    ports: PortMatcher
    decision: Decision  # returned as is for every packet the rule admits
    port_ranges: tuple[tuple[int, int, int], ...] | None  # (protocol, first, last)
    named_ports: tuple[tuple[str, int], ...]  # (container port name, protocol)

    @classmethod
    def create(
        cls,
        peers: tuple[NetworkPolicyPeer, ...] | None,
        port_ranges: tuple[tuple[int, int, int], ...] | None,
        named_ports: tuple[tuple[str, int], ...],
        decision: Decision,
    ) -> NetworkPolicyRule:
        """A rule admitting ``peers`` on these ports; ``port_ranges`` None: every port of every protocol."""
        if port_ranges is None:
            if named_ports:
                raise ValueError("a rule admitting every port has no named ports")
            return cls(peers, ALL_PORTS, decision, None, ())
        return cls(peers, PortMatcher(port_ranges, named_ports), decision, port_ranges, named_ports)

    def admits(
        self,
        address: bytes,
        labels: Mapping[str, str] | None,
        namespace: str,
        namespace_labels: Mapping[str, str],
        protocol: int,
        port: int,
        receiver_port_names: PortNames,
    ) -> bool:
        """``address``/``labels``/namespace describe the peer; named ports resolve on the receiving pod's port names."""
        return self.ports.matches(protocol, port, receiver_port_names) and self.admits_peer(
            address, labels, namespace, namespace_labels
        )

    def admits_peer(
        self,
        address: bytes,
        labels: Mapping[str, str] | None,
        namespace: str,
        namespace_labels: Mapping[str, str],
    ) -> bool:
        """``admits`` for a packet whose protocol and port the caller knows ``ports`` matches."""
        peers = self.peers
        if peers is None:
            return True
        for peer in peers:
            if peer.matches(address, labels, namespace, namespace_labels):
                return True
        return False


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A validated NetworkPolicy with defaults applied.

    ``policy_types`` is what the API server would store (defaulted when
    absent or empty); only the directions listed there isolate pods and have
    their rules enforced, though both rule lists are validated.
    """

    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[NetworkPolicyRule, ...]
    egress: tuple[NetworkPolicyRule, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def isolates_ingress(self) -> bool:
        return INGRESS in self.policy_types

    @property
    def isolates_egress(self) -> bool:
        return EGRESS in self.policy_types

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether the policy applies to a pod of its namespace with these labels."""
        return self.pod_selector.matches(labels)


# --------------------------------------------------------------------- parsing


def parse_network_policy(obj: Mapping[str, Any]) -> NetworkPolicy:
    """Validate and compile a NetworkPolicy object (a dict as the API server or a manifest gives it)."""
    namespace, name = _metadata(obj)
    spec = obj.get("spec")
    if spec is None:
        spec = {}  # as the API server decodes it: an empty spec (deny all ingress to every pod)
    if not isinstance(spec, Mapping):
        raise InvalidObject("must be an object", "spec")
    unknown = set(spec) - _SPEC_FIELDS
    if unknown:
        raise InvalidObject(f"unknown field(s) {sorted(unknown)}", "spec")
    ref = f"{namespace}/{name}"
    pod_selector = parse_label_selector(spec.get("podSelector"), "spec.podSelector")
    ingress = _parse_rules(spec.get("ingress"), "ingress", "from", namespace, ref)
    egress = _parse_rules(spec.get("egress"), "egress", "to", namespace, ref)
    policy_types = _parse_policy_types(spec.get("policyTypes"), has_egress_rules=bool(egress))
    return NetworkPolicy(namespace, name, pod_selector, policy_types, ingress, egress)


def _metadata(obj: Mapping[str, Any]) -> tuple[str, str]:
    if not isinstance(obj, Mapping):
        raise InvalidObject("not an object")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidObject("is required", "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("is required", "metadata.name")
    namespace = meta.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise InvalidObject("is required (NetworkPolicy is namespaced)", "metadata.namespace")
    return namespace, name


def _parse_policy_types(raw: Any, has_egress_rules: bool) -> tuple[str, ...]:
    path = "spec.policyTypes"
    if raw is None or raw == []:
        # The API server's default: Ingress always, Egress only when there are egress rules.
        return (INGRESS, EGRESS) if has_egress_rules else (INGRESS,)
    if not isinstance(raw, list):
        raise InvalidObject("must be a list", path)
    if len(raw) > len(_POLICY_TYPES):
        raise InvalidObject("may not specify more than two policyTypes", path)
    for i, value in enumerate(raw):
        if value not in _POLICY_TYPES:
            raise InvalidObject(f"unsupported value {value!r} (expected Ingress or Egress)", f"{path}[{i}]")
    return tuple(t for t in _POLICY_TYPES if t in raw)


def _list(raw: Any, path: str) -> list[Any]:
    """A list field; null and absent are the empty list, null elements are empty objects (as Go decodes them)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidObject("must be a list", path)
    return [{} if item is None else item for item in raw]


def _parse_rules(
    raw: Any, direction: str, peers_field: str, namespace: str, ref: str
) -> tuple[NetworkPolicyRule, ...]:
    path = f"spec.{direction}"
    rules: list[NetworkPolicyRule] = []
    for i, rule in enumerate(_list(raw, path)):
        where = f"{path}[{i}]"
        if not isinstance(rule, Mapping):
            raise InvalidObject("must be an object", where)
        unknown = set(rule) - {peers_field, "ports"}
        if unknown:
            raise InvalidObject(f"unknown field(s) {sorted(unknown)}", where)
        port_ranges, named_ports = _parse_ports(rule.get("ports"), f"{where}.ports")
        raw_peers = _list(rule.get(peers_field), f"{where}.{peers_field}")
        peers = (
            tuple(_parse_peer(p, namespace, f"{where}.{peers_field}[{j}]") for j, p in enumerate(raw_peers))
            if raw_peers
            else None  # empty or absent: every source/destination, pods or not
        )
        rule_name = f"{direction}[{i}]"
        decision = Decision(Verdict.ACCEPT, policy=ref, rule=rule_name, reason=f"allowed by {ref} {rule_name}")
        rules.append(NetworkPolicyRule.create(peers, port_ranges, named_ports, decision))
    return tuple(rules)


def _parse_peer(raw: Any, namespace: str, path: str) -> NetworkPolicyPeer:
    if not isinstance(raw, Mapping):
        raise InvalidObject("must be an object", path)
    unknown = set(raw) - _PEER_FIELDS
    if unknown:
        raise InvalidObject(f"unknown field(s) {sorted(unknown)}", path)
    # A field set to null is absent; an empty selector ({}) is present and matches everything.
    present = [field for field in ("podSelector", "namespaceSelector", "ipBlock") if raw.get(field) is not None]
    if not present:
        raise InvalidObject("must specify a peer: podSelector, namespaceSelector or ipBlock", path)
    if "ipBlock" in present:
        if len(present) > 1:
            raise InvalidObject("may not specify both ipBlock and another peer", path)
        return NetworkPolicyPeer(addresses=_parse_ip_block(raw["ipBlock"], f"{path}.ipBlock"))
    pod_selector = (
        parse_label_selector(raw["podSelector"], f"{path}.podSelector") if "podSelector" in present else MATCH_ALL
    )
    if "namespaceSelector" not in present:
        return NetworkPolicyPeer(namespace=namespace, pod_selector=pod_selector)
    namespace_selector = parse_label_selector(raw["namespaceSelector"], f"{path}.namespaceSelector")
    return NetworkPolicyPeer(namespace_selector=namespace_selector, pod_selector=pod_selector)


def _parse_ip_block(raw: Any, path: str) -> AddressRanges:
    if not isinstance(raw, Mapping):
        raise InvalidObject("must be an object", path)
    unknown = set(raw) - _IPBLOCK_FIELDS
    if unknown:
        raise InvalidObject(f"unknown field(s) {sorted(unknown)}", path)
    if not raw.get("cidr"):
        raise InvalidObject("is required", f"{path}.cidr")
    cidr = parse_cidr(raw["cidr"], f"{path}.cidr")
    excepts: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, text in enumerate(_list(raw.get("except"), f"{path}.except")):
        where = f"{path}.except[{i}]"
        network = parse_cidr(text, where)
        if network.version != cidr.version:
            raise InvalidObject(f"{text!r} is not the same address family as cidr {raw['cidr']!r}", where)
        # The API server wants a strict subset: inside cidr and a longer prefix.
        if not network.subnet_of(cidr) or network.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
            raise InvalidObject(f"{text!r} must be a strict subset of cidr {raw['cidr']!r}", where)
        excepts.append(network)
    source = str(cidr) + (f" except {', '.join(map(str, excepts))}" if excepts else "")
    return AddressRanges([cidr], excepts, source=source)


def _parse_ports(
    raw: Any, path: str
) -> tuple[tuple[tuple[int, int, int], ...] | None, tuple[tuple[str, int], ...]]:
    """The (protocol, first, last) ranges (None: every port of every protocol) and (name, protocol) named ports."""
    entries = _list(raw, path)
    if not entries:
        return None, ()  # empty or absent: every port of every protocol, ICMP included
    ranges: list[tuple[int, int, int]] = []
    named: list[tuple[str, int]] = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidObject("must be an object", where)
        unknown = set(entry) - _PORT_FIELDS
        if unknown:
            raise InvalidObject(f"unknown field(s) {sorted(unknown)}", where)
        if entry.get("protocol") == "":
            raise InvalidObject("unsupported protocol '' (expected TCP, UDP or SCTP)", f"{where}.protocol")
        protocol = parse_protocol(entry.get("protocol"), f"{where}.protocol")
        port = entry.get("port")
        end_port = entry.get("endPort")
        if port is None:
            if end_port is not None:
                raise InvalidObject("may not be specified when `port` is not specified", f"{where}.endPort")
            ranges.append((protocol, *_ALL_PORT_NUMBERS))
        elif isinstance(port, str):
            if end_port is not None:
                raise InvalidObject("may not be specified when `port` is non-numeric", f"{where}.endPort")
            _check_port_name(port, f"{where}.port")
            named.append((port, protocol))
        else:
            first = check_port_number(port, f"{where}.port")
            last = first if end_port is None else check_port_number(end_port, f"{where}.endPort")
            if last < first:
                raise InvalidObject(f"endPort {last} must be greater than or equal to port {first}", f"{where}.endPort")
            ranges.append((protocol, first, last))
    return tuple(ranges), tuple(named)


def _check_port_name(name: str, path: str) -> None:
    """An IANA_SVC_NAME, as the API server checks a named port."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not _PORT_NAME_CHARS.fullmatch(name):
        problems.append("must contain only lowercase letters, digits and hyphens")
    if not _HAS_LETTER.search(name):
        problems.append("must contain at least one letter (a number must not be quoted)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    if problems:
        raise InvalidObject(f"invalid port name {name!r}: {'; '.join(problems)}", path)
