"""The cluster objects the evaluators read, indexed for the hot path, and the kind registry."""

from kube_netpol.state.kinds import KindRegistry
from kube_netpol.state.store import ClusterState, Refusal

__all__ = ["ClusterState", "KindRegistry", "Refusal"]
