"""The Kubernetes source lists and watches ClusterNetworkPolicies; a missing CRD counts as none and is retried."""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.plugins import BUILTIN_ORDER, registry_for  # noqa: E402
from kube_netpol.state import ClusterState  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

from k8s_helpers import FAST, Driver, namespace  # noqa: E402


def cnp(name: str, tier: str, priority: int) -> dict[str, object]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}


def test_cluster_network_policies_are_listed_watched_and_a_missing_crd_is_retried(
    apiserver: FakeApiServer, kubeconfig: pathlib.Path, source_logs: pytest.LogCaptureFixture
) -> None:
    from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config

    apiserver.unserved = {"ClusterNetworkPolicy"}
    apiserver.create(namespace("x"))
    state = ClusterState(registry_for(BUILTIN_ORDER))
    source = KubernetesSource(state, api_client_from_config(str(kubeconfig)), ("Namespace", "Pod", "ClusterNetworkPolicy"), FAST)
    driver = Driver(source)
    driver.start()
    try:
        driver.run_until(source.ready, what="ready without the CNP CRD")
        assert not state.objects("ClusterNetworkPolicy")
        assert "clusternetworkpolicies: not served by the API server" in source_logs.text
        apiserver.create(cnp("admin", "Admin", 10))
        apiserver.unserved = set()
        driver.run_until(lambda: ("", "admin") in state.objects("ClusterNetworkPolicy"), what="the CNP after the CRD appeared")
        assert state.objects("ClusterNetworkPolicy")[("", "admin")].tier == "Admin"  # type: ignore[attr-defined]
        apiserver.create(cnp("base", "Baseline", 1))
        driver.run_until(lambda: ("", "base") in state.objects("ClusterNetworkPolicy"), what="the watched CNP")
    finally:
        source.stop()
