"""The rules the agent installs in a pod's namespace for its secondary interfaces (commands as data)."""

from __future__ import annotations

import subprocess

import pytest

from kube_netpol.dataplane.secondary import CHAIN, Diverted, SecondaryRules, chain_rules, check_interface


def test_chain_queues_new_connections_on_each_interface_both_ways() -> None:
    rules = chain_rules(4, [Diverted("net1", 101), Diverted("net2", 102)], bypass=True)
    assert rules[0] == ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]
    assert ["-i", "net1", "-j", "NFQUEUE", "--queue-num", "101", "--queue-bypass"] in rules
    assert ["-o", "net2", "-j", "NFQUEUE", "--queue-num", "102", "--queue-bypass"] in rules
    closed = chain_rules(6, [Diverted("net1", 101)], bypass=False)
    assert ["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "135", "-j", "RETURN"] in closed
    assert all("--queue-bypass" not in rule for rule in closed)


@pytest.mark.parametrize("name", ["", "a b", "x/y", "..", "net1;rm", "sixteen-chars-xx"])
def test_interface_names_from_annotations_are_checked(name: str) -> None:
    with pytest.raises(ValueError):
        check_interface(name)
    with pytest.raises(ValueError):
        chain_rules(4, [Diverted(name, 1)], bypass=True)


def test_install_runs_argument_lists_inside_the_namespace() -> None:
    seen: list[list[str]] = []

    def runner(args: list[str]) -> subprocess.CompletedProcess[str]:
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    SecondaryRules(runner).install("/proc/1/ns/net", [Diverted("net1", 7)], bypass=False)
    assert all(args[:2] == ["nsenter", "--net=/proc/1/ns/net"] for args in seen)
    assert ["nsenter", "--net=/proc/1/ns/net", "iptables", "-w", "-t", "mangle", "-N", CHAIN] in seen
    assert any(args[6:] == ["-A", CHAIN, "-i", "net1", "-j", "NFQUEUE", "--queue-num", "7"] for args in seen)
