"""The AdminNetworkPolicy evaluator: the first stage of the default pipeline.

Precedence: ANPs are walked by ``spec.priority`` ascending (0 is the most
important). The API leaves the order of ANPs with equal priority to the
implementation; kube-netpol breaks ties deterministically by name ascending,
so a given set of objects always gives the same verdicts. Within an ANP the
rules are walked in written order. The first rule that matches decides:
Allow gives ACCEPT, Deny gives DENY, and Pass gives a NEXT decision at once
(naming the policy and rule), skipping every remaining ANP rule so that
NetworkPolicy, then BaselineAdminNetworkPolicy, decides. No match: NEXT.

Built on ``kube_netpol.evaluators.indexed``, as the BaselineAdminNetworkPolicy
evaluator is: per target pod (its labels and its namespace's labels), the
stage's memo holds the rules of the policies whose subject selects it,
flattened in precedence order, so an evaluation costs a dict lookup plus the
rules of the policies that select the pod, however many policies exist.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from kube_netpol.api.cluster import NO_PORT_NAMES, Change, ClusterView, Labels, PodRecord, PortNames
from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.kinds import NODE_KIND, KindSpec
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import NEXT, Decision
from kube_netpol.evaluators.indexed import MEMO_SIZE, IndexedEvaluator, MemoEntry, SelectingStage, remember
from kube_netpol.api.evaluator import PortBounds
from kube_netpol.policy.ports import port_bounds_of
from kube_netpol.policy.adminnetworkpolicy import (
    AdminNetworkPolicy,
    EgressRule,
    IngressRule,
    parse_admin_network_policy,
)

KIND = "AdminNetworkPolicy"
ADMIN_GROUP = "policy.networking.k8s.io"
ADMIN_NETWORK_POLICY = KindSpec(
    KIND, ADMIN_GROUP, "v1alpha1", "adminnetworkpolicies", False, parse_admin_network_policy, order=20
)

#: Node labels by node address, for ``nodes`` egress peers (a tuple: addresses may be shared).
NodeIndex = Mapping[bytes, tuple[Labels, ...]]


class _Subject(MemoEntry):
    """The rules of the policies whose subject selects the pods with these labels in this namespace."""

    __slots__ = ("namespace_labels", "ingress", "egress")

    namespace_labels: Labels
    ingress: tuple[IngressRule, ...]
    egress: tuple[EgressRule, ...]


class SubjectIndex:
    """Policies (by precedence position) found from a pod's labels, so a pod's entry checks only likely ones.

    A policy whose subject pod selector has matchLabels is filed under one of its
    pairs (a pod without that pair cannot be selected); one whose pod selector is
    empty is selected wherever its namespace selector matches; the rest (only
    matchExpressions) are checked for every pod.
    """

    __slots__ = ("by_label", "all_pods", "others")

    def __init__(self, policies: Sequence[object]) -> None:
        self.by_label: dict[tuple[str, str], list[int]] = {}
        all_pods: list[int] = []
        others: list[int] = []
        for position, policy in enumerate(policies):
            selector = policy.subject.pod_selector  # type: ignore[attr-defined]
            if selector.matches_all:
                all_pods.append(position)
            elif selector.required_labels:
                self.by_label.setdefault(selector.required_labels[0], []).append(position)
            else:
                others.append(position)
        self.all_pods = tuple(all_pods)
        self.others = tuple(others)


class SubjectRulesStage(SelectingStage):
    """Policies in precedence order, the node index, and the memos built from them.

    ``by_namespace`` remembers, per namespace labels mapping, which policies'
    subject namespace selector matches it (judged once per namespace, not once
    per pod); with the ``SubjectIndex`` a pod's entry then looks only at the
    policies filed under its own labels, so policies that select other pods
    cost nothing per pod, however many there are.
    """

    __slots__ = ("policies", "nodes", "memo", "by_namespace", "index", "_bounds")

    def __init__(
        self,
        policies: Sequence[AdminNetworkPolicy] | Sequence[object],
        nodes: NodeIndex,
        index: SubjectIndex | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self.nodes = nodes
        self.index = index if index is not None else SubjectIndex(self.policies)
        self.memo: dict[int, _Subject] = {}
        # id(namespace labels) -> (those labels, kept alive so the id stays theirs; the positions of
        # the empty-pod-selector policies selecting that namespace; those of the other policies)
        self.by_namespace: dict[int, tuple[Labels, tuple[int, ...], frozenset[int]]] = {}
        self._bounds: PortBounds | None = None  # port_bounds(), worked out when first asked

    @property
    def answers_nothing(self) -> bool:
        return not self.policies

    def port_bounds(self) -> PortBounds:
        """Where a destination port may change this stage's answers (computed once: the stage never changes)."""
        if self._bounds is None:
            self._bounds = port_bounds_of(rule.ports for policy in self.policies
                                          for rule in (*policy.ingress, *policy.egress))  # type: ignore[attr-defined]
        return self._bounds

    def evaluate_ingress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        if dst is None or src is None:
            # Ingress peers are pods only: traffic from outside the pod network matches no rule.
            return NEXT
        entry = self.memo.get(id(dst.labels))
        if entry is None or entry.labels is not dst.labels or entry.namespace_labels is not dst.namespace_labels:
            entry = self._remember(dst)
        rules = entry.ingress
        if not rules:
            return NEXT
        protocol = packet.protocol
        port = packet.dst_port
        labels = src.labels
        namespace_labels = src.namespace_labels
        port_names = dst.port_names  # named ports resolve on dst
        for rule in rules:
            if rule.matches(protocol, port, labels, namespace_labels, port_names):
                return rule.decision
        return NEXT

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        if src is None:
            return NEXT
        entry = self.memo.get(id(src.labels))
        if entry is None or entry.labels is not src.labels or entry.namespace_labels is not src.namespace_labels:
            entry = self._remember(src)
        rules = entry.egress
        if not rules:
            return NEXT
        labels: Labels | None = None
        namespace_labels: Labels | None = None
        port_names: PortNames = NO_PORT_NAMES  # not a pod: named ports cannot resolve
        if dst is not None:
            labels = dst.labels
            namespace_labels = dst.namespace_labels
            port_names = dst.port_names
        address = packet.dst
        node_labels = self.nodes.get(address, ())
        protocol = packet.protocol
        port = packet.dst_port
        for rule in rules:
            if rule.matches(protocol, port, address, port_names, labels, namespace_labels, node_labels):
                return rule.decision
        return NEXT

    def selects(self, pod: PodRecord) -> bool:
        # Through the memo: the evaluator asks only about this node's pods, whose packets this stage judges.
        entry = self.memo.get(id(pod.labels))
        if entry is None or entry.labels is not pod.labels or entry.namespace_labels is not pod.namespace_labels:
            entry = self._remember(pod)
        return entry.selected

    def _namespace(self, namespace_labels: Labels) -> tuple[tuple[int, ...], frozenset[int]]:
        known = self.by_namespace.get(id(namespace_labels))
        if known is not None and known[0] is namespace_labels:
            return known[1], known[2]
        all_pods = set(self.index.all_pods)
        whole: list[int] = []
        selective: list[int] = []
        for position, policy in enumerate(self.policies):
            if policy.subject.namespace_selector.matches(namespace_labels):  # type: ignore[attr-defined]
                (whole if position in all_pods else selective).append(position)
        if len(self.by_namespace) >= MEMO_SIZE:
            self.by_namespace.clear()
        found = (tuple(whole), frozenset(selective))
        self.by_namespace[id(namespace_labels)] = (namespace_labels, *found)
        return found

    def _remember(self, pod: PodRecord) -> _Subject:
        entry = _Subject(pod.labels)
        entry.namespace_labels = pod.namespace_labels
        labels = pod.labels
        whole, selective = self._namespace(pod.namespace_labels)
        positions = list(whole)
        if selective:
            by_label = self.index.by_label
            for item in labels.items():
                filed = by_label.get(item)
                if filed is not None:
                    positions.extend(p for p in filed if p in selective)
            positions.extend(p for p in self.index.others if p in selective)
            positions.sort()  # precedence order; each policy is filed once, so no repeats
        ingress: list[IngressRule] = []
        egress: list[EgressRule] = []
        policies = self.policies
        for position in positions:
            policy = policies[position]
            if policy.subject.pod_selector.matches(labels):  # type: ignore[attr-defined]
                entry.selected = True
                ingress.extend(policy.ingress)  # type: ignore[attr-defined]
                egress.extend(policy.egress)  # type: ignore[attr-defined]
        entry.ingress = tuple(ingress)
        entry.egress = tuple(egress)
        return remember(self.memo, entry)


