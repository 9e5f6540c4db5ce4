"""The policy controller's pure parts: what it owns, what it compares, the plan of writes."""

from __future__ import annotations

from typing import Any

import pytest

from kube_netpol.advise.kinds import advise_registry
from kube_netpol.advise.owned import (
    MANAGED_BY_LABEL,
    MANAGER,
    OWNED_POLICIES,
    comparable,
    plan,
    read_owned_policy,
    trim_owned_policy,
)
from kube_netpol.api.errors import InvalidObject
from kube_netpol.state import ClusterState


def policy(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "a", "uid": f"uid-{name}", "resourceVersion": "7",
                         "labels": {MANAGED_BY_LABEL: MANAGER} if labels is None else labels,
                         "annotations": {"kube-netpol.io/workload": f"Deployment/{name}", "kubectl.kubernetes.io/x": "y"}},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, "policyTypes": ["Ingress", "Egress"], **spec}}


def test_only_its_own_policies_enter_its_state() -> None:
    state = ClusterState(advise_registry((OWNED_POLICIES,)))
    assert state.apply(trim_owned_policy(policy("mine")))
    assert not state.apply(trim_owned_policy(policy("theirs", labels={"team": "x"})))
    assert not state.apply(trim_owned_policy(policy("impostor", labels={MANAGED_BY_LABEL: "someone-else"})))
    assert list(state.objects("NetworkPolicy")) == [("a", "mine")]
    with pytest.raises(InvalidObject):
        read_owned_policy(policy("theirs", labels={}))


def test_comparison_ignores_what_the_api_server_adds_or_drops() -> None:
    wanted = policy("web", ingress=[], egress=[{"to": [{"podSelector": {}}], "ports": []}])
    stored = policy("web", egress=[{"to": [{"podSelector": {}}]}])  # empty lists omitted, as kube-apiserver stores them
    stored["metadata"].update(resourceVersion="99", creationTimestamp="2024-01-01T00:00:00Z", generation=3)
    stored["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    assert comparable(wanted) == comparable(stored)
    assert comparable(policy("web", ingress=[{"from": [{"podSelector": {}}]}])) != comparable(stored)


def test_plan_creates_updates_and_deletes_in_order() -> None:
    owned = {key: read_owned_policy(policy(key[1])) for key in (("a", "keep"), ("a", "change"), ("a", "gone"))}
    desired = {("a", "keep"): policy("keep"), ("a", "change"): policy("change", ingress=[{"from": [{"podSelector": {}}]}]),
               ("a", "new"): policy("new")}
    actions = plan(desired, owned)
    assert [(a.verb, a.key[1]) for a in actions] == [("update", "change"), ("create", "new"), ("delete", "gone")]
    assert actions[0].owned is owned[("a", "change")] and actions[2].desired is None
    assert plan(desired, {**owned, ("a", "new"): read_owned_policy(policy("new"))})[-1].verb == "delete"
