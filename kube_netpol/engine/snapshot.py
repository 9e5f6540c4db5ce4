"""One immutable policy snapshot: the evaluators' stages of one batch of changes, and its flow table.

The verdict loop reads ``engine.snapshot`` once per packet and uses nothing
else: a packet racing a change judges and records into the snapshot it read,
whose table is retired with it, so a verdict of the old policies can never
land in the new table.
"""

from __future__ import annotations

from time import monotonic
from typing import Callable, Iterable, Sequence

from kube_netpol.api.cluster import PodKey, PodRecord
from kube_netpol.api.evaluator import NetworkStage, Stage
from kube_netpol.api.packet import PORT_PROTOCOLS, Packet
from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.engine.flows import FlowHistory, FlowStats, FlowTable, TableKey, packet_flow_key
from kube_netpol.engine.judgement import END_OF_PIPELINE, Explanation, Judgement, Step

ACCEPT = Verdict.ACCEPT
DENY = Verdict.DENY

PodLookup = Callable[[bytes], PodRecord | None]
Evaluate = Callable[[Packet, PodRecord | None, PodRecord | None], Decision]
EvaluateOnNetwork = Callable[[str, Packet], Decision]


class Snapshot:
    """``generation`` counts publications; ``revision`` is the source revision the state had then.

    ``flows`` is the flow table (the packet thread adds to it); everything else
    never changes after publication.
    """

    __slots__ = ("generation", "revision", "names", "stages", "flows", "retired",
                 "_pod_by_ip", "_egress", "_ingress", "_every_egress", "_every_ingress", "_history",
                 "_network_egress", "_network_ingress", "segments", "judged")  # fmt: skip

    def __init__(
        self,
        generation: int,
        revision: str,
        names: Sequence[str],
        stages: Sequence[Stage],
        pod_by_ip: PodLookup,
        history: FlowHistory,
    ) -> None:
        self.generation = generation
        self.revision = revision
        self.names = tuple(names)
        self.stages = tuple(stages)
        self.flows: FlowTable = {}
        self.retired = False
        self._pod_by_ip = pod_by_ip
        self._history = history
        # Bound methods, looked up once: the pipeline loop then costs a call per stage.
        # "ours": a stage of an evaluator shipped in kube_netpol, whose lifetime None the kernel may keep.
        ours = tuple(ships_with_kube_netpol(stage) for stage in self.stages)
        self._every_egress = tuple(zip(self.names, (stage.evaluate_egress for stage in self.stages), ours))
        self._every_ingress = tuple(zip(self.names, (stage.evaluate_ingress for stage in self.stages), ours))
        # Judging skips the stages that say they answer NEXT, without a lifetime, to every packet
        # (no policies of their kind): two calls each per new key. Explain still walks every stage.
        answering = [not getattr(stage, "answers_nothing", False) for stage in self.stages]
        self._egress = tuple(step for step, keep in zip(self._every_egress, answering) if keep)
        self._ingress = tuple(step for step, keep in zip(self._every_ingress, answering) if keep)
        # The flow-table entry judged for each (addresses, protocol, port segment): see
        # ``port_segments``; the verdict loop fills and reads it (packet thread) and gives new keys
        # of the segment that entry (FlowStats.keys). It holds entries of ``flows`` only: emptied
        # when the table is replaced, it dies with the snapshot like the table.
        self.segments = port_segments(stage for stage, keep in zip(self.stages, answering) if keep)
        self.judged: dict[tuple[bytes, int, int], FlowStats] = {}
        # Secondary networks: only the stages that judge them, in pipeline order.
        on_networks = [(name, stage) for name, stage in zip(self.names, self.stages) if isinstance(stage, NetworkStage)]
        self._network_egress = tuple((name, stage.evaluate_network_egress) for name, stage in on_networks)
        self._network_ingress = tuple((name, stage.evaluate_network_ingress) for name, stage in on_networks)

    def judge(self, packet: Packet) -> Judgement:
        """Run both pipelines for one packet (no flow table)."""
        pod_by_ip = self._pod_by_ip
        src = pod_by_ip(packet.src)
        dst = pod_by_ip(packet.dst)
        lifetime: float | None = None
        kernel = True
        egress, egress_by = END_OF_PIPELINE, ""
        for name, evaluate, ours in self._egress:
            decision = evaluate(packet, src, dst)
            bound = decision.lifetime
            if bound is not None:
                if lifetime is None or bound < lifetime:
                    lifetime = bound
            elif not ours:
                kernel = False
            if decision.verdict:
                egress, egress_by = decision, name
                break
        ingress, ingress_by = END_OF_PIPELINE, ""
        for name, evaluate, ours in self._ingress:
            decision = evaluate(packet, src, dst)
            bound = decision.lifetime
            if bound is not None:
                if lifetime is None or bound < lifetime:
                    lifetime = bound
            elif not ours:
                kernel = False
            if decision.verdict:
                ingress, ingress_by = decision, name
                break
        verdict = ACCEPT if egress.verdict is ACCEPT and ingress.verdict is ACCEPT else DENY
        return Judgement(verdict, egress, egress_by, ingress, ingress_by, lifetime, kernel)

    def judge_on(self, network: str, packet: Packet) -> Judgement:
        """Both pipelines for one packet on a secondary network: only the stages that judge networks answer.

        No flow table: a flow key does not name its network, and the
        dataplane queues only a connection's first packet there (conntrack
        carries the verdict).
        """
        egress, egress_by = END_OF_PIPELINE, ""
        for name, evaluate in self._network_egress:
            decision = evaluate(network, packet)
            if decision.verdict:
                egress, egress_by = decision, name
                break
        ingress, ingress_by = END_OF_PIPELINE, ""
        for name, evaluate in self._network_ingress:
            decision = evaluate(network, packet)
            if decision.verdict:
                ingress, ingress_by = decision, name
                break
        verdict = ACCEPT if egress.verdict is ACCEPT and ingress.verdict is ACCEPT else DENY
        return Judgement(verdict, egress, egress_by, ingress, ingress_by)

    def network_attachments(self) -> dict[PodKey, tuple[tuple[str, str], ...]]:
        """This node's pods with secondary interfaces some stage needs diverted: pod -> (interface, network)."""
        found: dict[PodKey, dict[tuple[str, str], None]] = {}
        for stage in self.stages:
            if isinstance(stage, NetworkStage):
                for key, interfaces in stage.diverted().items():
                    found.setdefault(key, {}).update(dict.fromkeys(interfaces))
        return {key: tuple(interfaces) for key, interfaces in found.items()}

    def pod_by_ip(self, ip: bytes) -> PodRecord | None:
        """The pod that has address ``ip`` in this snapshot's cluster state (None: not a pod)."""
        return self._pod_by_ip(ip)

    def evaluate(self, packet: Packet) -> Judgement:
        """The verdict for one packet: the flow table's if it has the key, else judged (and not stored).

        For callers other than the verdict loop (strict mode, the offline
        harness): only the loop adds to the table, so its counters count packets.
        """
        flow = self.flows.get(packet_flow_key(packet))
        if flow is None or (flow.expires and flow.expires < monotonic()):
            return self.judge(packet)
        return flow.judgement

    def add_flow(self, key: TableKey, judgement: Judgement, accepted: bool, protocol: int, family: int) -> FlowStats:
        """A new flow-table entry for ``key`` (packet thread)."""
        history = self._history
        flows = self.flows
        if len(flows) >= history.max_flows and not self.retired:
            # Full: a new table (a bound on memory). A retired snapshot keeps filling its
            # retired table: the packet thread is about to move to the next snapshot.
            history.retire(flows)
            history.tables_filled += 1
            flows = self.flows = {}
            self.judged.clear()  # its entries belong to the retired table
            if self.retired:
                # Retired by the control thread meanwhile, which may have read the full table as
                # this snapshot's: the new one is retired too, or its counts would never be seen.
                history.retire(flows)
        stats = FlowStats(judgement, accepted, protocol, family, history.last_hit_ns, history.last_hit_bucket)
        if judgement.lifetime is not None:
            stats.expires = monotonic() + judgement.lifetime
        displaced = flows.get(key)
        if displaced is not None and displaced.keys == 1:
            # Keep what it counted (a caller recording by hand). A shared entry stays in the
            # table under its other keys (and has no lifetime, so the loop never replaces it).
            history.fold(displaced)
        flows[key] = stats
        return stats

    def explain(self, packet: Packet) -> Explanation:
        """Walk both pipelines, keeping every answer up to the deciding one."""
        src = self._pod_by_ip(packet.src)
        dst = self._pod_by_ip(packet.dst)
        egress_steps = _walk(self._every_egress, packet, src, dst)
        ingress_steps = _walk(self._every_ingress, packet, src, dst)
        egress, egress_by = _first_final(egress_steps)
        ingress, ingress_by = _first_final(ingress_steps)
        verdict = ACCEPT if egress.verdict is ACCEPT and ingress.verdict is ACCEPT else DENY
        ours = dict(zip(self.names, (ships_with_kube_netpol(stage) for stage in self.stages)))
        steps = egress_steps + ingress_steps
        bounds = [step.decision.lifetime for step in steps if step.decision.lifetime is not None]
        kernel = all(ours.get(step.evaluator, False) for step in steps if step.decision.lifetime is None)
        judgement = Judgement(verdict, egress, egress_by, ingress, ingress_by, min(bounds) if bounds else None, kernel)
        return Explanation(packet, src, dst, egress_steps, ingress_steps, judgement)