class SubjectRulesEvaluator(IndexedEvaluator[SubjectRulesStage]):
    """Shared by the ANP and BANP evaluators: subject-selected rules, first match decides.

    Subclasses set ``name``, ``kinds`` (their policy kind and Node) and
    ``policy_kinds``, and implement ``ordered`` (their policies in precedence order).
    """

    def __init__(self) -> None:
        super().__init__(self.new_stage((), {}))

    def new_stage(
        self, policies: Sequence[object], nodes: NodeIndex, index: SubjectIndex | None = None
    ) -> SubjectRulesStage:
        """The stage for these policies (in precedence order) and nodes (``index``: the policies' subject
        index when they did not change); a subclass may judge more."""
        return SubjectRulesStage(policies, nodes, index)

    def ordered(self, view: ClusterView) -> tuple[object, ...]:
        raise NotImplementedError

    def with_policies(
        self, stage: SubjectRulesStage, view: ClusterView, changes: list[Change[object]]
    ) -> tuple[SubjectRulesStage, Iterable[str] | None]:
        reached: set[str] = set()
        namespaces = list(view.namespaces())
        for change in changes:
            for policy in (change.old, change.new):
                if policy is None:
                    continue
                selector = policy.subject.namespace_selector  # type: ignore[attr-defined]
                reached.update(ns.name for ns in namespaces if selector.matches(ns.labels))
        return self.new_stage(self.ordered(view), stage.nodes), reached

    def with_others(self, stage: SubjectRulesStage, view: ClusterView, changes: list[Change[object]]) -> SubjectRulesStage:
        if not any(change.kind == "Node" for change in changes):
            return stage  # the memo follows new pod and namespace records by itself
        return self.new_stage(stage.policies, index_nodes(view), stage.index)


