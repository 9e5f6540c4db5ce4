"""parse_network_policy: defaults, compiled forms and every refusal the API server would make."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_netpol.api import IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, NO_PORT_NAMES, PortNames, Verdict
from kube_netpol.policy import rule_index
from kube_netpol.api.errors import InvalidObject
from kube_netpol.state.store import port_names_of
from kube_netpol.policy.networkpolicy import EGRESS, INGRESS, NetworkPolicy, NetworkPolicyRule, parse_network_policy
from kube_netpol.policy.rule_index import RuleIndex, build_rule_index


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
    assert compiled.admits(ADDRESS_OUTSIDE, None, "", {}, IPPROTO_ICMP, 0, NO_PORT_NAMES)
    assert compiled.admits(ADDRESS_OUTSIDE, {"a": "b"}, "y", {}, IPPROTO_UDP, 53, NO_PORT_NAMES)


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
    assert ports.matches(IPPROTO_TCP, 80, NO_PORT_NAMES)
    assert not ports.matches(IPPROTO_UDP, 80, NO_PORT_NAMES)
    assert not ports.matches(IPPROTO_TCP, 81, NO_PORT_NAMES)


def test_protocol_without_port_is_every_port_of_that_protocol() -> None:
    ports = ports_of([{"protocol": "SCTP"}])
    for port in (0, 1, 9000, 65535):
        assert ports.matches(IPPROTO_SCTP, port, NO_PORT_NAMES)
    assert not ports.matches(IPPROTO_TCP, 80, NO_PORT_NAMES)
    assert not ports.matches(IPPROTO_ICMP, 0, NO_PORT_NAMES)


def test_end_port_is_an_inclusive_range() -> None:
    ports = ports_of([{"protocol": "UDP", "port": 1000, "endPort": 1002}])
    assert [p for p in range(998, 1005) if ports.matches(IPPROTO_UDP, p, NO_PORT_NAMES)] == [1000, 1001, 1002]
    assert ports_of([{"port": 80, "endPort": 80}]).matches(IPPROTO_TCP, 80, NO_PORT_NAMES)


def test_named_port_resolves_on_the_receiver_with_the_rule_protocol() -> None:
    receiver = port_names_of((("http", 8080, "TCP"),
                                                   ("dns", 53, "UDP"),))
    http = ports_of([{"port": "http"}])
    assert http.matches(IPPROTO_TCP, 8080, receiver)
    assert not http.matches(IPPROTO_TCP, 80, receiver)
    assert not http.matches(IPPROTO_TCP, 8080, NO_PORT_NAMES)
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
    from kube_netpol.plugins import registry_for
    from kube_netpol.state import ClusterState

    state = ClusterState(registry_for())
    assert state.apply(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert not state.apply(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 1}]}]}))
    assert [str(refusal) for refusal in state.take_refusals()] == [
        "NetworkPolicy x/p: spec.ingress[0].ports[0].endPort: endPort 1 must be greater than or equal to port 80"
        "; the last valid version stays in force"
    ]
    kept = state.objects("NetworkPolicy")[("x", "p")]
    assert kept.ingress[0].ports.matches(IPPROTO_TCP, 80, NO_PORT_NAMES)


# ------------------------------------------------------- ports as data, index


def test_rules_carry_their_ports_as_data_matching_the_matcher() -> None:
    rule = rule_of({"ports": [{"port": 80}, {"protocol": "UDP"}, {"port": 8000, "endPort": 8010},
                              {"port": "http"}, {"port": "dns", "protocol": "UDP"}]})
    assert rule.port_ranges == ((IPPROTO_TCP, 80, 80), (IPPROTO_UDP, 0, 65535), (IPPROTO_TCP, 8000, 8010))
    assert rule.named_ports == (("http", IPPROTO_TCP), ("dns", IPPROTO_UDP))
    assert rule.ports.matches(IPPROTO_TCP, 8005, NO_PORT_NAMES) and rule.ports.matches(IPPROTO_UDP, 7, NO_PORT_NAMES)
    everything = rule_of({})
    assert everything.port_ranges is None and everything.named_ports == ()
    assert everything.ports.matches(IPPROTO_ICMP, 0, NO_PORT_NAMES)


def test_a_rule_for_every_port_cannot_have_named_ports() -> None:
    rule = rule_of({})
    with pytest.raises(ValueError):
        NetworkPolicyRule.create(None, None, (("http", IPPROTO_TCP),), rule.decision)


def test_admits_peer_is_admits_without_the_port_check() -> None:
    rule = rule_of({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 80}]})
    assert rule.admits_peer(ip("10.1.2.3"), None, "", {})
    assert not rule.admits_peer(ip("192.0.2.1"), None, "", {})
    assert rule.admits(ip("10.1.2.3"), None, "", {}, IPPROTO_TCP, 80, NO_PORT_NAMES)
    assert not rule.admits(ip("10.1.2.3"), None, "", {}, IPPROTO_TCP, 81, NO_PORT_NAMES)


def index_candidates(index: RuleIndex, protocol: int, port: int, receiver: PortNames | None) -> tuple[set, set]:
    """(positions the index says match without a check, positions it leaves to be checked);
    ``receiver``: the receiving pod's port names, None when it is no pod."""
    table = index.by_protocol.get(protocol)
    if table is None:
        others = {id(rule) for rule in index.others}
        return {position for position, rule in enumerate(index.rules) if id(rule) in others}, set()
    names = [] if receiver is None else list(receiver.get((protocol, port), ()))
    lists = [table.numbered(port), table.always, *(table.by_name.get(name, ()) for name in names)]
    for candidates in [*lists, table.checked]:
        positions = [position for position, _ in candidates]
        assert positions == sorted(set(positions)), "each list is by ascending, distinct position"
        assert all(index.rules[position] is rule for position, rule in candidates)
    return {position for candidates in lists for position, _ in candidates}, {p for p, _ in table.checked}


