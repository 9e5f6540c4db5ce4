"""PodInfo and friends, generated from proto/kubenetworkpolicies.proto."""

from kube_netpol.api.generated.kubenetworkpolicies_pb2 import (  # noqa: F401
    ContainerPort,
    Namespace,
    Node,
    PodInfo,
)

__all__ = ["ContainerPort", "Namespace", "Node", "PodInfo"]
