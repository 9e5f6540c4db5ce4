"""The BaselineAdminNetworkPolicy evaluator: the last stage of the default pipeline.

It judges only what AdminNetworkPolicy passed on and NetworkPolicy did not
decide (NetworkPolicy decides for every pod it selects). The cluster holds at
most one BANP, named ``default``; its subject, peers and ports mean what they
mean in an ANP, its rules are walked in written order, the first match
decides (Allow: ACCEPT, Deny: DENY) and no match gives NEXT, so the end of the
pipeline accepts. The stage and memo are the ANP evaluator's (see there).
"""

from __future__ import annotations

from kube_netpol.api.cluster import ClusterView
from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.kinds import NODE_KIND, KindSpec
from kube_netpol.evaluators.adminnetworkpolicy import ADMIN_GROUP, SubjectRulesEvaluator
from kube_netpol.policy.adminnetworkpolicy import BANP_NAME, parse_baseline_admin_network_policy

KIND = "BaselineAdminNetworkPolicy"
BASELINE_ADMIN_NETWORK_POLICY = KindSpec(
    KIND, ADMIN_GROUP, "v1alpha1", "baselineadminnetworkpolicies", False, parse_baseline_admin_network_policy,
    order=20,
)  # fmt: skip


class BaselineAdminNetworkPolicyEvaluator(SubjectRulesEvaluator):
    name = "baselineadminnetworkpolicy"
    kinds = (BASELINE_ADMIN_NETWORK_POLICY, NODE_KIND)
    policy_kinds = frozenset({KIND})

    def ordered(self, view: ClusterView) -> tuple[object, ...]:
        policy = view.objects(KIND).get(("", BANP_NAME))
        return (policy,) if policy is not None else ()


def create(context: EvaluatorContext) -> BaselineAdminNetworkPolicyEvaluator:
    """Entry point ``baselineadminnetworkpolicy`` of the ``kube_netpol.evaluators`` group."""
    return BaselineAdminNetworkPolicyEvaluator()
