"""`kube-netpol explain`: why one connection is allowed or denied, evaluator by evaluator.

Pure logic over a ClusterState and a PolicyEngine: resolve the endpoints
(``ns/pod`` or an address) and the port (a number or the destination pod's
named port), walk both pipelines with ``PolicyEngine.explain``, and render the
answer as text or as data (layout in docs/observability.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Sequence

from kube_netpol.api.packet import PROTOCOL_BY_NAME, Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine import Explanation, PolicyEngine, Step
from kube_netpol.observability.decisions import direction_fields
from kube_netpol.api.cluster import PodRecord
from kube_netpol.state import ClusterState

FAMILIES = ("IPv4", "IPv6")
#: Exit statuses: scripts can test `kube-netpol explain ... && echo allowed`.
EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


class ExplainError(Exception):
    """A request that cannot be answered (unknown pod, bad address, unknown port name): exit status 2."""


@dataclass(frozen=True)
class Endpoint:
    """One end of the connection: as written, the address used, and the pod it belongs to."""

    given: str
    ip: str
    pod: str | None  # "ns/name" of the pod policies see behind ``ip``; None: not a pod
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.pod} ({self.ip})" if self.pod else self.ip


@dataclass(frozen=True)
class ExplainResult:
    source: Endpoint
    destination: Endpoint
    family: str
    protocol: str
    port: int
    port_name: str | None
    pipeline: tuple[str, ...]
    explanation: Explanation
    state_description: str = ""
    state_origin: dict[str, Any] = field(default_factory=dict)
    refused: tuple[str, ...] = ()
    state_notes: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.explanation.judgement.verdict is Verdict.ACCEPT

    @property
    def exit_code(self) -> int:
        return EXIT_ALLOWED if self.allowed else EXIT_DENIED


# ------------------------------------------------------------------ resolving


def _family_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"IPv{address.version}"


def _addresses(state: ClusterState, text: str, role: str) -> tuple[dict[str, str], PodRecord | None]:
    """{family: address} of an endpoint, and its pod when named as ``ns/pod``."""
    if "/" in text:
        namespace, _, name = text.partition("/")
        pod = state.pod((namespace, name))
        if not namespace or not name or pod is None:
            raise ExplainError(f"{role} {text!r}: no such pod")
        addresses: dict[str, str] = {}
        for packed in pod.ips:
            address = ipaddress.ip_address(packed)
            addresses.setdefault(_family_name(address), str(address))
        if not addresses:
            raise ExplainError(f"{role} {text}: the pod has no address (not running yet?)")
        return addresses, pod
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ExplainError(f"{role} {text!r} is neither a pod (namespace/name) nor an IP address") from None
    return {_family_name(address): str(address)}, None


def choose_family(source: dict[str, str], destination: dict[str, str], wanted: str | None) -> str:
    """The requested family, else the first family both endpoints have."""
    if wanted is not None:
        if wanted not in FAMILIES:
            raise ExplainError(f"unknown family {wanted!r} (expected IPv4 or IPv6)")
        for role, found in (("source", source), ("destination", destination)):
            if wanted not in found:
                raise ExplainError(f"the {role} has no {wanted} address (it has {', '.join(found.values())})")
        return wanted
    for family in FAMILIES:
        if family in source and family in destination:
            return family
    raise ExplainError(
        f"source and destination share no address family ({', '.join(source.values())} and {', '.join(destination.values())})"
    )


def _endpoint(state: ClusterState, given: str, address: str, named: PodRecord | None) -> Endpoint:
    packed = ipaddress.ip_address(address).packed
    owner = state.pod_by_ip(packed)
    notes: list[str] = []
    if named is not None and not named.is_policy_target:
        why = "uses the host network" if named.host_network else "has finished"
        notes.append(f"{named.namespace}/{named.name} {why}: policies do not see it as a pod")
    if owner is None:
        return Endpoint(given, address, None, tuple(notes))
    pod = f"{owner.namespace}/{owner.name}"
    if named is not None and owner is not named:
        notes.append(f"{address} belongs to {pod} for policy purposes")
    return Endpoint(given, address, pod, tuple(notes))


def resolve_port(port: str | int, protocol: str, destination: PodRecord | None, dst_label: str) -> tuple[int, str | None]:
    """(number, name) of ``port``: a number, or a container port name of the destination pod for ``protocol``."""
    text = str(port).strip()
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 65535:
            raise ExplainError(f"port {text} is out of range (1-65535)")
        return number, None
    if destination is None:
        raise ExplainError(f"the named port {text!r} needs a destination pod to resolve it; {dst_label} is not a pod")
    for name, number, proto in destination.container_ports:
        if name == text and proto == protocol:
            return number, name
    known = sorted(name for name, _, proto in destination.container_ports if name and proto == protocol)
    listing = ", ".join(known) if known else "none"
    raise ExplainError(
        f"{destination.namespace}/{destination.name} has no {protocol} container port named {text!r} "
        f"(its named {protocol} ports: {listing})"
    )


def explain_connection(
    state: ClusterState,
    engine: PolicyEngine[ClusterState],
    source: str,
    destination: str,
    port: str | int,
    protocol: str = "TCP",
    family: str | None = None,
) -> ExplainResult:
    """Judge the first packet of ``source`` -> ``destination`` on ``protocol``/``port`` and keep every step."""
    protocol = protocol.upper()
    if protocol not in PROTOCOL_BY_NAME:
        raise ExplainError(f"unknown protocol {protocol!r} (expected {', '.join(PROTOCOL_BY_NAME)})")
    src_addresses, src_pod = _addresses(state, source, "source")
    dst_addresses, dst_pod = _addresses(state, destination, "destination")
    chosen = choose_family(src_addresses, dst_addresses, family)
    src = _endpoint(state, source, src_addresses[chosen], src_pod)
    dst = _endpoint(state, destination, dst_addresses[chosen], dst_pod)
    # A named port resolves on the pod that owns the destination address, as the evaluators resolve it.
    dst_owner = state.pod_by_ip(ipaddress.ip_address(dst.ip).packed)
    number, name = resolve_port(port, protocol, dst_owner, dst.label)
    packet = Packet(
        4 if chosen == "IPv4" else 6,
        PROTOCOL_BY_NAME[protocol],
        ipaddress.ip_address(src.ip).packed,
        ipaddress.ip_address(dst.ip).packed,
        0,
        number,
    )
    return ExplainResult(
        src, dst, chosen, protocol, number, name, tuple(e.name for e in engine.evaluators), engine.explain(packet)
    )


# ------------------------------------------------------------------ rendering


def _step_fields(step: Step) -> dict[str, Any]:
    decision = step.decision
    return {
        "evaluator": step.evaluator,
        "answer": decision.verdict.name,
        "policy": decision.policy,
        "rule": decision.rule,
        "reason": decision.reason,
    }


def to_json(result: ExplainResult) -> dict[str, Any]:
    """The explanation as data; the layout is documented in docs/observability.md."""
    judgement = result.explanation.judgement

    def endpoint(e: Endpoint) -> dict[str, Any]:
        return {"given": e.given, "ip": e.ip, "pod": e.pod, "notes": list(e.notes)}

    def direction(steps: Sequence[Step], evaluator: str, decision: Any) -> dict[str, Any]:
        return {**direction_fields(evaluator, decision), "steps": [_step_fields(s) for s in steps]}

    return {
        "source": endpoint(result.source),
        "destination": endpoint(result.destination),
        "family": result.family,
        "protocol": result.protocol,
        "port": result.port,
        "port_name": result.port_name,
        "pipeline": list(result.pipeline),
        "egress": direction(result.explanation.egress_steps, judgement.egress_by, judgement.egress),
        "ingress": direction(result.explanation.ingress_steps, judgement.ingress_by, judgement.ingress),
        "verdict": "allow" if result.allowed else "deny",
        "reuse": {"lifetime": judgement.lifetime, "kernel_memory": judgement.kernel and judgement.lifetime != 0},
        "state": {**result.state_origin, "notes": list(result.state_notes)},
        "refused_objects": list(result.refused),
    }


def _describe(policy: str, rule: str, reason: str) -> str:
    parts = []
    if policy:
        parts.append(f"policy {policy}")
    if rule:
        parts.append(f"rule {rule}")
    text = ", ".join(parts)
    if reason:
        text = f"{text}: {reason}" if text else reason
    return text or "no rule applies"


def _pipeline_lines(pipeline: Sequence[str], steps: Sequence[Step]) -> list[str]:
    width = max([len(name) for name in pipeline] + [len("(end of pipeline)")])
    lines = []
    decided = False
    for i, name in enumerate(pipeline):
        if i < len(steps):
            step = steps[i]
            decision = step.decision
            marker = "  <- decides" if decision.verdict else ""
            decided = decided or bool(decision.verdict)
            lines.append(f"  {i + 1}. {name:<{width}}  {decision.verdict.name:<6}  "
                         f"{_describe(decision.policy, decision.rule, decision.reason)}{marker}")
        else:
            lines.append(f"  {i + 1}. {name:<{width}}  -       not asked: an earlier evaluator decided")
    if not decided:
        lines.append(f"     {'(end of pipeline)':<{width}}  ACCEPT  no evaluator decided; the end of the pipeline accepts"
                     "  <- decides")
    return lines


def _outcome(direction: str, evaluator: str, verdict: Verdict, policy: str, rule: str) -> str:
    word = "allowed" if verdict is Verdict.ACCEPT else "denied"
    if not evaluator:
        return f"{direction} {word} at the end of the pipeline"
    what = " ".join(p for p in (policy, rule) if p)
    return f"{direction} {word} by {evaluator}" + (f" {what}" if what else "")


def render_text(result: ExplainResult) -> str:
    judgement = result.explanation.judgement
    port = f"{result.port} ({result.port_name})" if result.port_name else str(result.port)
    lines = [f"{result.source.label} -> {result.destination.label}: {result.protocol} port {port}, {result.family}"]
    if result.state_description:
        lines.append(f"state: {result.state_description}")
    for note in (*result.state_notes, *result.source.notes, *result.destination.notes):
        lines.append(f"note: {note}")
    for refused in result.refused:
        lines.append(f"note: ignored invalid {refused}")
    src_role = f"the source {result.source.pod}" if result.source.pod else f"{result.source.ip}, not a pod"
    dst_role = f"the destination {result.destination.pod}" if result.destination.pod else f"{result.destination.ip}, not a pod"
    lines.append("")
    lines.append(f"egress ({src_role}):")
    lines.extend(_pipeline_lines(result.pipeline, result.explanation.egress_steps))
    lines.append(f"ingress ({dst_role}):")
    lines.extend(_pipeline_lines(result.pipeline, result.explanation.ingress_steps))
    lines.append("")
    egress = _outcome("egress", judgement.egress_by, judgement.egress.verdict, judgement.egress.policy, judgement.egress.rule)
    ingress = _outcome("ingress", judgement.ingress_by, judgement.ingress.verdict, judgement.ingress.policy,
                       judgement.ingress.rule)
    lines.append(f"reuse: {_reuse(judgement.lifetime, judgement.kernel)}")
    lines.append(f"verdict: {'ALLOW' if result.allowed else 'DENY'} ({egress}; {ingress})")
    return "\n".join(lines)


def _reuse(lifetime: float | None, kernel: bool) -> str:
    """How long the agent (and, with --verdict-memory, the kernel) reuses this verdict for the same key."""
    if lifetime == 0:
        return "never: every new connection of this key is judged again"
    span = "until the next policy change" if lifetime is None else f"for at most {lifetime:g} s"
    if not kernel:
        return f"{span} by the agent; not by the kernel's verdict memory (an evaluator from outside kube_netpol " \
               "gave no lifetime)"
    return f"{span}, by the agent and, with --verdict-memory, by the kernel (whose repeats the agent never sees)"
