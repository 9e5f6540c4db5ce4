"""The MultiNetworkPolicy evaluator: NetworkPolicy's semantics, per secondary network.

Rules (docs/multinetwork.md):

- a MultiNetworkPolicy applies only on the networks its
  ``k8s.v1.cni.cncf.io/policy-for`` annotation lists; without one it is
  ignored (logged);
- a network counts only when its NetworkAttachmentDefinition exists and its
  CNI plugin type is one of ``network-plugins`` (default macvlan, ipvlan,
  sriov); on any other network nothing is enforced;
- on a network, the policies for it select and isolate pods exactly as
  NetworkPolicies do (the core's NetworkPolicy stage judges them), and pod
  peers resolve to the peer pods' addresses on that same network: a pod not
  attached there is not a pod for that network (only ipBlocks can match its
  traffic);
- a MultiNetworkPolicy never applies to the cluster network (this stage
  answers NEXT there), and NetworkPolicy never to a secondary network (the
  engine asks only stages that judge networks, ``kube_netpol.api.NetworkStage``).

Incremental: a batch rebuilds the policy stage of the networks whose
policies or attachment definition changed, and the address index of the
networks whose attached pods changed, never those of other networks.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

from kube_netpol.api import (
    NEXT,
    Change,
    ClusterView,
    Decision,
    KindSpec,
    Packet,
    PodKey,
    PodRecord,
    Update,
)
from kube_netpol.evaluators.networkpolicy import NetworkPolicyStage, stage_for

from kube_netpol_multinetwork.kinds import (
    MULTI_NETWORK_POLICY,
    NETWORK_ATTACHMENT_DEFINITION,
    MultiNetworkPolicy,
    NetworkAttachment,
)
from kube_netpol_multinetwork.status import NETWORK_STATUS, Attachment, StatusError, parse_network_status

log = logging.getLogger(__name__)

#: The CNI plugin types counted when ``network-plugins`` is not set (multi-networkpolicy-nftables' list).
DEFAULT_NETWORK_PLUGINS = ("macvlan", "ipvlan", "sriov")

_NO_ATTACHMENTS: tuple[Attachment, ...] = ()
Interfaces = tuple[tuple[str, str], ...]


class MultiNetworkStage:
    """One snapshot's answers: per counted network, its policies' stage and its pods by address."""

    __slots__ = ("policies", "addresses", "interfaces")

    def __init__(
        self,
        policies: Mapping[str, NetworkPolicyStage],
        addresses: Mapping[str, Mapping[bytes, PodRecord]],
        interfaces: Mapping[PodKey, Interfaces],
    ) -> None:
        self.policies = policies  # network -> stage (only counted networks with policies)
        self.addresses = addresses  # network -> packed address -> pod attached there
        self.interfaces = interfaces  # this node's pods -> (interface, network) a policy selects them on

    #: The cluster network: never ours (the engine skips this stage when it judges there).
    answers_nothing = True

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        return NEXT

    def evaluate_ingress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        return NEXT

    def evaluate_network_egress(self, network: str, packet: Packet) -> Decision:
        stage = self.policies.get(network)
        if stage is None:
            return NEXT
        pods = self.addresses.get(network, _NO_PODS)
        return stage.evaluate_egress(packet, pods.get(packet.src), pods.get(packet.dst))

    def evaluate_network_ingress(self, network: str, packet: Packet) -> Decision:
        stage = self.policies.get(network)
        if stage is None:
            return NEXT
        pods = self.addresses.get(network, _NO_PODS)
        return stage.evaluate_ingress(packet, pods.get(packet.src), pods.get(packet.dst))

    def diverted(self) -> Mapping[PodKey, Interfaces]:
        return self.interfaces


_NO_PODS: Mapping[bytes, PodRecord] = {}


class MultiNetworkEvaluator:
    name = "multinetwork"
    kinds: tuple[KindSpec, ...] = (MULTI_NETWORK_POLICY, NETWORK_ATTACHMENT_DEFINITION)
    pod_annotations: tuple[str, ...] = (NETWORK_STATUS,)

    def __init__(self, network_plugins: Iterable[str] = DEFAULT_NETWORK_PLUGINS) -> None:
        self.network_plugins = frozenset(network_plugins)
        self._policies: dict[tuple[str, str], MultiNetworkPolicy] = {}
        self._attachment_definitions: dict[str, NetworkAttachment] = {}
        self._attached: dict[PodKey, tuple[Attachment, ...]] = {}  # pods with secondary interfaces
        self._members: dict[str, set[PodKey]] = {}  # network -> pods attached to it
        self._stage = MultiNetworkStage({}, {}, {})

    @property
    def stage(self) -> MultiNetworkStage:
        return self._stage

    def ready(self) -> bool:
        return True

    def counts(self, network: str) -> bool:
        """Whether policies are enforced on ``network``: its definition exists with a listed plugin type."""
        definition = self._attachment_definitions.get(network)
        return definition is not None and definition.plugin_type in self.network_plugins

    def update(self, view: ClusterView, changes: Sequence[Change[object]]) -> Update:
        policy_networks: set[str] = set()  # networks whose policy stage must be rebuilt
        pod_networks: set[str] = set()  # networks whose address index must be rebuilt
        touched_pods: set[PodKey] = set()
        changed_policies: list[MultiNetworkPolicy] = []
        for change in changes:
            if change.kind == MULTI_NETWORK_POLICY.kind:
                for version in (change.old, change.new):
                    if isinstance(version, MultiNetworkPolicy):
                        policy_networks.update(version.networks)
                if isinstance(change.new, MultiNetworkPolicy):
                    self._policies[change.key] = change.new
                    changed_policies.append(change.new)
                else:
                    self._policies.pop(change.key, None)
            elif change.kind == NETWORK_ATTACHMENT_DEFINITION.kind:
                network_key = f"{change.key[0]}/{change.key[1]}"
                if isinstance(change.new, NetworkAttachment):
                    self._attachment_definitions[network_key] = change.new
                else:
                    self._attachment_definitions.pop(network_key, None)
                policy_networks.add(network_key)
                pod_networks.add(network_key)
            elif change.kind == "Pod":
                touched_pods.add(change.key)
                pod_networks.update(self._attach(view, change.key, change.new))
        for policy in changed_policies:
            self._log_ignored(policy)
        stage = self._stage
        policies = dict(stage.policies)
        for network in policy_networks:
            found = [p.policy for p in self._policies.values() if network in p.networks] if self.counts(network) else []
            if found:
                policies[network] = stage_for(found)
            else:
                policies.pop(network, None)
        addresses = dict(stage.addresses)
        for network in pod_networks:
            index = self._address_index(view, network) if self.counts(network) else {}
            if index:
                addresses[network] = index
            else:
                addresses.pop(network, None)
        # Whose diverted interfaces may have changed: the pods of networks whose policies changed, and changed pods.
        recheck = set(touched_pods)
        for network in policy_networks | pod_networks:
            recheck.update(self._members.get(network, ()))
        diverted = dict(stage.interfaces)
        node_name = view.node_name
        for key in recheck:
            pod = view.pod(key)
            interfaces: Interfaces = ()
            if pod is not None and pod.is_policy_target and (not node_name or pod.node_name == node_name):
                interfaces = tuple(
                    (a.interface, a.network) for a in self._attached.get(key, _NO_ATTACHMENTS)
                    if a.network in policies and policies[a.network].selects(pod)
                )  # fmt: skip
            if interfaces:
                diverted[key] = interfaces
            else:
                diverted.pop(key, None)
        self._stage = MultiNetworkStage(policies, addresses, diverted)
        # Nothing on the cluster network is ours to divert: no pod is selected there.
        return Update(self._stage)

    def _attach(self, view: ClusterView, key: PodKey, pod: object) -> set[str]:
        """Record a pod's attachments now; the networks whose members changed (old and new)."""
        old = self._attached.pop(key, _NO_ATTACHMENTS)
        new = _NO_ATTACHMENTS
        if isinstance(pod, PodRecord) and pod.is_policy_target:
            text = pod.annotations.get(NETWORK_STATUS)
            if text:
                try:
                    new = parse_network_status(text, pod.namespace)
                except StatusError as err:
                    log.warning("pod %s/%s: cannot read its %s annotation (%s); its secondary interfaces are "
                                "not known, so no pod address there matches a pod selector", pod.namespace,
                                pod.name, NETWORK_STATUS, err)  # fmt: skip
        if new:
            self._attached[key] = new
        networks = {a.network for a in old} | {a.network for a in new}
        for attachment in old:
            members = self._members.get(attachment.network)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._members[attachment.network]
        for attachment in new:
            self._members.setdefault(attachment.network, set()).add(key)
        return networks

    def _address_index(self, view: ClusterView, network: str) -> dict[bytes, PodRecord]:
        index: dict[bytes, PodRecord] = {}
        for key in sorted(self._members.get(network, ())):
            pod = view.pod(key)
            if pod is None:
                continue
            for attachment in self._attached.get(key, _NO_ATTACHMENTS):
                if attachment.network != network:
                    continue
                for address in attachment.ips:
                    other = index.setdefault(address, pod)
                    if other is not pod:
                        log.warning("network %s: pods %s/%s and %s/%s both claim one address; the first keeps it",
                                    network, other.namespace, other.name, pod.namespace, pod.name)
        return index

    def _log_ignored(self, policy: MultiNetworkPolicy) -> None:
        if not policy.networks:
            log.warning("MultiNetworkPolicy %s has no k8s.v1.cni.cncf.io/policy-for annotation: it applies on no "
                        "network and is ignored", policy.ref)
            return
        for network in policy.networks:
            definition = self._attachment_definitions.get(network)
            if definition is None:
                log.warning("MultiNetworkPolicy %s: network %s has no NetworkAttachmentDefinition (yet); "
                            "the policy is not enforced on it", policy.ref, network)
            elif definition.plugin_type not in self.network_plugins:
                log.warning("MultiNetworkPolicy %s: network %s is of CNI type %r, not one of --network-plugins "
                            "(%s); the policy is not enforced on it", policy.ref, network,
                            definition.plugin_type, ",".join(sorted(self.network_plugins)))  # fmt: skip
