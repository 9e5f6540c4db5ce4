"""The NetworkPolicy evaluator: namespaced allow-lists that isolate the pods they select.

A pod selected by a NetworkPolicy for a direction is isolated in that
direction: only what a rule of one of those policies admits passes, the rest
is denied. Pods no policy selects get NEXT (the pipeline continues, e.g. to
BaselineAdminNetworkPolicy).

Built on the shared design of ``kube_netpol.evaluators.indexed``: policies
indexed by namespace; per target pod's labels, the stage's memo holds the
rules of the policies selecting it, flattened in order (policy name, then
rule order) and indexed by the protocol and ports they admit
(kube_netpol.policy.rule_index). A packet then costs a few dict lookups and a
bisection plus the rules that can match its protocol and port, whatever the
number of other rules and policies. The first rule in the flattened order
that admits the packet decides and is reported.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Mapping

from kube_netpol.api.cluster import NO_LABELS, NO_PORT_NAMES, Change, ClusterView, Labels, PodRecord, PortNames
from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.kinds import KindSpec
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import NEXT, Decision, Verdict
from kube_netpol.evaluators.indexed import IndexedEvaluator, MemoEntry, SelectingStage, remember
from kube_netpol.policy.networkpolicy import NetworkPolicy, NetworkPolicyRule, parse_network_policy
from kube_netpol.policy.rule_index import RuleIndex, build_rule_index
from kube_netpol.api.evaluator import PortBounds
from kube_netpol.policy.ports import port_bounds_of

KIND = "NetworkPolicy"
NETWORK_POLICY = KindSpec(
    KIND, "networking.k8s.io", "v1", "networkpolicies", True, parse_network_policy, custom=False, order=20
)

#: Rule indexes remembered per namespace (one per direction and distinct list of
#: isolating policies) before that namespace's are emptied wholesale.
INDEX_CACHE_SIZE = 1024

_Rules = RuleIndex[NetworkPolicyRule]
_Indexed = tuple[tuple[NetworkPolicy, ...], _Rules, Decision]
#: namespace -> (direction, ids of the policies isolating a pod in it) -> (those policies, index, DENY).
_IndexCache = dict[str, dict[tuple[str, tuple[int, ...]], _Indexed]]


class _Target(MemoEntry):
    """The rules isolating the pods with one labels mapping (of one namespace).

    ``ingress``/``egress`` are None when no policy isolates the pod in that
    direction; otherwise its rules, indexed, and ``*_deny`` is the Decision
    when none admits the packet.
    """

    __slots__ = ("ingress", "ingress_deny", "egress", "egress_deny")

    ingress: _Rules | None
    ingress_deny: Decision
    egress: _Rules | None
    egress_deny: Decision


class NetworkPolicyStage(SelectingStage):
    """The policies of every namespace (sorted by name) and the memo built from them."""

    __slots__ = ("by_namespace", "indexes", "memo", "_bounds")

    def __init__(self, by_namespace: dict[str, tuple[NetworkPolicy, ...]], indexes: _IndexCache) -> None:
        self.by_namespace = by_namespace
        # Pods selected by the same policies share one rule index. An entry depends on nothing but
        # those immutable policies (kept alive so that their ids stay unique), so it never goes stale.
        self.indexes = indexes
        self.memo: dict[int, _Target] = {}
        self._bounds: PortBounds | None = None  # port_bounds(), worked out when first asked

    @property
    def answers_nothing(self) -> bool:
        return not self.by_namespace

    def port_bounds(self) -> PortBounds:
        """Where a destination port may change this stage's answers (computed once: the stage never changes)."""
        if self._bounds is None:
            self._bounds = port_bounds_of(rule.ports for policies in self.by_namespace.values() for policy in policies
                                          for rule in (*policy.ingress, *policy.egress))
        return self._bounds

    # ------------------------------------------------------------- hot path

    def evaluate_ingress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        if dst is None:
            return NEXT
        target = self.memo.get(id(dst.labels))
        if target is None or target.labels is not dst.labels:
            target = self._remember(dst)
        rules = target.ingress
        if rules is None:
            return NEXT
        if src is None:
            return _first_admitting(rules, target.ingress_deny, packet.protocol, packet.dst_port, dst.port_names,
                                    packet.src, None, "", NO_LABELS)  # fmt: skip
        return _first_admitting(
            rules, target.ingress_deny, packet.protocol, packet.dst_port, dst.port_names,
            packet.src, src.labels, src.namespace, src.namespace_labels,
        )  # fmt: skip

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        if src is None:
            return NEXT
        target = self.memo.get(id(src.labels))
        if target is None or target.labels is not src.labels:
            target = self._remember(src)
        rules = target.egress
        if rules is None:
            return NEXT
        if dst is None:  # not a pod: named ports cannot resolve
            return _first_admitting(rules, target.egress_deny, packet.protocol, packet.dst_port, NO_PORT_NAMES,
                                    packet.dst, None, "", NO_LABELS)  # fmt: skip
        return _first_admitting(
            rules, target.egress_deny, packet.protocol, packet.dst_port, dst.port_names,
            packet.dst, dst.labels, dst.namespace, dst.namespace_labels,
        )  # fmt: skip

    def selects(self, pod: PodRecord) -> bool:
        # Through the memo: the evaluator asks only about this node's pods, whose packets this stage judges.
        target = self.memo.get(id(pod.labels))
        if target is None or target.labels is not pod.labels:
            target = self._remember(pod)
        return target.selected

    # ----------------------------------------------------------- memo misses

    def _remember(self, pod: PodRecord) -> _Target:
        namespace = pod.namespace
        labels = pod.labels
        target = _Target(labels)
        ingress: list[NetworkPolicy] = []
        egress: list[NetworkPolicy] = []
        for policy in self.by_namespace.get(namespace, ()):
            if not policy.selects(labels):
                continue
            target.selected = True
            if policy.isolates_ingress:
                ingress.append(policy)
            if policy.isolates_egress:
                egress.append(policy)
        target.ingress, target.ingress_deny = self._rules(namespace, "ingress", ingress)
        target.egress, target.egress_deny = self._rules(namespace, "egress", egress)
        return remember(self.memo, target)

    def _rules(self, namespace: str, direction: str, policies: list[NetworkPolicy]) -> tuple[_Rules | None, Decision]:
        """The indexed rules of the policies isolating a pod in one direction, and its DENY decision."""
        if not policies:
            return None, NEXT
        indexes = self.indexes.get(namespace)
        if indexes is None or len(indexes) >= INDEX_CACHE_SIZE:
            indexes = self.indexes[namespace] = {}
        key = (direction, tuple(map(id, policies)))
        known = indexes.get(key)
        if known is None:
            rules: list[NetworkPolicyRule] = []
            for policy in policies:
                rules.extend(policy.ingress if direction == "ingress" else policy.egress)
            deny = _deny(direction, [policy.ref for policy in policies])
            known = indexes[key] = (tuple(policies), build_rule_index(rules), deny)
        return known[1], known[2]


