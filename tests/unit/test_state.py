"""ClusterState: objects in, pod records and batches of changes out."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from kube_netpol.plugins import registry_for
from kube_netpol.state import ClusterState


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
    s = ClusterState(registry_for(), cluster_id="c1", node_name="node-1")
    s.apply(namespace("x", team="web"))
    return s


def test_pod_by_ip_for_every_address(state: ClusterState) -> None:
    assert state.apply(pod("x", "a", ["10.0.0.1", "fd00::1"], {"app": "web"},
                           ports=[{"name": "http", "containerPort": 8080}]))
    for address in ("10.0.0.1", "fd00::1"):
        record = state.pod_by_ip(ip(address))
        assert record is not None and record.ips == (ip("10.0.0.1"), ip("fd00::1"))
        info = record.info()
        assert info.name == "a" and dict(info.labels) == {"app": "web"}
        assert info.namespace.name == "x"
        assert dict(info.namespace.labels) == {"team": "web", "kubernetes.io/metadata.name": "x"}
        assert [(p.name, p.port, p.protocol) for p in info.container_ports] == [("http", 8080, "TCP")]
        assert info.cluster_id == "c1" and info.node.name == "node-1" and info.last_updated > 0
    assert state.pod_by_ip(ip("10.0.0.2")) is None


def test_namespace_relabel_rebuilds_pod_records(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    before = state.pod_by_ip(ip("10.0.0.1"))
    state.apply(namespace("x", team="db"))
    after = state.pod_by_ip(ip("10.0.0.1"))
    assert after is not before
    assert after.namespace_labels["team"] == "db"
    assert before.namespace_labels["team"] == "web"  # readers holding the old record see a consistent old view


def test_pod_before_its_namespace(state: ClusterState) -> None:
    state.apply(pod("y", "a", ["10.0.1.1"]))
    assert dict(state.pod_by_ip(ip("10.0.1.1")).namespace_labels) == {}
    state.apply(namespace("y", env="prod"))
    assert state.pod_by_ip(ip("10.0.1.1")).namespace_labels["env"] == "prod"


def test_node_labels_reach_pod_info(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.5"},
                                          {"type": "Hostname", "address": "node-1"}]}})
    assert state.pod_by_ip(ip("10.0.0.1")).node_labels["zone"] == "a"
    assert state.pod_by_ip(ip("10.0.0.1")).info().node.labels["zone"] == "a"
    assert state.node("node-1").ips == (ip("192.168.1.5"),)


def test_host_network_and_finished_pods_are_not_pods_for_policy(state: ClusterState) -> None:
    state.apply(pod("x", "host", ["192.168.1.5"], hostNetwork=True))
    state.apply(pod("x", "done", ["10.0.0.9"], phase="Succeeded"))
    assert state.pod_by_ip(ip("192.168.1.5")) is None
    assert state.pod_by_ip(ip("10.0.0.9")) is None
    assert state.pod(("x", "host")) is not None


def test_delete_and_address_reuse(state: ClusterState) -> None:
    state.apply(pod("x", "old", ["10.0.0.1"]))
    state.apply(pod("x", "new", ["10.0.0.1"]))  # the successor arrives before the old pod's deletion
    assert state.pod_by_ip(ip("10.0.0.1")).name == "new"
    assert state.delete("Pod", "x", "new")
    assert state.pod_by_ip(ip("10.0.0.1")).name == "old"
    assert state.delete("Pod", "x", "old")
    assert state.pod_by_ip(ip("10.0.0.1")) is None
    assert not state.delete("Pod", "x", "old")


def test_pod_update_moves_addresses(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "a", ["10.0.0.2"]))
    assert state.pod_by_ip(ip("10.0.0.1")) is None
    assert state.pod_by_ip(ip("10.0.0.2")).name == "a"


def test_local_pods(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "b", ["10.0.0.2"], node="node-2"))
    assert [p.name for p in state.pods() if state.is_local(p)] == ["a"]
    assert all(ClusterState().is_local(p) for p in state.pods())  # no node name: every pod is local


@pytest.mark.parametrize(
    "obj, fragment",
    [
        (pod("x", "a", ["not-an-ip"]), "invalid IP address 'not-an-ip'"),
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}, "metadata.namespace is required"),
        ({"apiVersion": "v2", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}, "unsupported apiVersion 'v2'"),
        ("garbage", "not an object"),
    ],
)
def test_invalid_objects_are_logged_counted_and_ignored(state: ClusterState, caplog, obj, fragment) -> None:
    state.take_changes()
    with caplog.at_level(logging.WARNING):
        assert state.apply(obj) is False
    assert fragment in caplog.text
    refused = state.take_refusals()
    assert len(refused) == 1 and fragment in refused[0].reason
    assert sum(state.invalid_objects.values()) == 1
    assert state.pod_by_ip(ip("10.0.0.1")) is None and state.take_changes() == []


def test_an_invalid_new_pod_with_an_address_is_kept_without_labels_or_ports(state: ClusterState) -> None:
    assert not state.apply(pod("x", "a", ["10.0.0.1"], {"app": "web"},
                               ports=[{"containerPort": 80, "protocol": "ICMP"}]))
    (refusal,) = state.take_refusals()
    assert "unsupported protocol 'ICMP'" in refusal.reason and refusal.kind == "Pod"
    kept = state.pod_by_ip(ip("10.0.0.1"))
    assert kept is not None and not kept.valid and kept.labels == {} and kept.port_names == {}


def test_objects_of_kinds_the_pipeline_does_not_read_are_ignored(state: ClusterState) -> None:
    state.take_changes()
    assert not state.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}})
    assert not state.delete("Service", "x", "a")
    assert state.take_refusals() == [] and not state.invalid_objects and state.take_changes() == []


def test_a_refused_update_keeps_the_last_good_version(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"], {"v": "1"}))
    assert not state.apply(pod("x", "a", ["bad"], {"v": "2"}))
    assert state.pod_by_ip(ip("10.0.0.1")).labels["v"] == "1"


def test_changes_come_in_batches_one_per_object(state: ClusterState) -> None:
    state.take_changes()
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(namespace("x", team="web"))  # same labels: no change
    state.apply(pod("x", "b", ["10.0.0.2"]))
    state.apply(pod("x", "b", ["10.0.0.3"]))
    assert [(c.kind, c.key, c.old is None, c.new is None) for c in state.take_changes()] == [
        ("Pod", ("x", "a"), True, False),
        ("Pod", ("x", "b"), True, False),  # created, then updated: one change, the last version
    ]
    first = state.pod(("x", "b"))
    state.apply(pod("x", "b", ["10.0.0.4"]))
    state.delete("Pod", "x", "a")
    changes = state.take_changes()
    assert [(c.kind, c.key) for c in changes] == [("Pod", ("x", "b")), ("Pod", ("x", "a"))]
    assert changes[0].old is first and changes[1].new is None
    state.apply(pod("x", "c", ["10.0.0.5"]))
    state.delete("Pod", "x", "c")
    assert state.take_changes() == []  # created and deleted within one batch: nothing happened


def test_replace_makes_the_kind_exactly_the_list(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply(pod("x", "b", ["10.0.0.2"]))
    # List items carry no kind: it comes from the call.
    item = pod("x", "c", ["10.0.0.3"])
    del item["kind"], item["apiVersion"]
    state.replace("Pod", [pod("x", "b", ["10.0.0.2"]), item])
    assert set(state.keys("Pod")) == {("x", "b"), ("x", "c")}
    assert state.pod_by_ip(ip("10.0.0.1")) is None


def test_the_batch_holds_rebuilt_pods_when_a_namespace_or_node_goes(state: ClusterState) -> None:
    state.apply(pod("x", "a", ["10.0.0.1"]))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}}})
    state.take_changes()
    state.delete("Namespace", "", "x")
    (namespace_change, pod_change) = state.take_changes()
    assert (namespace_change.kind, pod_change.kind) == ("Namespace", "Pod")
    assert dict(pod_change.new.namespace_labels) == {} and pod_change.old.namespace_labels["team"] == "web"
    state.delete("Node", "", "node-1")
    (node_change, pod_change) = state.take_changes()
    assert (node_change.kind, pod_change.kind) == ("Node", "Pod")
    assert dict(pod_change.new.node_labels) == {} and pod_change.old.node_labels == {"zone": "a"}


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
    assert state.apply(obj) is False
    assert fragment in state.take_refusals()[0].reason


def test_malformed_nodes_are_refused(state: ClusterState) -> None:
    assert not state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": "garbage"})
    assert not state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": 5}})
    assert state.invalid_objects["Node"] == 2
