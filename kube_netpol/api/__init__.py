"""The surface that evaluator plugins depend on. Keep it small and stable."""

from kube_netpol.api.evaluator import (
    EvaluatorContext,
    EvaluatorFactory,
    ManagedIPs,
    PodInfoProvider,
    PolicyEvaluator,
    SyncCallback,
)
from kube_netpol.api.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PROTOCOL_BY_NAME,
    PROTOCOL_NAMES,
    Packet,
)
from kube_netpol.api.podinfo import ContainerPort, Namespace, Node, PodInfo
from kube_netpol.api.verdict import NEXT, Decision, Verdict

__all__ = [
    "ContainerPort",
    "Decision",
    "EvaluatorContext",
    "EvaluatorFactory",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "ManagedIPs",
    "NEXT",
    "Namespace",
    "Node",
    "PROTOCOL_BY_NAME",
    "PROTOCOL_NAMES",
    "Packet",
    "PodInfo",
    "PodInfoProvider",
    "PolicyEvaluator",
    "SyncCallback",
    "Verdict",
]
