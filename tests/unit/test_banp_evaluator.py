"""The BaselineAdminNetworkPolicy evaluator, driven through ClusterState and the PolicyEngine."""

from __future__ import annotations

import importlib.util
import ipaddress
from typing import Any

import pytest

from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import NEXT, Verdict
from kube_netpol.engine import PolicyEngine
from kube_netpol.evaluators.adminnetworkpolicy import create as anp_create
from kube_netpol.evaluators.baselineadminnetworkpolicy import create as banp_create
from kube_netpol.plugins import registry_for
from unit_standins import PublishingState, publishing_engine

ClusterState = PublishingState

API = "policy.networking.k8s.io/v1alpha1"
HAVE_NETWORKPOLICY = importlib.util.find_spec("kube_netpol.evaluators.networkpolicy") is not None

ADDR = {"x/a": "10.0.1.10", "x/b": "10.0.1.11", "y/a": "10.0.2.10", "z/a": "10.0.3.10"}
ADDR6 = {"x/a": "fd00:1::10", "y/a": "fd00:2::10"}


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def make_state() -> ClusterState:
    state = ClusterState(registry_for())
    for name in ("x", "y", "z"):
        assert state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name}}})
    for ref, ip in ADDR.items():
        ns, name = ref.split("/")
        assert state.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "metrics", "containerPort": 9100}]}]},
                "status": {"podIPs": [{"ip": ip}] + ([{"ip": ADDR6[ref]}] if ref in ADDR6 else [])},
            }
        )
    return state


@pytest.fixture
def state() -> ClusterState:
    return make_state()


def banp(spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def anp(name: str, priority: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "AdminNetworkPolicy", "metadata": {"name": name}, "spec": {"priority": priority, **spec}}


def from_ns(**labels: str) -> list[dict[str, Any]]:
    return [{"namespaces": {"matchLabels": labels}}]


ALL_NAMESPACES = {"namespaces": {}}


def engine_for(state: ClusterState) -> PolicyEngine:
    context = EvaluatorContext()
    return publishing_engine(state, [anp_create(context), banp_create(context)])


def check(engine: PolicyEngine, src: str, dst: str, port: int = 80, protocol: str = "TCP", family: int = 4):
    table = ADDR if family == 4 else ADDR6
    return engine.evaluate(Packet.from_strings(table.get(src, src), table.get(dst, dst), protocol, port))


def test_without_a_banp_everything_is_next(state: ClusterState) -> None:
    engine = publishing_engine(state, [banp_create(EvaluatorContext())])
    (evaluator,) = engine.evaluators
    assert evaluator.name == "baselineadminnetworkpolicy"
    src = state.pod_by_ip(_ip(ADDR["y/a"]))
    dst = state.pod_by_ip(_ip(ADDR["x/a"]))
    packet = Packet.from_strings(ADDR["y/a"], ADDR["x/a"], "TCP", 80)
    assert evaluator.stage.evaluate_ingress(packet, src, dst) is NEXT
    assert evaluator.stage.evaluate_egress(packet, src, dst) is NEXT
    assert set(engine.managed.addresses) == set()


def test_banp_rules_in_written_order_and_no_match_accepts(state: ClusterState) -> None:
    engine = engine_for(state)
    state.apply(
        banp(
            {
                "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                "ingress": [
                    {"name": "allow-y-metrics", "action": "Allow", "from": from_ns(ns="y"), "ports": [{"namedPort": "metrics"}]},
                    {"name": "deny-y", "action": "Deny", "from": from_ns(ns="y")},
                ],
            }
        )
    )
    judgement = check(engine, "y/a", "x/a", 9100)
    assert judgement.allowed
    assert (judgement.ingress_by, judgement.ingress.policy, judgement.ingress.rule) == (
        "baselineadminnetworkpolicy",
        "default",
        "allow-y-metrics",
    )
    judgement = check(engine, "y/a", "x/a", 80)
    assert judgement.verdict is Verdict.DENY and judgement.ingress.rule == "deny-y"
    assert not check(engine, "y/a", "x/a", 9100, "UDP").allowed  # the named port is TCP
    # No rule matches z: the end of the pipeline accepts.
    judgement = check(engine, "z/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == ""
    # y/a is not a subject.
    assert check(engine, "x/a", "y/a").allowed


def test_banp_subject_by_pods(state: ClusterState) -> None:
    engine = engine_for(state)
    subject = {"pods": {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "b"}}}}
    state.apply(banp({"subject": subject, "ingress": [{"action": "Deny", "from": [ALL_NAMESPACES]}]}))
    assert not check(engine, "y/a", "x/b").allowed
    assert check(engine, "y/a", "x/a").allowed


