"""Expanding `expect` entries into probes: patterns, tables, overrides, named ports, families."""

from __future__ import annotations

import pytest
import yaml

from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.probes import ProbeSetPlan, matches
from kube_netpol.tools.conformance.scenario import ScenarioError, parse_scenario

CLUSTER = """\
cluster:
  model: {namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP]}
  pods:
    - namespace: y
      name: web
      containerPorts: [{name: http, containerPort: 8080, protocol: TCP}, {name: dns, containerPort: 53, protocol: UDP}]
  externals: [{name: ext, ips: ["192.168.200.10"]}]
"""


def expand(expect: str, cluster: str = CLUSTER) -> ProbeSetPlan:
    text = f"name: t\n{cluster}steps:\n  - expect:\n      - {expect}\n"
    plan = plan_scenario(parse_scenario(yaml.safe_load(text), "t.yaml"))
    (probe_set,) = plan.steps[0].probe_sets
    return probe_set


def outcomes(probe_set: ProbeSetPlan) -> dict[tuple[str, str], bool]:
    return {(p.src, p.dst): e for p, e in zip(probe_set.probes, probe_set.expected)}


def expand_error(expect: str, cluster: str = CLUSTER) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        expand(expect, cluster)
    assert info.value.source == "t.yaml"
    return info.value


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "x/a", True),
        ("*", "ext", True),
        ("x/a", "x/a", True),
        ("x/a", "x/b", False),
        ("x/*", "x/b", True),
        ("x/*", "y/b", False),
        ("*/b", "y/b", True),
        ("*/b", "y/a", False),
        ("*/*", "ext", False),
        ("ext", "ext", True),
        ("ext", "x/ext", False),
        ("x/*", "ext", False),
    ],
)
def test_patterns(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


def test_default_endpoints_sources_include_externals_destinations_do_not() -> None:
    probe_set = expand("{port: 80, protocol: TCP, default: allow}")
    assert probe_set.sources == ("x/a", "x/b", "y/a", "y/b", "y/web", "ext")
    assert probe_set.destinations == ("x/a", "x/b", "y/a", "y/b", "y/web")
    # Every source to every destination, minus each pod to itself.
    assert len(probe_set.probes) == 6 * 5 - 5
    assert all(p.src != p.dst for p in probe_set.probes)
    assert all(probe_set.expected)


def test_star_in_to_means_pods_and_externals_are_destinations_only_when_named() -> None:
    assert "ext" not in expand("{port: 80, protocol: TCP, default: allow, to: ['*']}").destinations
    probe_set = expand("{port: 80, protocol: TCP, default: allow, from: ['x/*'], to: ['ext', '*/b']}")
    assert probe_set.sources == ("x/a", "x/b")
    assert probe_set.destinations == ("x/b", "y/b", "ext")
    probe = next(p for p in probe_set.probes if p.dst == "ext")
    assert (probe.src, probe.src_ip, probe.dst_ip, probe.port) == ("x/a", "10.244.1.10", "192.168.200.10", 80)


def test_overrides_apply_in_order_and_later_entries_win() -> None:
    probe_set = expand(
        "{port: 80, protocol: TCP, default: allow, overrides: ["
        "{from: '*', to: 'x/a', allowed: false}, {from: 'y/*', to: 'x/*', allowed: false},"
        "{from: 'y/b', to: 'x/a', allowed: true}, {from: ext, to: '*', allowed: false}]}"
    )
    got = outcomes(probe_set)
    assert got[("x/b", "x/a")] is False
    assert got[("y/a", "x/a")] is False
    assert got[("y/a", "x/b")] is False
    assert got[("y/b", "x/a")] is True
    assert got[("x/a", "x/b")] is True
    assert got[("ext", "y/a")] is False
    assert got[("y/a", "y/b")] is True


def test_default_deny() -> None:
    assert not any(expand("{port: 80, protocol: TCP, default: deny}").expected)


TABLE = """reachability: "-   x/a x/b y/a\\nx/a X   X   .\\nx/b .   .   X\\n"}"""


def test_table_gives_each_cell_and_ignores_the_diagonal() -> None:
    probe_set = expand("{port: 80, protocol: TCP, from: ['x/*'], to: ['x/*', 'y/a'], " + TABLE)
    assert outcomes(probe_set) == {
        ("x/a", "x/b"): False,
        ("x/a", "y/a"): True,
        ("x/b", "x/a"): True,
        ("x/b", "y/a"): False,
    }


def test_table_rows_and_columns_may_come_in_any_order() -> None:
    table = """reachability: "-   y/a x/b x/a\\nx/b X   .   .\\nx/a .   X   X\\n"}"""
    probe_set = expand("{port: 80, protocol: TCP, from: ['x/*'], to: ['x/*', 'y/a'], " + table)
    assert outcomes(probe_set)[("x/b", "y/a")] is False
    assert outcomes(probe_set)[("x/a", "x/b")] is False


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        # The default sources include the external and every pod: the table must list them.
        ("{port: 80, protocol: TCP, " + TABLE, "no row for y/a, y/b, y/web, ext"),
        ("{port: 80, protocol: TCP, from: ['x/*'], " + TABLE, "no column for y/b, y/web"),
        ("{port: 80, protocol: TCP, from: ['x/a'], to: ['x/*', 'y/a'], " + TABLE, "row 'x/b' is not in this probe set"),
        (
            "{port: 80, protocol: TCP, from: ['x/*'], to: ['x/*', 'y/a'], "
            """reachability: "-   x/a x/b q/a\\nx/a X   X   .\\nx/b .   .   X\\n"}""",
            "column 'q/a' is not a pod or external",
        ),
    ],
)
def test_a_table_covers_its_probe_set_exactly(expect: str, message: str) -> None:
    err = expand_error(expect)
    assert err.where == "steps[0].expect[0].reachability"
    assert message in err.message


