"""The ClusterNetworkPolicy tiers against NetworkPolicy, driven through ClusterState and the PolicyEngine."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine import PolicyEngine
from kube_netpol.evaluators.clusternetworkpolicy import create_admin, create_baseline
from kube_netpol.evaluators.networkpolicy import create as np_create
from kube_netpol.plugins import BUILTIN_ORDER, registry_for
from unit_standins import PublishingState, publishing_engine

API = "policy.networking.k8s.io/v1alpha2"
ADDR = {"x/a": "10.0.1.10", "x/b": "10.0.1.11", "y/a": "10.0.2.10", "z/a": "10.0.3.10"}
ADDR6 = {"x/a": "fd00:1::10", "y/a": "fd00:2::10"}
PIPELINE = ("clusternetworkpolicy-admin", "networkpolicy", "clusternetworkpolicy-baseline")


@pytest.fixture
def state() -> PublishingState:
    state = PublishingState(registry_for(PIPELINE))
    for name in ("x", "y", "z"):
        assert state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name}}})
    for ref, ip in ADDR.items():
        ns, name = ref.split("/")
        assert state.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
            "status": {"podIPs": [{"ip": ip}] + ([{"ip": ADDR6[ref]}] if ref in ADDR6 else [])},
        })  # fmt: skip
    return state


def engine_for(state: PublishingState) -> PolicyEngine:
    context = EvaluatorContext()
    return publishing_engine(state, [create_admin(context), np_create(context), create_baseline(context)])


def cnp(name: str, tier: str, priority: int, subject_ns: str, **rules: Any) -> dict[str, Any]:
    spec = {"tier": tier, "priority": priority, "subject": {"namespaces": {"matchLabels": {"ns": subject_ns}}}, **rules}
    return {"apiVersion": API, "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def from_ns(ns: str) -> list[dict[str, Any]]:
    return [{"namespaces": {"matchLabels": {"ns": ns}}}]


def deny_ingress_np(ns: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def check(engine: PolicyEngine, src: str, dst: str, port: int = 80, protocol: str = "TCP", table: dict[str, str] = ADDR):
    return engine.evaluate(Packet.from_strings(table.get(src, src), table.get(dst, dst), protocol, port))


def test_the_agent_order_puts_the_tiers_around_networkpolicy() -> None:
    order = list(BUILTIN_ORDER)
    assert order.index("clusternetworkpolicy-admin") < order.index("networkpolicy") < order.index("clusternetworkpolicy-baseline")


def test_admin_accept_and_deny_are_final_over_networkpolicy(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(deny_ingress_np("x"))
    state.apply(cnp("a", "Admin", 5, "x", ingress=[{"name": "y-in", "action": "Accept", "from": from_ns("y")}]))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed and (judgement.ingress_by, judgement.ingress.policy, judgement.ingress.rule) == ("clusternetworkpolicy-admin", "a", "y-in")
    assert not check(engine, "z/a", "x/a").allowed  # NetworkPolicy decides what Admin does not
    state.apply(cnp("b", "Admin", 6, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "deny"},
                 "spec": {"podSelector": {}, "ingress": [{}]}})
    assert check(engine, "z/a", "x/a").verdict is Verdict.DENY  # Admin Deny beats an allowing NetworkPolicy


def test_priority_order_and_written_order(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("late", "Admin", 50, "x", ingress=[{"action": "Accept", "from": from_ns("y")}]))
    state.apply(cnp("early", "Admin", 1, "x", ingress=[{"name": "first", "action": "Deny", "from": from_ns("y"), "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                                                       {"name": "second", "action": "Accept", "from": from_ns("y")}]))
    assert check(engine, "y/a", "x/a", 80).ingress.rule == "first"
    assert check(engine, "y/a", "x/a", 81).ingress.rule == "second"


def test_equal_priority_is_ordered_by_name_and_logged(state: PublishingState, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_for(state)
    with caplog.at_level(logging.WARNING):
        state.apply(cnp("zeta", "Admin", 3, "x", ingress=[{"action": "Accept", "from": from_ns("y")}]))
        state.apply(cnp("alpha", "Admin", 3, "x", ingress=[{"action": "Deny", "from": from_ns("y")}]))
    assert check(engine, "y/a", "x/a").ingress.policy == "alpha"
    assert any("ambiguous" in record.getMessage() and "alpha, zeta" in record.getMessage() for record in caplog.records)


def test_the_ambiguous_order_is_logged_when_the_equal_priority_groups_change(
    state: PublishingState, caplog: pytest.LogCaptureFixture
) -> None:
    engine_for(state)

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "ClusterNetworkPolicies of tier Admin" in r.getMessage()]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO):
        state.apply(cnp("zeta", "Admin", 3, "x", ingress=[{"action": "Accept", "from": from_ns("y")}]))
        state.apply(cnp("alpha", "Admin", 3, "x", ingress=[{"action": "Deny", "from": from_ns("y")}]))
        assert len(lines()) == 1
        # Changes that leave the groups as they are log nothing: another policy, a rule edit, a pod.
        state.apply(cnp("other", "Admin", 9, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
        state.apply(cnp("zeta", "Admin", 3, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
        assert lines() == []
        state.apply(cnp("beta", "Admin", 9, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
        (line,) = lines()
        assert "priority 3: alpha, zeta; priority 9: beta, other" in line and "2 priorities, 4 policies" in line
        state.apply(cnp("beta", "Admin", 8, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
        (line,) = lines()
        assert "(1 priorities, 2 policies)" in line and line.endswith("priority 3: alpha, zeta")
        state.apply(cnp("zeta", "Admin", 4, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
        assert lines() == ["no two ClusterNetworkPolicies of tier Admin share a priority any more"]
        state.delete("ClusterNetworkPolicy", "", "alpha")
        assert lines() == []


def test_the_ambiguous_order_line_is_bounded(state: PublishingState, caplog: pytest.LogCaptureFixture) -> None:
    engine_for(state)
    with caplog.at_level(logging.WARNING):
        for i in range(60):
            state.apply(cnp(f"p{i:02d}", "Admin", i % 12, "x", ingress=[{"action": "Deny", "from": from_ns("z")}]))
    last = [r.getMessage() for r in caplog.records if "share a priority" in r.getMessage()][-1]
    assert "12 priorities, 60 policies" in last and "and 2 more priorities" in last and "and 0 more" not in last
    assert len(last) < 1000


def test_admin_pass_goes_to_networkpolicy_then_baseline(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("pass", "Admin", 1, "x", ingress=[{"name": "hand-on", "action": "Pass", "from": from_ns("y")}]))
    state.apply(cnp("deny-all", "Admin", 2, "x", ingress=[{"action": "Deny", "from": from_ns("y")}]))
    state.apply(cnp("base", "Baseline", 1, "x", ingress=[{"name": "base-deny", "action": "Deny", "from": from_ns("y")}]))
    # No NetworkPolicy selects x/a: Pass skips the rest of Admin, Baseline decides.
    judgement = check(engine, "y/a", "x/a")
    assert judgement.verdict is Verdict.DENY and (judgement.ingress_by, judgement.ingress.rule) == ("clusternetworkpolicy-baseline", "base-deny")
    # A NetworkPolicy selects x/a for ingress and allows y: it decides, Baseline is not asked.
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "allow-y"},
                 "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}})
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == "networkpolicy"


def test_baseline_applies_only_where_no_networkpolicy_selects_that_direction(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("base", "Baseline", 1, "x", egress=[{"name": "no-z", "action": "Deny", "to": from_ns("z")}],
                    ingress=[{"action": "Deny", "from": from_ns("z")}]))
    assert not check(engine, "x/a", "z/a").allowed
    # An ingress-only NetworkPolicy on x: egress of x still falls to Baseline, ingress no longer.
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "in"},
                 "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}})
    assert check(engine, "x/a", "z/a").verdict is Verdict.DENY and check(engine, "x/a", "z/a").egress.rule == "no-z"
    assert check(engine, "z/a", "x/a").allowed


def test_baseline_pass_ends_the_tier_default_allow(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("b1", "Baseline", 1, "x", ingress=[{"action": "Pass", "from": from_ns("y")}]))
    state.apply(cnp("b2", "Baseline", 2, "x", ingress=[{"action": "Deny", "from": from_ns("y")}]))
    assert check(engine, "y/a", "x/a").allowed


def test_egress_peers_networks_nodes_pods_and_ranges(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"role": "infra"}},
                 "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}})
    state.apply(cnp("e", "Admin", 1, "x", egress=[
        {"name": "nodes", "action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]},
        {"name": "range", "action": "Accept", "to": [{"networks": ["192.0.2.0/24", "2001:db8::/32"]}],
         "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}}]},
        {"name": "net-pods", "action": "Deny", "to": [{"networks": ["10.0.3.0/24"]}]},
        {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
    ]))  # fmt: skip
    assert check(engine, "x/a", "172.18.0.2").egress.rule == "nodes"
    assert check(engine, "x/a", "192.0.2.9", 8100).allowed
    assert check(engine, "x/a", "192.0.2.9", 8101).egress.rule == "rest"
    assert check(engine, "x/a", "2001:db8::1", 8000, table=ADDR6).allowed
    assert check(engine, "x/a", "z/a").egress.rule == "net-pods"  # networks match pod addresses too
    assert check(engine, "x/a", "2001:db9::1", 8000, table=ADDR6).egress.rule == "rest"


def test_named_port_resolves_on_the_receiving_pod(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("n", "Admin", 1, "x", ingress=[{"name": "web", "action": "Deny", "from": from_ns("y"), "protocols": [{"destinationNamedPort": "web"}]}]))
    assert check(engine, "y/a", "x/a", 8080).ingress.rule == "web"
    assert check(engine, "y/a", "x/a", 8080, "UDP").allowed
    assert check(engine, "y/a", "x/a", 8081).allowed


def test_an_invalid_update_keeps_the_last_valid_version(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("v", "Admin", 1, "x", ingress=[{"action": "Deny", "from": from_ns("y")}]))
    bad = cnp("v", "Admin", 1, "x", ingress=[{"action": "Allow", "from": from_ns("y")}])
    state.apply(bad)
    assert check(engine, "y/a", "x/a").verdict is Verdict.DENY


def test_domain_name_peers_alone_accept_nothing(state: PublishingState) -> None:
    engine = engine_for(state)
    state.apply(cnp("d", "Admin", 1, "x", egress=[{"name": "dns", "action": "Accept", "to": [{"domainNames": ["example.com"]}]},
                                                  {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]))
    assert check(engine, "x/a", "93.184.216.34", 443).egress.rule == "rest"
