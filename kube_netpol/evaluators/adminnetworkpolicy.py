"""The AdminNetworkPolicy evaluator: the first stage of the default pipeline.

Precedence: ANPs are walked by ``spec.priority`` ascending (0 is the most
important). The API leaves the order of ANPs with equal priority to the
implementation; kube-netpol breaks ties deterministically by name ascending,
so a given set of objects always gives the same verdicts. Within an ANP the
rules are walked in written order. The first rule that matches decides:
Allow gives ACCEPT, Deny gives DENY, and Pass gives a NEXT decision at once
(naming the policy and rule), skipping every remaining ANP rule so that
NetworkPolicy, then BaselineAdminNetworkPolicy, decides. No match: NEXT.

Hot path: the rules that apply to a pod (the ingress and egress rules of the
ANPs whose subject selects it, flattened in precedence order) are memoised
per PodInfo object with the pod's facts (kube_netpol.evaluators.pod_memo).
The memo lives in an immutable snapshot together with the ordered policies
and is replaced whole on a policy, Namespace or Node change, so a packet
thread racing with a change stores into the old snapshot, never a stale entry
into the new one. A pod change drops that pod's entry. Once memoised, an
evaluation costs a dict lookup plus the rules of the ANPs that select the
pod, however many ANPs exist. The same machinery serves the
BaselineAdminNetworkPolicy evaluator.
"""

from __future__ import annotations

from typing import Any, Mapping

from kube_netpol.api.evaluator import EvaluatorContext, ManagedIPs
from kube_netpol.api.packet import Packet
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.api.verdict import NEXT, Decision
from kube_netpol.evaluators.base import StateEvaluator
from kube_netpol.evaluators.pod_memo import PodFacts, forget, lookup, remember
from kube_netpol.policy.adminnetworkpolicy import AdminNetworkPolicy, EgressRule, IngressRule
from kube_netpol.policy.ports import NO_PORT_NAMES, PortNames
from kube_netpol.state.store import Change, ClusterState


class PodEntry(PodFacts):
    """The memo entry of one PodInfo: its facts, plus the rules of the policies whose subject selects it.

    ``selected`` tells whether any subject selects it (rules may be empty even then).
    """

    __slots__ = ("ingress", "egress", "selected")

    ingress: tuple[IngressRule, ...]
    egress: tuple[EgressRule, ...]
    selected: bool


class _Snapshot:
    """Policies in precedence order plus the per-pod memo built from them."""

    __slots__ = ("policies", "memo")

    def __init__(self, policies: tuple[Any, ...]) -> None:
        self.policies = policies
        self.memo: dict[int, PodEntry] = {}  # see pod_memo


