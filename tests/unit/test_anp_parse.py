"""Parsing AdminNetworkPolicy and BaselineAdminNetworkPolicy objects (policy.networking.k8s.io/v1alpha1)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube_netpol.api.packet import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP
from kube_netpol.api.verdict import Verdict
from kube_netpol.policy.adminnetworkpolicy import (
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
)
from kube_netpol.api.errors import InvalidObject
from kube_netpol.api import NO_PORT_NAMES
from kube_netpol.api import PodRecord
from kube_netpol.plugins import registry_for
from unit_standins import pod_record
from kube_netpol.state.store import ClusterState

API = "policy.networking.k8s.io/v1alpha1"


def anp(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "AdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def banp(spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def pod_info(ns_labels: dict[str, str], labels: dict[str, str], ports: tuple[tuple[str, int, str], ...] = ()) -> PodRecord:
    return pod_record(labels, namespace_labels=ns_labels, ports=ports)


FULL = {
    "priority": 7,
    "subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "db"}}}},
    "ingress": [
        {
            "name": "allow-web",
            "action": "Allow",
            "from": [{"namespaces": {"matchLabels": {"team": "web"}}}],
            "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}, {"portRange": {"start": 8000, "end": 8010}}],
        },
        {"action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"x": "y"}}}}]},
    ],
    "egress": [
        {"name": "to-ext", "action": "Deny", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}, {"nodes": {}}]},
        {"name": "to-named", "action": "Allow", "to": [{"namespaces": {}}], "ports": [{"namedPort": "http"}]},
    ],
}


def test_full_policy_compiles_every_part() -> None:
    policy = parse_admin_network_policy(anp(FULL))
    assert (policy.name, policy.namespace, policy.priority) == ("p", "", 7)
    assert policy.subject.selects(pod_info({"team": "a"}, {"app": "db"}))
    assert not policy.subject.selects(pod_info({"team": "b"}, {"app": "db"}))
    assert not policy.subject.selects(pod_info({"team": "a"}, {"app": "web"}))

    allow, passing = policy.ingress
    assert allow.decision.verdict is Verdict.ACCEPT
    assert (allow.decision.policy, allow.decision.rule) == ("p", "allow-web")
    assert allow.ports is not None
    assert allow.ports.matches(IPPROTO_UDP, 53, NO_PORT_NAMES)
    assert not allow.ports.matches(IPPROTO_TCP, 53, NO_PORT_NAMES)  # protocol given: UDP only
    assert allow.ports.matches(IPPROTO_TCP, 8005, NO_PORT_NAMES)  # portRange protocol defaults to TCP
    assert not allow.ports.matches(IPPROTO_TCP, 8011, NO_PORT_NAMES)
    # An unnamed rule is named by its position; Pass is a NEXT verdict that still names the rule.
    assert passing.decision.verdict is Verdict.NEXT
    assert (passing.decision.policy, passing.decision.rule, passing.decision.reason) == ("p", "ingress[1]", "Pass")
    assert passing.ports is None  # absent ports: all ports

    to_ext, to_named = policy.egress
    assert to_ext.decision.verdict is Verdict.DENY
    assert to_ext.networks is not None
    assert to_ext.networks.contains(bytes([10, 1, 2, 3]))
    assert not to_ext.networks.contains(bytes([11, 1, 2, 3]))
    assert to_ext.networks.contains(bytes.fromhex("fd000000000000000000000000000001"))
    assert len(to_ext.node_selectors) == 1 and to_ext.node_selectors[0].matches({"any": "thing"})
    receiver = pod_info({}, {}, (("http", 8080, "TCP"),))
    assert to_named.ports is not None
    assert to_named.ports.matches(IPPROTO_TCP, 8080, receiver.port_names)
    assert not to_named.ports.matches(IPPROTO_UDP, 8080, receiver.port_names)  # named port resolved with the packet's protocol
    assert not to_named.ports.matches(IPPROTO_TCP, 8080, NO_PORT_NAMES)  # no pod, no named port


def test_subject_by_namespaces_selects_every_pod_of_the_namespaces() -> None:
    policy = parse_admin_network_policy(anp({"priority": 0, "subject": {"namespaces": {"matchLabels": {"a": "b"}}}}))
    assert policy.subject.selects(pod_info({"a": "b"}, {"whatever": "1"}))
    assert not policy.subject.selects(pod_info({"a": "c"}, {}))
    assert policy.ingress == () and policy.egress == ()


def test_priority_bounds_are_inclusive() -> None:
    assert parse_admin_network_policy(anp({"priority": 0, "subject": {"namespaces": {}}})).priority == 0
    assert parse_admin_network_policy(anp({"priority": 1000, "subject": {"namespaces": {}}})).priority == 1000


def test_sctp_port_and_empty_ports_list() -> None:
    spec = {
        "priority": 1,
        "subject": {"namespaces": {}},
        "ingress": [
            {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portNumber": {"protocol": "SCTP", "port": 9}}]},
            {"action": "Deny", "from": [{"namespaces": {}}], "ports": []},
        ],
    }
    sctp, everything = parse_admin_network_policy(anp(spec)).ingress
    assert sctp.ports is not None and sctp.ports.matches(IPPROTO_SCTP, 9, NO_PORT_NAMES)
    assert not sctp.ports.matches(IPPROTO_TCP, 9, NO_PORT_NAMES)
    assert everything.ports is None


def test_banp_parses_with_allow_and_deny() -> None:
    policy = parse_baseline_admin_network_policy(
        banp(
            {
                "subject": {"namespaces": {}},
                "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{"name": "allow", "action": "Allow", "to": [{"networks": ["0.0.0.0/0"]}]}],
            }
        )
    )
    assert (policy.name, policy.namespace) == ("default", "")
    assert policy.ingress[0].decision.verdict is Verdict.DENY
    assert policy.egress[0].decision.verdict is Verdict.ACCEPT
    assert policy.egress[0].decision.policy == "default"


def _mutated(path: str, value: Any, base: dict[str, Any] = FULL) -> dict[str, Any]:
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``...=DELETE`` removes it)."""
    spec = copy.deepcopy(base)
    target: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return spec


