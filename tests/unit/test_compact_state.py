"""The compact pod representation: shared and released label sets, no object copy, the fast list-page decoder."""

from __future__ import annotations

import ipaddress
import json
import sys
import time

from kube_netpol.plugins import registry_for
from kube_netpol.sources.pod_pages import decode_pod_page
from kube_netpol.state import ClusterState
from kube_netpol.state.trim import trim_pod


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, address: str, labels: dict | None = None, ports: list | None = None,
        node: str = "node-1") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels or {},
                     "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                     "annotations": {"a": "b"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or [], "env": [{"name": "X"}]}]},
        "status": {"podIPs": [{"ip": address}], "phase": "Running", "conditions": [{"type": "Ready"}]},
    }  # fmt: skip


def new_state() -> ClusterState:
    state = ClusterState(registry_for(), node_name="node-1")
    state.apply(namespace("x", team="web"))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}}})
    return state


def label_sets(state: ClusterState) -> int:
    return len(state._labels)  # the interner: one entry per (namespace, label set) in use


def test_pods_with_equal_labels_share_one_mapping_and_release_it_with_the_last() -> None:
    state = new_state()
    for i in range(3):
        state.apply(pod("x", f"web-{i}", f"10.0.0.{i + 1}", {"app": "web", "hash": "1"}))
    state.apply(pod("x", "db", "10.0.0.9", {"app": "db"}))
    webs = [state.pod(("x", f"web-{i}")) for i in range(3)]
    assert webs[0].labels is webs[1].labels is webs[2].labels
    assert label_sets(state) == 2
    state.delete("Pod", "x", "web-0")
    state.delete("Pod", "x", "web-1")
    assert label_sets(state) == 2 and state.pod(("x", "web-2")).labels == {"app": "web", "hash": "1"}
    state.delete("Pod", "x", "web-2")
    assert label_sets(state) == 1  # the last web pod took its label set with it
    state.delete("Pod", "x", "db")
    assert label_sets(state) == 0 and len(state._ports) == 0


def test_relabel_moves_a_pod_to_another_shared_set_and_releases_the_old_one() -> None:
    state = new_state()
    state.apply(pod("x", "a", "10.0.0.1", {"app": "web"}))
    state.apply(pod("x", "b", "10.0.0.2", {"app": "db"}))
    state.apply(pod("x", "a", "10.0.0.1", {"app": "db"}))
    assert state.pod(("x", "a")).labels is state.pod(("x", "b")).labels
    assert label_sets(state) == 1
    state.take_changes()
    state.apply(pod("x", "a", "10.0.0.1", {"app": "db"}))  # the same again: no change, no leak
    assert state.take_changes() == [] and label_sets(state) == 1


def test_namespace_and_node_relabels_rebuild_records_without_the_object() -> None:
    state = new_state()
    state.apply(pod("x", "a", "10.0.0.1", {"app": "web"}, [{"name": "http", "containerPort": 80}]))
    before = state.pod(("x", "a"))
    state.apply(namespace("x", team="db"))
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "b"}}})
    after = state.pod(("x", "a"))
    assert after is not before and after.key == before.key
    assert after.namespace_labels["team"] == "db" and after.node_labels == {"zone": "b"}
    assert after.labels is before.labels and after.port_names == {(6, 80): ("http",)}
    assert state.pod_by_ip(ip("10.0.0.1")) is after
    assert label_sets(state) == 1  # a rebuild takes no second reference
    state.delete("Pod", "x", "a")
    assert label_sets(state) == 0 and state.pod_by_ip(ip("10.0.0.1")) is None


def test_record_keeps_no_copy_of_the_object_and_interns_names() -> None:
    state = new_state()
    state.apply(pod("x", "a", "10.0.0.1"))
    record = state.pod(("x", "a"))
    assert not hasattr(record, "__dict__")
    assert record.namespace is sys.intern("x") and record.node_name is sys.intern("node-1")
    assert not any(isinstance(getattr(record, f), dict) and "managedFields" in getattr(record, f)
                   for f in record.__slots__)


def test_a_pod_with_many_labels_and_ports() -> None:
    state = new_state()
    labels = {f"key-{i}": f"value-{i}" for i in range(200)}
    ports = [{"name": f"p{i}", "containerPort": 1000 + i, "protocol": ("TCP", "UDP", "SCTP")[i % 3]} for i in range(300)]
    assert state.apply(pod("x", "big", "10.0.0.1", labels, ports))
    record = state.pod(("x", "big"))
    assert dict(record.labels) == labels and len(record.container_ports) == 300
    assert record.port_names[(17, 1001)] == ("p1",) and record.port_names[(132, 1002)] == ("p2",)
    state.apply(pod("x", "twin", "10.0.0.2", labels, ports))
    assert state.pod(("x", "twin")).container_ports is record.container_ports  # shared
    state.delete("Pod", "x", "big")
    state.delete("Pod", "x", "twin")
    assert label_sets(state) == 0 and len(state._ports) == 0


