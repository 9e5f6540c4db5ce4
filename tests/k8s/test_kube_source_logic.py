"""The I/O-free parts of the Kubernetes source: watch lines, trimming, what to watch, backoff, state updates."""

from __future__ import annotations

import logging
import random

import pytest

from kube_netpol.sources import kube_apply
from kube_netpol.sources.kube_reflector import Backoff, describe_error
from kube_netpol.api import trim_to_spec as trim_policy
from kube_netpol.plugins import registry_for
from kube_netpol.state.trim import trim_namespace, trim_node, trim_pod
from kube_netpol.sources.kube_watch_protocol import (
    BadEvent,
    parse_event,
    resource_version_of,
    split_lines,
    status_code,
    status_text,
)
from kube_netpol.state import ClusterState

from k8s_helpers import namespace, network_policy, node, packed, pod

# ------------------------------------------------------------------ watch lines


def test_split_lines_across_and_within_chunks() -> None:
    chunks = [b'{"a":', b'1}\n{"b":2}\n\n{"c"', b":3}\n", b'{"tail":4}']
    assert list(split_lines(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"tail":4}']
    assert list(split_lines([b"\n", b"  \n"])) == []


def test_split_lines_is_lazy() -> None:
    # Events must be handled as they arrive, not when the stream ends.
    def chunks():
        yield b'{"x":1}\n{"y"'
        raise AssertionError("read past the first complete line")

    lines = split_lines(chunks())
    assert next(lines) == b'{"x":1}'


def test_parse_event() -> None:
    event = parse_event(b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"7"}}}')
    assert event.type == "ADDED" and resource_version_of(event.object) == "7"
    for line, reason in [
        (b"{not json", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"type":"EXPLODED","object":{}}', "unknown event type"),
        (b'{"type":"DELETED"}', "without an object"),
    ]:
        with pytest.raises(BadEvent, match=reason):
            parse_event(line)


def test_status_helpers() -> None:
    status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)"}
    assert status_code(status) == 410
    assert status_text(status) == "410 Expired: too old resource version: 1 (5)"
    assert status_code({"code": "410"}) is None and status_code({"code": True}) is None
    assert resource_version_of({"metadata": {"resourceVersion": ""}}) is None
    assert resource_version_of({"metadata": "x"}) is None


# ------------------------------------------------------------------- trimming


def test_trim_pod_keeps_what_policies_need_only() -> None:
    full = pod("a", "p", "10.0.0.1", app="web")
    full["spec"]["hostNetwork"] = True
    full["status"]["podIPs"].append({"ip": "fd00::1"})
    trimmed = trim_pod(full)
    assert trimmed == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "hostNetwork": True,
                 "containers": [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
    }
    # What the state builds from the trimmed pod equals what it builds from the full one.
    a, b = ClusterState(), ClusterState()
    assert a.apply(full, "Pod") and b.apply(trimmed, "Pod")
    from_full, from_trimmed = a.pod(("a", "p")), b.pod(("a", "p"))
    assert from_full.same_as(from_trimmed)  # all but the update time, different by construction
    assert from_trimmed.ips == (packed("10.0.0.1"), packed("fd00::1"))
    assert from_trimmed.host_network and not from_trimmed.terminal


def test_trim_pod_keeps_only_the_controllers_kind_and_name() -> None:
    full = pod("a", "web-5d8f7c9b4-q2x7z", "10.0.0.1", app="web")
    full["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-the-controller", "uid": "u0"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b4", "uid": "u1",
         "controller": True, "blockOwnerDeletion": True},
    ]
    trimmed = trim_pod(full)
    assert trimmed["metadata"]["ownerReferences"] == [{"kind": "ReplicaSet", "name": "web-5d8f7c9b4", "controller": True}]
    state = ClusterState()
    assert state.apply(trimmed, "Pod")
    assert state.pod(("a", "web-5d8f7c9b4-q2x7z")).owner == "ReplicaSet/web-5d8f7c9b4"
    # Malformed owner references cost the pod its owner, never the pod itself (policies do not read owners).
    for references in ("x", [{"kind": "ReplicaSet", "name": 5, "controller": True}], [{"kind": "R", "name": "n"}]):
        odd = pod("a", "p", "10.0.0.2")
        odd["metadata"]["ownerReferences"] = references
        assert state.apply(trim_pod(odd), "Pod") and state.apply(odd, "Pod")
        assert state.pod(("a", "p")).owner == ""
    # Pods of one controller share one owner string.
    twin = pod("a", "web-5d8f7c9b4-abcde", "10.0.0.3", app="web")
    twin["metadata"]["ownerReferences"] = full["metadata"]["ownerReferences"]
    assert state.apply(twin, "Pod")
    assert state.pod(("a", "web-5d8f7c9b4-abcde")).owner is state.pod(("a", "web-5d8f7c9b4-q2x7z")).owner


