"""ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2), compiled.

Follows ``apis/v1alpha2`` of kubernetes-sigs/network-policy-api: ``tier``
Admin | Baseline, ``priority`` 0..1000, ``subject`` {namespaces | pods},
rules with ``action`` Accept | Deny | Pass, ingress peers ``namespaces`` |
``pods``, egress peers also ``nodes``, ``networks`` and ``domainNames``, and
``protocols`` entries {tcp | udp | sctp (each with an optional
``destinationPort`` {number | range}) | destinationNamedPort}.

Every rule of the CRD (sizes, one-of fields, the CEL rules) is checked here
too, so an object the API server would refuse (or a hand-written manifest)
is refused with InvalidObject naming the field, never half-enforced.

The compiled rules are the v1alpha1 ones (``IngressRule``/``EgressRule`` of
``kube_netpol.policy.adminnetworkpolicy``): one matcher for both API versions.
A rule with ``domainNames`` peers compiles to a ``DomainEgressRule``
(kube_netpol.policy.domainnames): its names match the addresses the source
pod learnt from DNS answers (kube_netpol.dns), in the tier's stage.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping

from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.policy.adminnetworkpolicy import (
    MAX_PRIORITY,
    EgressRule,
    IngressRule,
    PodPeer,
    Subject,
    _exactly_one,
    _list_field as _list,
    _name_of,
    _no_unknown_fields,
    _parse_pod_peer,
    _parse_subject,
    _rule_header as _shared_rule_header,
)
from kube_netpol.dns.names import DomainPatterns
from kube_netpol.policy.cidrs import AddressRanges, parse_cidr_strict
from kube_netpol.policy.domainnames import DomainEgressRule
from kube_netpol.policy.ports import PortMatcher, check_port_number
from kube_netpol.policy.selectors import LabelSelector, parse_label_selector

TIERS = ("Admin", "Baseline")
ACTIONS = ("Accept", "Deny", "Pass")
MAX_RULES = 25  # per direction
MAX_PEERS = 25  # per rule
MAX_PROTOCOLS = 25  # per rule
MAX_NETWORKS = 25  # CIDRs per networks peer
MAX_DOMAIN_NAMES = 25  # per domainNames peer

_VERDICT_OF_ACTION = {"Accept": Verdict.ACCEPT, "Deny": Verdict.DENY, "Pass": Verdict.NEXT}
_PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
_INGRESS_PEER_KINDS = ("namespaces", "pods")
_EGRESS_PEER_KINDS = ("namespaces", "pods", "nodes", "networks", "domainNames")
_PROTOCOL_KINDS = ("tcp", "udp", "sctp", "destinationNamedPort")
# The CRD's pattern, character for character: an optional leading "*." then DNS labels (underscores
# allowed inside), optional final dot. Its first-character class is "[a-zA-z0-9]" (A-z also takes
# [\]^_`): kept, because refusing a policy the API server stored would drop its Deny rules too.
_LABEL = r"[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?"
_DOMAIN_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)+{_LABEL}\.?")


class ClusterNetworkPolicy:
    """A parsed ClusterNetworkPolicy; cluster-scoped, so ``namespace`` is ""."""

    __slots__ = ("name", "namespace", "tier", "priority", "subject", "ingress", "egress", "domain_names")

    def __init__(
        self,
        name: str,
        tier: str,
        priority: int,
        subject: Subject,
        ingress: tuple[IngressRule, ...],
        egress: tuple[EgressRule, ...],
        domain_names: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.name = name
        self.namespace = ""
        self.tier = tier
        self.priority = priority
        self.subject = subject
        self.ingress = ingress
        self.egress = egress
        #: egress rule name -> the domain names of its domainNames peers (lower case, no final dot)
        self.domain_names = domain_names

    def __repr__(self) -> str:
        return f"ClusterNetworkPolicy({self.name!r}, tier={self.tier}, priority={self.priority})"


def parse_cluster_network_policy(obj: Mapping[str, Any]) -> ClusterNetworkPolicy:
    """Compile a ClusterNetworkPolicy object; raise InvalidObject if the CRD (or this agent) refuses it."""
    name = _name_of(obj)
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidObject("spec is required and must be an object", "spec")
    _no_unknown_fields(spec, ("tier", "priority", "subject", "ingress", "egress"), "spec")
    tier = spec.get("tier")
    if tier not in TIERS:
        raise InvalidObject(f"tier is required and must be one of {', '.join(TIERS)}, got {tier!r}", "spec.tier")
    priority = spec.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidObject(f"priority is required and must be an integer, got {priority!r}", "spec.priority")
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidObject(f"priority {priority} is out of range 0..{MAX_PRIORITY}", "spec.priority")
    subject = _parse_subject(spec.get("subject"), "spec.subject")
    ingress = tuple(
        _parse_ingress_rule(rule, i, f"spec.ingress[{i}]", name)
        for i, rule in enumerate(_list(spec, "ingress", "spec", required=False, limit=MAX_RULES))
    )
    egress: list[EgressRule] = []
    domain_names: dict[str, tuple[str, ...]] = {}
    for i, rule in enumerate(_list(spec, "egress", "spec", required=False, limit=MAX_RULES)):
        compiled, names = _parse_egress_rule(rule, i, f"spec.egress[{i}]", name)
        egress.append(compiled)
        if names:
            domain_names[compiled.name] = names
    return ClusterNetworkPolicy(name, tier, priority, subject, ingress, tuple(egress), domain_names)


def _rule_header(rule: Any, index: int, direction: str, path: str, policy: str, peers: str) -> tuple[str, str, Decision]:
    return _shared_rule_header(rule, index, direction, path, policy, ACTIONS, "ClusterNetworkPolicy", peers,
                               ports="protocols", verdicts=_VERDICT_OF_ACTION)


def _parse_ingress_rule(rule: Any, index: int, path: str, policy: str) -> IngressRule:
    name, action, decision = _rule_header(rule, index, "ingress", path, policy, "from")
    peers: list[PodPeer] = []
    for j, peer in enumerate(_list(rule, "from", path, required=True, limit=MAX_PEERS)):
        where = f"{path}.from[{j}]"
        peers.append(_parse_pod_peer(peer, _exactly_one(peer, _INGRESS_PEER_KINDS, where, "peer"), where))
    ports, _ = _parse_protocols(rule, path)
    return IngressRule(name, action, decision, tuple(peers), ports)


def _parse_egress_rule(rule: Any, index: int, path: str, policy: str) -> tuple[EgressRule, tuple[str, ...]]:
    name, action, decision = _rule_header(rule, index, "egress", path, policy, "to")
    pod_peers: list[PodPeer] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    texts: list[str] = []
    node_selectors: list[LabelSelector] = []
    domains: list[str] = []
    address_peer: str | None = None
    for j, peer in enumerate(_list(rule, "to", path, required=True, limit=MAX_PEERS)):
        where = f"{path}.to[{j}]"
        kind = _exactly_one(peer, _EGRESS_PEER_KINDS, where, "peer")
        if kind in ("namespaces", "pods"):
            pod_peers.append(_parse_pod_peer(peer, kind, where))
            continue
        address_peer = address_peer or f"{where}.{kind}"
        if kind == "nodes":
            node_selectors.append(parse_label_selector(peer["nodes"], f"{where}.nodes"))
        elif kind == "networks":
            cidrs = _list(peer, "networks", where, required=True, limit=MAX_NETWORKS)
            if len(set(map(str, cidrs))) != len(cidrs):
                raise InvalidObject("networks must not repeat a CIDR", f"{where}.networks")
            for k, text in enumerate(cidrs):
                # The CRD's CEL isCIDR, stricter than the sloppy parse of stored core objects.
                networks.append(parse_cidr_strict(text, f"{where}.networks[{k}]"))
                texts.append(text)
        else:
            if action != "Accept":
                # CEL rule of the CRD: domainNames peers only in Accept rules.
                raise InvalidObject(f"domainNames peers are allowed only in Accept rules, not {action}", f"{where}.domainNames")
            domains.extend(_parse_domain_names(peer, where))
    ports, named_at = _parse_protocols(rule, path)
    if named_at is not None and address_peer is not None:
        # CEL rule of the CRD: nodes, networks and domain names have no named ports.
        raise InvalidObject(f"destinationNamedPort cannot be used in a rule with {address_peer.rsplit('.', 1)[1]} peers ({address_peer})", named_at)
    ranges = AddressRanges(networks, source=", ".join(texts)) if networks else None
    compiled = EgressRule(name, action, decision, tuple(pod_peers), ranges, tuple(node_selectors), ports)
    if domains:
        compiled = DomainEgressRule(compiled, DomainPatterns(domains))
    return compiled, tuple(domains)


def _parse_domain_names(peer: Mapping[str, Any], where: str) -> list[str]:
    names = _list(peer, "domainNames", where, required=True, limit=MAX_DOMAIN_NAMES)
    out: list[str] = []
    for k, text in enumerate(names):
        at = f"{where}.domainNames[{k}]"
        if not isinstance(text, str) or not text:
            raise InvalidObject("must be a non-empty domain name", at)
        if not _DOMAIN_NAME.fullmatch(text):
            raise InvalidObject(
                f"invalid domain name {text!r}: DNS labels with an optional leading '*.' wildcard (at least two labels)", at
            )
        out.append(text)
    if len(set(out)) != len(out):  # listType=set: the same string twice (case counts, as for the CRD)
        raise InvalidObject("domainNames must not repeat a name", f"{where}.domainNames")
    # Matching ignores case and the final dot (DNS names do): "A.example.com" and "a.example.com." are one.
    return list(dict.fromkeys(name.rstrip(".").lower() for name in out))


def _parse_protocols(rule: Mapping[str, Any], path: str) -> tuple[PortMatcher | None, str | None]:
    """The rule's PortMatcher (None: every protocol and port) and the path of its first named port, if any."""
    if rule.get("protocols") is None:
        return None, None
    entries = _list(rule, "protocols", path, required=True, limit=MAX_PROTOCOLS)
    ranges: list[tuple[int, int, int]] = []
    named: list[tuple[str, int | None]] = []
    named_at: str | None = None
    for k, entry in enumerate(entries):
        where = f"{path}.protocols[{k}]"
        kind = _exactly_one(entry, _PROTOCOL_KINDS, where, "protocol")
        value = entry[kind]
        where = f"{where}.{kind}"
        if kind == "destinationNamedPort":
            # The CRD sets no length: a name no container port can have (over 15 characters) matches nothing.
            if not isinstance(value, str) or not value:
                raise InvalidObject("must be a non-empty port name", where)
            named.append((value, None))  # resolved on the receiving pod with the packet's protocol
            named_at = named_at or where
            continue
        protocol = _PROTOCOL_NUMBERS[kind]
        if not isinstance(value, Mapping):
            raise InvalidObject("must be an object", where)
        _no_unknown_fields(value, ("destinationPort",), where)
        port = value.get("destinationPort")
        if port is None:
            # The CRD's minProperties 1: "tcp: {}" is refused; every port of a protocol is a 1-65535 range.
            raise InvalidObject(f"{kind} must set destinationPort (the CRD refuses an empty {kind} entry)", where)
        where = f"{where}.destinationPort"
        which = _exactly_one(port, ("number", "range"), where, "destinationPort")
        if which == "number":
            number = check_port_number(port["number"], f"{where}.number")
            ranges.append((protocol, number, number))
            continue
        span = port["range"]
        if not isinstance(span, Mapping):
            raise InvalidObject("must be an object", f"{where}.range")
        _no_unknown_fields(span, ("start", "end"), f"{where}.range")
        start = check_port_number(span.get("start"), f"{where}.range.start")
        end = check_port_number(span.get("end"), f"{where}.range.end")
        if start >= end:
            # CEL rule of the CRD: a range's start is less than its end.
            raise InvalidObject(f"start {start} must be less than end {end}", f"{where}.range")
        ranges.append((protocol, start, end))
    return PortMatcher(ranges, named), named_at
