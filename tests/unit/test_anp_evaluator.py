"""The AdminNetworkPolicy evaluator, driven through ClusterState and the PolicyEngine."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine import PolicyEngine
from kube_netpol.evaluators import adminnetworkpolicy as anp_module
from kube_netpol.evaluators.adminnetworkpolicy import create as anp_create
from kube_netpol.evaluators.baselineadminnetworkpolicy import create as banp_create
from kube_netpol.plugins import registry_for
from kube_netpol.policy.selectors import LabelSelector
from unit_standins import PublishingState, publishing_engine

ClusterState = PublishingState

API = "policy.networking.k8s.io/v1alpha1"
HAVE_NETWORKPOLICY = importlib.util.find_spec("kube_netpol.evaluators.networkpolicy") is not None

# ----------------------------------------------------------------- builders


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    ns: str,
    name: str,
    ips: list[str],
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    node: str = "",
    host_network: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels if labels is not None else {"pod": name}},
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [{"name": "c", "ports": ports or []}],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
    }


def node(name: str, ips: list[str], **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]},
    }


def anp(name: str, priority: int, subject: dict[str, Any], ingress: list[Any] | None = None, egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"priority": priority, "subject": subject}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": API, "kind": "AdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def banp(subject: dict[str, Any], ingress: list[Any] | None = None, egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"subject": subject}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": API, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"}, "spec": spec}


def ns_sel(**labels: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": labels}}


def pods_sel(ns_labels: dict[str, str], pod_labels: dict[str, str]) -> dict[str, Any]:
    return {"pods": {"namespaceSelector": {"matchLabels": ns_labels}, "podSelector": {"matchLabels": pod_labels}}}


def rule(action: str, peers: list[Any], name: str = "", ports: list[Any] | None = None, direction: str = "from") -> dict[str, Any]:
    out: dict[str, Any] = {"action": action, direction: peers}
    if name:
        out["name"] = name
    if ports is not None:
        out["ports"] = ports
    return out


def egress_rule(action: str, peers: list[Any], name: str = "", ports: list[Any] | None = None) -> dict[str, Any]:
    return rule(action, peers, name, ports, direction="to")


def tcp(port: int) -> dict[str, Any]:
    return {"portNumber": {"protocol": "TCP", "port": port}}


# Pods: x/a 10.0.1.10, x/b 10.0.1.11, y/a 10.0.2.10, y/b 10.0.2.11, z/a 10.0.3.10 (plus IPv6 for x/a and y/a).
ADDR = {
    "x/a": "10.0.1.10",
    "x/b": "10.0.1.11",
    "y/a": "10.0.2.10",
    "y/b": "10.0.2.11",
    "z/a": "10.0.3.10",
}
ADDR6 = {"x/a": "fd00:1::10", "y/a": "fd00:2::10"}


def make_state() -> ClusterState:
    state = ClusterState(registry_for())
    for name in ("x", "y", "z"):
        assert state.apply(namespace(name, ns=name))
    web_ports = [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
    ]
    for ref, ip in ADDR.items():
        ns, name = ref.split("/")
        ips = [ip] + ([ADDR6[ref]] if ref in ADDR6 else [])
        assert state.apply(pod(ns, name, ips, ports=web_ports))
    return state


@pytest.fixture
def state() -> ClusterState:
    return make_state()


def admin_engine(state: ClusterState) -> PolicyEngine:
    context = EvaluatorContext()
    return publishing_engine(state, [anp_create(context), banp_create(context)])


def anp_engine(state: ClusterState) -> PolicyEngine:
    return publishing_engine(state, [anp_create(EvaluatorContext())])


def managed(engine: PolicyEngine) -> set[bytes]:
    return set(engine.managed.addresses)


def check(engine: PolicyEngine, src: str, dst: str, port: int = 80, protocol: str = "TCP", family: int = 4):
    table = ADDR if family == 4 else ADDR6
    source = table.get(src, src)
    destination = table.get(dst, dst)
    return engine.evaluate(Packet.from_strings(source, destination, protocol, port))


def allowed(engine: PolicyEngine, src: str, dst: str, port: int = 80, protocol: str = "TCP", family: int = 4) -> bool:
    return check(engine, src, dst, port, protocol, family).allowed


# ------------------------------------------------------------------ ordering


def test_lower_priority_number_wins(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("deny-y", 5, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="y")], "deny")]))
    state.apply(anp("allow-y", 10, ns_sel(ns="x"), ingress=[rule("Allow", [ns_sel(ns="y")], "allow")]))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.verdict is Verdict.DENY
    assert (judgement.ingress.policy, judgement.ingress.rule, judgement.ingress_by) == ("deny-y", "deny", "adminnetworkpolicy")
    # Swap the priorities: the Allow now comes first.
    state.apply(anp("deny-y", 20, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="y")], "deny")]))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed
    assert (judgement.ingress.policy, judgement.ingress.rule) == ("allow-y", "allow")


def test_equal_priorities_are_ordered_by_name(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("b-deny", 3, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="y")])]))
    state.apply(anp("a-allow", 3, ns_sel(ns="x"), ingress=[rule("Allow", [ns_sel(ns="y")])]))
    assert check(engine, "y/a", "x/a").ingress.policy == "a-allow"
    state.delete("AdminNetworkPolicy", "", "a-allow")
    state.apply(anp("c-allow", 3, ns_sel(ns="x"), ingress=[rule("Allow", [ns_sel(ns="y")])]))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.verdict is Verdict.DENY and judgement.ingress.policy == "b-deny"


def test_rules_are_walked_in_written_order(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(
        anp(
            "ordered",
            1,
            ns_sel(ns="x"),
            ingress=[
                rule("Deny", [ns_sel(ns="y")], "deny-80", ports=[tcp(80)]),
                rule("Allow", [ns_sel(ns="y")], "allow-rest"),
                rule("Deny", [ns_sel(ns="y")], "never-reached"),
            ],
        )
    )
    assert check(engine, "y/a", "x/a", 80).ingress.rule == "deny-80"
    assert not allowed(engine, "y/a", "x/a", 80)
    judgement = check(engine, "y/a", "x/a", 81)
    assert judgement.allowed and judgement.ingress.rule == "allow-rest"


# ---------------------------------------------------------------------- Pass


def test_pass_skips_every_remaining_anp_rule_and_lets_banp_decide(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("passer", 1, ns_sel(ns="x"), ingress=[rule("Pass", [ns_sel(ns="y")], "pass-y")]))
    state.apply(anp("denier", 2, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}], "deny-all")]))
    # Without a BANP the passed traffic reaches the end of the pipeline and is accepted.
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == ""
    # Traffic the Pass rule does not cover still meets the lower-priority Deny.
    assert check(engine, "z/a", "x/a").ingress.rule == "deny-all"
    # With a BANP that denies y, the passed traffic is the BANP's to judge.
    state.apply(banp({"namespaces": {}}, ingress=[rule("Deny", [ns_sel(ns="y")], "baseline-deny-y")]))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.verdict is Verdict.DENY
    assert (judgement.ingress_by, judgement.ingress.rule) == ("baselineadminnetworkpolicy", "baseline-deny-y")


def test_pass_decision_names_the_rule_for_explain(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("passer", 1, ns_sel(ns="x"), ingress=[rule("Pass", [ns_sel(ns="y")], "pass-y")]))
    explanation = engine.explain(Packet.from_strings(ADDR["y/a"], ADDR["x/a"], "TCP", 80))
    first = explanation.ingress_steps[0]
    assert first.evaluator == "adminnetworkpolicy"
    assert first.decision.verdict is Verdict.NEXT
    assert (first.decision.policy, first.decision.rule, first.decision.reason) == ("passer", "pass-y", "Pass")
    assert explanation.judgement.allowed


def test_egress_pass_hands_over_to_banp(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("pass-egress", 1, ns_sel(ns="x"), egress=[egress_rule("Pass", [ns_sel(ns="y")], "pass")]))
    state.apply(anp("deny-egress", 2, ns_sel(ns="x"), egress=[egress_rule("Deny", [{"namespaces": {}}], "deny")]))
    state.apply(banp({"namespaces": {}}, egress=[egress_rule("Deny", [pods_sel({"ns": "y"}, {"pod": "b"})], "no-y-b")]))
    assert allowed(engine, "x/a", "y/a")  # passed, BANP has nothing against y/a
    judgement = check(engine, "x/a", "y/b")
    assert (judgement.egress_by, judgement.egress.rule) == ("baselineadminnetworkpolicy", "no-y-b")
    assert check(engine, "x/a", "z/a").egress.rule == "deny"


# ------------------------------------------------------------ subject, peers


def test_subject_by_pods_selects_only_matching_pods(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("only-x-a", 1, pods_sel({"ns": "x"}, {"pod": "a"}), ingress=[rule("Deny", [{"namespaces": {}}])]))
    assert not allowed(engine, "y/a", "x/a")
    assert allowed(engine, "y/a", "x/b")
    assert allowed(engine, "x/a", "y/a")  # y/a is not a subject


def test_ingress_pods_peer_needs_both_selectors(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("p", 1, ns_sel(ns="x"), ingress=[rule("Deny", [pods_sel({"ns": "y"}, {"pod": "b"})])]))
    assert not allowed(engine, "y/b", "x/a")
    assert allowed(engine, "y/a", "x/a")  # right namespace, wrong pod
    assert allowed(engine, "x/b", "x/a")  # right pod name, wrong namespace


def test_ingress_from_outside_the_pod_network_matches_no_peer(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("p", 1, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}])]))
    judgement = check(engine, "192.168.7.7", "x/a")
    assert judgement.allowed and judgement.ingress_by == ""


def test_anp_allow_beats_banp_deny(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(banp({"namespaces": {}}, ingress=[rule("Deny", [{"namespaces": {}}], "deny-all")]))
    assert not allowed(engine, "y/a", "x/a")
    state.apply(anp("allow-y", 100, ns_sel(ns="x"), ingress=[rule("Allow", [ns_sel(ns="y")])]))
    assert allowed(engine, "y/a", "x/a")
    assert not allowed(engine, "z/a", "x/a")


# --------------------------------------------------------------------- egress


def test_egress_networks_match_external_and_pod_addresses(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(
        anp(
            "ext",
            1,
            ns_sel(ns="x"),
            egress=[
                egress_rule("Allow", [{"networks": ["192.168.10.0/24"]}], "allow-ext"),
                egress_rule("Deny", [{"networks": ["192.168.0.0/16", "10.0.2.0/24"]}], "deny-block"),
            ],
        )
    )
    assert check(engine, "x/a", "192.168.10.5").egress.rule == "allow-ext"
    assert check(engine, "x/a", "192.168.11.5").egress.rule == "deny-block"
    assert not allowed(engine, "x/a", "192.168.11.5")
    # A pod address inside a networks peer matches too.
    assert check(engine, "x/a", "y/a").egress.rule == "deny-block"
    assert allowed(engine, "x/a", "z/a")
    assert allowed(engine, "y/a", "192.168.11.5")  # y is not a subject


def test_ipv6_networks_and_pods(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("v6", 1, ns_sel(ns="x"), egress=[egress_rule("Deny", [{"networks": ["2001:db8::/32"]}])]))
    assert not allowed(engine, "x/a", "2001:db8::1", family=6)
    assert allowed(engine, "x/a", "2001:db9::1", family=6)
    state.apply(anp("v6-pods", 2, ns_sel(ns="x"), egress=[egress_rule("Deny", [ns_sel(ns="y")])]))
    assert not allowed(engine, "x/a", "y/a", family=6)
    assert not allowed(engine, "x/a", "y/a", family=4)
    state.apply(anp("v6-ingress", 0, ns_sel(ns="y"), ingress=[rule("Allow", [ns_sel(ns="x")])]))
    assert check(engine, "x/a", "y/a", family=6).ingress.policy == "v6-ingress"


def test_egress_nodes_peer_matches_node_addresses_by_label(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(node("n1", ["172.18.0.2", "fd00:ff::2"], role="control-plane"))
    state.apply(node("n2", ["172.18.0.3"], role="worker"))
    state.apply(
        anp("nodes", 1, ns_sel(ns="x"), egress=[egress_rule("Deny", [{"nodes": {"matchLabels": {"role": "control-plane"}}}], "no-cp")])
    )
    assert check(engine, "x/a", "172.18.0.2").egress.rule == "no-cp"
    assert not allowed(engine, "x/a", "fd00:ff::2", family=6)
    assert allowed(engine, "x/a", "172.18.0.3")
    assert allowed(engine, "x/a", "172.18.0.9")  # no node there
    # Relabelling and deleting nodes change the verdicts.
    state.apply(node("n2", ["172.18.0.3"], role="control-plane"))
    assert not allowed(engine, "x/a", "172.18.0.3")
    state.delete("Node", "", "n1")
    assert allowed(engine, "x/a", "172.18.0.2")


def test_egress_pod_peers_need_a_pod_destination(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("all-pods", 1, ns_sel(ns="x"), egress=[egress_rule("Deny", [{"namespaces": {}}])]))
    assert not allowed(engine, "x/a", "z/a")
    assert allowed(engine, "x/a", "8.8.8.8")


# ---------------------------------------------------------------------- ports


def test_port_number_range_and_protocols(state: ClusterState) -> None:
    engine = admin_engine(state)
    ports = [
        {"portNumber": {"protocol": "UDP", "port": 53}},
        {"portNumber": {"protocol": "SCTP", "port": 9}},
        {"portRange": {"protocol": "TCP", "start": 8000, "end": 8099}},
        {"portNumber": {"port": 22}},  # protocol defaults to TCP
    ]
    state.apply(anp("ports", 1, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}], ports=ports)]))
    assert not allowed(engine, "y/a", "x/a", 53, "UDP")
    assert allowed(engine, "y/a", "x/a", 53, "TCP")
    assert not allowed(engine, "y/a", "x/a", 9, "SCTP")
    assert allowed(engine, "y/a", "x/a", 9, "UDP")
    assert not allowed(engine, "y/a", "x/a", 8000)
    assert not allowed(engine, "y/a", "x/a", 8099)
    assert allowed(engine, "y/a", "x/a", 8100)
    assert allowed(engine, "y/a", "x/a", 7999)
    assert allowed(engine, "y/a", "x/a", 8050, "UDP")
    assert not allowed(engine, "y/a", "x/a", 22)
    assert allowed(engine, "y/a", "x/a", 22, "UDP")


def test_named_ports_resolve_on_the_destination_pod(state: ClusterState) -> None:
    engine = admin_engine(state)
    named = [{"namedPort": "http"}, {"namedPort": "dns"}]
    state.apply(anp("in", 1, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="y")], ports=named)]))
    state.apply(anp("out", 2, ns_sel(ns="z"), egress=[egress_rule("Deny", [ns_sel(ns="y")], ports=named)]))
    assert not allowed(engine, "y/a", "x/a", 8080, "TCP")
    assert allowed(engine, "y/a", "x/a", 8080, "UDP")  # "http" is a TCP port
    assert not allowed(engine, "y/a", "x/a", 5353, "UDP")
    assert allowed(engine, "y/a", "x/a", 5353, "TCP")
    assert allowed(engine, "y/a", "x/a", 80, "TCP")
    assert not allowed(engine, "z/a", "y/a", 8080, "TCP")  # egress: resolved on y/a
    assert allowed(engine, "z/a", "y/a", 8081, "TCP")
    # A pod without the named port is not matched.
    state.apply(pod("x", "bare", ["10.0.1.99"]))
    assert allowed(engine, "y/a", "10.0.1.99", 8080, "TCP")


# --------------------------------------------------------------- invalidation


def test_relabelling_pods_and_namespaces_changes_verdicts(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(anp("p", 1, pods_sel({"tier": "db"}, {"role": "db"}), ingress=[rule("Deny", [pods_sel({}, {"role": "client"})])]))
    assert allowed(engine, "y/a", "x/a")
    state.apply(namespace("x", ns="x", tier="db"))
    assert allowed(engine, "y/a", "x/a")  # x/a has no role label yet
    state.apply(pod("x", "a", [ADDR["x/a"], ADDR6["x/a"]], labels={"pod": "a", "role": "db"}))
    assert allowed(engine, "y/a", "x/a")  # y/a is not a client yet
    state.apply(pod("y", "a", [ADDR["y/a"], ADDR6["y/a"]], labels={"pod": "a", "role": "client"}))
    assert not allowed(engine, "y/a", "x/a")
    state.apply(namespace("x", ns="x"))  # the namespace leaves the subject
    assert allowed(engine, "y/a", "x/a")
    state.apply(namespace("x", ns="x", tier="db"))
    assert not allowed(engine, "y/a", "x/a")
    state.delete("AdminNetworkPolicy", "", "p")
    assert allowed(engine, "y/a", "x/a")


def test_node_label_change_does_not_leave_stale_entries(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(node("n1", ["172.18.0.2"], zone="a"))
    state.apply(pod("x", "onnode", ["10.0.1.50"], node="n1"))
    state.apply(anp("p", 1, pods_sel({"ns": "x"}, {"pod": "onnode"}), ingress=[rule("Deny", [ns_sel(ns="y")])]))
    assert not allowed(engine, "y/a", "10.0.1.50")
    state.apply(node("n1", ["172.18.0.2"], zone="b"))  # PodInfo of the pod is rebuilt
    assert not allowed(engine, "y/a", "10.0.1.50")
    state.apply(pod("x", "onnode", ["10.0.1.50"], labels={"pod": "other"}, node="n1"))
    assert allowed(engine, "y/a", "10.0.1.50")


def test_host_network_pods_are_not_subjects(state: ClusterState) -> None:
    engine = admin_engine(state)
    state.apply(pod("x", "host", ["172.18.0.5"], host_network=True))
    state.apply(anp("p", 1, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}])]))
    assert allowed(engine, "y/a", "172.18.0.5")
    diverted = managed(engine)
    assert _ip(ADDR["x/a"]) in diverted and _ip("172.18.0.5") not in diverted


# ------------------------------------------------------------ managed, memo


def _ip(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


def test_managed_ips_are_the_subject_pods(state: ClusterState) -> None:
    engine = anp_engine(state)
    assert managed(engine) == set()
    state.apply(anp("p", 1, pods_sel({"ns": "x"}, {"pod": "a"}), ingress=[rule("Deny", [{"namespaces": {}}])]))
    assert managed(engine) == {_ip(ADDR["x/a"]), _ip(ADDR6["x/a"])}
    assert engine.managed.divert_all is False
    state.apply(pod("x", "b", [ADDR["x/b"]], labels={"pod": "a"}))
    assert managed(engine) == {_ip(ADDR["x/a"]), _ip(ADDR6["x/a"]), _ip(ADDR["x/b"])}
    state.apply(namespace("x", ns="renamed"))
    assert managed(engine) == set()


def test_unrelated_anps_cost_nothing_once_memoised(state: ClusterState, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(200):
        state.apply(anp(f"other-{i:03}", i % 1000, ns_sel(ns=f"nobody-{i}"), ingress=[rule("Deny", [{"namespaces": {}}])]))
    state.apply(anp("mine-1", 500, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="z")], "deny-z")]))
    state.apply(anp("mine-2", 600, pods_sel({"ns": "x"}, {"pod": "a"}), ingress=[rule("Allow", [ns_sel(ns="y")], "allow-y")]))
    (evaluator,) = anp_engine(state).evaluators
    src = state.pod_by_ip(_ip(ADDR["y/a"]))
    dst = state.pod_by_ip(_ip(ADDR["x/a"]))
    packet = Packet.from_strings(ADDR["y/a"], ADDR["x/a"], "TCP", 80)
    first = evaluator.stage.evaluate_ingress(packet, src, dst)
    assert (first.policy, first.rule) == ("mine-2", "allow-y")

    others = [p for key, p in state.objects("AdminNetworkPolicy").items() if key[1].startswith("other-")]
    unrelated = {id(p.subject.namespace_selector) for p in others}
    consulted: list[int] = []
    original = LabelSelector.matches

    def counting(self: LabelSelector, labels: Any) -> bool:
        consulted.append(id(self))
        return original(self, labels)

    monkeypatch.setattr(LabelSelector, "matches", counting)
    for _ in range(10):
        assert evaluator.stage.evaluate_ingress(packet, src, dst) is first  # the same Decision object every time
    assert not unrelated & set(consulted)
    # A change of the destination pod makes a new entry for it: its namespace's candidate policies are
    # known already, so the 200 ANPs of other namespaces are not looked at again.
    state.apply(pod("x", "a", [ADDR["x/a"]], labels={"pod": "a", "new": "label"}))
    dst = state.pod_by_ip(_ip(ADDR["x/a"]))
    assert evaluator.stage.evaluate_ingress(packet, src, dst) is first
    assert not unrelated & set(consulted)
    # A namespace relabel judges each policy's namespace selector once for that namespace, not once per pod.
    consulted.clear()
    state.apply(namespace("x", ns="x", extra="1"))
    selectors_checked = [i for i in consulted if i in unrelated]
    assert len(selectors_checked) == 200


def test_policies_for_other_pods_are_not_looked_at_when_a_pod_entry_is_built(
    state: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 policies of every namespace whose pod selectors ask for labels x/a lacks: filed under those
    # labels, they are never judged for x/a, while the policies that may select it keep their precedence
    # whatever kind of pod selector they have (matchLabels, matchExpressions only, empty).
    for i in range(300):
        state.apply(anp(f"cold-{i:03}", i % 7, pods_sel({}, {"app": f"cold-{i}"}), ingress=[rule("Deny", [{"namespaces": {}}])]))
    by_expression = {"pods": {"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]}}}
    state.apply(anp("hot-labels", 30, pods_sel({"ns": "x"}, {"pod": "a"}), ingress=[rule("Pass", [ns_sel(ns="z")], "pass-z")]))
    state.apply(anp("hot-expression", 20, by_expression, ingress=[rule("Allow", [ns_sel(ns="z")], "allow-z")]))
    state.apply(anp("hot-namespace", 10, ns_sel(ns="x"), ingress=[rule("Deny", [ns_sel(ns="y")], "deny-y")]))
    state.apply(anp("not-mine", 5, pods_sel({"ns": "x"}, {"pod": "b"}), ingress=[rule("Allow", [{"namespaces": {}}], "allow-all")]))
    engine = anp_engine(state)
    (evaluator,) = engine.evaluators
    cold = {id(p.subject.pod_selector) for key, p in state.objects("AdminNetworkPolicy").items() if key[1].startswith("cold-")}
    consulted: list[int] = []
    original = LabelSelector.matches

    def counting(self: LabelSelector, labels: Any) -> bool:
        consulted.append(id(self))
        return original(self, labels)

    monkeypatch.setattr(LabelSelector, "matches", counting)
    state.apply(pod("x", "a", [ADDR["x/a"]], labels={"pod": "a", "fresh": "1"}))  # a new entry for x/a
    dst = state.pod_by_ip(_ip(ADDR["x/a"]))
    consulted.clear()
    decisions = [
        evaluator.stage.evaluate_ingress(Packet.from_strings(ADDR[src], ADDR["x/a"], "TCP", 80), state.pod_by_ip(_ip(ADDR[src])), dst)
        for src in ("y/a", "z/a")
    ]
    assert [(d.policy, d.rule) for d in decisions] == [("hot-namespace", "deny-y"), ("hot-expression", "allow-z")]
    assert consulted and not cold & set(consulted)
    entry = evaluator.stage.memo[id(dst.labels)]
    assert [r.name for r in entry.ingress] == ["deny-y", "allow-z", "pass-z"]
    # x/b is selected by not-mine (filed under pod=b) first, and the cold policies still select their pods.
    state.apply(pod("y", "b", [ADDR["y/b"]], labels={"app": "cold-7"}))
    assert not allowed(engine, "x/a", "y/b") and allowed(engine, "z/a", "x/b") and not allowed(engine, "y/a", "x/a")


def test_memo_entries_are_checked_by_identity(state: ClusterState) -> None:
    (evaluator,) = anp_engine(state).evaluators
    state.apply(anp("p", 1, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}])]))
    src = state.pod_by_ip(_ip(ADDR["y/a"]))
    dst = state.pod_by_ip(_ip(ADDR["x/a"]))
    packet = Packet.from_strings(ADDR["y/a"], ADDR["x/a"], "TCP", 80)
    stage = evaluator.stage
    assert stage.evaluate_ingress(packet, src, dst).verdict is Verdict.DENY
    # Plant an entry under dst's labels' id that belongs to other labels: it must be ignored.
    planted = anp_module._Subject(state.pod_by_ip(_ip(ADDR["y/b"])).labels)
    planted.namespace_labels, planted.ingress, planted.egress = dst.namespace_labels, (), ()
    stage.memo[id(dst.labels)] = planted
    assert stage.evaluate_ingress(packet, src, dst).verdict is Verdict.DENY
    assert stage.memo[id(dst.labels)].labels is dst.labels
    # An entry of the same labels in an older namespace version is not taken either.
    stale = anp_module._Subject(dst.labels)
    stale.namespace_labels, stale.ingress, stale.egress = {"ns": "x"}, (), ()
    stage.memo[id(dst.labels)] = stale
    assert stage.evaluate_ingress(packet, src, dst).verdict is Verdict.DENY


def test_a_namespace_relabel_makes_new_entries_for_its_pods_only(state: ClusterState) -> None:
    engine = admin_engine(state)
    evaluator = engine.evaluators[0]
    state.apply(anp("p", 1, ns_sel(ns="x"), ingress=[rule("Deny", [{"namespaces": {}}])]))
    assert not allowed(engine, "y/a", "x/a")
    memo = evaluator.stage.memo
    x_a, y_a = state.pod(("x", "a")), state.pod(("y", "a"))
    x_entry, y_entry = memo[id(x_a.labels)], memo[id(y_a.labels)]
    assert x_entry.selected and x_entry.ingress and not y_entry.selected
    # A namespace relabel makes new records of its pods, with the namespace's new labels: the subject's
    # namespace selector is judged again for them, while the other namespaces' entries stay.
    state.apply(namespace("y", ns="y", extra="1"))
    assert evaluator.stage.memo is memo  # no policy changed: the same stage
    new_y_a = state.pod(("y", "a"))
    assert new_y_a.namespace_labels is not y_a.namespace_labels
    assert memo[id(new_y_a.labels)].namespace_labels is new_y_a.namespace_labels
    assert memo[id(x_a.labels)] is x_entry
    assert not allowed(engine, "y/a", "x/a")
    state.apply(namespace("x", ns="not-x"))  # x leaves the subject
    assert allowed(engine, "y/a", "x/a") and managed(engine) == set()


def test_factory_builds_a_named_evaluator(state: ClusterState) -> None:
    evaluator = anp_create(EvaluatorContext())
    assert evaluator.name == "adminnetworkpolicy"
    assert evaluator.ready()
    assert isinstance(evaluator, anp_module.AdminNetworkPolicyEvaluator)


# ------------------------------------------------------ with NetworkPolicy too


def _full_engine(state: ClusterState) -> PolicyEngine:
    if not HAVE_NETWORKPOLICY:
        pytest.skip("kube_netpol.evaluators.networkpolicy is not there yet")
    from kube_netpol.plugins import DEFAULT_PIPELINE, build_pipeline

    return publishing_engine(state, build_pipeline(DEFAULT_PIPELINE))


def _np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def test_full_pipeline_pass_goes_to_networkpolicy(state: ClusterState) -> None:
    engine = _full_engine(state)
    assert [e.name for e in engine.evaluators] == [
        "clusternetworkpolicy-admin", "adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy", "clusternetworkpolicy-baseline",
    ]
    state.apply(anp("x-in", 10, ns_sel(ns="x"), ingress=[rule("Pass", [ns_sel(ns="y")], "pass-y"), rule("Deny", [ns_sel(ns="z")], "deny-z")]))
    state.apply(banp({"namespaces": {}}, ingress=[rule("Deny", [ns_sel(ns="y")], "deny-y")]))
    judgement = check(engine, "y/a", "x/a")
    assert (judgement.verdict, judgement.ingress_by) == (Verdict.DENY, "baselineadminnetworkpolicy")
    # A NetworkPolicy selecting x that admits y now decides the passed traffic, and the BANP is never asked.
    state.apply(_np("x", "allow-y", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    judgement = check(engine, "y/a", "x/a")
    assert judgement.allowed and judgement.ingress_by == "networkpolicy"
    # The NetworkPolicy isolates x: traffic it does not admit is denied by it, not by the BANP.
    assert check(engine, "x/b", "x/a").ingress_by == "networkpolicy"
    assert not allowed(engine, "x/b", "x/a")
    assert check(engine, "z/a", "x/a").ingress.rule == "deny-z"


def test_full_pipeline_anp_allow_beats_networkpolicy_deny(state: ClusterState) -> None:
    engine = _full_engine(state)
    state.apply(_np("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert not allowed(engine, "y/a", "x/a")
    assert not allowed(engine, "x/a", "8.8.8.8")
    state.apply(anp("allow", 1, ns_sel(ns="x"), ingress=[rule("Allow", [ns_sel(ns="y")])], egress=[egress_rule("Allow", [{"networks": ["8.8.8.0/24"]}])]))
    assert allowed(engine, "y/a", "x/a")
    assert allowed(engine, "x/a", "8.8.8.8")
    assert not allowed(engine, "z/a", "x/a")
    assert not allowed(engine, "x/a", "9.9.9.9")
