"""Pod records: compact, shared where pods are alike, rebuilt when their namespace or node changes; the memo keyed on them."""

from __future__ import annotations

import pytest

from kube_netpol.api import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, NO_PORT_NAMES, PodRecord
from kube_netpol.evaluators import indexed
from kube_netpol.evaluators.adminnetworkpolicy import _Subject
from kube_netpol.evaluators.indexed import MemoEntry, remember
from kube_netpol.evaluators.networkpolicy import _Target
from kube_netpol.state import ClusterState

ADDR = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}


def pod(name: str, labels: dict[str, str], containers: list[dict] | None = None, namespace: str = "x",
        node: str = "n1") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": containers if containers is not None else [{"name": "c"}]},
        "status": {"podIPs": [{"ip": ADDR[name]}]},
    }


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def state() -> ClusterState:
    state = ClusterState()
    state.apply(namespace("x", team="t"))
    state.apply(namespace("y", team="u"))
    for name in ADDR:
        state.apply(pod(name, {"pod": name}))
    return state


def record(state: ClusterState, name: str, namespace_name: str = "x") -> PodRecord:
    found = state.pod((namespace_name, name))
    assert found is not None
    return found


def test_records_hold_plain_dicts_of_the_pod_and_its_namespace(state: ClusterState) -> None:
    a = record(state, "a")
    assert type(a.labels) is dict and a.labels == {"pod": "a"}
    assert a.namespace == "x" and a.key == ("x", "a")
    assert type(a.namespace_labels) is dict
    assert a.namespace_labels == {"team": "t", "kubernetes.io/metadata.name": "x"}
    assert a.namespace_labels is state.namespace("x").labels  # shared with the namespace's record
    assert a.port_names is NO_PORT_NAMES
    assert not hasattr(a, "__dict__")
    info = a.info()  # the reference's PodInfo, built when asked
    assert info.name == "a" and dict(info.labels) == {"pod": "a"} and info.namespace.labels["team"] == "t"


def test_port_names_by_protocol_and_port(state: ClusterState) -> None:
    state.apply(pod("a", {"pod": "a"}, [
        {"name": "c", "ports": [{"name": "http", "containerPort": 80}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
        {"name": "d", "ports": [{"name": "dns-tcp", "containerPort": 53}, {"containerPort": 9999},
                                {"name": "diameter", "containerPort": 3868, "protocol": "SCTP"}]},
    ]))  # fmt: skip
    assert record(state, "a").port_names == {
        (IPPROTO_TCP, 80): ("http",),
        (IPPROTO_UDP, 53): ("dns",),
        (IPPROTO_TCP, 53): ("dns-tcp",),
        (IPPROTO_SCTP, 3868): ("diameter",),
    }


def test_pods_alike_share_labels_and_ports_and_let_them_go_with_the_last(state: ClusterState) -> None:
    ports = [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]
    state.apply(pod("a", {"app": "web"}, ports))
    state.apply(pod("b", {"app": "web"}, ports))
    state.apply(pod("c", {"app": "web"}, namespace="y"))
    a, b, c = record(state, "a"), record(state, "b"), record(state, "c", "y")
    assert a.labels is b.labels and a.container_ports is b.container_ports and a.port_names is b.port_names
    assert c.labels == a.labels and c.labels is not a.labels  # one labels dict per namespace: rules depend on it
    shared = len(state._labels)
    state.delete("Pod", "x", "a")
    assert len(state._labels) == shared  # b still uses it
    state.apply(pod("b", {"app": "db"}, ports))  # relabel: b leaves the shared set
    assert record(state, "b").labels == {"app": "db"}
    assert len(state._labels) == shared  # {"app": "web"} in x went with b, {"app": "db"} came
    state.delete("Pod", "x", "b")
    assert len(state._ports) == 1  # only the pods without ports are left


def test_a_namespace_relabel_makes_new_records_of_its_pods_only(state: ClusterState) -> None:
    before = {name: record(state, name) for name in "ab"}
    state.apply(pod("c", {"pod": "c"}, namespace="y"))
    other = record(state, "c", "y")
    state.take_changes()
    state.apply(namespace("x", team="v"))
    changes = state.take_changes()
    assert [(c.kind, c.key) for c in changes][0] == ("Namespace", ("", "x"))
    assert {c.key for c in changes if c.kind == "Pod"} == {("x", n) for n in "abcd"}
    for name, old in before.items():
        new = record(state, name)
        assert new is not old and new.namespace_labels["team"] == "v" and new.labels is old.labels
        assert state.pod_by_ip(new.ips[0]) is new
    assert record(state, "c", "y") is other


def test_an_unchanged_pod_makes_no_change(state: ClusterState) -> None:
    state.take_changes()
    a = record(state, "a")
    state.apply({**pod("a", {"pod": "a"}), "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"},
                                                         "annotations": {"seen": "now"}}})
    assert state.take_changes() == [] and record(state, "a") is a


def test_a_pod_with_many_labels_and_ports(state: ClusterState) -> None:
    labels = {f"key-{i}": f"value-{i}" for i in range(200)}
    ports = [{"name": f"p{i}", "containerPort": 1000 + i, "protocol": ("TCP", "UDP", "SCTP")[i % 3]} for i in range(300)]
    assert state.apply(pod("a", labels, [{"name": "c", "ports": ports}]))
    a = record(state, "a")
    assert a.labels == labels and len(a.container_ports) == 300 and len(a.port_names) == 300


def test_a_malformed_pod_update_is_refused_and_the_last_version_stays(state: ClusterState) -> None:
    a = record(state, "a")
    assert not state.apply(pod("a", {"pod": 1}))  # type: ignore[dict-item]
    assert record(state, "a") is a
    assert state.invalid_objects["Pod"] == 1


def test_a_new_malformed_pod_with_an_address_stays_with_no_labels(state: ClusterState) -> None:
    bad = pod("a", {"pod": 1}, namespace="y")  # type: ignore[dict-item]
    assert not state.apply(bad)
    kept = record(state, "a", "y")
    assert not kept.valid and kept.labels == {} and kept.container_ports == ()
    assert state.pod_by_ip(kept.ips[0]) in (kept, record(state, "a"))
    (refusal,) = state.take_refusals()
    assert refusal.kind == "Pod" and "kept with no labels and no ports" in refusal.reason
    # Without a usable address there is nothing to keep.
    assert not state.apply({**bad, "status": {"podIP": "not-an-address"}, "metadata": {"namespace": "y", "name": "z"}})
    assert state.pod(("y", "z")) is None


def test_memo_entries_have_no_instance_dict() -> None:
    for entry in (_Target({}), _Subject({})):
        assert isinstance(entry, MemoEntry) and not hasattr(entry, "__dict__")


def test_remember_empties_a_full_memo_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexed, "MEMO_SIZE", 3)
    memo: dict[int, MemoEntry] = {}
    other: dict[int, MemoEntry] = {}
    labels = [{"n": str(i)} for i in range(4)]
    for mapping in labels[:3]:
        remember(memo, MemoEntry(mapping))
    remember(other, MemoEntry(labels[0]))
    last = remember(memo, MemoEntry(labels[3]))
    assert memo == {id(labels[3]): last}  # the same dict, emptied: it never exceeds the bound
    assert len(other) == 1  # another memo (the one a newer snapshot's stage holds) is untouched
