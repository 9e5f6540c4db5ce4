"""The agent's HTTP endpoints after real traffic, and `kube-netpol cleanup` inside a namespace."""

from __future__ import annotations

import re
import sys

from e2e_agentlab import agent_lab, allow_ingress_from_pod, requires_root

from kube_netpol.tools.testing.metrics_text import parse_metrics

pytestmark = requires_root

PODS = {
    "x/a": ["10.244.1.10", "fd00:10:244:1::10"],
    "x/b": ["10.244.1.11", "fd00:10:244:1::11"],
    "y/a": ["10.244.2.10", "fd00:10:244:2::10"],
}
PREFIX = "kube_network_policies_"


def test_metrics_after_real_traffic_have_the_reference_names_and_labels() -> None:
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")]) as env:
        # Accepted and dropped, TCP and UDP, IPv4 and IPv6.
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")]) == [True, False]
        assert env.probe("x/b", "x/a", protocol="UDP")
        assert not env.probe("y/a", "x/a", protocol="UDP", version=6)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in parse_metrics(env.agent.metrics()).values()
            for sample in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples.get((PREFIX + name, tuple(sorted(labels.items()))), 0.0)

        assert value("packet_count", protocol="TCP", family="IPv4", verdict="accept") >= 1
        assert value("packet_count", protocol="TCP", family="IPv4", verdict="drop") >= 1
        assert value("packet_count", protocol="UDP", family="IPv4", verdict="accept") >= 1
        assert value("packet_count", protocol="UDP", family="IPv6", verdict="drop") >= 1
        assert value("packet_count", protocol="TCP", family="IPv6", verdict="accept") == 0
        assert value("packet_process_time_count", protocol="TCP", family="IPv4") >= 2
        assert value("packet_process_time_bucket", protocol="TCP", family="IPv4", le="+Inf") >= 2
        assert value("packet_process_duration_microseconds_count") >= 4
        assert value("managed_pod_ips", family="IPv4") == 1
        assert value("managed_pod_ips", family="IPv6") == 1
        assert value("nfqueue_queue_total", queue="100") == 0
        # No "_total" suffix on the reference's counters.
        assert not any(name == PREFIX + "packet_count_total" for name, _ in samples)


def test_cleanup_command_removes_table_and_xt_rules_inside_the_namespace() -> None:
    with agent_lab(PODS, fail_open=True, policies=[allow_ingress_from_pod("x", "a", "b")]) as env:
        assert env.agent.stop() == 0  # fail-open: the rules stay behind
        assert env.table_exists() and env.xt_rules()
        rules_before = env.xt_rules()
        result = env.node([sys.executable, "-m", "kube_netpol", "cleanup", "--nftables-table", env.agent.table])
        assert result.returncode == 0, result.stderr
        assert not env.table_exists()
        assert env.xt_rules() == []
        # It says what it removed: the table, and each xt rule it found.
        assert result.stdout.startswith(f"removed table inet {env.agent.table}; removed xtables rules"), result.stdout
        assert sum(int(n) for n in re.findall(r"(\d+) in ip6?tables mangle", result.stdout)) == len(rules_before)
        # Nothing diverts any more: traffic the policy denied flows.
        assert env.probe("y/a", "x/a")
        # Running it again on a clean node is fine.
        again = env.node([sys.executable, "-m", "kube_netpol", "cleanup", "--nftables-table", env.agent.table])
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == (f"nothing to remove: no table inet {env.agent.table} "
                                        f"and no xtables rules with comment {env.agent.table}")
