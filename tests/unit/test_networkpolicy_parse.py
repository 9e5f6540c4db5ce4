"""parse_network_policy: defaults, compiled forms and every refusal the API server would make."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from kube_netpol.api import IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, ContainerPort, PodInfo, Verdict
from kube_netpol.policy.errors import InvalidObject
from kube_netpol.policy.networkpolicy import EGRESS, INGRESS, NetworkPolicy, parse_network_policy


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def netpol(spec: Any = None, name: str = "p", namespace: str = "x", **extra: Any) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        **extra,
    }
    if spec is not None:
        obj["spec"] = spec
    return obj


def parse(spec: Any) -> NetworkPolicy:
    return parse_network_policy(netpol(spec))


# ---------------------------------------------------------------- defaults


def test_name_namespace_and_ref() -> None:
    policy = parse({"podSelector": {}})
    assert (policy.namespace, policy.name, policy.ref) == ("x", "p", "x/p")


@pytest.mark.parametrize(
    "spec, types",
    [
        ({"podSelector": {}}, (INGRESS,)),
        ({"podSelector": {}, "policyTypes": []}, (INGRESS,)),
        ({"podSelector": {}, "policyTypes": None}, (INGRESS,)),
        ({"podSelector": {}, "ingress": [{}]}, (INGRESS,)),
        ({"podSelector": {}, "egress": []}, (INGRESS,)),  # empty egress list does not add Egress
        ({"podSelector": {}, "egress": [{}]}, (INGRESS, EGRESS)),
        ({"podSelector": {}, "policyTypes": [], "egress": [{"ports": [{"port": 53}]}]}, (INGRESS, EGRESS)),
        ({"podSelector": {}, "policyTypes": ["Egress"]}, (EGRESS,)),
        ({"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}, (INGRESS, EGRESS)),
        ({"podSelector": {}, "policyTypes": ["Ingress", "Ingress"]}, (INGRESS,)),  # the API server allows it
        ({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]}, (INGRESS,)),
    ],
)
def test_policy_types_and_their_defaults(spec: dict, types: tuple) -> None:
    policy = parse(spec)
    assert policy.policy_types == types
    assert policy.isolates_ingress == (INGRESS in types)
    assert policy.isolates_egress == (EGRESS in types)


def test_absent_spec_is_deny_all_ingress_for_every_pod() -> None:
    policy = parse_network_policy(netpol(None))
    assert policy.policy_types == (INGRESS,)
    assert policy.ingress == () and policy.egress == ()
    assert policy.selects({}) and policy.selects({"any": "thing"})


def test_absent_pod_selector_selects_every_pod() -> None:
    policy = parse({"policyTypes": ["Ingress"]})
    assert policy.selects({}) and policy.selects({"app": "web"})


def test_pod_selector_is_compiled() -> None:
    policy = parse(
        {
            "podSelector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
            }
        }
    )
    assert policy.selects({"app": "web", "tier": "b"})
    assert not policy.selects({"app": "web", "tier": "c"})
    assert not policy.selects({"tier": "a"})


def test_rules_keep_their_order_and_precompiled_decisions() -> None:
    policy = parse({"podSelector": {}, "ingress": [{}, {"ports": [{"port": 80}]}], "egress": [{}]})
    assert [r.decision.rule for r in policy.ingress] == ["ingress[0]", "ingress[1]"]
    assert [r.decision.rule for r in policy.egress] == ["egress[0]"]
    for rule in policy.ingress + policy.egress:
        assert rule.decision.verdict is Verdict.ACCEPT and rule.decision.policy == "x/p"
    # The same object for every packet: nothing is built per evaluation.
    assert policy.ingress[0].decision is policy.ingress[0].decision


def test_egress_rules_are_validated_even_when_not_enforced() -> None:
    with pytest.raises(InvalidObject) as err:
        parse({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{"ports": [{"port": 0}]}]})
    assert err.value.path == "spec.egress[0].ports[0].port"


# -------------------------------------------------------------- peers/rules

ADDRESS_OUTSIDE = ip("192.0.2.1")


def rule_of(rule: dict, direction: str = "ingress"):
    policy = parse({"podSelector": {}, direction: [rule], "policyTypes": [direction.capitalize()]})
    return getattr(policy, direction)[0]


@pytest.mark.parametrize("rule", [{}, {"from": []}, {"from": None}, {"ports": []}, {"ports": None}])
def test_empty_or_absent_peers_and_ports_admit_everything(rule: dict) -> None:
    compiled = rule_of(rule)
    assert compiled.peers is None
    assert compiled.admits(ADDRESS_OUTSIDE, None, "", {}, IPPROTO_ICMP, 0, None)
    assert compiled.admits(ADDRESS_OUTSIDE, {"a": "b"}, "y", {}, IPPROTO_UDP, 53, None)


def test_null_rule_is_an_empty_rule() -> None:
    # Go decodes a null list element into the zero value: a rule that admits everything.
    policy = parse({"podSelector": {}, "ingress": [None]})
    assert policy.ingress[0].peers is None


def test_pod_selector_peer_is_the_policy_namespace() -> None:
    peer = rule_of({"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}).peers[0]
    assert peer.namespace == "x"
    assert peer.matches(ADDRESS_OUTSIDE, {"pod": "b"}, "x", {})
    assert not peer.matches(ADDRESS_OUTSIDE, {"pod": "b"}, "y", {})
    assert not peer.matches(ADDRESS_OUTSIDE, {"pod": "c"}, "x", {})
    assert not peer.matches(ADDRESS_OUTSIDE, None, "", {})  # not a pod


def test_namespace_selector_peer_is_every_pod_of_matching_namespaces() -> None:
    peer = rule_of({"to": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}, "egress").peers[0]
    assert peer.namespace is None
    assert peer.matches(ADDRESS_OUTSIDE, {}, "y", {"team": "y"})
    assert peer.matches(ADDRESS_OUTSIDE, {"any": "pod"}, "other", {"team": "y"})
    assert not peer.matches(ADDRESS_OUTSIDE, {}, "x", {"team": "x"})


def test_both_selectors_in_one_peer_are_anded() -> None:
    peer = rule_of(
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}
    ).peers[0]
    assert peer.matches(ADDRESS_OUTSIDE, {"pod": "b"}, "y", {"team": "y"})
    assert not peer.matches(ADDRESS_OUTSIDE, {"pod": "a"}, "y", {"team": "y"})
    assert not peer.matches(ADDRESS_OUTSIDE, {"pod": "b"}, "x", {"team": "x"})


def test_empty_selectors_are_present_peers() -> None:
    any_pod_here = rule_of({"from": [{"podSelector": {}}]}).peers[0]
    assert any_pod_here.matches(ADDRESS_OUTSIDE, {}, "x", {}) and not any_pod_here.matches(ADDRESS_OUTSIDE, {}, "y", {})
    any_pod = rule_of({"from": [{"namespaceSelector": {}}]}).peers[0]
    assert any_pod.matches(ADDRESS_OUTSIDE, {}, "y", {})
    assert not any_pod.matches(ADDRESS_OUTSIDE, None, "", {})  # still only pods


def test_null_selector_fields_are_absent() -> None:
    peer = rule_of({"from": [{"podSelector": None, "namespaceSelector": {"matchLabels": {"t": "1"}}}]}).peers[0]
    assert peer.matches(ADDRESS_OUTSIDE, {"whatever": "x"}, "z", {"t": "1"})


def test_ip_block_with_except_v4_and_v6() -> None:
    peer = rule_of({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}]}).peers[0]
    assert peer.matches(ip("10.0.0.5"), None, "", {})
    assert peer.matches(ip("10.0.2.5"), {"pod": "a"}, "x", {})  # pods' addresses match too
    assert not peer.matches(ip("10.0.1.5"), None, "", {})
    assert not peer.matches(ip("10.1.0.0"), None, "", {})
    assert not peer.matches(ip("::ffff:10.0.0.5"), None, "", {})
    peer6 = rule_of({"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/120"]}}]}).peers[0]
    assert peer6.matches(ip("fd00::1:0"), None, "", {})
    assert not peer6.matches(ip("fd00::ff"), None, "", {})
    assert not peer6.matches(ip("10.0.0.1"), None, "", {})


def test_ip_block_host_bits_are_masked() -> None:
    peer = rule_of({"from": [{"ipBlock": {"cidr": "192.168.1.1/24"}}]}).peers[0]
    assert peer.matches(ip("192.168.1.200"), None, "", {})


# ------------------------------------------------------------------- ports


def ports_of(ports: list) -> Any:
    return rule_of({"ports": ports}).ports


def test_port_protocol_defaults_to_tcp() -> None:
    ports = ports_of([{"port": 80}])
    assert ports.matches(IPPROTO_TCP, 80, None)
    assert not ports.matches(IPPROTO_UDP, 80, None)
    assert not ports.matches(IPPROTO_TCP, 81, None)


def test_protocol_without_port_is_every_port_of_that_protocol() -> None:
    ports = ports_of([{"protocol": "SCTP"}])
    for port in (0, 1, 9000, 65535):
        assert ports.matches(IPPROTO_SCTP, port, None)
    assert not ports.matches(IPPROTO_TCP, 80, None)
    assert not ports.matches(IPPROTO_ICMP, 0, None)


def test_end_port_is_an_inclusive_range() -> None:
    ports = ports_of([{"protocol": "UDP", "port": 1000, "endPort": 1002}])
    assert [p for p in range(998, 1005) if ports.matches(IPPROTO_UDP, p, None)] == [1000, 1001, 1002]
    assert ports_of([{"port": 80, "endPort": 80}]).matches(IPPROTO_TCP, 80, None)


def test_named_port_resolves_on_the_receiver_with_the_rule_protocol() -> None:
    receiver = PodInfo(container_ports=[ContainerPort(name="http", port=8080, protocol="TCP"),
                                        ContainerPort(name="dns", port=53, protocol="UDP")])
    http = ports_of([{"port": "http"}])
    assert http.matches(IPPROTO_TCP, 8080, receiver)
    assert not http.matches(IPPROTO_TCP, 80, receiver)
    assert not http.matches(IPPROTO_TCP, 8080, None)
    dns_tcp = ports_of([{"port": "dns"}])  # TCP by default; the container port is UDP
    assert not dns_tcp.matches(IPPROTO_TCP, 53, receiver)
    assert not dns_tcp.matches(IPPROTO_UDP, 53, receiver)
    assert ports_of([{"port": "dns", "protocol": "UDP"}]).matches(IPPROTO_UDP, 53, receiver)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "spec, path, fragment",
    [
        ("nope", "spec", "must be an object"),
        ({"podSelector": {}, "ingres": []}, "spec", "unknown field(s) ['ingres']"),
        ({"podSelector": []}, "spec.podSelector", "must be an object"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
         "spec.podSelector.matchExpressions[0]", "unknown operator 'Has'"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
         "spec.podSelector.matchExpressions[0]", "needs at least one value"),
        ({"policyTypes": ["Ingress", "Egress", "Ingress"]}, "spec.policyTypes", "more than two"),
        ({"policyTypes": ["Ingress", "ingress"]}, "spec.policyTypes[1]", "unsupported value 'ingress'"),
        ({"policyTypes": ["Both"]}, "spec.policyTypes[0]", "unsupported value 'Both'"),
        ({"policyTypes": "Ingress"}, "spec.policyTypes", "must be a list"),
        ({"ingress": {}}, "spec.ingress", "must be a list"),
        ({"ingress": ["allow"]}, "spec.ingress[0]", "must be an object"),
        ({"ingress": [{"to": []}]}, "spec.ingress[0]", "unknown field(s) ['to']"),
        ({"egress": [{"from": []}]}, "spec.egress[0]", "unknown field(s) ['from']"),
        ({"ingress": [{"from": {}}]}, "spec.ingress[0].from", "must be a list"),
        # Peers
        ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must specify a peer"),
        ({"ingress": [{"from": [None]}]}, "spec.ingress[0].from[0]", "must specify a peer"),
        ({"ingress": [{"from": [{"podSelector": None}]}]}, "spec.ingress[0].from[0]", "must specify a peer"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
         "spec.egress[0].to[0]", "may not specify both ipBlock and another peer"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]},
         "spec.egress[0].to[0]", "may not specify both ipBlock and another peer"),
        ({"ingress": [{"from": [{"serviceAccount": "x"}]}]}, "spec.ingress[0].from[0]", "unknown field(s)"),
        ({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"a": 1}}}]}]},
         "spec.ingress[0].from[0].namespaceSelector.matchLabels", "must be a string"),
        ({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]}]},
         "spec.ingress[0].from[0].podSelector.matchExpressions[0]", "takes no values"),
        # ipBlock
        ({"ingress": [{"from": [{"ipBlock": {}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr", "is required"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": ""}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr", "is required"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr",
         "expected address/prefix"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr",
         "invalid CIDR"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
         "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
         "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "0.0.0.0/0"]}}]}]},
         "spec.ingress[0].from[0].ipBlock.except[1]", "strict subset"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
         "spec.ingress[0].from[0].ipBlock.except[0]", "not the same address family"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}}]}]},
         "spec.ingress[0].from[0].ipBlock.except", "must be a list"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "exclude": []}}]}]},
         "spec.ingress[0].from[0].ipBlock", "unknown field(s) ['exclude']"),
        # Ports
        ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol", "unsupported protocol"),
        ({"ingress": [{"ports": [{"protocol": "tcp", "port": 80}]}]}, "spec.ingress[0].ports[0].protocol",
         "unsupported protocol 'tcp'"),
        ({"ingress": [{"ports": [{"protocol": "", "port": 80}]}]}, "spec.ingress[0].ports[0].protocol",
         "unsupported protocol ''"),
        ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port", "1 to 65535"),
        ({"ingress": [{"ports": [{"port": 65536}]}]}, "spec.ingress[0].ports[0].port", "1 to 65535"),
        ({"ingress": [{"ports": [{"port": True}]}]}, "spec.ingress[0].ports[0].port", "1 to 65535"),
        ({"ingress": [{"ports": [{"port": 80.5}]}]}, "spec.ingress[0].ports[0].port", "1 to 65535"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "spec.ingress[0].ports[0].endPort",
         "greater than or equal to port 80"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]}, "spec.ingress[0].ports[0].endPort", "1 to 65535"),
        ({"ingress": [{"ports": [{"endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort", "`port` is not specified"),
        ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort",
         "`port` is non-numeric"),
        ({"ingress": [{"ports": [{"port": "80"}]}]}, "spec.ingress[0].ports[0].port", "at least one letter"),
        ({"ingress": [{"ports": [{"port": "HTTP"}]}]}, "spec.ingress[0].ports[0].port", "lowercase"),
        ({"ingress": [{"ports": [{"port": "web_http"}]}]}, "spec.ingress[0].ports[0].port", "lowercase"),
        ({"ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]}, "spec.ingress[0].ports[0].port",
         "no more than 15"),
        ({"ingress": [{"ports": [{"port": "my--port"}]}]}, "spec.ingress[0].ports[0].port", "consecutive hyphens"),
        ({"ingress": [{"ports": [{"port": "-http"}]}]}, "spec.ingress[0].ports[0].port", "begin or end with a hyphen"),
        ({"ingress": [{"ports": [{"port": ""}]}]}, "spec.ingress[0].ports[0].port", "invalid port name"),
        ({"egress": [{"ports": [{"port": 53, "proto": "UDP"}]}]}, "spec.egress[0].ports[0]", "unknown field(s)"),
        ({"egress": [{"ports": "53"}]}, "spec.egress[0].ports", "must be a list"),
        ({"egress": [{"ports": [53]}]}, "spec.egress[0].ports[0]", "must be an object"),
    ],
)
def test_invalid_specs_are_refused_with_path_and_reason(spec: Any, path: str, fragment: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse(spec)
    assert err.value.path == path
    assert fragment in err.value.reason
    assert path in str(err.value)


@pytest.mark.parametrize(
    "obj, path",
    [
        ({"kind": "NetworkPolicy", "spec": {}}, "metadata"),
        ({"metadata": {"namespace": "x"}, "spec": {}}, "metadata.name"),
        ({"metadata": {"name": "p"}, "spec": {}}, "metadata.namespace"),
        ({"metadata": {"name": "p", "namespace": ""}, "spec": {}}, "metadata.namespace"),
    ],
)
def test_metadata_is_required(obj: dict, path: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_network_policy(obj)
    assert err.value.path == path and "required" in err.value.reason


def test_valid_named_ports() -> None:
    for name in ("http", "h2c", "grpc-web", "a", "x1", "abcdefghijklmno"):
        parse({"ingress": [{"ports": [{"port": name}]}]})


def test_parsing_does_not_modify_the_object() -> None:
    obj = netpol({"podSelector": {}, "ingress": [None, {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]})
    before = copy.deepcopy(obj)
    parse_network_policy(obj)
    assert obj == before


def test_the_store_refuses_invalid_policies_and_keeps_the_last_good_one() -> None:
    from kube_netpol.state import ClusterState

    state = ClusterState()
    reasons: list[str] = []
    state.subscribe_invalid(lambda kind, ref, reason: reasons.append(f"{kind} {ref}: {reason}"))
    assert state.apply(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert not state.apply(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 1}]}]}))
    assert reasons == [
        "NetworkPolicy x/p: spec.ingress[0].ports[0].endPort: endPort 1 must be greater than or equal to port 80"
    ]
    kept = state.policy_objects("NetworkPolicy")[("x", "p")]
    assert kept.ingress[0].ports.matches(IPPROTO_TCP, 80, None)
