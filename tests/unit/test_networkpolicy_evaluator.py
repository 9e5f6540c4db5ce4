"""The NetworkPolicy evaluator through ClusterState and PolicyEngine, as the agent runs it."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_netpol.api import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    NEXT,
    EvaluatorContext,
    Packet,
    PolicyEvaluator,
    Verdict,
)
from kube_netpol.api import NO_PORT_NAMES
from kube_netpol.engine import PolicyEngine
from kube_netpol.evaluators import indexed
from kube_netpol.evaluators import networkpolicy as npmod
from kube_netpol.evaluators.networkpolicy import NetworkPolicyEvaluator, create
from kube_netpol.api import NODE_KIND
from kube_netpol.policy import rule_index
from kube_netpol.state import ClusterState, KindRegistry

# Addresses: (IPv4, IPv6) per pod.
ADDR = {
    "x/a": ("10.0.0.1", "fd00::1"),
    "x/b": ("10.0.0.2", "fd00::2"),
    "x/c": ("10.0.0.3", "fd00::3"),
    "y/a": ("10.0.1.1", "fd00:1::1"),
    "y/b": ("10.0.1.2", "fd00:1::2"),
    "z/a": ("10.0.2.1", "fd00:2::1"),
    "x/host": ("192.168.0.10", "fd99::10"),  # hostNetwork pod: the node's address, not a pod for policy
    "ext": ("192.0.2.10", "2001:db8::10"),  # not a pod at all
    "ext2": ("198.51.100.7", "2001:db8:1::7"),
}
PORTS = [
    {"name": "http", "containerPort": 80},
    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
    {"name": "diameter", "containerPort": 3868, "protocol": "SCTP"},
]


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ref: str, labels: dict | None = None, ports: list | None = None, **spec: Any) -> dict:
    ns, name = ref.split("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels if labels is not None else {"pod": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": PORTS if ports is None else ports}], **spec},
        "status": {"podIPs": [{"ip": a} for a in ADDR[ref]], "phase": "Running"},
    }


def netpol(ref: str, spec: dict) -> dict:
    ns, name = ref.split("/")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }


class Cluster:
    """The engine with only this evaluator, as the agent builds it, with helpers that speak in pod names.

    Every change is published at once, as the agent's control thread does after each batch.
    """

    def __init__(self) -> None:
        evaluator = create(EvaluatorContext())
        # Nodes too, although this evaluator does not read them: a node relabel rebuilds its pods' records.
        self.state = ClusterState(KindRegistry([*evaluator.kinds, NODE_KIND]), cluster_id="c1", node_name="node-1")
        self.engine = PolicyEngine(self.state, [evaluator])
        self.state.apply(namespace("x", team="x-team"))
        self.state.apply(namespace("y", team="y-team", env="prod"))
        self.state.apply(namespace("z"))
        for ref in ("x/a", "x/b", "x/c", "y/a", "y/b", "z/a"):
            self.state.apply(pod(ref))
        self.state.apply(pod("x/host", {"pod": "host"}, hostNetwork=True))
        self.engine.publish()
        (self.evaluator,) = self.engine.evaluators

    def apply(self, obj: dict) -> None:
        assert self.state.apply(obj), obj
        self.engine.publish()

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        deleted = self.state.delete(kind, namespace, name)
        self.engine.publish()
        return deleted

    @property
    def memo(self) -> dict:
        return self.evaluator.stage.memo  # type: ignore[attr-defined, no-any-return]

    def packet(self, src: str, dst: str, protocol: int | str = "TCP", port: int = 80, family: int = 4) -> Packet:
        i = 0 if family == 4 else 1
        return Packet.from_strings(ADDR[src][i], ADDR[dst][i], protocol, port, src_port=40000)

    def allowed(self, src: str, dst: str, protocol: int | str = "TCP", port: int = 80, family: int = 4) -> bool:
        return self.engine.evaluate(self.packet(src, dst, protocol, port, family)).allowed

    def ingress(self, src: str, dst: str, protocol: int | str = "TCP", port: int = 80, family: int = 4):
        packet = self.packet(src, dst, protocol, port, family)
        return self.evaluator.stage.evaluate_ingress(  # type: ignore[attr-defined]
            packet, self.state.pod_by_ip(packet.src), self.state.pod_by_ip(packet.dst)
        )

    def egress(self, src: str, dst: str, protocol: int | str = "TCP", port: int = 80, family: int = 4):
        packet = self.packet(src, dst, protocol, port, family)
        return self.evaluator.stage.evaluate_egress(  # type: ignore[attr-defined]
            packet, self.state.pod_by_ip(packet.src), self.state.pod_by_ip(packet.dst)
        )

    def managed(self) -> set[str]:
        ips = set(self.engine.managed.addresses)
        return {ref for ref, addrs in ADDR.items() if any(ipaddress.ip_address(a).packed in ips for a in addrs)}


@pytest.fixture
def c() -> Cluster:
    return Cluster()


FAMILIES = pytest.mark.parametrize("family", [4, 6])

# --------------------------------------------------------------- plumbing


def test_it_is_a_policy_evaluator_named_networkpolicy(c: Cluster) -> None:
    assert isinstance(c.evaluator, PolicyEvaluator)
    assert isinstance(c.evaluator, NetworkPolicyEvaluator)
    assert c.evaluator.name == "networkpolicy" and c.evaluator.ready()


def test_entry_point_builds_it() -> None:
    from kube_netpol.plugins import build_pipeline

    (evaluator,) = build_pipeline(["networkpolicy"])
    assert isinstance(evaluator, NetworkPolicyEvaluator)
    assert [kind.kind for kind in evaluator.kinds] == ["NetworkPolicy"]


def test_policies_present_before_the_engine_is_built_are_enforced() -> None:
    evaluator = create(EvaluatorContext())
    state = ClusterState(KindRegistry(evaluator.kinds), node_name="node-1")
    state.apply(namespace("x"))
    state.apply(pod("x/a"))
    state.apply(pod("x/b"))
    assert state.apply(netpol("x/deny", {"podSelector": {"matchLabels": {"pod": "a"}}}))
    engine = PolicyEngine(state, [evaluator])
    assert not engine.evaluate(Packet.from_strings("10.0.0.2", "10.0.0.1", "TCP", 80)).allowed
    assert engine.evaluate(Packet.from_strings("10.0.0.1", "10.0.0.2", "TCP", 80)).allowed
    assert set(engine.managed.addresses) == {ipaddress.ip_address(a).packed for a in ADDR["x/a"]}


# ------------------------------------------------------------- isolation


@FAMILIES
def test_without_policies_everything_is_next(c: Cluster, family: int) -> None:
    assert c.ingress("y/a", "x/a", family=family) is NEXT
    assert c.egress("x/a", "y/a", family=family) is NEXT
    assert c.allowed("ext", "x/a", family=family) and c.allowed("x/a", "ext", family=family)
    assert c.managed() == set()


@FAMILIES
def test_deny_all_ingress_isolates_selected_pods_only_for_ingress(c: Cluster, family: int) -> None:
    c.apply(netpol("x/deny-all", {"podSelector": {}}))
    for src in ("y/a", "x/b", "ext", "x/host"):
        decision = c.ingress(src, "x/a", family=family)
        assert decision.verdict is Verdict.DENY
        assert decision.policy == "x/deny-all" and "ingress" in decision.reason
        assert not c.allowed(src, "x/a", family=family)
    assert c.egress("x/a", "y/a", family=family) is NEXT  # egress is not isolated
    assert c.allowed("x/a", "y/a", family=family)
    assert c.allowed("x/a", "ext", family=family)
    assert c.ingress("x/a", "y/a", family=family) is NEXT  # other namespaces are untouched
    assert c.managed() == {"x/a", "x/b", "x/c"}


def test_pod_selector_picks_the_isolated_pods(c: Cluster) -> None:
    c.apply(netpol("x/deny-a", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}))
    assert not c.allowed("x/b", "x/a")
    assert c.allowed("x/a", "x/b")
    assert c.ingress("x/a", "x/b") is NEXT
    assert c.managed() == {"x/a"}


def test_a_policy_in_another_namespace_does_not_apply(c: Cluster) -> None:
    c.apply(netpol("y/deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert c.allowed("x/b", "x/a") and c.allowed("z/a", "x/a")
    assert c.ingress("z/a", "x/a") is NEXT and c.egress("x/a", "z/a") is NEXT
    assert not c.allowed("x/a", "y/a") and not c.allowed("y/a", "x/a")


@FAMILIES
def test_deny_all_egress(c: Cluster, family: int) -> None:
    c.apply(netpol("x/deny-egress", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}))
    for dst in ("x/b", "y/a", "ext"):
        decision = c.egress("x/a", dst, family=family)
        assert decision.verdict is Verdict.DENY and decision.policy == "x/deny-egress" and "egress" in decision.reason
    assert c.ingress("y/a", "x/a", family=family) is NEXT
    assert c.allowed("y/a", "x/a", family=family)
    assert c.allowed("x/b", "y/a", family=family)


def test_policy_types_default_adds_egress_only_with_egress_rules(c: Cluster) -> None:
    c.apply(netpol("x/both", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert not c.allowed("x/b", "x/a")  # Ingress is always a default type
    assert c.allowed("x/a", "x/b")
    assert not c.allowed("x/a", "x/c")


def test_explicit_ingress_type_ignores_egress_rules(c: Cluster) -> None:
    c.apply(netpol("x/in", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.egress("x/a", "x/c") is NEXT and c.allowed("x/a", "x/c")


def test_explicit_egress_type_ignores_ingress_rules(c: Cluster) -> None:
    c.apply(netpol("x/out", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.ingress("x/c", "x/a") is NEXT and c.allowed("x/c", "x/a")


# ------------------------------------------------------------------ peers


@FAMILIES
def test_empty_from_admits_all_sources_including_non_pods(c: Cluster, family: int) -> None:
    c.apply(netpol("x/open", {"podSelector": {}, "ingress": [{"from": []}]}))
    for src in ("x/b", "y/a", "z/a", "ext", "x/host"):
        decision = c.ingress(src, "x/a", family=family)
        assert decision.verdict is Verdict.ACCEPT and (decision.policy, decision.rule) == ("x/open", "ingress[0]")


def test_peer_pod_selector_alone_means_the_policy_namespace(c: Cluster) -> None:
    c.apply(netpol("x/from-b", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.allowed("x/b", "x/a")
    assert not c.allowed("y/b", "x/a")  # same labels, other namespace
    assert not c.allowed("x/c", "x/a")
    assert not c.allowed("ext", "x/a")


def test_peer_namespace_selector_alone_means_all_pods_there(c: Cluster) -> None:
    c.apply(netpol("x/from-y", {"podSelector": {},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]}]}))
    assert c.allowed("y/a", "x/a") and c.allowed("y/b", "x/a")
    assert not c.allowed("x/b", "x/a") and not c.allowed("z/a", "x/a") and not c.allowed("ext", "x/a")


def test_peer_namespace_selector_on_the_default_name_label(c: Cluster) -> None:
    c.apply(netpol("x/from-z", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["z"]}]}}]}]}))
    assert c.allowed("z/a", "x/a") and not c.allowed("y/a", "x/a")


def test_peer_with_both_selectors_ands_them(c: Cluster) -> None:
    c.apply(netpol("x/from-y-b", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "y-team"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.allowed("y/b", "x/a")
    assert not c.allowed("y/a", "x/a")
    assert not c.allowed("x/b", "x/a")


def test_peers_of_one_rule_are_ored(c: Cluster) -> None:
    c.apply(netpol("x/or", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "y-team"}}},
        {"podSelector": {"matchLabels": {"pod": "b"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}},
    ]}]}))
    assert c.allowed("y/a", "x/a") and c.allowed("x/b", "x/a") and c.allowed("ext", "x/a")
    assert not c.allowed("x/c", "x/a") and not c.allowed("z/a", "x/a") and not c.allowed("ext2", "x/a")


@FAMILIES
def test_non_pods_match_only_ip_blocks(c: Cluster, family: int) -> None:
    c.apply(netpol("x/pods-only", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}}, {"podSelector": {}}, {"namespaceSelector": {}, "podSelector": {}}]}]}))
    assert c.allowed("z/a", "x/a", family=family)
    assert not c.allowed("ext", "x/a", family=family)
    assert not c.allowed("x/host", "x/a", family=family)  # hostNetwork: the node's address
    c.apply(netpol("x/ext", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "192.0.2.0/24"}}, {"ipBlock": {"cidr": "2001:db8::/64"}}]}]}))
    assert c.allowed("ext", "x/a", family=family)
    assert not c.allowed("ext2", "x/a", family=family)


@FAMILIES
def test_ip_block_matches_pod_addresses_and_honours_except(c: Cluster, family: int) -> None:
    cidr, excluded = (("10.0.0.0/16", "10.0.1.0/24") if family == 4 else ("fd00::/16", "fd00:1::/32"))
    c.apply(netpol("x/block", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                               "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": [excluded]}}]}]}))
    assert c.allowed("x/a", "x/b", family=family)  # a pod, matched by its address
    assert c.allowed("x/a", "z/a", family=family)
    assert not c.allowed("x/a", "y/a", family=family)  # inside except
    assert not c.allowed("x/a", "ext", family=family)  # outside cidr


def test_ip_block_of_one_family_never_matches_the_other(c: Cluster) -> None:
    c.apply(netpol("x/v4-only", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}))
    assert c.allowed("ext", "x/a", family=4)
    assert not c.allowed("ext", "x/a", family=6)


def test_an_address_in_except_may_be_allowed_by_another_peer(c: Cluster) -> None:
    c.apply(netpol("x/overlap", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.2/32"]}}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.2/32"}}]},
    ]}))
    decision = c.egress("x/a", "x/b")
    assert decision.verdict is Verdict.ACCEPT and decision.rule == "egress[1]"
    assert c.egress("x/a", "x/c").rule == "egress[0]"


@FAMILIES
def test_egress_peers_are_matched_against_the_destination(c: Cluster, family: int) -> None:
    c.apply(netpol("x/to-y", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]},
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24" if family == 4 else "2001:db8::/64"}}]},
    ]}))
    assert c.allowed("x/a", "y/a", family=family)
    assert not c.allowed("x/a", "y/b", family=family)
    assert not c.allowed("x/a", "x/b", family=family)
    assert c.allowed("x/a", "ext", family=family)
    assert not c.allowed("x/a", "ext2", family=family)
    assert c.allowed("x/b", "ext2", family=family)  # not selected


# ------------------------------------------------------------------ ports


@FAMILIES
def test_ports_and_protocols(c: Cluster, family: int) -> None:
    c.apply(netpol("x/ports", {"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9000}]}]}))
    assert c.allowed("y/a", "x/a", "TCP", 80, family)
    assert not c.allowed("y/a", "x/a", "TCP", 81, family)
    assert not c.allowed("y/a", "x/a", "UDP", 80, family)  # TCP by default
    assert c.allowed("y/a", "x/a", "UDP", 53, family)
    assert not c.allowed("y/a", "x/a", "TCP", 53, family)
    assert c.allowed("y/a", "x/a", "SCTP", 9000, family)
    assert not c.allowed("y/a", "x/a", "TCP", 9000, family)
    icmp = IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6
    assert not c.allowed("y/a", "x/a", icmp, 0, family)  # rules with ports never match ICMP


def test_protocol_without_port_allows_every_port_of_it(c: Cluster) -> None:
    c.apply(netpol("x/udp", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))
    assert c.allowed("y/a", "x/a", "UDP", 1) and c.allowed("y/a", "x/a", "UDP", 65535)
    assert not c.allowed("y/a", "x/a", "TCP", 80)
    assert not c.allowed("y/a", "x/a", "SCTP", 80)


@FAMILIES
def test_rules_without_ports_admit_icmp_and_everything(c: Cluster, family: int) -> None:
    c.apply(netpol("x/from-y", {"podSelector": {},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]}]}))
    icmp = IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6
    assert c.allowed("y/a", "x/a", icmp, 0, family)
    assert c.allowed("y/a", "x/a", IPPROTO_SCTP, 5, family)
    assert not c.allowed("z/a", "x/a", icmp, 0, family)


def test_end_port_range_is_inclusive(c: Cluster) -> None:
    c.apply(netpol("x/range", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8080}]}]}))
    assert [p for p in (7999, 8000, 8040, 8080, 8081) if c.allowed("x/a", "ext", "TCP", p)] == [8000, 8040, 8080]
    assert not c.allowed("x/a", "ext", "UDP", 8040)


def test_named_port_resolves_on_the_destination_for_ingress(c: Cluster) -> None:
    c.apply(pod("x/c", {"pod": "c"}, ports=[{"name": "http", "containerPort": 8080}]))
    c.apply(netpol("x/http", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))
    assert c.allowed("y/a", "x/a", "TCP", 80) and not c.allowed("y/a", "x/a", "TCP", 8080)
    assert c.allowed("y/a", "x/c", "TCP", 8080) and not c.allowed("y/a", "x/c", "TCP", 80)
    assert not c.allowed("y/a", "x/a", "UDP", 80)


def test_named_port_whose_container_port_has_another_protocol(c: Cluster) -> None:
    # "dns" is UDP 53 on every pod; the rule's protocol defaults to TCP, so it admits nothing.
    c.apply(netpol("x/dns-tcp", {"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}))
    assert not c.allowed("y/a", "x/a", "UDP", 53)
    assert not c.allowed("y/a", "x/a", "TCP", 53)
    c.apply(netpol("x/dns-udp", {"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}))
    assert c.allowed("y/a", "x/a", "UDP", 53)
    assert not c.allowed("y/a", "x/a", "TCP", 53)
    c.apply(netpol("x/sctp", {"podSelector": {}, "ingress": [{"ports": [{"port": "diameter", "protocol": "SCTP"}]}]}))
    assert c.allowed("y/a", "x/a", "SCTP", 3868) and not c.allowed("y/a", "x/a", "TCP", 3868)


def test_named_port_on_egress_resolves_on_the_destination(c: Cluster) -> None:
    c.apply(pod("y/b", {"pod": "b"}, ports=[{"name": "http", "containerPort": 8080}]))
    c.apply(netpol("x/out-http", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                                  "egress": [{"ports": [{"port": "http"}]}]}))
    assert c.allowed("x/a", "y/a", "TCP", 80)  # y/a declares http=80
    assert not c.allowed("x/a", "y/a", "TCP", 8080)
    assert c.allowed("x/a", "y/b", "TCP", 8080)  # y/b declares http=8080, not the source's 80
    assert not c.allowed("x/a", "y/b", "TCP", 80)
    assert not c.allowed("x/a", "ext", "TCP", 80)  # not a pod: a named port cannot resolve


# -------------------------------------------------------- several policies


def test_policies_add_up_and_the_first_by_name_decides(c: Cluster) -> None:
    c.apply(netpol("x/b-from-z", {"podSelector": {"matchLabels": {"pod": "a"}},
                                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))
    c.apply(netpol("x/a-from-y", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"ports": [{"port": 443}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]},
    ]}))
    c.apply(netpol("x/c-all-80", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert (c.ingress("y/a", "x/a").policy, c.ingress("y/a", "x/a").rule) == ("x/a-from-y", "ingress[1]")
    assert (c.ingress("z/a", "x/a").policy, c.ingress("z/a", "x/a").rule) == ("x/b-from-z", "ingress[0]")
    assert (c.ingress("x/b", "x/a").policy, c.ingress("x/b", "x/a").rule) == ("x/c-all-80", "ingress[0]")
    assert (c.ingress("z/a", "x/a", port=443).policy, c.ingress("z/a", "x/a", port=443).rule) == ("x/a-from-y", "ingress[0]")
    denied = c.ingress("x/b", "x/a", port=81)
    assert denied.verdict is Verdict.DENY
    assert denied.policy == "x/a-from-y, x/b-from-z, x/c-all-80"
    assert "x/a-from-y, x/b-from-z, x/c-all-80" in denied.reason
    # x/b is selected only by x/c-all-80
    assert c.ingress("y/a", "x/b", port=81).policy == "x/c-all-80"


def test_decisions_are_precompiled_objects(c: Cluster) -> None:
    c.apply(netpol("x/from-y", {"podSelector": {},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]}]}))
    assert c.ingress("y/a", "x/a") is c.ingress("y/b", "x/a", port=443)
    assert c.ingress("z/a", "x/a") is c.ingress("z/a", "x/a", port=22)
    assert c.ingress("y/a", "x/a") is c.state.objects("NetworkPolicy")[("x", "from-y")].ingress[0].decision


# ---------------------------------------------------------- state changes


def test_deleting_a_policy_restores_access(c: Cluster) -> None:
    c.apply(netpol("x/deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert not c.allowed("y/a", "x/a") and not c.allowed("x/a", "y/a")
    assert c.delete("NetworkPolicy", "x", "deny-all")
    assert c.allowed("y/a", "x/a") and c.allowed("x/a", "y/a")
    assert c.ingress("y/a", "x/a") is NEXT
    assert c.managed() == set()


def test_updating_a_policy_changes_the_verdict(c: Cluster) -> None:
    c.apply(netpol("x/p", {"podSelector": {"matchLabels": {"pod": "a"}}}))
    assert not c.allowed("y/a", "x/a") and c.allowed("y/a", "x/b")
    c.apply(netpol("x/p", {"podSelector": {"matchLabels": {"pod": "b"}}}))  # same pods, same PodInfo objects
    assert c.allowed("y/a", "x/a") and not c.allowed("y/a", "x/b")
    assert c.managed() == {"x/b"}
    c.apply(netpol("x/p", {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    assert c.allowed("x/c", "x/b") and not c.allowed("y/a", "x/b")


def test_relabelling_the_target_pod_changes_its_isolation(c: Cluster) -> None:
    c.apply(netpol("x/deny-web", {"podSelector": {"matchLabels": {"role": "web"}}}))
    assert c.allowed("y/a", "x/a")
    c.apply(pod("x/a", {"pod": "a", "role": "web"}))
    assert not c.allowed("y/a", "x/a")
    assert c.managed() == {"x/a"}
    c.apply(pod("x/a", {"pod": "a"}))
    assert c.allowed("y/a", "x/a")
    assert c.managed() == set()


def test_relabelling_the_source_pod_changes_the_verdict(c: Cluster) -> None:
    c.apply(netpol("x/from-client", {"podSelector": {},
                                     "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]}))
    assert not c.allowed("y/a", "x/a")
    c.apply(pod("y/a", {"pod": "a", "role": "client"}))
    assert c.allowed("y/a", "x/a")
    c.apply(pod("y/a", {"pod": "a"}))
    assert not c.allowed("y/a", "x/a")


def test_relabelling_a_namespace_changes_the_verdict(c: Cluster) -> None:
    c.apply(netpol("x/from-trusted", {"podSelector": {},
                                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"trusted": "yes"}}}]}]}))
    c.apply(netpol("z/to-trusted", {"podSelector": {}, "policyTypes": ["Egress"],
                                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"trusted": "yes"}}}]}]}))
    assert not c.allowed("z/a", "x/a")
    assert not c.allowed("z/a", "y/a")
    c.apply(namespace("z", trusted="yes"))
    c.apply(namespace("y", team="y-team", env="prod", trusted="yes"))
    assert c.allowed("z/a", "x/a") is False  # z's egress allows only trusted destinations; x is not
    assert c.allowed("z/a", "y/a")
    assert c.ingress("z/a", "x/a").verdict is Verdict.ACCEPT
    c.apply(namespace("z"))
    assert c.ingress("z/a", "x/a").verdict is Verdict.DENY


def test_a_deleted_pod_is_not_a_peer_any_more(c: Cluster) -> None:
    c.apply(netpol("x/from-b", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.allowed("x/b", "x/a")
    c.delete("Pod", "x", "b")
    assert not c.allowed("x/b", "x/a")  # its address is no pod now
    assert c.managed() == {"x/a", "x/c"}


def test_node_relabel_keeps_verdicts_right(c: Cluster) -> None:
    c.apply(netpol("x/from-b", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert c.allowed("x/b", "x/a") and not c.allowed("x/c", "x/a")
    entries = dict(c.memo)
    c.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}}})
    assert all(c.state.pod(key).node_labels == {"zone": "a"} for key in (("x", "a"), ("x", "b")))
    assert c.allowed("x/b", "x/a") and not c.allowed("x/c", "x/a")
    # Entries are keyed on the pods' labels, which a node relabel leaves as they are: all are reused.
    assert all(c.memo[key] is entry for key, entry in entries.items())


# ------------------------------------------------------------- managed IPs


def test_managed_ips_are_selected_policy_targets_in_either_direction(c: Cluster) -> None:
    c.apply(netpol("x/egress-a", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}))
    c.apply(netpol("y/ingress-b", {"podSelector": {"matchLabels": {"pod": "b"}}}))
    c.apply(netpol("x/all-hosts", {"podSelector": {"matchLabels": {"pod": "host"}}}))  # hostNetwork: never managed
    assert c.managed() == {"x/a", "y/b"}
    c.apply(netpol("x/egress-a", {"podSelector": {"matchLabels": {"pod": "nobody"}}, "policyTypes": ["Egress"]}))
    assert c.managed() == {"y/b"}
    c.apply(pod("y/a", {"pod": "b"}))
    assert c.managed() == {"y/a", "y/b"}
    c.delete("NetworkPolicy", "y", "ingress-b")
    assert c.managed() == set()


def test_managed_ips_count_overlapping_policies(c: Cluster) -> None:
    c.apply(netpol("x/p1", {"podSelector": {"matchLabels": {"pod": "a"}}}))
    c.apply(netpol("x/p2", {"podSelector": {}}))
    assert c.managed() == {"x/a", "x/b", "x/c"}
    c.delete("NetworkPolicy", "x", "p2")
    assert c.managed() == {"x/a"}  # still selected by p1
    c.delete("NetworkPolicy", "x", "p1")
    assert c.managed() == set()


def test_each_change_is_one_snapshot(c: Cluster) -> None:
    generation = c.engine.generation
    c.apply(netpol("x/p", {"podSelector": {}}))
    c.apply(pod("x/a", {"pod": "a2"}))
    c.apply(namespace("x", team="other"))
    assert c.engine.generation == generation + 3


# ----------------------------------------------------------- memo behaviour


def test_evaluation_does_not_scan_policies_that_do_not_select_the_pod(c: Cluster, monkeypatch) -> None:
    for i in range(200):
        c.apply(netpol(f"x/other-{i:03d}", {"podSelector": {"matchLabels": {"app": f"other-{i}"}}}))
    c.apply(netpol("x/from-y", {"podSelector": {"matchLabels": {"pod": "a"}},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]}]}))
    assert c.ingress("y/a", "x/a").verdict is Verdict.ACCEPT  # fills the memo
    selects_calls = 0
    real = npmod.NetworkPolicy.selects

    def counting(self, labels):  # type: ignore[no-untyped-def]
        nonlocal selects_calls
        selects_calls += 1
        return real(self, labels)

    monkeypatch.setattr(npmod.NetworkPolicy, "selects", counting)
    for port in range(1000, 1100):
        assert c.ingress("y/a", "x/a", port=port).verdict is Verdict.ACCEPT
        assert c.ingress("z/a", "x/a", port=port).verdict is Verdict.DENY
    # z/a's first sight scans z's policies (none); x's 201 policies are never scanned again.
    assert selects_calls == 0


def test_memo_is_bounded(c: Cluster, monkeypatch) -> None:
    monkeypatch.setattr(indexed, "MEMO_SIZE", 3)
    c.apply(netpol("x/from-b", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    for src in ("x/b", "x/c", "y/a", "y/b", "z/a", "x/b"):
        c.allowed(src, "x/a")
        assert len(c.memo) <= 3
    assert c.ingress("x/b", "x/a").verdict is Verdict.ACCEPT
    assert c.ingress("x/c", "x/a").verdict is Verdict.DENY


def test_a_policy_change_during_a_miss_leaves_the_stale_entry_in_the_replaced_memo(c: Cluster, monkeypatch) -> None:
    # The packet thread is building x/b's entry from the old policies when the control thread deletes one.
    monkeypatch.setattr(indexed, "MEMO_SIZE", 1)  # and the memo is full: the store also empties it
    c.apply(netpol("x/deny-all", {"podSelector": {}}))
    assert c.ingress("y/a", "x/a").verdict is Verdict.DENY
    old = c.evaluator.stage
    real_rules = old._rules
    racing = True

    def rules_while_the_policy_goes(*args):  # type: ignore[no-untyped-def]
        nonlocal racing
        if racing:
            racing = False
            c.delete("NetworkPolicy", "x", "deny-all")
        return real_rules(*args)

    monkeypatch.setattr(old, "_rules", rules_while_the_policy_goes)
    packet = c.packet("y/a", "x/b")
    # The packet holds the stage it read: decided from the old policies, as it began.
    assert old.evaluate_ingress(packet, c.state.pod_by_ip(packet.src), c.state.pod_by_ip(packet.dst)).verdict is Verdict.DENY
    assert not racing and c.evaluator.stage is not old
    assert c.ingress("y/a", "x/b").verdict is Verdict.NEXT  # the entry built from the old policies is not in the new memo


def test_a_peer_namespace_relabel_keeps_the_targets_entries(c: Cluster) -> None:
    c.apply(netpol("x/from-y", {"podSelector": {},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}]}]}))
    assert c.allowed("y/a", "x/a") and c.allowed("y/b", "x/b")
    entries = dict(c.memo)
    assert all(id(c.state.pod(key).labels) in entries for key in (("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")))
    c.apply(namespace("y", team="gone"))
    assert not c.allowed("y/a", "x/a")
    assert c.memo == entries  # peers are read as they are now; the targets' rules did not change


def test_a_relabelled_pod_gets_a_new_entry(c: Cluster) -> None:
    c.apply(netpol("x/deny-web", {"podSelector": {"matchLabels": {"role": "web"}}}))
    assert c.allowed("y/a", "x/a")
    old_labels = c.state.pod(("x", "a")).labels
    old_entry = c.memo[id(old_labels)]
    assert old_entry.ingress is None
    c.apply(pod("x/a", {"pod": "a", "role": "web"}))
    assert not c.allowed("y/a", "x/a")
    new_labels = c.state.pod(("x", "a")).labels
    assert new_labels is not old_labels and c.memo[id(new_labels)].ingress is not None
    # The old labels' entry stays until the memo is full; it answers for no record of the new labels.
    assert c.memo[id(old_labels)] is old_entry and old_entry.labels is not new_labels


# ------------------------------------------------ many rules: the port index


def test_first_rule_in_order_decides_whichever_way_it_is_indexed(c: Cluster) -> None:
    a = {"matchLabels": {"pod": "a"}}
    c.apply(netpol("x/a-named", {"podSelector": a, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}], "ports": [{"port": "http"}]}]}))
    c.apply(netpol("x/b-all", {"podSelector": a, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    c.apply(netpol("x/c-80", {"podSelector": a, "ingress": [{"ports": [{"port": 79, "endPort": 80}]}]}))
    c.apply(netpol("x/d-tcp", {"podSelector": a, "ingress": [
        {"ports": [{"protocol": "TCP"}]}, {"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}))

    def decided(src: str, protocol: str | int = "TCP", port: int = 80) -> tuple:
        decision = c.ingress(src, "x/a", protocol, port)
        return decision.policy, decision.rule

    assert decided("y/a") == ("x/a-named", "ingress[0]")  # named port http = 80 on x/a, before the rest
    assert decided("x/b") == ("x/b-all", "ingress[0]")
    assert decided("z/a") == ("x/c-80", "ingress[0]")
    assert decided("z/a", port=81) == ("x/d-tcp", "ingress[0]")
    assert decided("ext", "UDP", 5) == ("x/d-tcp", "ingress[1]")
    assert decided("x/b", IPPROTO_ICMP, 0) == ("x/b-all", "ingress[0]")
    assert c.ingress("y/a", "x/a", "UDP", 53).verdict is Verdict.DENY
    assert c.ingress("z/a", "x/a", IPPROTO_ICMP, 0).policy == "x/a-named, x/b-all, x/c-80, x/d-tcp"


def test_an_earlier_rule_wins_over_a_later_one_of_another_kind(c: Cluster) -> None:
    c.apply(netpol("x/a-80", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    c.apply(netpol("x/b-http", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))
    c.apply(netpol("x/c-tcp", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP"}]}]}))
    c.apply(netpol("x/d-any", {"podSelector": {}, "ingress": [{}]}))
    assert c.ingress("y/a", "x/a", port=80).policy == "x/a-80"  # all four admit it
    c.delete("NetworkPolicy", "x", "a-80")
    assert c.ingress("y/a", "x/a", port=80).policy == "x/b-http"
    c.delete("NetworkPolicy", "x", "b-http")
    assert c.ingress("y/a", "x/a", port=80).policy == "x/c-tcp"
    assert c.ingress("y/a", "x/a", "UDP", 80).policy == "x/d-any"


def test_egress_named_ports_follow_the_destination_among_many_rules(c: Cluster) -> None:
    c.apply(pod("y/b", {"pod": "b"}, ports=[{"name": "http", "containerPort": 8080}]))
    c.apply(netpol("x/a-http", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}))
    c.apply(netpol("x/b-8080", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 8080}]}]}))
    for i in range(50):
        c.apply(netpol(f"x/c-{i:02d}", {"podSelector": {}, "policyTypes": ["Egress"],
                                        "egress": [{"ports": [{"port": 9000 + i}]}]}))
    assert c.egress("x/a", "y/b", port=8080).policy == "x/a-http"  # y/b names 8080 http
    assert c.egress("x/a", "y/a", port=8080).policy == "x/b-8080"  # y/a's http is 80
    assert c.egress("x/a", "y/a", port=80).policy == "x/a-http"
    assert c.egress("x/a", "ext", port=80).verdict is Verdict.DENY  # not a pod: no named port
    assert c.egress("x/a", "ext", port=9042).policy == "x/c-42"
    assert c.egress("x/a", "y/b", "UDP", 8080).verdict is Verdict.DENY


def test_rules_that_cannot_match_the_port_are_not_tried(c: Cluster, monkeypatch) -> None:
    for i in range(300):
        c.apply(netpol(f"x/port-{i:03d}", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "y-team"}}}], "ports": [{"port": 1000 + i}]}]}))
    assert c.ingress("y/a", "x/a", port=1150).policy == "x/port-150"  # fills the memo and the index
    tried: list[str] = []
    real_admits, real_admits_peer = npmod.NetworkPolicyRule.admits, npmod.NetworkPolicyRule.admits_peer

    def admits(self, *args):  # type: ignore[no-untyped-def]
        tried.append(self.decision.policy)
        return real_admits(self, *args)

    def admits_peer(self, *args):  # type: ignore[no-untyped-def]
        tried.append(self.decision.policy)
        return real_admits_peer(self, *args)

    monkeypatch.setattr(npmod.NetworkPolicyRule, "admits", admits)
    monkeypatch.setattr(npmod.NetworkPolicyRule, "admits_peer", admits_peer)
    assert c.ingress("y/a", "x/a", port=1299).policy == "x/port-299"
    assert c.ingress("z/a", "x/a", port=1150).verdict is Verdict.DENY
    assert tried == ["x/port-299", "x/port-150"]  # one rule each: the one whose port matches
    tried.clear()
    assert c.ingress("y/a", "x/a", port=80).verdict is Verdict.DENY
    assert c.ingress("y/a", "x/a", "UDP", 1150).verdict is Verdict.DENY
    assert c.ingress("y/a", "x/a", IPPROTO_ICMP, 0).verdict is Verdict.DENY
    assert tried == []


def test_pods_selected_by_the_same_policies_share_one_index(c: Cluster) -> None:
    c.apply(netpol("x/all", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    c.apply(netpol("y/all", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert c.ingress("z/a", "x/a").verdict is Verdict.ACCEPT and c.ingress("z/a", "x/b").verdict is Verdict.ACCEPT
    assert c.ingress("z/a", "y/a").verdict is Verdict.ACCEPT

    def index_of(ref: str):  # type: ignore[no-untyped-def]
        record = c.state.pod_by_ip(ipaddress.ip_address(ADDR[ref][0]).packed)
        return c.memo[id(record.labels)].ingress

    x_index, y_index = index_of("x/a"), index_of("y/a")
    assert x_index is index_of("x/b") and x_index is not y_index
    c.apply(netpol("y/all", {"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}))
    assert c.ingress("z/a", "x/a").verdict is Verdict.ACCEPT and c.ingress("z/a", "y/a").verdict is Verdict.DENY
    assert index_of("x/a") is x_index  # nothing changed in x: its index is reused
    assert index_of("y/a") is not y_index


_PEERS = [
    {"podSelector": {"matchLabels": {"pod": "b"}}},
    {"namespaceSelector": {"matchLabels": {"team": "y-team"}}},
    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}},
    {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/30"]}},
    {"ipBlock": {"cidr": "192.0.2.0/24"}},
]
_PORT_ENTRIES = st.one_of(
    st.builds(lambda p, proto: {"port": p, "protocol": proto}, st.sampled_from([53, 80, 443, 8080]),
              st.sampled_from(["TCP", "UDP"])),
    st.builds(lambda p, end: {"port": p, "endPort": end}, st.sampled_from([50, 80, 81]), st.sampled_from([81, 9000])),
    st.builds(lambda proto: {"protocol": proto}, st.sampled_from(["TCP", "UDP", "SCTP"])),
    st.builds(lambda name, proto: {"port": name, "protocol": proto}, st.sampled_from(["http", "dns"]),
              st.sampled_from(["TCP", "UDP"])),
)
_RULE = st.fixed_dictionaries({}, optional={"peers": st.lists(st.sampled_from(_PEERS), max_size=2),
                                            "ports": st.lists(_PORT_ENTRIES, max_size=3)})
_POLICY = st.tuples(
    st.sampled_from(["x/p1", "x/p2", "x/p3", "x/p4", "y/p1"]),
    st.sampled_from([{}, {"matchLabels": {"pod": "a"}}]),
    st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    st.lists(_RULE, max_size=4),
    st.lists(_RULE, max_size=4),
)
_ENDPOINTS = ["x/a", "x/c", "y/a", "y/b", "ext"]


def _reference(state: ClusterState, direction: str, packet: Packet) -> Any:
    """The decision by trying every rule of every isolating policy in order, as the API describes it."""
    src, dst = state.pod_by_ip(packet.src), state.pod_by_ip(packet.dst)
    target, peer, address = (dst, src, packet.src) if direction == "ingress" else (src, dst, packet.dst)
    if target is None:
        return NEXT
    policies = sorted(
        (p for (ns, _), p in state.objects("NetworkPolicy").items()
         if ns == target.namespace and p.selects(dict(target.labels))
         and (p.isolates_ingress if direction == "ingress" else p.isolates_egress)),
        key=lambda p: p.name,
    )
    if not policies:
        return NEXT
    labels = None if peer is None else dict(peer.labels)
    namespace = "" if peer is None else peer.namespace
    namespace_labels = {} if peer is None else dict(peer.namespace_labels)
    receiver_ports = NO_PORT_NAMES if dst is None else dst.port_names
    for policy in policies:
        for rule in getattr(policy, direction):
            if rule.admits(address, labels, namespace, namespace_labels, packet.protocol, packet.dst_port, receiver_ports):
                return rule.decision
    return (Verdict.DENY, ", ".join(p.ref for p in policies))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policies=st.lists(_POLICY, min_size=1, max_size=5), cap=st.sampled_from([None, 0]))
def test_indexed_evaluation_decides_as_trying_every_rule_in_order(monkeypatch, policies: list, cap: int | None) -> None:
    if cap is not None:
        monkeypatch.setattr(rule_index, "MAX_SEGMENT_ENTRIES", cap)  # every numbered rule left to be checked
    cluster = Cluster()
    cluster.apply(pod("x/c", {"pod": "c"}, ports=[{"name": "http", "containerPort": 8080},
                                                 {"name": "dns", "containerPort": 53}]))
    cluster.apply(pod("y/b", {"pod": "b"}, ports=[{"name": "http", "containerPort": 443}]))
    for ref, selector, types, ingress, egress in policies:
        def rules(raw: list, field: str) -> list:
            return [{**({field: r["peers"]} if "peers" in r else {}), **({"ports": r["ports"]} if "ports" in r else {})}
                    for r in raw]
        cluster.apply(netpol(ref, {"podSelector": selector, "policyTypes": types,
                                   "ingress": rules(ingress, "from"), "egress": rules(egress, "to")}))
    for src in _ENDPOINTS:
        for dst in _ENDPOINTS:
            for protocol in ("TCP", "UDP", "SCTP", IPPROTO_ICMP):
                for port in ((0,) if protocol == IPPROTO_ICMP else (1, 53, 80, 81, 443, 8080, 9001)):
                    packet = cluster.packet(src, dst, protocol, port)
                    for direction in ("ingress", "egress"):
                        got = getattr(cluster, direction)(src, dst, protocol, port)
                        want = _reference(cluster.state, direction, packet)
                        if isinstance(want, tuple):
                            assert (got.verdict, got.policy) == want, (direction, src, dst, protocol, port)
                        else:
                            assert got is want, (direction, src, dst, protocol, port, got, want)
