"""Decision records read back as observed flows (docs/observability.md#decision-records).

Any number of files, every node's, merged: lines that are not decision records
(the agent's log lines share stderr with them, the "suppressed" summaries) are
skipped and counted, and the same connection recorded by two nodes (the
source's and the destination's agent both judge it) is one flow.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kube_netpol.advise.model import PROTOCOLS

DECISIONS_LOGGER = "kube_netpol.decisions"


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow: an address, and the pod behind it when it was one."""

    ip: str
    #: (namespace, name) of the pod, None when the address was not a pod's.
    pod: tuple[str, str] | None = None
    #: The pod's labels; None when the record does not say (not a pod, or an agent before owners were recorded).
    labels: Mapping[str, str] | None = None
    #: ``Kind/name`` of the pod's controller, "" for none.
    owner: str = ""

    @property
    def is_pod(self) -> bool:
        return self.pod is not None


@dataclass(frozen=True)
class Flow:
    """A connection as judged: who talked to whom on which protocol and destination port."""

    src: Endpoint
    dst: Endpoint
    protocol: str  # TCP, UDP, SCTP, ICMP, ICMPv6 (or a number as text)
    dst_port: int
    #: The receiving pod's name for (protocol, dst_port), "" when it has none.
    dst_port_name: str = ""
    #: The policies allowed it, or audit mode let it through: it happened.
    passed: bool = True
    time: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What the engine's verdict depends on: addresses, protocol, destination port."""
        return (self.src.ip, self.dst.ip, self.protocol, self.dst_port)

    @property
    def has_ports(self) -> bool:
        """TCP, UDP or SCTP: what NetworkPolicy ports can name (ICMP has none)."""
        return self.protocol in PROTOCOLS


@dataclass
class ReadResult:
    flows: list[Flow] = field(default_factory=list)
    #: Lines that were not decision records (log lines, summaries, blank lines are not counted).
    skipped: int = 0
    #: Records of connections the policies denied in enforcing mode: they never happened.
    denied: int = 0
    #: Records read (before merging duplicates).
    records: int = 0


def _endpoint(record: Mapping[str, Any], side: str) -> Endpoint:
    ip = str(ipaddress.ip_address(record[f"{side}_ip"]))
    named = record.get(side)
    pod: tuple[str, str] | None = None
    if isinstance(named, str) and "/" in named:
        namespace, _, name = named.partition("/")
        pod = (namespace, name)
    labels = record.get(f"{side}_labels")
    owner = record.get(f"{side}_owner")
    return Endpoint(
        ip=ip,
        pod=pod,
        labels=dict(labels) if pod is not None and isinstance(labels, Mapping) else None,
        owner=owner if pod is not None and isinstance(owner, str) else "",
    )


def parse_record(line: str) -> Flow | None:
    """The flow of one decision-record line; None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, Mapping) or record.get("logger") != DECISIONS_LOGGER or "verdict" not in record:
        return None
    try:
        port = record.get("dst_port", 0)
        if isinstance(port, bool) or not isinstance(port, int):
            return None
        name = record.get("dst_port_name")
        return Flow(
            src=_endpoint(record, "src"),
            dst=_endpoint(record, "dst"),
            protocol=str(record["protocol"]),
            dst_port=port,
            dst_port_name=name if isinstance(name, str) else "",
            passed=record["verdict"] == "allow" or record.get("audit") is True,
            time=str(record.get("time", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_records(lines: Iterable[str], result: ReadResult | None = None) -> ReadResult:
    """Add the records among ``lines`` to ``result``."""
    result = result if result is not None else ReadResult()
    for line in lines:
        if not line.strip():
            continue
        flow = parse_record(line)
        if flow is None:
            result.skipped += 1
            continue
        result.records += 1
        if not flow.passed:
            result.denied += 1
        result.flows.append(flow)
    return result


def distinct_flows(flows: Iterable[Flow]) -> list[Flow]:
    """One flow per (addresses, protocol, destination port, pods), the latest record's, in a stable order.

    The pods are part of the identity: an address a deleted pod had and a new
    pod got later is two flows, each judged with the pod of its time.
    """
    latest: dict[tuple[Any, ...], Flow] = {}
    for flow in sorted(flows, key=lambda f: f.time):
        identity = (*flow.key, flow.src.pod, flow.dst.pod, flow.passed)
        earlier = latest.get(identity)
        # A record without labels (an older agent's) never replaces one with them.
        if earlier is None or _known(flow) >= _known(earlier):
            latest[identity] = flow
    return sorted(latest.values(), key=_order)


def _known(flow: Flow) -> int:
    """How many pod ends of a flow come with their labels."""
    return sum(1 for end in (flow.src, flow.dst) if end.labels is not None)


def _order(flow: Flow) -> tuple[Any, ...]:
    return (flow.src.pod or ("", flow.src.ip), flow.dst.pod or ("", flow.dst.ip), flow.protocol, flow.dst_port,
            flow.src.ip, flow.dst.ip, not flow.passed)