def test_index_narrows_to_the_rules_whose_ports_match() -> None:
    policy = parse({"podSelector": {}, "ingress": [
        {"ports": [{"port": 80}]},                                   # 0
        {"ports": [{"port": 79, "endPort": 81}, {"port": "http"}]},  # 1
        {},                                                          # 2: every port, ICMP too
        {"ports": [{"protocol": "UDP"}]},                            # 3
        {"ports": [{"port": 1000 + i} for i in range(50)]},          # 4
        {"ports": [{"port": "dns", "protocol": "UDP"}]},             # 5
        {"ports": [{"protocol": "TCP", "port": 1}, {"protocol": "TCP", "port": 2, "endPort": 65535}]},  # 6
    ]})
    index = build_rule_index(policy.ingress)
    receiver = port_names_of((("http", 8080, "TCP"),
                                                   ("dns", 53, "UDP"),))
    assert index_candidates(index, IPPROTO_TCP, 80, receiver) == ({0, 1, 2, 6}, set())
    assert index_candidates(index, IPPROTO_TCP, 82, receiver) == ({2, 6}, set())
    assert index_candidates(index, IPPROTO_TCP, 8080, receiver) == ({1, 2, 6}, set())  # named, on the receiver
    assert index_candidates(index, IPPROTO_TCP, 8080, None) == ({2, 6}, set())
    assert index_candidates(index, IPPROTO_TCP, 1049, None) == ({2, 4, 6}, set())
    assert index_candidates(index, IPPROTO_TCP, 0, None) == ({2}, set())  # rule 6 starts at 1
    assert index_candidates(index, IPPROTO_UDP, 53, receiver) == ({2, 3, 5}, set())
    assert index_candidates(index, IPPROTO_UDP, 80, receiver) == ({2, 3}, set())
    assert index_candidates(index, IPPROTO_SCTP, 80, receiver) == ({2}, set())
    assert index_candidates(index, IPPROTO_ICMP, 0, receiver) == ({2}, set())