def test_banp_egress_networks_nodes_and_pods(state: ClusterState) -> None:
    engine = engine_for(state)
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"kind": "infra"}}, "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}})
    state.apply(
        banp(
            {
                "subject": ALL_NAMESPACES,
                "egress": [
                    {"name": "dns", "action": "Allow", "to": [{"networks": ["1.1.1.1/32", "2606:4700::/32"]}], "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}]},
                    {"name": "no-internet", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
                ],
            }
        )
    )
    assert check(engine, "x/a", "1.1.1.1", 53, "UDP").egress.rule == "dns"
    assert check(engine, "x/a", "1.1.1.1", 53, "UDP").allowed
    assert not check(engine, "x/a", "1.1.1.1", 53, "TCP").allowed
    assert not check(engine, "x/a", "8.8.8.8", 443).allowed
    assert check(engine, "x/a", "2606:4700::1111", 53, "UDP", family=6).allowed
    assert not check(engine, "x/a", "2001:db8::1", 53, "UDP", family=6).allowed
    # 0.0.0.0/0 covers pod addresses too.
    assert not check(engine, "x/a", "y/a").allowed
    # Nodes peers work in the BANP as in ANPs.
    state.apply(
        banp({"subject": ALL_NAMESPACES, "egress": [{"name": "no-infra", "action": "Deny", "to": [{"nodes": {"matchLabels": {"kind": "infra"}}}], "ports": [{"portRange": {"protocol": "SCTP", "start": 1, "end": 100}}]}]})
    )
    assert not check(engine, "x/a", "172.18.0.2", 50, "SCTP").allowed
    assert check(engine, "x/a", "172.18.0.2", 50, "TCP").allowed
    assert check(engine, "x/a", "y/a").allowed


def test_anp_decides_before_the_banp(state: ClusterState) -> None:
    engine = engine_for(state)
    state.apply(banp({"subject": ALL_NAMESPACES, "ingress": [{"name": "allow-all", "action": "Allow", "from": [ALL_NAMESPACES]}]}))
    state.apply(anp("deny-y", 1, {"subject": {"namespaces": {"matchLabels": {"ns": "x"}}}, "ingress": [{"action": "Deny", "from": from_ns(ns="y")}]}))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.verdict is Verdict.DENY and judgement.ingress_by == "adminnetworkpolicy"
    judgement = check(engine, "z/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == "baselineadminnetworkpolicy"


def test_banp_updates_deletes_and_refused_updates(state: ClusterState) -> None:
    engine = engine_for(state)
    deny = banp({"subject": ALL_NAMESPACES, "ingress": [{"name": "deny-y", "action": "Deny", "from": from_ns(ns="y")}]})
    assert state.apply(deny)
    assert not check(engine, "y/a", "x/a").allowed
    # An update that cannot be enforced is refused and the last good version stays in force.
    passing = banp({"subject": ALL_NAMESPACES, "ingress": [{"name": "deny-y", "action": "Pass", "from": from_ns(ns="y")}]})
    assert not state.apply(passing)
    assert state.invalid_objects["BaselineAdminNetworkPolicy"] == 1
    assert not check(engine, "y/a", "x/a").allowed
    # A BANP with another name is refused and changes nothing.
    assert not state.apply(banp({"subject": ALL_NAMESPACES, "ingress": [{"action": "Allow", "from": [ALL_NAMESPACES]}]}, name="extra"))
    assert not check(engine, "y/a", "x/a").allowed
    # Relabelling the source namespace changes the verdict.
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y", "labels": {"ns": "why"}}})
    assert check(engine, "y/a", "x/a").allowed
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y", "labels": {"ns": "y"}}})
    assert not check(engine, "y/a", "x/a").allowed
    assert state.delete("BaselineAdminNetworkPolicy", "", "default")
    assert check(engine, "y/a", "x/a").allowed


def test_banp_managed_ips(state: ClusterState) -> None:
    engine = publishing_engine(state, [banp_create(EvaluatorContext())])
    state.apply(banp({"subject": {"namespaces": {"matchLabels": {"ns": "x"}}}}))
    assert set(engine.managed.addresses) == {_ip(ADDR["x/a"]), _ip(ADDR6["x/a"]), _ip(ADDR["x/b"])}
    assert not engine.managed.divert_all
    state.delete("BaselineAdminNetworkPolicy", "", "default")
    assert set(engine.managed.addresses) == set()


# ------------------------------------------------------ with NetworkPolicy too


def _np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def test_full_pipeline_networkpolicy_shadows_the_banp(state: ClusterState) -> None:
    if not HAVE_NETWORKPOLICY:
        pytest.skip("kube_netpol.evaluators.networkpolicy is not there yet")
    from kube_netpol.plugins import DEFAULT_PIPELINE, build_pipeline

    engine = publishing_engine(state, build_pipeline(DEFAULT_PIPELINE))
    state.apply(banp({"subject": ALL_NAMESPACES, "ingress": [{"name": "deny-y", "action": "Deny", "from": from_ns(ns="y")}]}))
    assert not check(engine, "y/a", "x/a").allowed
    assert not check(engine, "y/a", "z/a").allowed
    # NetworkPolicy selecting x admits y: the BANP is no longer asked for x.
    state.apply(_np("x", "allow-y", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == "networkpolicy"
    assert not check(engine, "y/a", "z/a").allowed  # z has no NetworkPolicy: still the BANP
    assert check(engine, "z/a", "x/a").ingress_by == "networkpolicy"
