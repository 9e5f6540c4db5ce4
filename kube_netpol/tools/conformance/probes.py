"""Expanding one `expect` entry into probes with expected outcomes.

Sources default to every pod and external, destinations to every pod; an
external is a destination only when named. A pod never probes itself, a
probe on a port name needs a destination container port of that name and
protocol, and both ends need an address of the probe's family; what fails
these is not probed (and not counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from kube_netpol.tools.conformance.cluster import ClusterSnapshot
from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance.scenario import ExpectSpec


@dataclass(frozen=True)
class Probe:
    """One connection attempt: ``src``/``dst`` are ``ns/pod`` or an external's name."""

    src: str
    dst: str
    src_ip: str
    dst_ip: str
    port: int  # the destination port, named ports already resolved
    protocol: str  # TCP | UDP | SCTP
    family: str  # IPv4 | IPv6
    network: str = ""  # a secondary network's ns/name; "" the cluster network
    resolve: str = ""  # a DNS name the source resolves first at the lab's DNS server (format v2)
    answer: tuple[str, ...] = ()  # the addresses the lab's DNS server answers ``resolve`` with


#: The lab's DNS server (format v2, "externals[].dnsNames"), by family: outside the cluster, port 53/UDP.
DNS_SERVER = {"IPv4": "10.96.0.10", "IPv6": "fd00:10:96::10"}


@dataclass(frozen=True)
class ProbeSetPlan:
    """An expanded `expect` entry: ``probes[i]`` must observe ``expected[i]``."""

    where: str
    port: int | str  # as the scenario wrote it
    protocol: str
    family: str
    sources: tuple[str, ...]  # table rows, in table order
    destinations: tuple[str, ...]  # table columns
    probes: tuple[Probe, ...]
    expected: tuple[bool, ...]

    @property
    def label(self) -> str:
        return f"{self.protocol}/{self.port} {self.family}"


def matches(pattern: str, name: str) -> bool:
    """Whether an endpoint name (``ns/pod`` or an external) matches a pattern."""
    if pattern == "*":
        return True
    if "/" not in pattern:
        return name == pattern
    if "/" not in name:
        return False
    pattern_ns, pattern_pod = pattern.split("/")
    ns, pod = name.split("/")
    return pattern_ns in ("*", ns) and pattern_pod in ("*", pod)


def expand_probe_set(expect: ExpectSpec, cluster: ClusterSnapshot) -> ProbeSetPlan:
    """The probes of one `expect` entry against the cluster after its step."""
    pods = tuple(p.key for p in cluster.pods)
    endpoints = cluster.endpoint_names()
    network = expect.network or ""
    addresses = cluster.addresses()
    if network:
        # Over a secondary network: its attached pods, at their addresses there (format v2).
        if cluster.network(network) is None:
            raise ScenarioError(f"network {network} is not declared in cluster.networks", f"{expect.where}.network")
        addresses = cluster.network_addresses(network)
        pods = endpoints = tuple(name for name in pods if name in addresses)
    sources = _select(expect.sources, endpoints, endpoints, f"{expect.where}.from")
    # In `to`, "*" means every pod: an external is a destination only when named.
    destinations = _select(expect.destinations, endpoints, pods, f"{expect.where}.to")
    if expect.table is not None:
        _check_table_covers(expect, sources, destinations, endpoints)
    for override in expect.overrides:
        _check_matches_something(override.source, endpoints, f"{override.where}.from")
        _check_matches_something(override.destination, endpoints, f"{override.where}.to")

    probes: list[Probe] = []
    expected: list[bool] = []
    for src in sources:
        for dst in destinations:
            if src == dst:
                continue  # loopback never crosses the policy point
            src_ip = addresses[src].get(expect.family)
            dst_ip = addresses[dst].get(expect.family)
            port = _resolve_port(expect, cluster, dst)
            if src_ip is None or dst_ip is None or port is None:
                continue
            resolve, answer = _resolution(expect, cluster, dst)
            probes.append(Probe(src, dst, src_ip, dst_ip, port, expect.protocol, expect.family, network, resolve, answer))
            expected.append(_expected(expect, src, dst))
    if not probes:
        raise ScenarioError(_why_nothing_is_probed(expect, cluster, sources, destinations, addresses), expect.where)
    return ProbeSetPlan(
        expect.where, expect.port, expect.protocol, expect.family, sources, destinations, tuple(probes), tuple(expected)
    )