def test_rules_no_port_of_a_packet_can_match_are_not_candidates() -> None:
    rules = [rule_of({"ports": [{"port": 1000 + i}]}) for i in range(2000)]
    index = build_rule_index(rules)
    assert index_candidates(index, IPPROTO_TCP, 1500, None) == ({500}, set())
    assert index_candidates(index, IPPROTO_TCP, 80, None) == (set(), set())
    assert index_candidates(index, IPPROTO_UDP, 1500, None) == (set(), set())


def test_nested_wide_ranges_past_the_bound_are_left_to_be_checked(monkeypatch) -> None:
    rules = [rule_of({"ports": [{"port": 1000 - i, "endPort": 2000 + i}, {"port": "http"}]}) for i in range(10)]
    rules.append(rule_of({"ports": [{"protocol": "TCP"}]}))
    assert index_candidates(build_rule_index(rules), IPPROTO_TCP, 1500, None) == (set(range(11)), set())
    assert index_candidates(build_rule_index(rules), IPPROTO_TCP, 995, None) == ({5, 6, 7, 8, 9, 10}, set())
    monkeypatch.setattr(rule_index, "MAX_SEGMENT_ENTRIES", 20)  # 10 nested ranges need 1+2+...+10+...
    assert index_candidates(build_rule_index(rules), IPPROTO_TCP, 995, None) == ({10}, set(range(10)))
    receiver = port_names_of((("http", 995, "TCP"),))
    assert index_candidates(build_rule_index(rules), IPPROTO_TCP, 995, receiver) == (set(range(11)), set(range(10)))


_PORT_ENTRIES = st.one_of(
    st.builds(lambda p, proto: {"port": p, "protocol": proto}, st.sampled_from([1, 79, 80, 81, 443, 65535]),
              st.sampled_from(["TCP", "UDP", "SCTP"])),
    st.builds(lambda p, n, proto: {"port": p, "endPort": min(65535, p + n), "protocol": proto},
              st.sampled_from([1, 70, 80, 400, 60000]), st.sampled_from([0, 1, 10, 500, 70000]),
              st.sampled_from(["TCP", "UDP"])),
    st.builds(lambda proto: {"protocol": proto}, st.sampled_from(["TCP", "UDP", "SCTP"])),
    st.builds(lambda name, proto: {"port": name, "protocol": proto}, st.sampled_from(["http", "dns", "other"]),
              st.sampled_from(["TCP", "UDP"])),
)
_RULES = st.lists(st.lists(_PORT_ENTRIES, max_size=4), min_size=1, max_size=12)
_PACKET_PORTS = [0, 1, 2, 53, 69, 70, 79, 80, 81, 90, 91, 400, 443, 444, 510, 900, 8080, 59999, 60000, 65535]
_RECEIVERS = [  # port names of receiving pods (the first is no pod)
    NO_PORT_NAMES,
    port_names_of((("http", 80, "TCP"),
                                        ("dns", 53, "UDP"),)),
    port_names_of((("http", 8080, ""), ("other", 80, ""),
                                        ("dns", 53, "TCP"),)),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(port_lists=_RULES, cap=st.sampled_from([rule_index.MAX_SEGMENT_ENTRIES, 3, 0]))
def test_index_candidates_are_exactly_the_rules_whose_ports_match(monkeypatch, port_lists: list, cap: int) -> None:
    monkeypatch.setattr(rule_index, "MAX_SEGMENT_ENTRIES", cap)
    rules = [rule_of({"ports": ports}) for ports in port_lists]  # [] ports: every port
    index = build_rule_index(rules)
    for receiver in _RECEIVERS:
        for protocol in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP):
            for port in _PACKET_PORTS:
                sure, to_check = index_candidates(index, protocol, port, receiver)
                matching = {i for i, rule in enumerate(rules) if rule.ports.matches(protocol, port, receiver)}
                assert sure <= matching, (protocol, port)  # candidates not checked must match
                assert matching <= sure | to_check, (protocol, port)  # and none that matches is missed
