"""What advise proposes, before any output format: per workload, which peers may reach it and
which it may reach, on which ports.

Everything here is immutable and totally ordered, so that the same input
always gives the same proposal and the same bytes of output.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union

from kube_netpol.api.errors import InvalidObject
from kube_netpol.policy.selectors import LabelSelector, check_label_key, check_label_value, parse_label_selector

#: Set by the API server on every namespace: the one namespace label every cluster has.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Workload:
    """What pods belong to: a Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, another
    controller's kind, or ``Pod`` for a pod no controller owns. Sorted by namespace, kind, name."""

    kind: str
    namespace: str
    name: str

    def __lt__(self, other: Workload) -> bool:
        return (self.namespace, self.kind, self.name) < (other.namespace, other.kind, other.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


Expression = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True, order=True)
class Selector:
    """A label selector as it is written (matchLabels, matchExpressions), kept sorted so that equal
    selectors compare equal. The empty selector matches every pod."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Expression, ...] = ()

    @classmethod
    def of_labels(cls, labels: Mapping[str, str]) -> Selector:
        return cls(tuple(sorted(labels.items())))

    @classmethod
    def from_json(cls, obj: Any, path: str = "selector") -> Selector:
        """A metav1.LabelSelector object, validated as the API server does (InvalidObject)."""
        parse_label_selector(obj, path)
        obj = obj or {}
        labels = obj.get("matchLabels") or {}
        expressions = tuple(sorted(
            (e["key"], e["operator"], tuple(sorted(set(e.get("values") or ())))) for e in obj.get("matchExpressions") or ()
        ))  # fmt: skip
        return cls(tuple(sorted(labels.items())), expressions)

    @classmethod
    def parse(cls, text: str) -> Selector:
        """The selector syntax of ``kubectl -l``: ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` (ValueError)."""
        return _parse_selector_text(text)

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return _compiled(self).matches(labels)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": key, "operator": op, "values": list(values)} if values else {"key": key, "operator": op}
                for key, op, values in self.match_expressions
            ]
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for key, op, values in self.match_expressions:
            parts.append({"In": f"{key} in ({','.join(values)})", "NotIn": f"{key} notin ({','.join(values)})",
                          "Exists": key, "DoesNotExist": f"!{key}"}[op])
        return ",".join(parts) or "(every pod)"


@functools.lru_cache(maxsize=4096)
def _compiled(selector: Selector) -> LabelSelector:
    return parse_label_selector(selector.to_json())


_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*(?:,|$)"
)


def _parse_selector_text(text: str) -> Selector:
    labels: dict[str, str] = {}
    expressions: list[Expression] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"invalid label selector {text!r} at {text[position:]!r}")
        position = match.end()
        try:
            if match["absent"]:
                expressions.append((check_label_key(match["absent"], "selector"), "DoesNotExist", ()))
                continue
            key = check_label_key(match["key"], "selector")
            if match["op"] in ("=", "=="):
                labels[key] = check_label_value(match["value"], "selector")
            elif match["op"] == "!=":
                expressions.append((key, "NotIn", (check_label_value(match["value"], "selector"),)))
            elif match["setop"]:
                values = tuple(sorted({check_label_value(v.strip(), "selector")
                                       for v in match["values"].split(",") if v.strip()}))
                if not values:
                    raise ValueError(f"invalid label selector {text!r}: {key} {match['setop']} () needs a value")
                expressions.append((key, "In" if match["setop"] == "in" else "NotIn", values))
            else:
                expressions.append((key, "Exists", ()))
        except InvalidObject as err:
            raise ValueError(f"invalid label selector {text!r}: {err}") from None
    return Selector(tuple(sorted(labels.items())), tuple(sorted(expressions)))


@dataclass(frozen=True)
class PodPeer:
    """Pods matching ``pods`` in the namespaces named (None: in every namespace)."""

    namespaces: tuple[str, ...] | None
    pods: Selector

    def namespace_selector(self) -> dict[str, Any]:
        """The namespaces by their ``kubernetes.io/metadata.name`` label (every namespace has it)."""
        if self.namespaces is None:
            return {}
        if len(self.namespaces) == 1:
            return {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespaces[0]}}
        return {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(self.namespaces)}]}

    def __str__(self) -> str:
        where = ",".join(self.namespaces) if self.namespaces is not None else "*"
        return f"pods {self.pods} in {where}"


@dataclass(frozen=True)
class NetworkPeer:
    """Addresses that are not pods (an external host, a node, a hostNetwork pod), as one CIDR."""

    cidr: str

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def __str__(self) -> str:
        return self.cidr


Peer = Union[PodPeer, NetworkPeer]


def peer_order(peer: Peer) -> tuple[Any, ...]:
    """Pod peers first (by namespaces, then selector), then networks by family and address."""
    if isinstance(peer, PodPeer):
        return (0, peer.namespaces is None, peer.namespaces or (), peer.pods)
    network = peer.network
    return (1, network.version, int(network.network_address), network.prefixlen)


@dataclass(frozen=True)
class Port:
    """A protocol and a destination port: a number, or a container port name of the receiving pods."""

    protocol: str
    port: int | str

    def order(self) -> tuple[str, int, int, str]:
        return (self.protocol, isinstance(self.port, str), self.port if isinstance(self.port, int) else 0, str(self.port))

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class Rule:
    """Peers that may talk on ``ports`` (an empty tuple: on every port and protocol)."""

    peers: tuple[Peer, ...]
    ports: tuple[Port, ...]


#: A peer and one port it talks on, None for every port.
Grant = tuple[Peer, Union[Port, None]]


@dataclass
class Proposal:
    """The policy of one workload: the pods ``selector`` selects in the workload's namespace are
    isolated both ways and admit exactly ``ingress``, reach exactly ``egress``."""

    workload: Workload
    selector: Selector
    ingress: set[Grant] = field(default_factory=set)
    egress: set[Grant] = field(default_factory=set)
    #: Why it looks as it does, for the reader (how the owner was resolved, what was left out).
    notes: list[str] = field(default_factory=list)

    def ingress_rules(self) -> list[Rule]:
        return group_rules(self.ingress)

    def egress_rules(self) -> list[Rule]:
        return group_rules(self.egress)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def group_rules(grants: Iterable[Grant]) -> list[Rule]:
    """One rule per distinct set of ports, holding every peer that talks on exactly those ports.

    A peer granted every port needs no port of its own besides. The result is
    sorted, so that equal grants always make the same rules in the same order.
    """
    by_peer: dict[Peer, set[Port] | None] = {}
    for peer, port in grants:
        if peer in by_peer and by_peer[peer] is None:
            continue
        if port is None:
            by_peer[peer] = None
        else:
            by_peer.setdefault(peer, set()).add(port)  # type: ignore[union-attr]
    by_ports: dict[tuple[Port, ...], list[Peer]] = {}
    for peer, ports in by_peer.items():
        key = () if ports is None else tuple(sorted(ports, key=Port.order))
        by_ports.setdefault(key, []).append(peer)
    rules = [Rule(tuple(sorted(_collapsed(peers), key=peer_order)), ports) for ports, peers in by_ports.items()]
    return sorted(rules, key=lambda r: ([peer_order(p) for p in r.peers], [p.order() for p in r.ports]))


def _collapsed(peers: list[Peer]) -> list[Peer]:
    """The same peers with adjacent or nested networks merged (exactly the same addresses)."""
    pods = [p for p in peers if isinstance(p, PodPeer)]
    networks = [p.network for p in peers if isinstance(p, NetworkPeer)]
    merged: list[Peer] = list(pods)
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    merged.extend(NetworkPeer(str(n)) for n in ipaddress.collapse_addresses(v4))
    merged.extend(NetworkPeer(str(n)) for n in ipaddress.collapse_addresses(v6))
    return merged


@dataclass
class Advice:
    """Every proposal (sorted by workload), and what the reader should know about the whole."""

    proposals: list[Proposal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
