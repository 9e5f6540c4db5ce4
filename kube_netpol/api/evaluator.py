"""The contracts between the engine, evaluator plugins and the pod directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from kube_netpol.api.packet import Packet
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.api.verdict import Decision

#: Called by an evaluator when something that changes its verdicts or its
#: managed addresses changed, so the engine drops cached verdicts and the
#: dataplane re-reads ``managed_ips``.
SyncCallback = Callable[[], None]


@dataclass(frozen=True, slots=True)
class ManagedIPs:
    """Pod addresses (packed bytes) whose traffic an evaluator needs to see.

    ``divert_all`` asks for every new connection of every pod, for evaluators
    that cannot name the pods they care about.
    """

    ips: frozenset[bytes] = frozenset()
    divert_all: bool = False


@runtime_checkable
class PodInfoProvider(Protocol):
    """Maps an address to the pod that owns it (None: not a pod)."""

    def pod_info_by_ip(self, ip: bytes) -> PodInfo | None: ...


@runtime_checkable
class PolicyEvaluator(Protocol):
    """One stage of the pipeline.

    ``evaluate_egress`` is asked for the source pod's egress, ``evaluate_ingress``
    for the destination pod's ingress; ``src``/``dst`` are None when the
    address is not a pod. Return a final ACCEPT/DENY Decision or ``NEXT``.
    Verdicts may depend only on the packet's addresses, protocol and
    destination port and on the evaluator's state: the engine caches them per
    (source, destination, protocol, destination port) until a sync callback.
    """

    name: str

    def ready(self) -> bool: ...

    def evaluate_egress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision: ...

    def evaluate_ingress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision: ...

    def managed_ips(self) -> ManagedIPs: ...

    def set_sync_callback(self, callback: SyncCallback) -> None: ...


@dataclass(frozen=True)
class EvaluatorContext:
    """What an evaluator factory is given.

    ``state`` is the agent's ClusterState (pods, namespaces, nodes, policies);
    ``settings`` is this evaluator's section of the evaluator configuration.
    """

    state: Any
    settings: Mapping[str, Any] = field(default_factory=dict)


#: An entry point in the ``kube_netpol.evaluators`` group names one of these.
EvaluatorFactory = Callable[[EvaluatorContext], PolicyEvaluator]