def test_trim_keeps_malformed_parts_for_the_state_to_refuse() -> None:
    assert trim_pod("nope") == "nope"
    assert trim_pod({"metadata": "x", "spec": [], "status": 3}) == {"metadata": "x", "spec": [], "status": 3}
    assert trim_pod({"spec": {"containers": "c"}})["spec"] == {"containers": "c"}
    assert trim_pod({"spec": {"containers": ["c", {"ports": 5}]}})["spec"] == {"containers": ["c", {"ports": 5}]}
    bad = pod("a", "p", "10.0.0.1")
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    state = ClusterState(registry_for())
    assert not state.apply(trim_pod(bad), "Pod")
    assert state.invalid_objects["Pod"] == 1


def test_trim_other_kinds() -> None:
    ns = namespace("a", team="x")
    ns["metadata"]["annotations"] = {"k": "v"}
    ns["status"] = {"phase": "Active"}
    assert trim_namespace(ns) == {"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": "a", "labels": {"team": "x"}}}
    n = node("n", "192.168.0.1")
    n["status"]["capacity"] = {"cpu": "4"}
    assert trim_node(n)["status"] == {"addresses": n["status"]["addresses"]}
    policy = network_policy("a", "p")
    policy["metadata"]["managedFields"] = [{}]
    assert trim_policy(policy) == {**network_policy("a", "p")}


# ---------------------------------------------------------------- what to watch


def test_kinds_follow_the_pipeline() -> None:
    # In apply order: namespaces and nodes before pods, pods before policies.
    assert registry_for(("networkpolicy",)).names == ("Namespace", "Pod", "NetworkPolicy")
    assert registry_for(("adminnetworkpolicy", "networkpolicy")).names == (
        "Namespace", "Node", "Pod", "AdminNetworkPolicy", "NetworkPolicy")
    assert registry_for(("networkpolicy", "baselineadminnetworkpolicy")).names == (
        "Namespace", "Node", "Pod", "BaselineAdminNetworkPolicy", "NetworkPolicy")
    assert set(registry_for().names) == {  # the default pipeline: every built-in evaluator
        "Namespace", "Node", "Pod", "NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"}


def test_resource_paths() -> None:
    kinds = registry_for()
    assert kinds["Pod"].path == "/api/v1/pods"
    assert kinds["NetworkPolicy"].path == "/apis/networking.k8s.io/v1/networkpolicies"
    assert kinds["BaselineAdminNetworkPolicy"].path == (
        "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies")
    assert kinds["AdminNetworkPolicy"].custom and not kinds["Pod"].custom and not kinds["NetworkPolicy"].custom


# --------------------------------------------------------------------- backoff


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    caps = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(0.75 * cap <= d <= cap for d, cap in zip(delays, caps))
    backoff.reset()
    assert backoff.next() <= 0.5


def test_describe_error() -> None:
    class ApiError(Exception):
        status = 403
        reason = "Forbidden"

    class Wrapper(Exception):
        def __init__(self, inner: Exception) -> None:
            super().__init__("max retries")
            self.reason = inner

    assert describe_error(ApiError()) == "HTTP 403 Forbidden"
    assert describe_error(Wrapper(ConnectionRefusedError("refused"))) == "ConnectionRefusedError: refused"


# --------------------------------------------------------------- state updates


def test_replace_all_survives_an_object_the_store_trips_over(caplog: pytest.LogCaptureFixture) -> None:
    state = ClusterState(registry_for())
    state.apply(namespace("a"))
    state.apply(pod("a", "gone", "10.0.0.9"))
    weird = pod("a", "weird", "10.0.0.2")
    weird["spec"] = "not an object"
    with caplog.at_level(logging.WARNING, logger="kube_netpol"):
        kube_apply.replace_all(state, "Pod", [pod("a", "good", "10.0.0.1"), weird, pod("a", "also", "10.0.0.3")])
    # The refused pod stays with no labels (its address is usable), so that isolation applies to it.
    assert set(state.keys("Pod")) == {("a", "good"), ("a", "also"), ("a", "weird")}
    assert not state.pod(("a", "weird")).valid
    assert any("a/weird" in r.getMessage() for r in caplog.records)


def test_delete_object_uses_the_key_of_the_kind() -> None:
    state = ClusterState(registry_for())
    state.apply(node("n", "192.168.0.1"))
    state.apply(pod("a", "p", "10.0.0.1"))
    # Cluster-scoped objects have no namespace even if the event says one.
    kube_apply.delete_object(state, "Node", {"metadata": {"name": "n", "namespace": "x"}})
    kube_apply.delete_object(state, "Pod", {"metadata": {"name": "p", "namespace": "a"}})
    kube_apply.delete_object(state, "Pod", {"metadata": {}})  # logged, ignored
    assert not state.keys("Node") and not state.keys("Pod")
