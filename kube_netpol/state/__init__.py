"""The cluster objects the evaluators read, indexed for the hot path."""

from kube_netpol.state.objects import NamespaceRecord, NodeRecord, PodRecord
from kube_netpol.state.store import Change, ClusterState

__all__ = ["Change", "ClusterState", "NamespaceRecord", "NodeRecord", "PodRecord"]
