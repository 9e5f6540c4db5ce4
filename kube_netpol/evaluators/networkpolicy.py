"""The NetworkPolicy evaluator: namespaced allow-lists that isolate the pods they select.

A pod selected by a NetworkPolicy for a direction is isolated in that
direction: only what a rule of one of those policies admits passes, the rest
is denied. Pods no policy selects get NEXT (the pipeline continues, e.g. to
BaselineAdminNetworkPolicy).

Hot path: per PodInfo object (kube_netpol.evaluators.pod_memo) we remember
the pod's facts (labels as plain dicts, container port names) and the rules
of the policies selecting it, flattened in order (policy name, then rule
order) and indexed by the protocol and ports they admit
(kube_netpol.policy.rule_index). A packet then costs a few dict lookups and a
bisection plus the rules that can match its protocol and port, whatever the
number of other rules and policies. The first rule in the flattened order
that admits the packet decides and is reported.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Mapping

from kube_netpol.api.evaluator import EvaluatorContext, ManagedIPs
from kube_netpol.api.packet import Packet
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.api.verdict import NEXT, Decision, Verdict
from kube_netpol.evaluators.base import StateEvaluator
from kube_netpol.evaluators.pod_memo import PodFacts, forget, remember
from kube_netpol.policy.networkpolicy import NetworkPolicy, NetworkPolicyRule
from kube_netpol.policy.ports import NO_PORT_NAMES, PortNames
from kube_netpol.policy.rule_index import RuleIndex, build_rule_index
from kube_netpol.state.store import Change, ClusterState

KIND = "NetworkPolicy"

#: Rule indexes remembered per namespace (one per direction and distinct list of
#: isolating policies) before that namespace's are emptied wholesale.
INDEX_CACHE_SIZE = 1024

_Rules = RuleIndex[NetworkPolicyRule]
_Indexed = tuple[tuple[NetworkPolicy, ...], _Rules, Decision]


class _Pod(PodFacts):
    """What the evaluator remembers of one PodInfo: its facts, plus the rules isolating it.

    ``ingress``/``egress`` are None when no policy isolates the pod in that
    direction; otherwise its rules, indexed, and ``*_deny`` is the Decision
    when none admits the packet.
    """

    __slots__ = ("ingress", "ingress_deny", "egress", "egress_deny")

    ingress: _Rules | None
    ingress_deny: Decision
    egress: _Rules | None
    egress_deny: Decision


class NetworkPolicyEvaluator(StateEvaluator):
    name = "networkpolicy"
    relevant_kinds = frozenset({"Pod", "Namespace", "Node", KIND})

    def __init__(self, state: ClusterState) -> None:
        # Set up the indexes before subscribing (the base class subscribes).
        self._policies: dict[str, dict[str, NetworkPolicy]] = {}  # namespace -> name -> policy
        self._ordered: dict[str, tuple[NetworkPolicy, ...]] = {}  # namespace -> policies sorted by name
        self._memo: dict[int, _Pod] = {}  # see pod_memo; replaced whole when policies change
        # Pods selected by the same policies share one index: namespace -> (direction, ids of the
        # policies isolating the pod in it) -> (those policies, kept alive so that their ids stay
        # unique; the index; the DENY decision). An entry depends on nothing but those immutable
        # policies, so it never goes stale; a namespace's entries are dropped when one of its
        # policies changes only to let replaced policies go.
        self._indexes: dict[str, dict[tuple[str, tuple[int, ...]], _Indexed]] = {}
        # Per pod key, how many policies of its namespace select it (for managed_ips).
        self._selected_by: dict[tuple[str, str], int] = {}
        super().__init__(state)
        for (namespace, name), policy in state.policy_objects(KIND).items():
            self._policies.setdefault(namespace, {})[name] = policy
        for namespace in self._policies:
            self._reorder(namespace)
        for pod in state.pods.values():
            self._count_pod(pod.key, pod.labels)

    # ------------------------------------------------------------- hot path

    def evaluate_ingress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        if dst is None:
            return NEXT
        memo = self._memo
        target = memo.get(id(dst))
        if target is None or target.info is not dst:
            target = self._remember(dst)
        rules = target.ingress
        if rules is None:
            return NEXT
        if src is None:
            labels = None
            namespace = ""
            namespace_labels: Mapping[str, str] = _NO_LABELS
        else:
            peer = memo.get(id(src))
            if peer is None or peer.info is not src:
                peer = self._remember(src)
            labels, namespace, namespace_labels = peer.labels, peer.namespace, peer.namespace_labels
        return _first_admitting(
            rules, target.ingress_deny, packet.protocol, packet.dst_port, target.port_names,
            packet.src, labels, namespace, namespace_labels,
        )  # fmt: skip

    def evaluate_egress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        if src is None:
            return NEXT
        memo = self._memo
        target = memo.get(id(src))
        if target is None or target.info is not src:
            target = self._remember(src)
        rules = target.egress
        if rules is None:
            return NEXT
        if dst is None:
            labels = None
            namespace = ""
            namespace_labels: Mapping[str, str] = _NO_LABELS
            port_names: PortNames = NO_PORT_NAMES  # not a pod: named ports cannot resolve
        else:
            peer = memo.get(id(dst))
            if peer is None or peer.info is not dst:
                peer = self._remember(dst)
            labels, namespace, namespace_labels = peer.labels, peer.namespace, peer.namespace_labels
            port_names = peer.port_names  # named ports resolve on the destination, which varies
        return _first_admitting(
            rules, target.egress_deny, packet.protocol, packet.dst_port, port_names,
            packet.dst, labels, namespace, namespace_labels,
        )  # fmt: skip

    # ----------------------------------------------------------- memo misses

    def _remember(self, info: PodInfo) -> _Pod:
        # Take the memo before reading the policies: if a change swaps the memo
        # meanwhile, a result computed from the old policies lands in the old dict.
        memo = self._memo
        pod = _Pod(info)
        namespace = pod.namespace
        labels = pod.labels
        ingress: list[NetworkPolicy] = []
        egress: list[NetworkPolicy] = []
        for policy in self._ordered.get(namespace, ()):
            if not policy.selects(labels):
                continue
            if policy.isolates_ingress:
                ingress.append(policy)
            if policy.isolates_egress:
                egress.append(policy)
        pod.ingress, pod.ingress_deny = self._rules(namespace, "ingress", ingress)
        pod.egress, pod.egress_deny = self._rules(namespace, "egress", egress)
        return remember(memo, pod)

    def _rules(self, namespace: str, direction: str, policies: list[NetworkPolicy]) -> tuple[_Rules | None, Decision]:
        """The indexed rules of the policies isolating a pod in one direction, and its DENY decision."""
        if not policies:
            return None, NEXT
        indexes = self._indexes.get(namespace)
        if indexes is None or len(indexes) >= INDEX_CACHE_SIZE:
            indexes = self._indexes[namespace] = {}
        key = (direction, tuple(map(id, policies)))
        known = indexes.get(key)
        if known is None:
            rules: list[NetworkPolicyRule] = []
            for policy in policies:
                rules.extend(policy.ingress if direction == "ingress" else policy.egress)
            deny = _deny(direction, [policy.ref for policy in policies])
            known = indexes[key] = (tuple(policies), build_rule_index(rules), deny)
        return known[1], known[2]

    # ------------------------------------------------------------- changes

    def on_change(self, change: Change) -> None:
        kind = change.kind
        if kind == KIND:
            self._policy_changed(change)
        elif kind == "Pod":
            self._pod_changed(change)
        elif kind == "Namespace":
            # The store rebuilt the PodInfo of the namespace's pods.
            self._memo = {}
        elif kind == "Node":
            old, new = change.old, change.new
            if old is None or new is None or old.labels != new.labels:
                self._memo = {}  # the store rebuilt the PodInfo of the node's pods

    def _policy_changed(self, change: Change) -> None:
        namespace, name = change.key
        old: NetworkPolicy | None = change.old
        new: NetworkPolicy | None = change.new
        in_namespace = self._policies.setdefault(namespace, {})
        if new is None:
            in_namespace.pop(name, None)
        else:
            in_namespace[name] = new
        self._reorder(namespace)
        # Whole memo rather than the namespace's pods: simpler, race-free (see
        # _remember), and a miss only costs a scan of one namespace's policies.
        self._memo = {}
        self._indexes.pop(namespace, None)  # lets the replaced policy go (see __init__)
        counts = self._selected_by
        for pod in self.state.pods_in_namespace(namespace):
            delta = (1 if new is not None and new.selects(pod.labels) else 0) - (
                1 if old is not None and old.selects(pod.labels) else 0
            )
            if delta:
                counts[pod.key] = counts.get(pod.key, 0) + delta

    def _pod_changed(self, change: Change) -> None:
        old, new = change.old, change.new
        if old is not None:
            forget(self._memo, old.info)
            self._selected_by.pop(old.key, None)
        if new is not None:
            self._count_pod(new.key, new.labels)

    def _reorder(self, namespace: str) -> None:
        in_namespace = self._policies.get(namespace)
        if in_namespace:
            self._ordered[namespace] = tuple(in_namespace[name] for name in sorted(in_namespace))
        else:
            self._policies.pop(namespace, None)
            self._ordered.pop(namespace, None)

    def _count_pod(self, key: tuple[str, str], labels: Mapping[str, str]) -> None:
        count = sum(1 for policy in self._ordered.get(key[0], ()) if policy.selects(labels))
        if count:
            self._selected_by[key] = count
        else:
            self._selected_by.pop(key, None)

    # ------------------------------------------------------------ dataplane

    def compute_managed_ips(self) -> ManagedIPs:
        """Addresses of the pods at least one NetworkPolicy selects (in either direction)."""
        pods = self.state.pods
        ips: set[bytes] = set()
        for key, count in self._selected_by.items():
            pod = pods.get(key)
            if count and pod is not None and pod.is_policy_target:
                ips.update(pod.ips)
        return ManagedIPs(frozenset(ips))


_NO_LABELS: Mapping[str, str] = {}

#: A position after every rule's.
_NO_RULE = 1 << 62


def _first_admitting(
    rules: _Rules,
    deny: Decision,
    protocol: int,
    port: int,
    port_names: PortNames,
    address: bytes,
    labels: Mapping[str, str] | None,
    namespace: str,
    namespace_labels: Mapping[str, str],
) -> Decision:
    """The decision of the first rule in order that admits the packet, else ``deny``.

    Only the index's candidates for (protocol, port) are tried. Their ports
    match the packet (``checked`` ones excepted), so only their peers are
    checked. They come in several lists, each by ascending position: each list
    is tried until a rule admits or its positions pass the best admitting one
    found so far. ``port_names`` are the receiver's, on which named ports resolve.
    """
    table = rules.by_protocol.get(protocol)
    if table is None:  # a protocol no rule names (ICMP...): only rules without ports
        for rule in rules.others:
            if rule.admits_peer(address, labels, namespace, namespace_labels):
                return rule.decision
        return deny
    decision = deny
    best = _NO_RULE
    for position, rule in table.segments[bisect_right(table.bounds, port) - 1]:
        if rule.admits_peer(address, labels, namespace, namespace_labels):
            decision, best = rule.decision, position
            break
    by_name = table.by_name
    if by_name:
        names = port_names.get((protocol, port))
        if names is not None:
            for name in names:
                for position, rule in by_name.get(name, ()):
                    if position >= best:
                        break
                    if rule.admits_peer(address, labels, namespace, namespace_labels):
                        decision, best = rule.decision, position
                        break
    for position, rule in table.checked:
        if position >= best:
            break
        if rule.admits(address, labels, namespace, namespace_labels, protocol, port, port_names):
            decision, best = rule.decision, position
            break
    for position, rule in table.always:
        if position >= best:
            break
        if rule.admits_peer(address, labels, namespace, namespace_labels):
            return rule.decision
    return decision


def _deny(direction: str, refs: list[str]) -> Decision:
    if not refs:
        return NEXT  # never returned: the rules tuple is None then
    names = ", ".join(refs)
    noun = "policy" if len(refs) == 1 else "policies"
    return Decision(
        Verdict.DENY,
        policy=names,
        reason=f"isolated for {direction} by {noun} {names}; no rule admits the packet",
    )


def create(context: EvaluatorContext) -> NetworkPolicyEvaluator:
    """Entry point of the ``networkpolicy`` evaluator; ``context.state`` is the ClusterState."""
    return NetworkPolicyEvaluator(context.state)