@pytest.mark.parametrize(
    ("expect", "where"),
    [
        ("{port: 80, protocol: TCP, default: allow, from: ['q/*']}", "steps[0].expect[0].from[0]"),
        ("{port: 80, protocol: TCP, default: allow, to: ['x/a', 'nobody']}", "steps[0].expect[0].to[1]"),
        (
            "{port: 80, protocol: TCP, default: allow, overrides: [{from: '*/c', to: '*', allowed: false}]}",
            "steps[0].expect[0].overrides[0].from",
        ),
        (
            "{port: 80, protocol: TCP, default: allow, overrides: [{from: '*', to: 'y/x', allowed: false}]}",
            "steps[0].expect[0].overrides[0].to",
        ),
    ],
)
def test_a_pattern_that_matches_nothing_is_an_error(expect: str, where: str) -> None:
    err = expand_error(expect)
    assert err.where == where and "matches no pod or external" in err.message


def test_named_port_resolves_on_the_destination_and_skips_those_without_it() -> None:
    probe_set = expand("{port: http, protocol: TCP, default: allow, to: ['*', 'ext']}")
    assert {p.dst for p in probe_set.probes} == {"y/web"}
    assert {p.port for p in probe_set.probes} == {8080}
    assert len(probe_set.probes) == 5  # every other pod and the external, to y/web
    # Model pods have serve-<port>-<protocol>.
    probe_set = expand("{port: serve-80-tcp, protocol: TCP, default: allow}")
    assert {p.dst for p in probe_set.probes} == {"x/a", "x/b", "y/a", "y/b"}
    assert {p.port for p in probe_set.probes} == {80}


def test_named_port_needs_the_same_protocol() -> None:
    assert {p.port for p in expand("{port: dns, protocol: UDP, default: allow}").probes} == {53}
    err = expand_error("{port: dns, protocol: TCP, default: allow}")
    assert "no destination has a TCP container port named 'dns'" in err.message


def test_family_selects_addresses_and_endpoints_without_one_are_not_probed() -> None:
    cluster = CLUSTER.replace("protocols: [TCP]}", "protocols: [TCP], ipFamilies: [IPv4, IPv6]}")
    probe_set = expand("{port: 80, protocol: UDP, family: IPv6, default: allow}", cluster)
    assert "ext" not in {p.src for p in probe_set.probes}  # the external has no IPv6 address
    probe = next(p for p in probe_set.probes if (p.src, p.dst) == ("x/a", "y/web"))
    assert (probe.src_ip, probe.dst_ip, probe.family, probe.protocol) == (
        "fd00:10:244:1::10",
        "fd00:10:244:2::12",
        "IPv6",
        "UDP",
    )
    err = expand_error("{port: 80, protocol: TCP, family: IPv6, default: allow}")
    assert "no IPv6 address" in err.message
