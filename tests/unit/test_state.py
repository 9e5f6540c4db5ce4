"""ClusterState: objects in, PodInfo and change events out."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from kube_netpol.state import Change, ClusterState


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, ips: list[str], labels: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
        "spec": {"nodeName": spec.pop("node", "node-1"), "containers": [{"name": "c", "ports": spec.pop("ports", [])}], **spec},
        "status": {"podIPs": [{"ip": i} for i in ips], "phase": spec.pop("phase", "Running")},
    }


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState(cluster_id="c1", node_name="node-1")
    s.apply(namespace("x", team="web"))
    return s


def test_pod_info_by_ip_for_every_address(state: ClusterState) -> None:
    assert state.apply(pod("x", "a", ["10.0.0.1", "fd00::1"], {"app": "web"},
                           ports=[{"name": "http", "containerPort": 8080}]))
    for address in ("10.0.0.1", "fd00::1"):
        info = state.pod_info_by_ip(ip(address))
        assert info is not None
        assert info.name == "a" and dict(info.labels) == {"app": "web"}
        assert info.namespace.name == "x"
        assert dict(info.namespace.labels) == {"team": "web", "kubernetes.io/metadata.name": "x"}
        assert [(p.name, p.port, p.protocol) for p in info.container_ports] == [("http", 8080, "TCP")]
        assert info.cluster_id == "c1" and info.node.name == "node-1" and info.last_updated > 0
    assert state.pod_info_by_ip(ip("10.0.0.2")) is None


def test_namespace_relabel_rebuilds_pod_info(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    before = state.pod_info_by_ip(ip("10.0.0.1"))
    state.apply(namespace("x", team="db"))
    after = state.pod_info_by_ip(ip("10.0.0.1"))
    assert after is not before
    assert after.namespace.labels["team"] == "db"
    assert before.namespace.labels["team"] == "web"  # readers holding the old object see a consistent old view


def test_pod_before_its_namespace(state: ClusterState) -> None:
    state.apply(pod("y", "a", ["10.0.1.1"]))
    assert dict(state.pod_info_by_ip(ip("10.0.1.1")).namespace.labels) == {}
    state.apply(namespace("y", env="prod"))
    assert state.pod_info_by_ip(ip("10.0.1.1")).namespace.labels["env"] == "prod"


def test_node_labels_reach_pod_info(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.5"},
                                          {"type": "Hostname", "address": "node-1"}]}})
    assert state.pod_info_by_ip(ip("10.0.0.1")).node.labels["zone"] == "a"
    assert state.nodes["node-1"].ips == (ip("192.168.1.5"),)


def test_host_network_and_finished_pods_are_not_pods_for_policy(state: ClusterState) -> None:
    state.apply(pod("x", "host", ["192.168.1.5"], hostNetwork=True))
    state.apply(pod("x", "done", ["10.0.0.9"], phase="Succeeded"))
    assert state.pod_info_by_ip(ip("192.168.1.5")) is None
    assert state.pod_info_by_ip(ip("10.0.0.9")) is None
    assert ("x", "host") in state.pods


def test_delete_and_address_reuse(state: ClusterState) -> None:
    state.apply(pod("x", "old", ["10.0.0.1"]))
    state.apply(pod("x", "new", ["10.0.0.1"]))  # the successor arrives before the old pod's deletion
    assert state.pod_info_by_ip(ip("10.0.0.1")).name == "new"
    assert state.delete("Pod", "x", "new")
    assert state.pod_info_by_ip(ip("10.0.0.1")).name == "old"
    assert state.delete("Pod", "x", "old")
    assert state.pod_info_by_ip(ip("10.0.0.1")) is None
    assert not state.delete("Pod", "x", "old")


def test_pod_update_moves_addresses(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "a", ["10.0.0.2"]))
    assert state.pod_info_by_ip(ip("10.0.0.1")) is None
    assert state.pod_info_by_ip(ip("10.0.0.2")).name == "a"


def test_local_pod_ips(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "b", ["10.0.0.2"], node="node-2"))
    assert state.local_pod_ips() == {ip("10.0.0.1")}


@pytest.mark.parametrize(
    "obj, fragment",
    [
        (pod("x", "a", ["not-an-ip"]), "invalid IP address 'not-an-ip'"),
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}, "metadata.namespace is required"),
        ({"apiVersion": "v2", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}, "unsupported apiVersion 'v2'"),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}}, "unsupported kind 'Secret'"),
        (pod("x", "a", ["10.0.0.1"], ports=[{"containerPort": 80, "protocol": "ICMP"}]), "unsupported protocol 'ICMP'"),
        ("garbage", "not an object"),
    ],
)
def test_invalid_objects_are_logged_counted_and_ignored(state: ClusterState, caplog, obj, fragment) -> None:
    refused: list[tuple[str, str, str]] = []
    state.subscribe_invalid(lambda kind, ref, reason: refused.append((kind, ref, reason)))
    with caplog.at_level(logging.WARNING):
        assert state.apply(obj) is False
    assert fragment in caplog.text
    assert len(refused) == 1 and fragment in refused[0][2]
    assert sum(state.invalid_objects.values()) == 1
    assert state.pod_info_by_ip(ip("10.0.0.1")) is None


def test_a_refused_update_keeps_the_last_good_version(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"], {"v": "1"}))
    assert not state.apply(pod("x", "a", ["bad"], {"v": "2"}))
    assert state.pod_info_by_ip(ip("10.0.0.1")).labels["v"] == "1"


def test_listeners_and_generation(state: ClusterState) -> None:
    changes: list[Change] = []
    state.subscribe(changes.append)
    generation = state.generation
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(namespace("x", team="web"))  # same labels: no change
    state.delete("Pod", "x", "a")
    assert [(c.kind, c.key, c.old is None, c.new is None) for c in changes] == [
        ("Pod", ("x", "a"), True, False),
        ("Pod", ("x", "a"), False, True),
    ]
    assert state.generation == generation + 2


def test_replace_makes_the_kind_exactly_the_list(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "b", ["10.0.0.2"]))
    # List items carry no kind: it comes from the call.
    item = pod("x", "c", ["10.0.0.3"])
    del item["kind"], item["apiVersion"]
    state.replace("Pod", [pod("x", "b", ["10.0.0.2"]), item])
    assert set(state.pods) == {("x", "b"), ("x", "c")}
    assert state.pod_info_by_ip(ip("10.0.0.1")) is None


def test_listeners_see_rebuilt_pods_when_a_namespace_or_node_goes(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}}})
    seen: list[tuple[str, dict]] = []

    def listener(change: Change) -> None:
        info = state.pod_info_by_ip(ip("10.0.0.1"))
        seen.append((change.kind, dict(info.namespace.labels) if change.kind == "Namespace" else dict(info.node.labels)))

    state.subscribe(listener)
    state.delete("Namespace", "", "x")
    state.delete("Node", "", "node-1")
    assert seen == [("Namespace", {}), ("Node", {})]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda o: o.update(spec="garbage"), "spec and status must be objects"),
        (lambda o: o["spec"].update(containers="garbage"), "spec.containers: must be a list"),
        (lambda o: o["spec"].update(containers=["garbage"]), "spec.containers[0]: must be an object"),
        (lambda o: o["spec"]["containers"][0].update(ports=[7]), "spec.containers[0].ports[0]: must be an object"),
        (lambda o: o["status"].update(podIPs="10.0.0.1"), "status.podIPs: must be a list"),
        (lambda o: o["spec"].update(nodeName=5), "spec.nodeName: must be a string"),
        (lambda o: o.update(metadata="garbage"), "metadata is required"),
    ],
)
def test_malformed_pods_are_refused_not_crashed_on(state: ClusterState, mutate, fragment) -> None:
    obj = pod("x", "a", ["10.0.0.1"])
    mutate(obj)
    refused: list[str] = []
    state.subscribe_invalid(lambda kind, ref, reason: refused.append(reason))
    assert state.apply(obj) is False
    assert fragment in refused[0]


def test_malformed_nodes_are_refused(state: ClusterState) -> None:
    assert not state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": "garbage"})
    assert not state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": 5}})
    assert state.invalid_objects["Node"] == 2