def _resolution(expect: ExpectSpec, cluster: ClusterSnapshot, dst: str) -> tuple[str, tuple[str, ...]]:
    """The name a probe to ``dst`` resolves first (its first dnsName, or the set's ``resolve``) and the
    server's answer to it (the addresses of every external that lists the name); ("", ()) for no lookup."""
    target = next((e for e in cluster.externals if e.name == dst), None)
    if target is None or not target.dns_names:
        return "", ()
    name = expect.resolve or target.dns_names[0]
    answer = tuple(ip for e in cluster.externals if name in e.dns_names for ip in e.ips.values())
    if not answer:
        raise ScenarioError(f"resolve: {name} is the dnsName of no external", f"{expect.where}.resolve")
    return name, answer


def _select(
    patterns: Sequence[str] | None, endpoints: Sequence[str], default: Sequence[str], where: str
) -> tuple[str, ...]:
    """The endpoints the patterns name, in table order; ``default`` when there are none.

    A ``*`` stands for the default set; other patterns may name any endpoint.
    """
    if patterns is None:
        return tuple(default)
    chosen: set[str] = set()
    for i, pattern in enumerate(patterns):
        candidates = default if pattern == "*" else endpoints
        found = {name for name in candidates if matches(pattern, name)}
        if not found:
            raise ScenarioError(f"pattern {pattern!r} matches no pod or external", f"{where}[{i}]")
        chosen |= found
    return tuple(name for name in endpoints if name in chosen)


def _check_matches_something(pattern: str, endpoints: Iterable[str], where: str) -> None:
    if not any(matches(pattern, name) for name in endpoints):
        raise ScenarioError(f"pattern {pattern!r} matches no pod or external", where)


def _check_table_covers(
    expect: ExpectSpec, sources: Sequence[str], destinations: Sequence[str], endpoints: Sequence[str]
) -> None:
    """A table is full: one row per source and one column per destination of the probe set."""
    assert expect.table is not None
    where = f"{expect.where}.reachability"
    for names, wanted, what, chooser in (
        (expect.table.sources, sources, "row", "from"),
        (expect.table.destinations, destinations, "column", "to"),
    ):
        unknown = [n for n in names if n not in endpoints]
        if unknown:
            raise ScenarioError(f"{what} {unknown[0]!r} is not a pod or external of the cluster at this step", where)
        extra = [n for n in names if n not in wanted]
        if extra:
            raise ScenarioError(f"{what} {extra[0]!r} is not in this probe set (see `{chooser}`)", where)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ScenarioError(
                f"no {what} for {', '.join(missing)}; a table lists every endpoint of its probe set"
                f" (limit them with `{chooser}`)",
                where,
            )


def _expected(expect: ExpectSpec, src: str, dst: str) -> bool:
    if expect.table is not None:
        return expect.table.cells[(src, dst)]
    allowed = bool(expect.default)
    for override in expect.overrides:  # later entries win
        if matches(override.source, src) and matches(override.destination, dst):
            allowed = override.allowed
    return allowed


def _resolve_port(expect: ExpectSpec, cluster: ClusterSnapshot, dst: str) -> int | None:
    if isinstance(expect.port, int):
        return expect.port
    pod = cluster.pod(dst)
    return pod.port_number(expect.port, expect.protocol) if pod is not None else None


def _why_nothing_is_probed(
    expect: ExpectSpec, cluster: ClusterSnapshot, sources: Sequence[str], destinations: Sequence[str],
    addresses: dict[str, dict[str, str]],
) -> str:
    if isinstance(expect.port, str) and all(_resolve_port(expect, cluster, d) is None for d in destinations):
        return f"probes nothing: no destination has a {expect.protocol} container port named {expect.port!r}"
    if not any(expect.family in addresses[s] for s in sources) or not any(
        expect.family in addresses[d] for d in destinations
    ):
        return f"probes nothing: the sources or the destinations have no {expect.family} address"
    return "probes nothing: every source/destination pair is a pod probing itself or lacks a common address family"
