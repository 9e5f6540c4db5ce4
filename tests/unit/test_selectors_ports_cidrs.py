"""The shared policy building blocks: label selectors, port matchers, CIDRs."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kube_netpol.api import IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, NO_PORT_NAMES, PodInfo
from kube_netpol.policy.cidrs import AddressRanges, parse_cidr
from kube_netpol.api.errors import InvalidObject
from kube_netpol.policy.ports import ALL_PORTS, PortMatcher, check_port_number, parse_protocol
from kube_netpol.state.store import port_names_of
from kube_netpol.policy.selectors import MATCH_ALL, parse_label_selector


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --------------------------------------------------------------- selectors


@pytest.mark.parametrize("raw", [None, {}, {"matchLabels": {}, "matchExpressions": []}, {"matchLabels": None}])
def test_empty_selector_matches_everything(raw: Any) -> None:
    selector = parse_label_selector(raw)
    assert selector.matches_all
    assert selector.matches({}) and selector.matches({"a": "b"})
    assert MATCH_ALL.matches({"x": "y"})


def test_match_labels_needs_every_pair() -> None:
    selector = parse_label_selector({"matchLabels": {"app": "web", "tier": ""}})
    assert not selector.matches_all
    assert selector.matches({"app": "web", "tier": "", "other": "x"})
    assert not selector.matches({"app": "web"})  # an empty value is still a value that must be present
    assert not selector.matches({"app": "db", "tier": ""})
    assert not selector.matches({})


def expr(key: str, operator: str, *values: str) -> dict:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


@pytest.mark.parametrize(
    "expression, labels, expected",
    [
        (expr("env", "In", "prod", "staging"), {"env": "prod"}, True),
        (expr("env", "In", "prod", "staging"), {"env": "dev"}, False),
        (expr("env", "In", "prod"), {}, False),
        (expr("env", "NotIn", "prod"), {"env": "dev"}, True),
        (expr("env", "NotIn", "prod"), {"env": "prod"}, False),
        (expr("env", "NotIn", "prod"), {}, True),  # a missing key is not in the set
        (expr("env", "Exists"), {"env": ""}, True),
        (expr("env", "Exists"), {"other": "x"}, False),
        (expr("env", "DoesNotExist"), {}, True),
        (expr("env", "DoesNotExist"), {"env": "x"}, False),
    ],
)
def test_each_operator(expression: dict, labels: dict, expected: bool) -> None:
    assert parse_label_selector({"matchExpressions": [expression]}).matches(labels) is expected


def test_labels_and_expressions_are_anded() -> None:
    selector = parse_label_selector(
        {"matchLabels": {"app": "web"}, "matchExpressions": [expr("env", "In", "prod"), expr("canary", "DoesNotExist")]}
    )
    assert selector.matches({"app": "web", "env": "prod"})
    assert not selector.matches({"app": "web", "env": "prod", "canary": "1"})
    assert not selector.matches({"app": "web", "env": "dev"})
    assert not selector.matches({"app": "api", "env": "prod"})


def test_selectors_read_protobuf_label_maps() -> None:
    info = PodInfo(labels={"app": "web", "env": "prod"})  # a plugin may hold the reference's PodInfo
    assert parse_label_selector({"matchLabels": {"app": "web"}, "matchExpressions": [expr("env", "Exists")]}).matches(
        info.labels
    )
    assert not parse_label_selector({"matchExpressions": [expr("app", "NotIn", "web")]}).matches(info.labels)


@pytest.mark.parametrize(
    "raw, path, fragment",
    [
        ([], "sel", "must be an object"),
        ({"matchLabel": {}}, "sel", "unknown field(s) ['matchLabel']"),
        ({"matchLabels": ["a"]}, "sel.matchLabels", "must be an object"),
        ({"matchLabels": {"a": 1}}, "sel.matchLabels", "must be a string"),
        ({"matchLabels": {"": "x"}}, "sel.matchLabels", "invalid label key"),
        ({"matchExpressions": {"key": "a"}}, "sel.matchExpressions", "must be a list"),
        ({"matchExpressions": ["env"]}, "sel.matchExpressions[0]", "must be an object"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "sel.matchExpressions[0]", "key is required"),
        ({"matchExpressions": [expr("a", "Exists"), expr("b", "Equals", "x")]}, "sel.matchExpressions[1]",
         "unknown operator 'Equals'"),
        ({"matchExpressions": [expr("a", "in", "x")]}, "sel.matchExpressions[0]", "unknown operator 'in'"),
        ({"matchExpressions": [{"key": "a"}]}, "sel.matchExpressions[0]", "unknown operator None"),
        ({"matchExpressions": [expr("a", "In")]}, "sel.matchExpressions[0]", "In needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "sel.matchExpressions[0]",
         "NotIn needs at least one value"),
        ({"matchExpressions": [expr("a", "Exists", "x")]}, "sel.matchExpressions[0]", "Exists takes no values"),
        ({"matchExpressions": [expr("a", "DoesNotExist", "x")]}, "sel.matchExpressions[0]",
         "DoesNotExist takes no values"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "sel.matchExpressions[0]",
         "values must be a list of strings"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}, "sel.matchExpressions[0]",
         "values must be a list of strings"),
    ],
)
def test_invalid_selectors(raw: Any, path: str, fragment: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_label_selector(raw, "sel")
    assert err.value.path == path
    assert fragment in err.value.reason


# ------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    "value, expected",
    [(None, IPPROTO_TCP), ("TCP", IPPROTO_TCP), ("UDP", IPPROTO_UDP), ("SCTP", IPPROTO_SCTP)],
)
def test_parse_protocol(value: Any, expected: int) -> None:
    assert parse_protocol(value, "p") == expected


def test_parse_protocol_default_can_be_changed() -> None:
    assert parse_protocol(None, "p", default="UDP") == IPPROTO_UDP


@pytest.mark.parametrize("value", ["", "ICMP", "tcp", "Tcp", 6, ["TCP"]])
def test_parse_protocol_refuses_others(value: Any) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_protocol(value, "ports[0].protocol")
    assert err.value.path == "ports[0].protocol" and "TCP, UDP or SCTP" in err.value.reason


@pytest.mark.parametrize("value", [1, 80, 65535])
def test_check_port_number_accepts(value: int) -> None:
    assert check_port_number(value, "p") == value


@pytest.mark.parametrize("value", [0, -1, 65536, True, "80", 80.0, None])
def test_check_port_number_refuses(value: Any) -> None:
    with pytest.raises(InvalidObject) as err:
        check_port_number(value, "ports[0].port")
    assert err.value.path == "ports[0].port" and "1 to 65535" in err.value.reason


def test_port_ranges_are_per_protocol_and_inclusive() -> None:
    matcher = PortMatcher(ranges=[(IPPROTO_TCP, 80, 80), (IPPROTO_UDP, 1000, 2000)])
    assert matcher.matches(IPPROTO_TCP, 80, NO_PORT_NAMES)
    assert not matcher.matches(IPPROTO_TCP, 81, NO_PORT_NAMES)
    assert not matcher.matches(IPPROTO_UDP, 80, NO_PORT_NAMES)
    assert [p for p in (999, 1000, 2000, 2001) if matcher.matches(IPPROTO_UDP, p, NO_PORT_NAMES)] == [1000, 2000]
    assert not matcher.matches(IPPROTO_SCTP, 1500, NO_PORT_NAMES)
    assert not matcher.matches(IPPROTO_ICMP, 0, NO_PORT_NAMES)


def test_all_ports_matches_every_protocol() -> None:
    for protocol in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP, 47):
        assert ALL_PORTS.matches(protocol, 0, NO_PORT_NAMES)
    assert not PortMatcher().matches(IPPROTO_TCP, 80, NO_PORT_NAMES)  # nothing listed: nothing matches


RECEIVER = port_names_of((
    ("http", 8080, "TCP"),
    ("legacy", 8081, ""),  # unset protocol means TCP
    ("dns", 53, "UDP"),
))


def test_named_ports_resolve_on_the_receiver() -> None:
    matcher = PortMatcher(named=[("http", IPPROTO_TCP), ("legacy", IPPROTO_TCP)])
    assert matcher.matches(IPPROTO_TCP, 8080, RECEIVER)
    assert matcher.matches(IPPROTO_TCP, 8081, RECEIVER)
    assert not matcher.matches(IPPROTO_TCP, 53, RECEIVER)
    assert not matcher.matches(IPPROTO_TCP, 8080, NO_PORT_NAMES)  # no receiver pod: nothing to resolve
    assert not matcher.matches(IPPROTO_TCP, 8080, port_names_of(()))


def test_named_port_needs_the_container_port_protocol_to_match() -> None:
    tcp_rule = PortMatcher(named=[("dns", IPPROTO_TCP)])
    assert not tcp_rule.matches(IPPROTO_TCP, 53, RECEIVER)
    assert not tcp_rule.matches(IPPROTO_UDP, 53, RECEIVER)
    any_protocol = PortMatcher(named=[("dns", None)])
    assert any_protocol.matches(IPPROTO_UDP, 53, RECEIVER)
    assert not any_protocol.matches(IPPROTO_TCP, 53, RECEIVER)


# ------------------------------------------------------------------- CIDRs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits are masked, as the API server's sloppy parser does
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.7/32", "192.168.1.7/32"),
        ("fd00::/64", "fd00::/64"),
        ("2001:db8::1/128", "2001:db8::1/128"),
    ],
)
def test_parse_cidr(text: str, expected: str) -> None:
    assert parse_cidr(text) == ipaddress.ip_network(expected)


@pytest.mark.parametrize("text", ["10.0.0.1", "10.0.0.0/33", "fd00::/129", "nope/8", "", None, 10, "10.0.0.0/-1"])
def test_parse_cidr_refuses(text: Any) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_cidr(text, "ipBlock.cidr")
    assert err.value.path == "ipBlock.cidr" and "invalid CIDR" in err.value.reason


def test_address_ranges_bounds_and_excepts() -> None:
    ranges = AddressRanges(
        [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("10.0.2.0/24")],
        [ipaddress.ip_network("10.0.0.128/25")],
    )
    assert ranges.contains(ip("10.0.0.0")) and ranges.contains(ip("10.0.0.127"))
    assert not ranges.contains(ip("10.0.0.128")) and not ranges.contains(ip("10.0.0.255"))
    assert not ranges.contains(ip("10.0.1.1"))
    assert ranges.contains(ip("10.0.2.255"))
    assert not ranges.contains(ip("10.0.3.0"))


def test_address_ranges_keep_families_apart() -> None:
    ranges = AddressRanges([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("fd00::/8")],
                           [ipaddress.ip_network("fd00::/16")])
    assert ranges.contains(ip("203.0.113.1"))
    assert not ranges.contains(ip("::ffff:203.0.113.1"))  # an IPv6 address, outside fd00::/8
    assert ranges.contains(ip("fd01::1"))
    assert not ranges.contains(ip("fd00::1"))
    v6_only = AddressRanges([ipaddress.ip_network("::/0")])
    assert v6_only.contains(ip("::1")) and not v6_only.contains(ip("127.0.0.1"))
    assert not AddressRanges([]).contains(ip("10.0.0.1"))


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"matchExpressions": {}}, "must be a list"),
        ({"matchLabels": []}, "must be an object"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]}, "unknown field(s) ['value']"),
        ({"matchLabels": {"bad key": "x"}}, "invalid label key 'bad key'"),
        ({"matchLabels": {"Example.com/app": "x"}}, "invalid label key"),
        ({"matchLabels": {"app": "-x"}}, "invalid label value '-x'"),
        ({"matchLabels": {"app": "x" * 64}}, "invalid label value"),
    ],
)
def test_selectors_are_as_strict_as_the_api_server(raw: Any, fragment: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_label_selector(raw, "sel")
    assert fragment in str(err.value)


def test_qualified_label_keys_are_accepted() -> None:
    selector = parse_label_selector({"matchLabels": {"kubernetes.io/metadata.name": "x", "app.kubernetes.io/name": "web"}})
    assert selector.matches({"kubernetes.io/metadata.name": "x", "app.kubernetes.io/name": "web"})
    assert parse_label_selector({"matchLabels": {"empty": ""}}).matches({"empty": ""})
