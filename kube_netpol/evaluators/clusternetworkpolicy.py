"""The two ClusterNetworkPolicy (v1alpha2) evaluators: the Admin tier and the Baseline tier.

Default pipeline (kube_netpol.plugins.DEFAULT_PIPELINE)::

    clusternetworkpolicy-admin, adminnetworkpolicy, networkpolicy,
    baselineadminnetworkpolicy, clusternetworkpolicy-baseline

Admin tier (before NetworkPolicy): the CNPs of tier Admin by ``priority``
ascending; equal priorities are ordered by name ascending (deterministic, and
logged once per pair as ambiguous, since the API leaves that order to the
implementation). Rules in written order; the first match decides: Accept and
Deny are final, Pass gives a NEXT decision naming the policy and rule, which
skips every remaining Admin-tier rule and hands the packet to what follows.

Baseline tier (after NetworkPolicy): NetworkPolicy decides every pod it
selects for a direction (allowed or denied), so this stage judges only pods
no NetworkPolicy selects for that direction, and what Admin passed. Accept
and Deny decide; Pass (or no match) gives NEXT, and the end of the pipeline
accepts (default allow).

With v1alpha1 enabled too: each API's tier is judged as a block; a Pass
skips the rest of its own tier only, so CNP Admin -> ANP -> NetworkPolicy ->
BANP -> CNP Baseline. (The current API is judged outermost.)

The stage and memo are the ANP evaluator's (``SubjectRulesStage``), with the
egress walk of ``DomainNamesStage`` for ``domainNames`` rules (the names the
source pod learnt from DNS answers, ``EvaluatorContext.dns``).
"""

from __future__ import annotations

import logging

from typing import Sequence

from kube_netpol.api.cluster import ClusterView
from kube_netpol.api.evaluator import EvaluatorContext, LearntNames
from kube_netpol.api.kinds import NODE_KIND, KindSpec
from kube_netpol.evaluators.adminnetworkpolicy import ADMIN_GROUP, NodeIndex, SubjectRulesEvaluator, SubjectRulesStage
from kube_netpol.evaluators.domainnames import DomainNamesStage
from kube_netpol.policy.clusternetworkpolicy import ClusterNetworkPolicy, parse_cluster_network_policy

log = logging.getLogger(__name__)

KIND = "ClusterNetworkPolicy"
#: Equal-priority pairs logged as ambiguous, per tier, before the evaluator stops naming them.
MAX_REPORTED_TIES = 100
CLUSTER_NETWORK_POLICY = KindSpec(KIND, ADMIN_GROUP, "v1alpha2", "clusternetworkpolicies", False, parse_cluster_network_policy, order=20)


class ClusterNetworkPolicyTierEvaluator(SubjectRulesEvaluator):
    """The CNPs of one tier, by priority ascending, ties by name ascending."""

    tier = ""
    kinds = (CLUSTER_NETWORK_POLICY, NODE_KIND)
    policy_kinds = frozenset({KIND})

    def __init__(self, dns: LearntNames | None = None) -> None:
        self._dns = dns
        super().__init__()
        self._reported: set[tuple[str, str]] = set()

    def new_stage(self, policies: Sequence[object], nodes: NodeIndex) -> SubjectRulesStage:
        return DomainNamesStage(policies, nodes, self._dns)

    def ordered(self, view: ClusterView) -> tuple[object, ...]:
        policies = [p for p in view.objects(KIND).values() if isinstance(p, ClusterNetworkPolicy) and p.tier == self.tier]
        policies.sort(key=precedence)
        self._report_ties(policies)
        return tuple(policies)

    def _report_ties(self, policies: list[ClusterNetworkPolicy]) -> None:
        for first, second in zip(policies, policies[1:]):
            pair = (first.name, second.name)
            if first.priority == second.priority and pair not in self._reported:
                if len(self._reported) >= MAX_REPORTED_TIES:
                    # A bound on memory and log volume: thousands of ties are one misconfiguration, said once.
                    if len(self._reported) == MAX_REPORTED_TIES:
                        self._reported.add(("", ""))
                        log.warning("more than %d pairs of ClusterNetworkPolicies of tier %s share a priority; "
                                    "further ambiguous pairs are not logged", MAX_REPORTED_TIES, self.tier)
                    return
                self._reported.add(pair)
                log.warning(
                    "ClusterNetworkPolicies %s and %s of tier %s have the same priority %d: their order is ambiguous "
                    "in the API; kube-netpol judges them by name (%s first)",
                    first.name, second.name, self.tier, first.priority, first.name,
                )  # fmt: skip


def precedence(policy: ClusterNetworkPolicy) -> tuple[int, str]:
    return (policy.priority, policy.name)


class AdminTierEvaluator(ClusterNetworkPolicyTierEvaluator):
    name = "clusternetworkpolicy-admin"
    tier = "Admin"


class BaselineTierEvaluator(ClusterNetworkPolicyTierEvaluator):
    name = "clusternetworkpolicy-baseline"
    tier = "Baseline"


def create_admin(context: EvaluatorContext) -> AdminTierEvaluator:
    """Entry point ``clusternetworkpolicy-admin`` of the ``kube_netpol.evaluators`` group."""
    return AdminTierEvaluator(context.dns)


def create_baseline(context: EvaluatorContext) -> BaselineTierEvaluator:
    """Entry point ``clusternetworkpolicy-baseline`` of the ``kube_netpol.evaluators`` group."""
    return BaselineTierEvaluator(context.dns)
