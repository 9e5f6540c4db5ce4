"""The ClusterNetworkPolicy stage's egress walk with ``domainNames`` rules (kube_netpol.dns).

A ``DomainEgressRule`` matches egress to an address the *source pod* learnt
for a matching name (exact, or ``*.`` covering one or more labels), while the
name's TTL runs (``LearntNames``). Such verdicts are only true for a while,
so the stage bounds their reuse with ``Decision.lifetime``:

- matched by a name: ACCEPT with the lifetime the name has left (the flow
  table re-judges the key once it runs out; the kernel's verdict memory
  keeps it for the longest class not above it, or not at all under 1 s);
- a domainNames rule was consulted and did not match: whatever decides next
  (a later rule's Deny or Pass, NEXT to NetworkPolicy or the Baseline tier)
  gets lifetime 0, so that a name the pod learns a moment later is seen by
  its next connection. A later Accept keeps its usual lifetime: learning a
  name can only add an earlier Accept, never change the verdict.

Rules whose ports do not match the packet are skipped without asking the
cache (no name can make them match). Rules without domain names cost what
they cost in the v1alpha1 stage.
"""

from __future__ import annotations

from time import monotonic
from typing import Sequence

from kube_netpol.api.cluster import NO_PORT_NAMES, Labels, PodRecord, PortNames
from kube_netpol.api.evaluator import LearntNames
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import NEXT, Decision, Verdict
from kube_netpol.evaluators.adminnetworkpolicy import NodeIndex, SubjectIndex, SubjectRulesStage
from kube_netpol.policy.domainnames import DomainEgressRule

#: NEXT after a domainNames rule that did not match: never reused.
NEXT_UNCACHED = Decision(Verdict.NEXT, lifetime=0)


class DomainNamesStage(SubjectRulesStage):
    """``SubjectRulesStage`` whose egress rules may name domains; ``dns`` None: they match nothing."""

    __slots__ = ("dns", "_uncached")

    def __init__(
        self, policies: Sequence[object], nodes: NodeIndex, dns: LearntNames | None, index: SubjectIndex | None = None
    ) -> None:
        super().__init__(policies, nodes, index)
        self.dns = dns
        self._uncached: dict[Decision, Decision] = {}  # a rule's decision -> the same with lifetime 0 (built once)

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        if src is None:
            return SubjectRulesStage.evaluate_egress(self, packet, src, dst)
        entry = self.memo.get(id(src.labels))
        if entry is None or entry.labels is not src.labels or entry.namespace_labels is not src.namespace_labels:
            entry = self._remember(src)
        rules = entry.egress
        if not rules:
            return NEXT  # the pod's policies have no egress rules (not a second memo lookup)
        labels: Labels | None = None
        namespace_labels: Labels | None = None
        port_names: PortNames = NO_PORT_NAMES
        if dst is not None:
            labels = dst.labels
            namespace_labels = dst.namespace_labels
            port_names = dst.port_names
        address = packet.dst
        node_labels = self.nodes.get(address, ())
        protocol = packet.protocol
        port = packet.dst_port
        consulted = False
        for rule in rules:
            if rule.matches(protocol, port, address, port_names, labels, namespace_labels, node_labels):
                decision = rule.decision
                if consulted and decision.verdict != Verdict.ACCEPT:
                    return self._without_reuse(decision)
                return decision
            if type(rule) is DomainEgressRule:
                ports = rule.ports
                if ports is not None and not ports.matches(protocol, port, NO_PORT_NAMES):
                    continue
                left = self._learnt(rule, src, address)
                if left > 0:
                    return rule.accepted_for(left)
                consulted = True
        return NEXT_UNCACHED if consulted else NEXT

    def _learnt(self, rule: DomainEgressRule, src: PodRecord, address: bytes) -> float:
        """Seconds the longest-lived matching name ``src`` learnt for ``address`` has left (0: none)."""
        dns = self.dns
        if dns is None:
            return 0.0
        names = dns.names(src.key, address)
        if not names:
            return 0.0
        now = monotonic()
        best = 0.0
        domains = rule.domains
        for name, expires in names.items():
            if expires - now > best and domains.matches(name):
                best = expires - now
        return best

    def _without_reuse(self, decision: Decision) -> Decision:
        uncached = self._uncached.get(decision)
        if uncached is None:
            uncached = Decision(decision.verdict, decision.policy, decision.rule, decision.reason, 0)
            self._uncached[decision] = uncached  # bounded: one per rule of the stage's policies
        return uncached
