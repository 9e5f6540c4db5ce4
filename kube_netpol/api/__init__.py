"""The surface that evaluator plugins depend on. Keep it small and stable (tests/unit/test_api_surface.py pins it)."""

from kube_netpol.api.cluster import (
    NO_LABELS,
    NO_PORT_NAMES,
    Change,
    ClusterView,
    Labels,
    NamespaceRecord,
    NodeRecord,
    ObjectKey,
    PodKey,
    PodRecord,
    PortNames,
)
from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.evaluator import (
    EvaluatorContext,
    EvaluatorFactory,
    PodInfoProvider,
    PolicyEvaluator,
    Stage,
    Update,
)
from kube_netpol.api.kinds import NODE_KIND, KindSpec, trim_envelope, trim_to_spec
from kube_netpol.api.packet import (
    FAMILY_NAMES,
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
    "Change",
    "ClusterView",
    "ContainerPort",
    "Decision",
    "EvaluatorContext",
    "EvaluatorFactory",
    "FAMILY_NAMES",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "InvalidObject",
    "KindSpec",
    "Labels",
    "NEXT",
    "NODE_KIND",
    "NO_LABELS",
    "NO_PORT_NAMES",
    "Namespace",
    "NamespaceRecord",
    "Node",
    "NodeRecord",
    "ObjectKey",
    "PROTOCOL_BY_NAME",
    "PROTOCOL_NAMES",
    "Packet",
    "PodInfo",
    "PodInfoProvider",
    "PodKey",
    "PodRecord",
    "PolicyEvaluator",
    "PortNames",
    "Stage",
    "Update",
    "Verdict",
    "trim_envelope",
    "trim_to_spec",
]
