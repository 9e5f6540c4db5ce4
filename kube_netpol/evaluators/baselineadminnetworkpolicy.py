"""The BaselineAdminNetworkPolicy evaluator: the last stage of the default pipeline.

It judges only what AdminNetworkPolicy passed on and NetworkPolicy did not
decide (NetworkPolicy decides for every pod it selects). The cluster holds at
most one BANP, named ``default``; its subject, peers and ports mean what they
mean in an ANP, its rules are walked in written order, the first match
decides (Allow: ACCEPT, Deny: DENY) and no match gives NEXT, so the end of the
pipeline accepts. The per-pod memo is the ANP evaluator's (see there).
"""

from __future__ import annotations

from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.evaluators.adminnetworkpolicy import SubjectRulesEvaluator
from kube_netpol.policy.adminnetworkpolicy import BANP_NAME, BaselineAdminNetworkPolicy


class BaselineAdminNetworkPolicyEvaluator(SubjectRulesEvaluator):
    name = "baselineadminnetworkpolicy"
    kind = "BaselineAdminNetworkPolicy"
    relevant_kinds = frozenset({"BaselineAdminNetworkPolicy", "Namespace", "Node", "Pod"})

    def ordered_policies(self) -> tuple[BaselineAdminNetworkPolicy, ...]:
        policy = self.state.policy_objects(self.kind).get(("", BANP_NAME))
        return (policy,) if policy is not None else ()


def create(context: EvaluatorContext) -> BaselineAdminNetworkPolicyEvaluator:
    """Entry point ``baselineadminnetworkpolicy`` of the ``kube_netpol.evaluators`` group."""
    return BaselineAdminNetworkPolicyEvaluator(context.state)
