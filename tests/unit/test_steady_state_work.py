"""No per-change work proportional to the cluster's pod count: a counting state view proves it.

The engine and the built-in evaluators (ANP, NetworkPolicy, BANP) run over a
ClusterState that counts every pod record it hands out through the view's
walking methods (``pods``, ``pods_in_namespace``) and every ``pod`` lookup.
With many pods on other nodes and a few on this one, pod churn and policy
changes of every kind must cost lookups bounded by what changed and by this
node's pods, never by the cluster's pods.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from kube_netpol.api.cluster import PodKey, PodRecord
from kube_netpol.engine import PolicyEngine
from kube_netpol.plugins import DEFAULT_PIPELINE, build_pipeline, kind_registry
from kube_netpol.state import ClusterState

NODE = "n1"
NAMESPACES = 5
REMOTE_PODS = 2000  # 400 a namespace, on other nodes
LOCAL_PODS = 10  # 2 a namespace, on this node
ANP_API = "policy.networking.k8s.io/v1alpha1"


class CountingState(ClusterState):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.walked = 0  # pod records handed out by pods() and pods_in_namespace()
        self.looked_up = 0  # pod() calls

    def pods(self) -> Iterator[PodRecord]:
        pods = list(super().pods())
        self.walked += len(pods)
        return iter(pods)

    def pods_in_namespace(self, namespace: str) -> Iterable[PodRecord]:
        pods = list(super().pods_in_namespace(namespace))
        self.walked += len(pods)
        return pods

    def pod(self, key: PodKey) -> PodRecord | None:
        self.looked_up += 1
        return super().pod(key)

    def reset(self) -> None:
        self.walked = self.looked_up = 0


def namespace(n: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}", "labels": {"team": f"t{n}"}}}


def pod(i: int, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": f"ns-{i % NAMESPACES}", "name": f"p{i}", "labels": {"app": f"a{i % 20}"}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}]},
    }  # fmt: skip


def network_policy(k: int, app: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": f"ns-{k % NAMESPACES}", "name": f"np-{k}"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {}}]}]}}


def admin_policy(name: str, priority: int) -> dict[str, Any]:
    return {"apiVersion": ANP_API, "kind": "AdminNetworkPolicy", "metadata": {"name": name},
            "spec": {"priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}]}]}}


def engine() -> PolicyEngine[CountingState]:
    evaluators = build_pipeline(DEFAULT_PIPELINE)
    state = CountingState(kind_registry(evaluators), node_name=NODE)
    for n in range(NAMESPACES):
        state.apply(namespace(n))
    for i in range(REMOTE_PODS):
        state.apply(pod(i, f"other-{i % 50}"))
    for i in range(REMOTE_PODS, REMOTE_PODS + LOCAL_PODS):
        state.apply(pod(i, NODE))
    state.apply(network_policy(0, "a1"))
    built = PolicyEngine(state, evaluators)
    state.reset()
    return built


def test_the_engine_selects_this_nodes_pods() -> None:
    e = engine()
    e.state.apply(admin_policy("deny-all", 10))
    e.publish()
    assert len(e.managed) == LOCAL_PODS  # the ANP selects every pod; only this node's are diverted


def test_pod_churn_costs_lookups_bounded_by_the_changed_pods() -> None:
    e = engine()
    next_pod = REMOTE_PODS + LOCAL_PODS
    for round_ in range(20):
        changed = 0
        for _ in range(10):  # 10 creations and 10 deletions a batch, one in ten on this node
            e.state.apply(pod(next_pod, NODE if next_pod % 10 == 0 else "other-1"))
            e.state.delete("Pod", f"ns-{round_ % NAMESPACES}", f"p{round_ * 10 + changed}")
            next_pod += 1
            changed += 2
        e.state.reset()
        assert e.publish() is not None
        assert e.state.walked == 0
        # Each evaluator and the managed addresses look up each changed pod a bounded number of times.
        assert e.state.looked_up <= 8 * changed, e.state.looked_up


def test_policy_changes_walk_no_pods_of_other_nodes() -> None:
    e = engine()
    for change in (
        lambda: e.state.apply(network_policy(1, "a2")),  # a namespace's policy
        lambda: e.state.apply(network_policy(1, "a3")),  # updated
        lambda: e.state.delete("NetworkPolicy", "ns-1", "np-1"),
        lambda: e.state.apply(admin_policy("deny-all", 10)),  # a cluster-wide one: every namespace
        lambda: e.state.delete("AdminNetworkPolicy", "", "deny-all"),
    ):
        change()
        e.state.reset()
        assert e.publish() is not None
        assert e.state.walked == 0, e.state.walked
        assert e.state.looked_up <= 4 * LOCAL_PODS, e.state.looked_up  # this node's pods, judged again
