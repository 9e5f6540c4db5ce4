"""`--verify`: the observed flows replayed through the offline engine with the proposed policies in force.

The cluster is the recorded one: every pod seen in the records, with the
addresses, labels and named ports the records show (the namespaces, and the
policies already in force, from the source when one is given). The engine is
the agent's own (``build_engine``), so a proposal that passes here passes on
the node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from kube_netpol.advise.flows import Flow, distinct_flows
from kube_netpol.api.packet import PROTOCOL_BY_NAME, Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine import Judgement
from kube_netpol.plugins import DEFAULT_PIPELINE, build_engine
from kube_netpol.state import ClusterState


class VerifyError(ValueError):
    """The proposal cannot be judged at all (a kind the pipeline does not read, a refused object)."""


@dataclass
class VerifyResult:
    pipeline: tuple[str, ...]
    allowed: list[Flow] = field(default_factory=list)
    denied: list[tuple[Flow, Judgement]] = field(default_factory=list)
    #: Flows of protocols without ports (ICMP), which no NetworkPolicy port can name: not replayed.
    portless: int = 0

    @property
    def ok(self) -> bool:
        return not self.denied

    @property
    def replayed(self) -> int:
        return len(self.allowed) + len(self.denied)


def recorded_objects(flows: Iterable[Flow]) -> list[dict[str, Any]]:
    """Namespace and Pod objects of every pod the flows name, as the records show them (latest labels)."""
    addresses: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
    labels: dict[tuple[str, str], Mapping[str, str]] = {}
    ports: dict[tuple[str, str], dict[tuple[str, int, str], None]] = defaultdict(dict)
    for flow in sorted(flows, key=lambda f: f.time):
        for end in (flow.src, flow.dst):
            if end.pod is None:
                continue
            addresses[end.pod][end.ip] = None
            if end.labels is not None:
                labels[end.pod] = end.labels
        if flow.dst.pod is not None and flow.dst_port_name and flow.protocol in ("TCP", "UDP", "SCTP"):
            ports[flow.dst.pod][(flow.dst_port_name, flow.dst_port, flow.protocol)] = None
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for ns in sorted({namespace for namespace, _ in addresses})
    ]
    for (namespace, name), ips in sorted(addresses.items()):
        container_ports = [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports[(namespace, name)]]
        objects.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "labels": dict(labels.get((namespace, name), {}))},
            "spec": {"containers": [{"name": "recorded", "ports": container_ports}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
        })  # fmt: skip
    return objects


def verify(
    flows: Iterable[Flow],
    proposed: Sequence[Mapping[str, Any]],
    evaluators: Sequence[str] = DEFAULT_PIPELINE,
    settings: Mapping[str, Mapping[str, object]] | None = None,
    load_source: Callable[[ClusterState], object] | None = None,
) -> VerifyResult:
    """Judge every observed flow that happened with ``proposed`` added to the recorded cluster.

    ``load_source`` fills the state from the workload source first: its
    namespaces (with their labels) and policies stay, its pods make way for
    the recorded ones, which are what the flows were judged with.
    """
    engine = build_engine(tuple(evaluators), settings)
    state = engine.state
    if load_source is not None:
        load_source(state)
        for namespace, name in state.keys("Pod"):
            state.delete("Pod", namespace, name)
        state.take_refusals()  # the source's own refusals are not the proposal's
    happened = [f for f in distinct_flows(flows) if f.passed]
    portless = [f for f in happened if f.protocol not in PROTOCOL_BY_NAME]
    happened = [f for f in happened if f.protocol in PROTOCOL_BY_NAME]
    for obj in recorded_objects(happened):
        if obj["kind"] == "Namespace" and state.namespace(obj["metadata"]["name"]) is not None:
            continue
        state.apply(obj)
    unread = sorted({str(obj.get("kind")) for obj in proposed if obj.get("kind") not in state.kinds})
    if unread:
        raise VerifyError(f"the pipeline ({','.join(evaluators)}) reads no {', '.join(unread)}: "
                          "it cannot judge the proposal (pass --evaluators with an evaluator of that kind)")
    for policy in proposed:
        state.apply(policy)
    refused = state.take_refusals()
    if refused:
        raise VerifyError("the engine refuses part of the proposal: " + "; ".join(str(r) for r in refused))
    engine.publish()
    result = VerifyResult(tuple(evaluators), portless=len(portless))
    for flow in happened:
        packet = Packet.from_strings(flow.src.ip, flow.dst.ip, flow.protocol, flow.dst_port)
        judgement = engine.evaluate(packet)
        if judgement.allowed:
            result.allowed.append(flow)
        else:
            result.denied.append((flow, judgement))
    return result


def _end(flow: Flow, side: str) -> str:
    end = flow.src if side == "src" else flow.dst
    return f"{end.pod[0]}/{end.pod[1]} ({end.ip})" if end.pod is not None else end.ip


def _direction(judgement: Judgement, direction: str) -> str:
    decision = judgement.egress if direction == "egress" else judgement.ingress
    by = judgement.egress_by if direction == "egress" else judgement.ingress_by
    verdict = "allowed" if decision.verdict is Verdict.ACCEPT else "denied"
    who = f"{by} {decision.policy}".strip() if by else "the end of the pipeline"
    return f"{direction} {verdict} by {who}" + (f" ({decision.reason})" if decision.reason and verdict == "denied" else "")


def report(result: VerifyResult) -> str:
    lines = [f"verify: {result.replayed} observed flow(s) replayed with the proposed policies "
             f"(pipeline {','.join(result.pipeline)})"]
    if result.portless:
        lines.append(f"verify: {result.portless} ICMP flow(s) not replayed (the proposal leaves them out)")
    if result.ok:
        lines.append(f"verify: all {len(result.allowed)} stay allowed")
        return "\n".join(lines)
    lines.append(f"verify: {len(result.allowed)} stay allowed, {len(result.denied)} would now be denied:")
    for flow, judgement in result.denied:
        port = f"{flow.protocol}/{flow.dst_port}" + (f" ({flow.dst_port_name})" if flow.dst_port_name else "")
        lines.append(f"  {_end(flow, 'src')} -> {_end(flow, 'dst')} {port}: "
                     f"{_direction(judgement, 'egress')}; {_direction(judgement, 'ingress')}")
    return "\n".join(lines)
