"""The Kubernetes resources the agent watches, described as data.

Each entry names the ClusterState kind, where the resource lives in the API
and which method of the official client lists and watches it across all
namespaces. Which ones are watched follows the evaluator pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from kube_netpol.sources.kube_trim import trim_namespace, trim_node, trim_pod, trim_policy

Trim = Callable[[Any], Any]


@dataclass(frozen=True)
class WatchedResource:
    kind: str  # the ClusterState kind
    plural: str
    group: str  # "" for the core API
    version: str
    namespaced: bool
    #: (client API class, method) that lists/watches it cluster-wide; custom
    #: resources go through CustomObjectsApi.list_cluster_custom_object.
    client_api: str
    client_method: str
    trim: Trim

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection path, for log lines and tests."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.plural}"

    @property
    def is_custom(self) -> bool:
        return self.client_api == "CustomObjectsApi"


_ANP_GROUP = "policy.networking.k8s.io"

RESOURCES: Mapping[str, WatchedResource] = {
    r.kind: r
    for r in (
        WatchedResource("Namespace", "namespaces", "", "v1", False, "CoreV1Api", "list_namespace", trim_namespace),
        WatchedResource("Node", "nodes", "", "v1", False, "CoreV1Api", "list_node", trim_node),
        WatchedResource("Pod", "pods", "", "v1", True, "CoreV1Api", "list_pod_for_all_namespaces", trim_pod),
        WatchedResource(
            "NetworkPolicy", "networkpolicies", "networking.k8s.io", "v1", True,
            "NetworkingV1Api", "list_network_policy_for_all_namespaces", trim_policy,
        ),
        WatchedResource(
            "AdminNetworkPolicy", "adminnetworkpolicies", _ANP_GROUP, "v1alpha1", False,
            "CustomObjectsApi", "list_cluster_custom_object", trim_policy,
        ),
        WatchedResource(
            "BaselineAdminNetworkPolicy", "baselineadminnetworkpolicies", _ANP_GROUP, "v1alpha1", False,
            "CustomObjectsApi", "list_cluster_custom_object", trim_policy,
        ),
    )
}

#: Always watched: pods and namespaces feed every evaluator, NetworkPolicy is core.
BASE_KINDS = ("Namespace", "Pod", "NetworkPolicy")


def kinds_for_pipeline(pipeline: Sequence[str]) -> tuple[str, ...]:
    """The kinds to watch for an evaluator pipeline (evaluator names as in AgentConfig.pipeline)."""
    kinds = list(BASE_KINDS)
    anp = "adminnetworkpolicy" in pipeline
    banp = "baselineadminnetworkpolicy" in pipeline
    if anp or banp:
        # ANP and BANP egress rules may name nodes as peers (the same parser
        # reads both), so node labels and addresses are needed.
        kinds.append("Node")
    if anp:
        kinds.append("AdminNetworkPolicy")
    if banp:
        kinds.append("BaselineAdminNetworkPolicy")
    return tuple(kinds)