def test_malformed_pods_are_still_refused() -> None:
    state = new_state()
    bad_port = pod("x", "a", "10.0.0.1", ports=[{"containerPort": 70000}])
    assert not state.apply(bad_port)
    assert "invalid containerPort" in state.take_refusals()[0].reason
    # Kept without labels or ports (its addresses were readable), so its namespace's isolation applies.
    assert state.pod(("x", "a")).valid is False
    assert not state.apply(pod("x", "b", "10.0.0.300"))
    assert state.pod(("x", "b")) is None
    state.apply(pod("x", "c", "10.0.0.3", {"app": "web"}))
    assert not state.apply(pod("x", "c", "10.0.0.3", {"app": 5}))  # type: ignore[dict-item]
    assert state.pod(("x", "c")).labels == {"app": "web"}  # the last valid version stays
    assert not state.apply(pod("x", "d", "010.0.0.4"))  # a leading zero: refused as before (ipaddress)


def test_contested_address_falls_back_to_the_other_claimant() -> None:
    state = new_state()
    state.apply(pod("x", "old", "10.0.0.1"))
    state.apply(pod("x", "new", "10.0.0.1"))
    assert state.pod_by_ip(ip("10.0.0.1")).name == "new"
    state.delete("Pod", "x", "new")
    assert state.pod_by_ip(ip("10.0.0.1")).name == "old"
    state.delete("Pod", "x", "old")
    assert state.pod_by_ip(ip("10.0.0.1")) is None and not state._ip_others


def page(items: list[dict]) -> bytes:
    return json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "7", "continue": ""},
                       "items": items}).encode()


def test_the_page_decoder_reads_what_trim_pod_keeps() -> None:
    items = [pod("x", "a", "10.0.0.1", {"app": "web"}, [{"name": "http", "containerPort": 80}])]
    decoded = decode_pod_page(page(items))
    assert decoded is not None and decoded["metadata"]["resourceVersion"] == "7"
    fast, slow = new_state(), new_state()
    fast.apply(decoded["items"][0], "Pod")
    slow.apply(trim_pod(items[0]), "Pod")
    assert fast.pod(("x", "a")).same_as(slow.pod(("x", "a")))
    assert "managedFields" not in decoded["items"][0]["metadata"]


def test_a_page_with_a_malformed_pod_is_not_decoded_fast() -> None:
    bad = pod("x", "a", "10.0.0.1", {"app": "web"})
    bad["metadata"]["labels"] = {"app": 5}
    assert decode_pod_page(page([pod("x", "ok", "10.0.0.2"), bad])) is None  # the caller falls back to json.loads
    assert decode_pod_page(b"not json") is None


def test_the_event_decoder_takes_pod_changes_and_leaves_the_rest_to_parse_event() -> None:
    from kube_netpol.sources.pod_pages import decode_pod_event

    full = pod("x", "a", "10.0.0.1", {"app": "web"})
    full["metadata"]["resourceVersion"] = "12"
    decoded = decode_pod_event(json.dumps({"type": "MODIFIED", "object": full}).encode())
    assert decoded is not None and decoded[0] == "MODIFIED"
    assert decoded[1]["metadata"]["resourceVersion"] == "12" and "managedFields" not in decoded[1]["metadata"]
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "13"}}}
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "gone"}}
    bad = {"type": "ADDED", "object": {**full, "spec": "not an object"}}
    for line in (bookmark, error, bad):
        assert decode_pod_event(json.dumps(line).encode()) is None
    assert decode_pod_event(b"{") is None


def test_pods_updated_together_share_their_update_time_and_later_ones_move_on() -> None:
    state = new_state()
    state.replace("Pod", [pod("x", f"p{i}", f"10.0.1.{i + 1}") for i in range(50)])
    stamps = {id(state.pod(("x", f"p{i}")).updated_ns) for i in range(50)}
    assert len(stamps) <= 3  # one int per millisecond the page took, not one per pod
    first = state.pod(("x", "p0")).updated_ns
    time.sleep(0.002)
    state.apply(pod("x", "p0", "10.0.1.1", labels={"app": "new"}))
    assert state.pod(("x", "p0")).updated_ns > first