def index_nodes(view: ClusterView) -> dict[bytes, tuple[Labels, ...]]:
    index: dict[bytes, tuple[Labels, ...]] = {}
    for node in view.nodes():
        for ip in node.ips:
            index[ip] = index.get(ip, ()) + (node.labels,)
    return index


class AdminNetworkPolicyEvaluator(SubjectRulesEvaluator):
    """ANPs by priority ascending, ties by name ascending; Allow/Deny final, Pass hands on."""

    name = "adminnetworkpolicy"
    # ANP and BANP egress rules may name nodes as peers: node labels and addresses are needed.
    kinds = (ADMIN_NETWORK_POLICY, NODE_KIND)
    policy_kinds = frozenset({KIND})

    def ordered(self, view: ClusterView) -> tuple[object, ...]:
        policies = [p for p in view.objects(KIND).values() if isinstance(p, AdminNetworkPolicy)]
        policies.sort(key=_precedence)
        return tuple(policies)


def _precedence(policy: AdminNetworkPolicy) -> tuple[int, str]:
    return (policy.priority, policy.name)


def create(context: EvaluatorContext) -> AdminNetworkPolicyEvaluator:
    """Entry point ``adminnetworkpolicy`` of the ``kube_netpol.evaluators`` group."""
    return AdminNetworkPolicyEvaluator()
