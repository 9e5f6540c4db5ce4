"""Proposals as objects: NetworkPolicy, and Baseline-tier ClusterNetworkPolicy (policy.networking.k8s.io
/v1alpha2) checked by the shape the upstream API's types and CRD validation give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from advise_helpers import Recorder, namespace, observe_everything, pod
from kube_netpol.advise.model import NetworkPeer, PodPeer, Port, Proposal, Selector, Workload, group_rules
from kube_netpol.advise.render import (
    CNP_MAX_ITEMS,
    TooManyRules,
    cluster_network_policy,
    network_policy,
    policy_name,
    to_yaml,
)
from kube_netpol.cli import main
from kube_netpol.plugins import registry_for

WEB = Workload("Deployment", "shop", "web")
DB_PEER = PodPeer(("shop",), Selector.of_labels({"app": "db"}))
DNS = PodPeer(("kube-system",), Selector.of_labels({"k8s-app": "kube-dns"}))


def proposal() -> Proposal:
    p = Proposal(WEB, Selector.of_labels({"app": "web"}))
    p.ingress |= {(PodPeer(("edge", "shop"), Selector.of_labels({"app": "proxy"})), Port("TCP", "http")),
                  (NetworkPeer("192.0.2.10/32"), Port("TCP", "http")),
                  (PodPeer(("shop",), Selector.of_labels({"app": "web"})), None)}
    p.egress |= {(DB_PEER, Port("TCP", 5432)), (DNS, Port("UDP", 53)), (DNS, Port("TCP", 53)),
                 (NetworkPeer("203.0.113.0/25"), Port("TCP", 443)), (NetworkPeer("203.0.113.128/25"), Port("TCP", 443)),
                 (NetworkPeer("2001:db8::5/128"), Port("SCTP", 9899))}
    return p


def test_rules_group_peers_by_their_ports() -> None:
    rules = group_rules({(DB_PEER, Port("TCP", 5432)), (DB_PEER, Port("TCP", 5433)), (DNS, Port("UDP", 53)),
                         (DB_PEER, None), (NetworkPeer("10.0.0.0/25"), Port("TCP", 1)),
                         (NetworkPeer("10.0.0.128/25"), Port("TCP", 1))})
    assert [(r.peers, r.ports) for r in rules] == [
        ((DNS,), (Port("UDP", 53),)),
        ((DB_PEER,), ()),  # every port: its single ports add nothing
        ((NetworkPeer("10.0.0.0/24"),), (Port("TCP", 1),)),  # two halves, exactly one network
    ]


def test_network_policy() -> None:
    policy = network_policy(proposal(), labels={"team": "a"}, annotations={"note": "x"})
    assert policy["metadata"] == {"name": "deployment-web", "namespace": "shop", "labels": {"team": "a"},
                                  "annotations": {"kube-netpol.io/workload": "Deployment/web", "note": "x"}}
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "web"}}
    assert policy["spec"]["ingress"][0] == {
        "from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["edge", "shop"]}]},
            "podSelector": {"matchLabels": {"app": "proxy"}}}, {"ipBlock": {"cidr": "192.0.2.10/32"}}],
        "ports": [{"protocol": "TCP", "port": "http"}]}
    assert {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]} in \
        policy["spec"]["egress"]


def test_names_fit_the_api() -> None:
    long = Workload("StatefulSet", "n" * 63, "x" * 253)
    assert len(policy_name(long)) == 253 and len(policy_name(long, cluster_scoped=True)) == 253
    assert policy_name(long) != policy_name(Workload("StatefulSet", "n", "x" * 252 + "y"))
    assert policy_name(WEB, cluster_scoped=True) == "shop-deployment-web"


def _one_field(obj: dict[str, Any], allowed: set[str]) -> str:
    """v1alpha2 peers, subjects and protocols: exactly one field set (MinProperties=MaxProperties=1)."""
    assert len(obj) == 1 and set(obj) <= allowed, obj
    return next(iter(obj))


def test_cluster_network_policy_has_the_v1alpha2_shape() -> None:
    policy, notes = cluster_network_policy(proposal(), priority=40)
    assert (policy["apiVersion"], policy["kind"]) == ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy")
    assert "namespace" not in policy["metadata"] and policy["metadata"]["name"] == "shop-deployment-web"
    spec = policy["spec"]
    assert set(spec) == {"tier", "priority", "subject", "ingress", "egress"}
    assert (spec["tier"], spec["priority"]) == ("Baseline", 40)
    assert spec["subject"] == {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                                        "podSelector": {"matchLabels": {"app": "web"}}}}
    for direction, peers_field, peer_kinds in (("ingress", "from", {"namespaces", "pods"}),
                                               ("egress", "to", {"namespaces", "pods", "nodes", "networks", "domainNames"})):
        rules = spec[direction]
        assert 1 <= len(rules) <= 25
        assert [r["action"] for r in rules] == ["Accept"] * (len(rules) - 1) + ["Deny"]  # accept what was seen, deny the rest
        for rule in rules:
            assert set(rule) <= {"name", "action", peers_field, "protocols"} and len(rule["name"]) <= 100
            assert 1 <= len(rule[peers_field]) <= CNP_MAX_ITEMS
            for peer in rule[peers_field]:
                _one_field(peer, peer_kinds)
            for protocol in rule.get("protocols", []):
                kind = _one_field(protocol, {"tcp", "udp", "sctp", "destinationNamedPort"})
                if kind != "destinationNamedPort":
                    assert set(protocol[kind]) == {"destinationPort"} and set(protocol[kind]["destinationPort"]) == {"number"}
            named = any("destinationNamedPort" in p for p in rule.get("protocols", []))
            assert not (named and any(set(p) & {"networks", "nodes", "domainNames"} for p in rule[peers_field]))
    assert spec["ingress"][-1] == {"name": "deny-the-rest", "action": "Deny", "from": [{"namespaces": {}}]}
    assert spec["egress"][-1] == {"name": "deny-the-rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}
    assert {"destinationNamedPort": "http"} in spec["ingress"][0]["protocols"]
    assert {"sctp": {"destinationPort": {"number": 9899}}} in [p for r in spec["egress"] for p in r.get("protocols", [])]
    # v1alpha2 has no address peers for ingress: said, not silently dropped.
    assert notes == ["ingress from 192.0.2.10/32 left out: v1alpha2 ingress peers are pods and namespaces only "
                     "(those addresses are not denied either)"]


def test_cluster_network_policy_stays_within_the_crd_bounds() -> None:
    wide = Proposal(WEB, Selector.of_labels({"app": "web"}))
    wide.egress |= {(NetworkPeer(f"198.51.100.{2 * i}/32"), Port("TCP", 443)) for i in range(60)}
    policy, _ = cluster_network_policy(wide, priority=1)
    (accept, deny) = policy["spec"]["egress"]
    assert [len(peer["networks"]) for peer in accept["to"]] == [25, 25, 10]
    many = Proposal(WEB, Selector.of_labels({"app": "web"}))
    many.egress |= {(DB_PEER, Port("TCP", 1000 + i)) for i in range(30)} | {
        (PodPeer(("shop",), Selector.of_labels({"app": f"p{i}"})), Port("UDP", i + 1)) for i in range(24)}
    with pytest.raises(TooManyRules):
        cluster_network_policy(many, priority=1)


def test_cluster_network_policy_parses_with_the_agents_parser() -> None:
    from kube_netpol.policy.clusternetworkpolicy import parse_cluster_network_policy

    policy, _ = cluster_network_policy(proposal(), priority=40)
    parsed = parse_cluster_network_policy(policy)
    assert parsed.priority == 40 and parsed.ingress and parsed.egress


def test_yaml_is_block_style_with_comments_first() -> None:
    text = to_yaml([(network_policy(proposal()), ["Deployment shop/web: why\nand more"])] * 2)
    first, second = text.split("---\n")
    assert first == second and first.startswith("# Deployment shop/web: why\n# and more\napiVersion: networking.k8s.io/v1\n")
    assert "  policyTypes:\n    - Ingress\n" in first
    assert list(yaml.safe_load_all(text))[0] == network_policy(proposal())


def test_verify_refuses_a_format_the_pipeline_cannot_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = Recorder([namespace("a"), pod("a/p", "10.1.0.1", {"app": "p"}), *observe_everything(["a"])])
    r.connect("a/p", "192.0.2.1", 443)
    records = tmp_path / "d.jsonl"
    records.write_text("\n".join(r.lines()))
    code = main(["advise", "--from-decisions", str(records), "--format", "clusternetworkpolicy", "--verify"])
    err = capsys.readouterr().err
    if "ClusterNetworkPolicy" in registry_for():  # once an evaluator reads them, they are judged like any other
        assert code == 0, err
    else:
        assert code == 2 and "reads no ClusterNetworkPolicy: it cannot judge the proposal" in err, err
