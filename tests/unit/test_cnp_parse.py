"""ClusterNetworkPolicy v1alpha2 parsing: every field and every validation rule of the CRD."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.verdict import Verdict
from kube_netpol.policy.clusternetworkpolicy import parse_cluster_network_policy

API = "policy.networking.k8s.io/v1alpha2"


def cnp(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    base = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}}
    return {"apiVersion": API, "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": {**base, **spec}}


FULL = cnp(
    {
        "subject": {"pods": {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"app": "a"}}}},
        "ingress": [
            {"name": "in", "action": "Accept", "from": [{"namespaces": {}}, {"pods": {"namespaceSelector": {}, "podSelector": {}}}],
             "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}},
                           {"sctp": {"destinationPort": {"range": {"start": 1, "end": 65535}}}}, {"destinationNamedPort": "http"}]},
        ],
        "egress": [
            {"name": "out", "action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}, {"networks": ["10.0.0.0/8", "fd00::/8"]}]},
            {"name": "dns", "action": "Accept", "to": [{"domainNames": ["example.com", "*.Example.org."]}], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
            {"action": "Pass", "to": [{"namespaces": {}}]},
        ],
    }
)


def test_a_full_policy_parses_every_field() -> None:
    policy = parse_cluster_network_policy(FULL)
    assert (policy.name, policy.tier, policy.priority) == ("p", "Admin", 10)
    (rule,) = policy.ingress
    assert rule.decision.verdict is Verdict.ACCEPT and rule.ports is not None
    names = {(6, 8080): "http"}
    assert rule.ports.matches(6, 80, {}) and not rule.ports.matches(6, 81, {})
    assert rule.ports.matches(17, 1000, {}) and rule.ports.matches(17, 2000, {}) and not rule.ports.matches(17, 2001, {})
    assert rule.ports.matches(132, 7, {}) and rule.ports.matches(6, 8080, names)
    out, dns, passing = policy.egress
    assert out.decision.verdict is Verdict.DENY and out.networks is not None and out.node_selectors
    assert passing.decision.verdict is Verdict.NEXT and passing.name == "egress[2]" and passing.decision.reason == "Pass"
    assert policy.domain_names == {"dns": ("example.com", "*.example.org")}


def test_protocols_absent_means_every_protocol_and_port() -> None:
    policy = parse_cluster_network_policy(cnp({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}))
    assert policy.ingress[0].ports is None


def test_baseline_tier_parses() -> None:
    assert parse_cluster_network_policy(cnp({"tier": "Baseline"})).tier == "Baseline"


def _set(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(FULL)
    parts = path.split(".")
    here: Any = obj
    for part in parts[:-1]:
        here = here[int(part)] if part.isdigit() else here[part]
    last = parts[-1]
    if value is _DELETE:
        del here[last]
    elif last.isdigit():
        here[int(last)] = value
    else:
        here[last] = value
    return obj


_DELETE = object()
INVALID = [
    ("spec.tier", "Tenant", "spec.tier"),
    ("spec.tier", _DELETE, "spec.tier"),
    ("spec.priority", 1001, "spec.priority"),
    ("spec.priority", -1, "spec.priority"),
    ("spec.priority", _DELETE, "spec.priority"),
    ("spec.priority", True, "spec.priority"),
    ("spec.subject", _DELETE, "spec.subject"),
    ("spec.subject", {}, "spec.subject"),
    ("spec.subject", {"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}, "spec.subject"),
    ("spec.subject", {"pods": {"namespaceSelector": {}}}, "spec.subject.pods.podSelector"),
    ("spec.extra", 1, "spec"),
    ("spec.ingress", [{"action": "Accept", "from": [{"namespaces": {}}]}] * 26, "spec.ingress"),
    ("spec.egress", [{"action": "Accept", "to": [{"namespaces": {}}]}] * 26, "spec.egress"),
    ("spec.ingress.0.action", "Allow", "spec.ingress[0].action"),
    ("spec.ingress.0.action", _DELETE, "spec.ingress[0].action"),
    ("spec.ingress.0.name", "n" * 101, "spec.ingress[0].name"),
    ("spec.ingress.0.from", [], "spec.ingress[0].from"),
    ("spec.ingress.0.from", _DELETE, "spec.ingress[0].from"),
    ("spec.ingress.0.from", [{"namespaces": {}}] * 26, "spec.ingress[0].from"),
    ("spec.ingress.0.from", [{"networks": ["10.0.0.0/8"]}], "spec.ingress[0].from[0]"),
    ("spec.ingress.0.from", [{}], "spec.ingress[0].from[0]"),
    ("spec.ingress.0.from", [{"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}], "spec.ingress[0].from[0]"),
    ("spec.ingress.0.ports", [], "spec.ingress[0]"),
    ("spec.ingress.0.protocols", [], "spec.ingress[0].protocols"),
    ("spec.ingress.0.protocols", [{"tcp": {}}] * 26, "spec.ingress[0].protocols"),
    ("spec.ingress.0.protocols", [{}], "spec.ingress[0].protocols[0]"),
    ("spec.ingress.0.protocols", [{"tcp": {}, "udp": {}}], "spec.ingress[0].protocols[0]"),
    ("spec.ingress.0.protocols", [{"icmp": {}}], "spec.ingress[0].protocols[0]"),
    ("spec.ingress.0.protocols", [{"tcp": {"destinationPort": {}}}], "spec.ingress[0].protocols[0].tcp.destinationPort"),
    ("spec.ingress.0.protocols", [{"tcp": {"destinationPort": {"number": 1, "range": {"start": 1, "end": 2}}}}], "spec.ingress[0].protocols[0].tcp.destinationPort"),
    ("spec.ingress.0.protocols", [{"tcp": {"destinationPort": {"number": 0}}}], "spec.ingress[0].protocols[0].tcp.destinationPort.number"),
    ("spec.ingress.0.protocols", [{"tcp": {"destinationPort": {"number": 65536}}}], "spec.ingress[0].protocols[0].tcp.destinationPort.number"),
    ("spec.ingress.0.protocols", [{"udp": {"destinationPort": {"range": {"start": 20, "end": 10}}}}], "spec.ingress[0].protocols[0].udp.destinationPort.range"),
    ("spec.ingress.0.protocols", [{"udp": {"destinationPort": {"range": {"start": 20, "end": 20}}}}], "spec.ingress[0].protocols[0].udp.destinationPort.range"),
    ("spec.ingress.0.protocols", [{"udp": {"destinationPort": {"range": {"start": 20}}}}], "spec.ingress[0].protocols[0].udp.destinationPort.range.end"),
    ("spec.ingress.0.protocols", [{"tcp": {"port": 80}}], "spec.ingress[0].protocols[0].tcp"),
    ("spec.ingress.0.protocols", [{"destinationNamedPort": ""}], "spec.ingress[0].protocols[0].destinationNamedPort"),
    # minProperties 1 on the tcp, udp and sctp entries: an empty one is not "every port"
    ("spec.ingress.0.protocols", [{"tcp": {}}], "spec.ingress[0].protocols[0].tcp"),
    ("spec.ingress.0.protocols", [{"udp": {}}], "spec.ingress[0].protocols[0].udp"),
    ("spec.ingress.0.protocols", [{"sctp": {}}], "spec.ingress[0].protocols[0].sctp"),
    ("spec.ingress.0.protocols", [{"sctp": None}], "spec.ingress[0].protocols[0]"),
    ("spec.egress.0.to", [{"networks": []}], "spec.egress[0].to[0].networks"),
    ("spec.egress.0.to", [{"networks": ["10.0.0.0/8"] * 2}], "spec.egress[0].to[0].networks"),
    ("spec.egress.0.to", [{"networks": [f"10.0.{i}.0/24" for i in range(26)]}], "spec.egress[0].to[0].networks"),
    ("spec.egress.0.to", [{"networks": ["10.0.0.300/8"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["::ffff:10.0.0.1/128"]}], "spec.egress[0].to[0].networks[0]"),
    # isCIDR (Go's netip.ParsePrefix) and maxLength 43
    ("spec.egress.0.to", [{"networks": ["010.0.0.0/8"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["10.0.0.0/08"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["10.0.0.0/33"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["10.0.0.0"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["fe80::1%eth0/64"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": ["0000:0000:0000:0000:0000:0000:255.255.255.255/128"]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"networks": [10]}], "spec.egress[0].to[0].networks[0]"),
    ("spec.egress.0.to", [{"nodes": {"matchLabels": {"a": "b"}}, "networks": ["10.0.0.0/8"]}], "spec.egress[0].to[0]"),
    ("spec.egress.0.to", [{"domainNames": ["example.com"]}], "spec.egress[0].to[0].domainNames"),  # Deny rule
    ("spec.egress.1.to", [{"domainNames": []}], "spec.egress[1].to[0].domainNames"),
    ("spec.egress.1.to", [{"domainNames": ["com"]}], "spec.egress[1].to[0].domainNames[0]"),
    ("spec.egress.1.to", [{"domainNames": ["*.*.example.com"]}], "spec.egress[1].to[0].domainNames[0]"),
    ("spec.egress.1.to", [{"domainNames": ["a*.example.com"]}], "spec.egress[1].to[0].domainNames[0]"),
    ("spec.egress.1.to", [{"domainNames": ["-a.example.com"]}], "spec.egress[1].to[0].domainNames[0]"),
    ("spec.egress.1.to", [{"domainNames": ["a.example.com", "a.example.com"]}], "spec.egress[1].to[0].domainNames"),
    ("spec.egress.1.to", [{"domainNames": ["a.example.com\n"]}], "spec.egress[1].to[0].domainNames[0]"),
    ("spec.egress.1.to", [{"domainNames": [f"h{i}.example.com" for i in range(26)]}], "spec.egress[1].to[0].domainNames"),
    ("spec.egress.1.protocols", [{"destinationNamedPort": "http"}], "spec.egress[1].protocols[0].destinationNamedPort"),
    ("spec.egress.0.protocols", [{"destinationNamedPort": "http"}], "spec.egress[0].protocols[0].destinationNamedPort"),
]


@pytest.mark.parametrize(("path", "value", "where"), INVALID, ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID])
def test_every_validation_rule_refuses_with_the_field(path: str, value: Any, where: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        parse_cluster_network_policy(_set(path, value))
    assert caught.value.path == where, str(caught.value)


def test_a_named_port_longer_than_any_container_port_name_is_accepted_and_matches_nothing() -> None:
    # The CRD sets no length on destinationNamedPort; no container port is named with more than 15 characters.
    policy = parse_cluster_network_policy(
        cnp({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "x" * 16}]}]})
    )
    ports = policy.ingress[0].ports
    assert ports is not None and not ports.matches(6, 80, {(6, 80): "x" * 15}) and not ports.matches(6, 80, {})


def test_domain_names_the_crd_stores_are_accepted() -> None:
    # The CRD's set is case-sensitive and its pattern's first-character class is [a-zA-z0-9] (which takes
    # "_"), with no length limit: refusing what the API server stored would drop the policy's Deny rules.
    # Matching ignores case and the final dot, so the names below are two patterns.
    names = ["a.example.com", "A.example.com.", "_sip._tcp.example.com", "x" * 63 + "." + "y" * 200 + ".com"]
    policy = parse_cluster_network_policy(cnp({"egress": [{"name": "dns", "action": "Accept", "to": [{"domainNames": names}]}]}))
    assert policy.domain_names == {"dns": ("a.example.com", "_sip._tcp.example.com", "x" * 63 + "." + "y" * 200 + ".com")}


def test_a_cidr_with_host_bits_is_accepted_and_masked() -> None:
    # isCIDR accepts host bits (netip.ParsePrefix); the address range is the masked network.
    policy = parse_cluster_network_policy(cnp({"egress": [{"action": "Deny", "to": [{"networks": ["10.1.2.3/16", "::1.2.3.4/128"]}]}]}))
    ranges = policy.egress[0].networks
    assert ranges is not None and ranges.contains(bytes([10, 1, 200, 1])) and not ranges.contains(bytes([10, 2, 0, 1]))


def test_metadata_name_is_required() -> None:
    obj = cnp({})
    del obj["metadata"]["name"]
    with pytest.raises(InvalidObject):
        parse_cluster_network_policy(obj)