class SubjectRulesEvaluator(StateEvaluator):
    """Shared by the ANP and BANP evaluators: subject-selected rules, first match decides.

    Subclasses set ``name``, ``kind``, ``relevant_kinds`` and implement
    ``ordered_policies`` (objects with ``subject``, ``ingress``, ``egress``).
    """

    kind = ""

    def __init__(self, state: ClusterState) -> None:
        super().__init__(state)
        self._snapshot = _Snapshot(self.ordered_policies())
        self._node_labels_by_ip = self._index_nodes()

    def ordered_policies(self) -> tuple[Any, ...]:
        raise NotImplementedError

    # ------------------------------------------------------------ per packet

    def evaluate_ingress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        if dst is None or src is None:
            # Ingress peers are pods only: traffic from outside the pod network matches no rule.
            return NEXT
        snapshot = self._snapshot
        memo = snapshot.memo
        entry = memo.get(id(dst))
        if entry is None or entry.info is not dst:
            entry = self._remember(snapshot, dst)
        rules = entry.ingress
        if not rules:
            return NEXT
        peer = memo.get(id(src))
        if peer is None or peer.info is not src:
            peer = self._remember(snapshot, src)
        protocol = packet.protocol
        port = packet.dst_port
        labels = peer.labels
        namespace_labels = peer.namespace_labels
        port_names = entry.port_names  # named ports resolve on dst, the pod this entry is of
        for rule in rules:
            if rule.matches(protocol, port, labels, namespace_labels, port_names):
                return rule.decision
        return NEXT

    def evaluate_egress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        if src is None:
            return NEXT
        snapshot = self._snapshot
        memo = snapshot.memo
        entry = memo.get(id(src))
        if entry is None or entry.info is not src:
            entry = self._remember(snapshot, src)
        rules = entry.egress
        if not rules:
            return NEXT
        labels: dict[str, str] | None = None
        namespace_labels: dict[str, str] | None = None
        port_names: PortNames = NO_PORT_NAMES  # not a pod: named ports cannot resolve
        if dst is not None:
            peer = memo.get(id(dst))
            if peer is None or peer.info is not dst:
                peer = self._remember(snapshot, dst)
            labels = peer.labels
            namespace_labels = peer.namespace_labels
            port_names = peer.port_names
        address = packet.dst
        node_labels = self._node_labels_by_ip.get(address, ())
        protocol = packet.protocol
        port = packet.dst_port
        for rule in rules:
            if rule.matches(protocol, port, address, port_names, labels, namespace_labels, node_labels):
                return rule.decision
        return NEXT

    def _remember(self, snapshot: _Snapshot, pod: PodInfo) -> PodEntry:
        """Build and memoise ``pod``'s entry (once per PodInfo object and snapshot)."""
        entry = PodEntry(pod)
        ingress: list[IngressRule] = []
        egress: list[EgressRule] = []
        selected = False
        for policy in snapshot.policies:
            if policy.subject.selects(pod):
                selected = True
                ingress.extend(policy.ingress)
                egress.extend(policy.egress)
        entry.ingress = tuple(ingress)
        entry.egress = tuple(egress)
        entry.selected = selected
        return remember(snapshot.memo, entry)

    # ------------------------------------------------------------ on changes

    def on_change(self, change: Change) -> None:
        if change.kind == "Pod":
            if change.old is not None:
                forget(self._snapshot.memo, change.old.info)
            return
        if change.kind == "Node":
            self._node_labels_by_ip = self._index_nodes()
            policies = self._snapshot.policies
        elif change.kind == self.kind:
            policies = self.ordered_policies()
        else:  # Namespace
            policies = self._snapshot.policies
        self._snapshot = _Snapshot(policies)

    def compute_managed_ips(self) -> ManagedIPs:
        snapshot = self._snapshot
        if not snapshot.policies:
            return ManagedIPs()
        ips: set[bytes] = set()
        # list() first: the packet thread may call this while the control thread edits pods.
        for pod in list(self.state.pods.values()):
            if not pod.is_policy_target or not pod.ips:
                continue
            info = pod.info
            entry = lookup(snapshot.memo, info) or self._remember(snapshot, info)
            if entry.selected:
                ips.update(pod.ips)
        return ManagedIPs(frozenset(ips), divert_all=False)

    def _index_nodes(self) -> dict[bytes, tuple[Mapping[str, str], ...]]:
        """Node labels by node address, for ``nodes`` egress peers (a tuple: addresses may be shared)."""
        index: dict[bytes, tuple[Mapping[str, str], ...]] = {}
        for node in list(self.state.nodes.values()):
            for ip in node.ips:
                index[ip] = index.get(ip, ()) + (dict(node.labels),)
        return index


class AdminNetworkPolicyEvaluator(SubjectRulesEvaluator):
    """ANPs by priority ascending, ties by name ascending; Allow/Deny final, Pass hands on."""

    name = "adminnetworkpolicy"
    kind = "AdminNetworkPolicy"
    relevant_kinds = frozenset({"AdminNetworkPolicy", "Namespace", "Node", "Pod"})

    def ordered_policies(self) -> tuple[AdminNetworkPolicy, ...]:
        policies = list(self.state.policy_objects(self.kind).values())
        policies.sort(key=_precedence)
        return tuple(policies)


def _precedence(policy: AdminNetworkPolicy) -> tuple[int, str]:
    return (policy.priority, policy.name)


def create(context: EvaluatorContext) -> AdminNetworkPolicyEvaluator:
    """Entry point ``adminnetworkpolicy`` of the ``kube_netpol.evaluators`` group."""
    return AdminNetworkPolicyEvaluator(context.state)