class NetworkPolicyEvaluator(IndexedEvaluator[NetworkPolicyStage]):
    name = "networkpolicy"
    kinds = (NETWORK_POLICY,)
    policy_kinds = frozenset({KIND})

    def __init__(self) -> None:
        super().__init__(NetworkPolicyStage({}, {}))
        self._policies: dict[str, dict[str, NetworkPolicy]] = {}  # namespace -> name -> policy

    def with_policies(
        self, stage: NetworkPolicyStage, view: ClusterView, changes: list[Change[object]]
    ) -> tuple[NetworkPolicyStage, Iterable[str]]:
        touched: set[str] = set()
        for change in changes:
            namespace, name = change.key
            in_namespace = self._policies.setdefault(namespace, {})
            if isinstance(change.new, NetworkPolicy):
                in_namespace[name] = change.new
            else:
                in_namespace.pop(name, None)
            touched.add(namespace)
        by_namespace = dict(stage.by_namespace)
        indexes = {ns: cache for ns, cache in stage.indexes.items() if ns not in touched}
        for namespace in touched:
            kept = self._policies.get(namespace)
            if kept:
                by_namespace[namespace] = tuple(kept[name] for name in sorted(kept))
            else:
                self._policies.pop(namespace, None)
                by_namespace.pop(namespace, None)
        return NetworkPolicyStage(by_namespace, indexes), touched


#: A position after every rule's.
_NO_RULE = 1 << 62


def _first_admitting(
    rules: _Rules,
    deny: Decision,
    protocol: int,
    port: int,
    port_names: PortNames,
    address: bytes,
    labels: Labels | None,
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
    names = ", ".join(refs)
    noun = "policy" if len(refs) == 1 else "policies"
    return Decision(
        Verdict.DENY,
        policy=names,
        reason=f"isolated for {direction} by {noun} {names}; no rule admits the packet",
    )


def stage_for(policies: Iterable[NetworkPolicy]) -> NetworkPolicyStage:
    """A stage enforcing exactly these policies with NetworkPolicy's semantics (public for plugins).

    For evaluators of kinds whose spec is NetworkPolicy's (MultiNetworkPolicy
    on a secondary network): parse with
    ``kube_netpol.policy.networkpolicy.parse_network_policy``, build one stage
    per set of policies that applies together, and call its
    ``evaluate_egress``/``evaluate_ingress`` with the pods the packet's
    addresses are on that set's network (None: not a pod there). The stage
    does not change after it is built; ``selects(pod)`` says whether a policy
    selects the pod.
    """
    by_namespace: dict[str, list[NetworkPolicy]] = {}
    for policy in policies:
        by_namespace.setdefault(policy.namespace, []).append(policy)
    return NetworkPolicyStage(
        {ns: tuple(sorted(found, key=lambda p: p.name)) for ns, found in by_namespace.items()}, {}
    )


def create(context: EvaluatorContext) -> NetworkPolicyEvaluator:
    """Entry point ``networkpolicy`` of the ``kube_netpol.evaluators`` group."""
    return NetworkPolicyEvaluator()
