"""The per-PodInfo memo and pod facts shared by the built-in evaluators."""

from __future__ import annotations

import ipaddress

import pytest

from kube_netpol.api import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.evaluators import pod_memo
from kube_netpol.evaluators.adminnetworkpolicy import PodEntry
from kube_netpol.evaluators.networkpolicy import _Pod
from kube_netpol.evaluators.pod_memo import PodFacts, forget, lookup, remember
from kube_netpol.policy.ports import NO_PORT_NAMES
from kube_netpol.state import ClusterState

ADDR = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}


def pod(name: str, labels: dict[str, str], containers: list[dict] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "x", "name": name, "labels": labels},
        "spec": {"containers": containers if containers is not None else [{"name": "c"}]},
        "status": {"podIPs": [{"ip": ADDR[name]}]},
    }


@pytest.fixture
def state() -> ClusterState:
    state = ClusterState()
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "t"}}})
    for name in ADDR:
        state.apply(pod(name, {"pod": name}))
    return state


def info_of(state: ClusterState, name: str) -> PodInfo:
    info = state.pod_info_by_ip(ipaddress.ip_address(ADDR[name]).packed)
    assert info is not None
    return info


# ------------------------------------------------------------------ facts


def test_facts_are_plain_dicts_of_the_pod_and_its_namespace(state: ClusterState) -> None:
    info = info_of(state, "a")
    facts = PodFacts(info)
    assert facts.info is info
    assert type(facts.labels) is dict and facts.labels == {"pod": "a"}
    assert facts.namespace == "x"
    assert type(facts.namespace_labels) is dict
    assert facts.namespace_labels == {"team": "t", "kubernetes.io/metadata.name": "x"}
    assert facts.port_names is NO_PORT_NAMES


def test_port_names_by_protocol_and_port(state: ClusterState) -> None:
    state.apply(pod("a", {"pod": "a"}, [
        {"name": "web", "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 81},
                                  {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
        {"name": "side", "ports": [{"name": "metrics", "containerPort": 80},
                                   {"name": "diameter", "containerPort": 3868, "protocol": "SCTP"}]},
    ]))  # fmt: skip
    assert PodFacts(info_of(state, "a")).port_names == {
        (IPPROTO_TCP, 80): ("http", "metrics"),  # two containers name the same port
        (IPPROTO_UDP, 53): ("dns",),
        (IPPROTO_SCTP, 3868): ("diameter",),
    }  # the unnamed port 81 resolves no named port


def test_evaluator_entries_are_facts_without_an_instance_dict(state: ClusterState) -> None:
    # Each subclass must declare __slots__: an instance dict would make every hot-path read slower.
    for entry_type in (_Pod, PodEntry):
        entry = entry_type(info_of(state, "a"))
        assert isinstance(entry, PodFacts)
        assert not hasattr(entry, "__dict__")


# ------------------------------------------------------------------- memo


def test_lookup_finds_the_entry_of_the_same_object_only(state: ClusterState) -> None:
    memo: dict[int, PodFacts] = {}
    old = info_of(state, "a")
    entry = remember(memo, PodFacts(old))
    assert lookup(memo, old) is entry
    # The store builds a new PodInfo object for the same pod on a change: it gets no entry.
    state.apply(pod("a", {"pod": "a", "v": "2"}))
    new = info_of(state, "a")
    assert new is not old
    assert lookup(memo, new) is None
    # Not even one filed under its id (as if the id had been reused): the entry's PodInfo is checked.
    memo[id(new)] = entry
    assert lookup(memo, new) is None
    assert lookup(memo, info_of(state, "b")) is None


def test_forget_drops_one_entry(state: ClusterState) -> None:
    memo: dict[int, PodFacts] = {}
    a, b = info_of(state, "a"), info_of(state, "b")
    remember(memo, PodFacts(a))
    kept = remember(memo, PodFacts(b))
    forget(memo, a)
    assert lookup(memo, a) is None and lookup(memo, b) is kept
    assert len(memo) == 1
    forget(memo, a)  # already gone: nothing happens
    forget(memo, info_of(state, "c"))  # never remembered
    assert list(memo.values()) == [kept]


def test_remember_empties_a_full_memo_first(state: ClusterState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pod_memo, "MEMO_SIZE", 3)
    memo: dict[int, PodFacts] = {}
    other: dict[int, PodFacts] = {}
    infos = [info_of(state, name) for name in "abcd"]
    for info in infos[:3]:
        remember(memo, PodFacts(info))
    remember(other, PodFacts(infos[0]))
    assert len(memo) == 3
    last = remember(memo, PodFacts(infos[3]))
    assert memo == {id(infos[3]): last}  # the same dict, emptied: it never exceeds the bound
    assert len(other) == 1  # another memo (say, the one a change installed meanwhile) is untouched


def test_remembering_again_replaces_the_entry(state: ClusterState) -> None:
    memo: dict[int, PodFacts] = {}
    info = info_of(state, "a")
    remember(memo, PodFacts(info))
    second = remember(memo, PodFacts(info))
    assert lookup(memo, info) is second and len(memo) == 1