#: The stages ``port_segments`` last answered for (held, so that their ids stay theirs) and its answer:
#: while only pods change, each snapshot has the same stages and the union is not worked out again.
_last_segments: tuple[tuple[Stage, ...], dict[int, tuple[int, ...]]] = ((), {})


def port_segments(stages: Iterable[Stage]) -> dict[int, tuple[int, ...]]:
    """Per protocol, the ports where some stage's answer may change, sorted; {}: none can be bounded.

    Between two of these bounds (``bisect_right(bounds, port)`` names the
    segment) every stage answers every packet with the same addresses and
    protocol the same way, so a judgement made for one port of a segment is
    the judgement of all of them. Each stage must say so with
    ``port_bounds()`` (the built-in stages derive it from their rules' ports);
    a stage without it (a plugin) turns the memo off, and a protocol some
    stage names ports of by name (resolved on each pod) is left out.
    """
    global _last_segments
    asked = tuple(stages)
    last_stages, last = _last_segments
    if len(asked) == len(last_stages) and all(a is b for a, b in zip(asked, last_stages)):
        return last  # read-only for its users: shared between snapshots
    combined: dict[int, set[int] | None] = {protocol: set() for protocol in PORT_PROTOCOLS}
    for stage in asked:
        bounds_of = getattr(stage, "port_bounds", None)
        if bounds_of is None:
            _last_segments = (asked, {})
            return {}
        for protocol, points in bounds_of().items():
            if protocol not in combined:
                continue
            known = combined[protocol]
            if points is None or known is None:
                combined[protocol] = None
            else:
                known.update(points)
    segments = {protocol: tuple(sorted(points)) for protocol, points in combined.items() if points is not None}
    _last_segments = (asked, segments)
    return segments


def ships_with_kube_netpol(stage: object) -> bool:
    """Whether ``stage`` is an evaluator's of kube_netpol itself (not a plugin loaded from elsewhere)."""
    return type(stage).__module__.startswith("kube_netpol.")


def _walk(
    stages: Sequence[tuple[str, Evaluate, bool]], packet: Packet, src: PodRecord | None, dst: PodRecord | None
) -> tuple[Step, ...]:
    steps: list[Step] = []
    for name, evaluate, _ in stages:
        steps.append(Step(name, evaluate(packet, src, dst)))
        if steps[-1].decision.verdict:
            break
    return tuple(steps)


def _first_final(steps: Sequence[Step]) -> tuple[Decision, str]:
    for step in steps:
        if step.decision.verdict:
            return step.decision, step.evaluator
    return END_OF_PIPELINE, ""