DELETE = object()

INVALID_ANP = [
    # (what, mutation path, value, expected field path, expected words in the reason)
    ("missing priority", "priority", DELETE, "spec.priority", "required"),
    ("priority too high", "priority", 1001, "spec.priority", "out of range"),
    ("negative priority", "priority", -1, "spec.priority", "out of range"),
    ("priority not a number", "priority", "5", "spec.priority", "integer"),
    ("missing subject", "subject", DELETE, "spec.subject", "required"),
    ("empty subject", "subject", {}, "spec.subject", "exactly one"),
    (
        "subject with namespaces and pods",
        "subject",
        {"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}},
        "spec.subject",
        "exactly one",
    ),
    ("old subject shape", "subject", {"namespaceSelector": {}}, "spec.subject", "unknown field"),
    ("pods subject without podSelector", "subject", {"pods": {"namespaceSelector": {}}}, "spec.subject.pods.podSelector", "required"),
    ("bad selector operator", "subject", {"namespaces": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}, "spec.subject.namespaces.matchExpressions[0]", "operator"),
    ("unknown action", "ingress.0.action", "Reject", "spec.ingress[0].action", "unsupported action"),
    ("missing action", "ingress.0.action", DELETE, "spec.ingress[0].action", "action is required"),
    ("missing from", "ingress.0.from", DELETE, "spec.ingress[0].from", "required"),
    ("empty from", "ingress.0.from", [], "spec.ingress[0].from", "at least one"),
    ("empty peer", "ingress.0.from", [{}], "spec.ingress[0].from[0]", "exactly one"),
    (
        "peer with two kinds",
        "ingress.0.from",
        [{"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}],
        "spec.ingress[0].from[0]",
        "exactly one",
    ),
    ("networks peer in ingress", "ingress.0.from", [{"networks": ["10.0.0.0/8"]}], "spec.ingress[0].from[0]", "unknown field"),
    ("old namespaces peer shape", "ingress.0.from", [{"namespaces": {"namespaceSelector": {}}}], "spec.ingress[0].from[0].namespaces", "unknown field"),
    ("domainNames peer", "egress.0.to", [{"domainNames": ["example.com"]}], "spec.egress[0].to[0].domainNames", "domainNames"),
    ("bad CIDR", "egress.0.to", [{"networks": ["10.0.0.300/8"]}], "spec.egress[0].to[0].networks[0]", "invalid CIDR"),
    ("CIDR without prefix", "egress.0.to", [{"networks": ["10.0.0.1"]}], "spec.egress[0].to[0].networks[0]", "invalid CIDR"),
    ("IPv4 in IPv6 CIDR", "egress.0.to", [{"networks": ["::ffff:10.0.0.0/104"]}], "spec.egress[0].to[0].networks[0]", "embedded"),
    ("empty networks", "egress.0.to", [{"networks": []}], "spec.egress[0].to[0].networks", "at least one"),
    ("26 networks", "egress.0.to", [{"networks": [f"10.0.{i}.0/24" for i in range(26)]}], "spec.egress[0].to[0].networks", "at most 25"),
    ("unknown protocol", "ingress.0.ports", [{"portNumber": {"protocol": "ICMP", "port": 1}}], "spec.ingress[0].ports[0].portNumber.protocol", "protocol"),
    ("port zero", "ingress.0.ports", [{"portNumber": {"port": 0}}], "spec.ingress[0].ports[0].portNumber.port", "invalid port"),
    ("port too big", "ingress.0.ports", [{"portNumber": {"port": 65536}}], "spec.ingress[0].ports[0].portNumber.port", "invalid port"),
    ("port as string", "ingress.0.ports", [{"portNumber": {"port": "80"}}], "spec.ingress[0].ports[0].portNumber.port", "invalid port"),
    ("range reversed", "ingress.0.ports", [{"portRange": {"start": 90, "end": 80}}], "spec.ingress[0].ports[0].portRange", "greater than end"),
    ("range without end", "ingress.0.ports", [{"portRange": {"start": 90}}], "spec.ingress[0].ports[0].portRange.end", "invalid port"),
    ("empty port entry", "ingress.0.ports", [{}], "spec.ingress[0].ports[0]", "exactly one"),
    ("two kinds in a port entry", "ingress.0.ports", [{"namedPort": "http", "portNumber": {"port": 80}}], "spec.ingress[0].ports[0]", "exactly one"),
    ("old ports shape", "ingress.0.ports", [{"port": 80}], "spec.ingress[0].ports[0]", "unknown field"),
    ("empty named port", "ingress.0.ports", [{"namedPort": ""}], "spec.ingress[0].ports[0].namedPort", "non-empty"),
    ("named port with networks", "egress.0.ports", [{"namedPort": "http"}], "spec.egress[0].ports[0].namedPort", "networks or nodes"),
    ("rule name too long", "ingress.0.name", "x" * 101, "spec.ingress[0].name", "at most 100"),
    ("unknown rule field", "ingress.0.priority", 3, "spec.ingress[0]", "unknown field"),
    ("unknown spec field", "tier", "Admin", "spec", "unknown field"),
    ("101 ingress rules", "ingress", [{"action": "Deny", "from": [{"namespaces": {}}]}] * 101, "spec.ingress", "at most 100"),
]


@pytest.mark.parametrize("what,path,value,where,words", INVALID_ANP, ids=[case[0] for case in INVALID_ANP])
def test_invalid_admin_network_policies_are_refused(what: str, path: str, value: Any, where: str, words: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        parse_admin_network_policy(anp(_mutated(path, value)))
    assert caught.value.path == where
    assert words in caught.value.reason


def test_missing_spec_and_metadata_are_refused() -> None:
    with pytest.raises(InvalidObject, match="spec is required"):
        parse_admin_network_policy({"metadata": {"name": "p"}})
    with pytest.raises(InvalidObject, match="metadata"):
        parse_admin_network_policy({"spec": FULL})


BANP_BASE = {
    "subject": {"namespaces": {}},
    "ingress": [{"name": "i", "action": "Deny", "from": [{"namespaces": {}}]}],
    "egress": [{"name": "e", "action": "Allow", "to": [{"networks": ["10.0.0.0/8"]}]}],
}


def test_banp_must_be_named_default() -> None:
    with pytest.raises(InvalidObject) as caught:
        parse_baseline_admin_network_policy(banp(BANP_BASE, name="other"))
    assert caught.value.path == "metadata.name"
    assert "default" in caught.value.reason


@pytest.mark.parametrize(
    "path,value,where,words",
    [
        ("ingress.0.action", "Pass", "spec.ingress[0].action", "Pass exists only in AdminNetworkPolicy"),
        ("egress.0.action", "Pass", "spec.egress[0].action", "Pass"),
        ("priority", 3, "spec", "unknown field"),
        ("subject", DELETE, "spec.subject", "required"),
        ("egress.0.to", [{"domainNames": ["*.example.com"]}], "spec.egress[0].to[0].domainNames", "domainNames"),
    ],
)
def test_invalid_banps_are_refused(path: str, value: Any, where: str, words: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        parse_baseline_admin_network_policy(banp(_mutated(path, value, BANP_BASE)))
    assert caught.value.path == where
    assert words in caught.value.reason


def test_store_refuses_invalid_objects_and_keeps_the_last_good_version() -> None:
    state = ClusterState(registry_for())
    assert state.apply(anp(FULL))
    good = state.objects("AdminNetworkPolicy")[("", "p")]
    assert not state.apply(anp(_mutated("priority", 5000)))
    assert state.invalid_objects["AdminNetworkPolicy"] == 1
    assert state.objects("AdminNetworkPolicy")[("", "p")] is good
    assert not state.apply(banp(BANP_BASE, name="mine"))
    assert not state.apply(banp(_mutated("ingress.0.action", "Pass", BANP_BASE)))
    assert state.invalid_objects["BaselineAdminNetworkPolicy"] == 2
    assert dict(state.objects("BaselineAdminNetworkPolicy")) == {}
    assert state.apply(banp(BANP_BASE))
    assert list(state.objects("BaselineAdminNetworkPolicy")) == [("", "default")]