def node(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def test_equal_labels_in_another_order_get_their_own_set_and_match_alike() -> None:
    state = new_state()
    state.apply(pod("x", "a", "10.0.0.1", {"app": "web", "tier": "1"}))
    state.apply(pod("x", "b", "10.0.0.2", {"tier": "1", "app": "web"}))
    state.apply(namespace("y", team="web"))
    state.apply(pod("y", "a", "10.0.1.1", {"app": "web", "tier": "1"}))  # another namespace: never shared
    a, b, other = state.pod(("x", "a")), state.pod(("x", "b")), state.pod(("y", "a"))
    assert a.labels == b.labels == other.labels and a.labels is not other.labels
    assert label_sets(state) == 3
    state.take_changes()
    state.apply(pod("x", "a", "10.0.0.1", {"tier": "1", "app": "web"}))  # reordered only: not a change
    assert state.take_changes() == [] and label_sets(state) == 3
    for ns, name in (("x", "a"), ("x", "b"), ("y", "a")):
        state.delete("Pod", ns, name)
    assert label_sets(state) == 0


def test_a_pods_addresses_read_back_as_a_tuple_whatever_their_number() -> None:
    state = new_state()
    state.apply(pod("x", "one", "10.0.0.1"))
    two = pod("x", "two", "fd00::2")
    two["status"]["podIPs"].append({"ip": "10.0.0.2"})
    state.apply(two)
    none = pod("x", "none", "10.0.0.9")
    none["status"]["podIPs"] = []
    state.apply(none)
    assert state.pod(("x", "one")).ips == (ip("10.0.0.1"),)
    assert state.pod(("x", "two")).ips == (ip("fd00::2"), ip("10.0.0.2"))  # the object's order
    assert state.pod(("x", "none")).ips == ()
    assert state.pod_by_ip(ip("10.0.0.2")) is state.pod_by_ip(ip("fd00::2")) is state.pod(("x", "two"))
    # One address is kept as itself, not in a tuple of its own (48 bytes a pod).
    assert state.pod(("x", "one"))._ips == ip("10.0.0.1")
    state.take_changes()
    state.apply(pod("x", "one", "10.0.0.1"))  # the same address again: no change
    assert state.take_changes() == []
    state.apply(pod("x", "one", "10.0.0.3"))
    (change,) = state.take_changes()
    assert (change.old.ips, change.new.ips) == ((ip("10.0.0.1"),), (ip("10.0.0.3"),))
    assert state.pod_by_ip(ip("10.0.0.3")) is change.new and state.pod_by_ip(ip("10.0.0.1")) is None


def test_pods_are_found_by_key_and_listed_without_a_second_table() -> None:
    state = new_state()
    state.apply(namespace("y"))
    for ns, name, address in (("x", "a", "10.0.0.1"), ("x", "b", "10.0.0.2"), ("y", "a", "10.0.1.1")):
        state.apply(pod(ns, name, address))
    assert {p.key for p in state.pods()} == set(state.keys("Pod")) == {("x", "a"), ("x", "b"), ("y", "a")}
    assert state.pod(("y", "a")).ips == (ip("10.0.1.1"),) and state.pod(("z", "a")) is None
    assert state.delete("Pod", "x", "a") and state.pod(("x", "a")) is None and not state.delete("Pod", "x", "a")
    state.replace("Pod", [pod("y", "a", "10.0.1.1")])
    assert state.keys("Pod") == [("y", "a")] and state.pod(("x", "b")) is None


def test_a_nodes_pods_follow_creation_update_move_and_deletion() -> None:
    state = new_state()
    state.apply(node("node-2", zone="b"))
    state.apply(pod("x", "a", "10.0.0.1"))
    state.apply(pod("x", "b", "10.0.0.2"))
    for n in range(3):  # updates on the same node: the node's list keeps one key per pod
        state.apply(pod("x", "a", "10.0.0.1", {"rev": str(n)}))
    assert state._pods_by_node["node-1"] == [state.pod(("x", "a")), state.pod(("x", "b"))]  # the records now
    state.apply(pod("x", "a", "10.0.0.1", node="node-2"))  # moved (an update no kubelet makes, but valid input)
    assert state._pods_by_node["node-1"] == [state.pod(("x", "b"))]
    assert state._pods_by_node["node-2"] == [state.pod(("x", "a"))]
    state.take_changes()
    state.apply(node("node-2", zone="c"))  # a relabel rebuilds that node's pods, and only those
    changes = state.take_changes()
    assert sorted((c.kind, c.key) for c in changes) == [("Node", ("", "node-2")), ("Pod", ("x", "a"))]
    assert state.pod(("x", "a")).node_labels == {"zone": "c"} and state.pod(("x", "b")).node_labels == {"zone": "a"}
    assert state._pods_by_node["node-2"] == [state.pod(("x", "a"))]  # the rebuilt record took its place
    state.apply(namespace("x", team="db"))  # so does a namespace relabel's
    assert state._pods_by_node["node-1"] == [state.pod(("x", "b"))]
    assert state.pod(("x", "b")).namespace_labels["team"] == "db"
    state.take_changes()
    state.delete("Pod", "x", "a")
    state.delete("Pod", "x", "b")
    assert state._pods_by_node == {}  # the last pod takes its node's entry with it
    state.apply(node("node-1", zone="d"))
    assert [c.kind for c in state.take_changes()] == ["Pod", "Pod", "Node"]  # the deletions, no rebuilt pod
