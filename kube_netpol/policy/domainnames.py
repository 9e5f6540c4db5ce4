"""A ClusterNetworkPolicy egress rule with ``domainNames`` peers.

Its other peers (pods, namespaces, nodes, networks) match through
``EgressRule.matches`` as in every admin rule; the domain names match in the
stage (kube_netpol.evaluators.domainnames), which asks what the source pod
learnt from DNS. ``domainNames`` are Accept-only (a CEL rule of the CRD), so
``decision`` is always an ACCEPT.
"""

from __future__ import annotations

from kube_netpol.api.verdict import Decision
from kube_netpol.dns.names import DomainPatterns
from kube_netpol.policy.adminnetworkpolicy import EgressRule


class DomainEgressRule(EgressRule):
    __slots__ = ("domains",)

    def __init__(self, rule: EgressRule, domains: DomainPatterns) -> None:
        super().__init__(rule.name, rule.action, rule.decision, rule.pod_peers, rule.networks, rule.node_selectors,
                         rule.ports)
        self.domains = domains

    def accepted_for(self, lifetime: float) -> Decision:
        """This rule's ACCEPT for an address learnt for ``lifetime`` more seconds."""
        decision = self.decision
        return Decision(decision.verdict, decision.policy, decision.rule, decision.reason, lifetime)

    def __repr__(self) -> str:
        return f"DomainEgressRule({self.name!r}, {self.domains.text})"
