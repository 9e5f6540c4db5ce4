"""The two ClusterNetworkPolicy (v1alpha2) evaluators: the Admin tier and the Baseline tier.

Built-in order (kube_netpol.plugins.BUILTIN_ORDER, also the default pipeline of explain and advise)::

    clusternetworkpolicy-admin, adminnetworkpolicy, networkpolicy,
    baselineadminnetworkpolicy, clusternetworkpolicy-baseline

Admin tier (before NetworkPolicy): the CNPs of tier Admin by ``priority``
ascending; equal priorities are ordered by name ascending (deterministic, and
logged as ambiguous, since the API leaves that order to the implementation:
one line per tier whenever the groups of equal-priority policies change). Rules in written order; the first match decides: Accept and
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
from kube_netpol.evaluators.adminnetworkpolicy import (
    ADMIN_GROUP,
    NodeIndex,
    SubjectIndex,
    SubjectRulesEvaluator,
    SubjectRulesStage,
)
from kube_netpol.evaluators.domainnames import DomainNamesStage
from kube_netpol.policy.clusternetworkpolicy import ClusterNetworkPolicy, parse_cluster_network_policy

log = logging.getLogger(__name__)

KIND = "ClusterNetworkPolicy"
#: In the ambiguous-order log line: the equal-priority groups named, and the names per group.
MAX_GROUPS = 10
MAX_NAMES = 5
CLUSTER_NETWORK_POLICY = KindSpec(KIND, ADMIN_GROUP, "v1alpha2", "clusternetworkpolicies", False, parse_cluster_network_policy, order=20)


class ClusterNetworkPolicyTierEvaluator(SubjectRulesEvaluator):
    """The CNPs of one tier, by priority ascending, ties by name ascending."""

    tier = ""
    kinds = (CLUSTER_NETWORK_POLICY, NODE_KIND)
    policy_kinds = frozenset({KIND})

    def __init__(self, dns: LearntNames | None = None) -> None:
        self._dns = dns
        super().__init__()
        # The groups of equal-priority policies last logged: a line only when they change.
        self._ties: frozenset[tuple[int, tuple[str, ...]]] = frozenset()

    def new_stage(
        self, policies: Sequence[object], nodes: NodeIndex, index: SubjectIndex | None = None
    ) -> SubjectRulesStage:
        return DomainNamesStage(policies, nodes, self._dns, index)

    def ordered(self, view: ClusterView) -> tuple[object, ...]:
        policies = [p for p in view.objects(KIND).values() if isinstance(p, ClusterNetworkPolicy) and p.tier == self.tier]
        policies.sort(key=precedence)
        self._report_ties(policies)
        return tuple(policies)

    def _report_ties(self, policies: list[ClusterNetworkPolicy]) -> None:
        """Log the equal-priority groups when they differ from the last ones logged (not on every change)."""
        names: dict[int, list[str]] = {}
        for policy in policies:  # sorted: names ascending within a priority
            names.setdefault(policy.priority, []).append(policy.name)
        ties = frozenset((priority, tuple(group)) for priority, group in names.items() if len(group) > 1)
        if ties == self._ties:
            return
        self._ties = ties
        if not ties:
            log.info("no two ClusterNetworkPolicies of tier %s share a priority any more", self.tier)
            return
        groups = sorted(ties)
        # Bounded: thousands of ties are one misconfiguration; the line names the first groups and names.
        shown = "; ".join(
            f"priority {priority}: {', '.join(group[:MAX_NAMES])}{f' and {len(group) - MAX_NAMES} more' if len(group) > MAX_NAMES else ''}"
            for priority, group in groups[:MAX_GROUPS]
        )
        more = f"; and {len(groups) - MAX_GROUPS} more priorities" if len(groups) > MAX_GROUPS else ""
        log.warning(
            "ClusterNetworkPolicies of tier %s share a priority (%d priorities, %d policies): their order is ambiguous "
            "in the API; kube-netpol judges each group by name ascending: %s%s",
            self.tier, len(groups), sum(len(group) for _, group in groups), shown, more,
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
