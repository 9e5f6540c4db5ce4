"""The NetworkPolicy evaluator: namespaced allow-lists that isolate the pods they select.

A pod selected by a NetworkPolicy for a direction is isolated in that
direction: only what a rule of one of those policies admits passes, the rest
is denied. Pods no policy selects get NEXT (the pipeline continues, e.g. to
BaselineAdminNetworkPolicy).

Hot path: per pod (keyed by the identity of its PodInfo, which the store
rebuilds on every change) we remember its labels as plain dicts and the rules
of the policies selecting it, flattened in order (policy name, then rule
order). A packet then costs two dict lookups plus the rules of the policies
that select the pod, whatever the number of other policies.
"""

from __future__ import annotations

from typing import Mapping

from kube_netpol.api.evaluator import EvaluatorContext, ManagedIPs
from kube_netpol.api.packet import Packet
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.api.verdict import NEXT, Decision, Verdict
from kube_netpol.evaluators.base import StateEvaluator
from kube_netpol.policy.networkpolicy import NetworkPolicy, NetworkPolicyRule
from kube_netpol.state.store import Change, ClusterState

KIND = "NetworkPolicy"

#: Remembered pods before the memo is emptied wholesale (a bound on memory,
#: also against entries left behind by a pod change racing with a packet).
MEMO_SIZE = 32768


class _Pod:
    """What the evaluator remembers of one PodInfo.

    ``ingress``/``egress`` are None when no policy isolates the pod in that
    direction; otherwise the rules to try in order, and ``*_deny`` is the
    Decision when none admits the packet.
    """

    __slots__ = ("info", "labels", "namespace", "namespace_labels", "ingress", "ingress_deny", "egress", "egress_deny")

    def __init__(
        self,
        info: PodInfo,
        labels: Mapping[str, str],
        namespace: str,
        namespace_labels: Mapping[str, str],
        ingress: tuple[NetworkPolicyRule, ...] | None,
        ingress_deny: Decision,
        egress: tuple[NetworkPolicyRule, ...] | None,
        egress_deny: Decision,
    ) -> None:
        self.info = info
        self.labels = labels
        self.namespace = namespace
        self.namespace_labels = namespace_labels
        self.ingress = ingress
        self.ingress_deny = ingress_deny
        self.egress = egress
        self.egress_deny = egress_deny


class NetworkPolicyEvaluator(StateEvaluator):
    name = "networkpolicy"
    relevant_kinds = frozenset({"Pod", "Namespace", "Node", KIND})

    def __init__(self, state: ClusterState) -> None:
        # Set up the indexes before subscribing (the base class subscribes).
        self._policies: dict[str, dict[str, NetworkPolicy]] = {}  # namespace -> name -> policy
        self._ordered: dict[str, tuple[NetworkPolicy, ...]] = {}  # namespace -> policies sorted by name
        self._memo: dict[int, _Pod] = {}  # id(PodInfo) -> _Pod (which holds the PodInfo: ids stay unique)
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
        address, protocol, port = packet.src, packet.protocol, packet.dst_port
        for rule in rules:
            if rule.admits(address, labels, namespace, namespace_labels, protocol, port, dst):
                return rule.decision
        return target.ingress_deny

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
        else:
            peer = memo.get(id(dst))
            if peer is None or peer.info is not dst:
                peer = self._remember(dst)
            labels, namespace, namespace_labels = peer.labels, peer.namespace, peer.namespace_labels
        address, protocol, port = packet.dst, packet.protocol, packet.dst_port
        for rule in rules:
            if rule.admits(address, labels, namespace, namespace_labels, protocol, port, dst):
                return rule.decision
        return target.egress_deny

    # ----------------------------------------------------------- memo misses

    def _remember(self, info: PodInfo) -> _Pod:
        # Take the memo before reading the policies: if a change swaps the memo
        # meanwhile, a result computed from the old policies lands in the old dict.
        memo = self._memo
        namespace = info.namespace.name
        labels = dict(info.labels)
        ingress: list[NetworkPolicyRule] = []
        egress: list[NetworkPolicyRule] = []
        ingress_refs: list[str] = []
        egress_refs: list[str] = []
        for policy in self._ordered.get(namespace, ()):
            if not policy.selects(labels):
                continue
            if policy.isolates_ingress:
                ingress_refs.append(policy.ref)
                ingress.extend(policy.ingress)
            if policy.isolates_egress:
                egress_refs.append(policy.ref)
                egress.extend(policy.egress)
        pod = _Pod(
            info,
            labels,
            namespace,
            dict(info.namespace.labels),
            tuple(ingress) if ingress_refs else None,
            _deny("ingress", ingress_refs),
            tuple(egress) if egress_refs else None,
            _deny("egress", egress_refs),
        )
        if len(memo) >= MEMO_SIZE:
            memo = self._memo = {}
        memo[id(info)] = pod
        return pod

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
            self._memo.pop(id(old.info), None)
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
