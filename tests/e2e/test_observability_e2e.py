"""Observability of the real agent in the lab, after real traffic: /metrics, decision records, audit mode.

Every connection is made with our own sockets (``e2e_observe``) so that the
tests know how many packets reached the queue, and the metrics are checked
for exact values: only the first packets of a connection, those sent before
its first reply, are judged; a denied TCP connection sends one SYN, then
retransmits it after 1 s, and each SYN is judged anew.
"""

from __future__ import annotations

import platform
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from e2e_agentlab import B_ON_TCP_80, DUAL_STACK_PODS, AgentLab, agent_lab, deny_ingress, requires_root
from e2e_observe import (
    PREFIX,
    Attempt,
    Metrics,
    decision_records,
    echo,
    records_of,
    scrape,
    suppression_summaries,
    tcp_connect,
    udp_exchange,
    udp_flood,
    wait_for,
)

from kube_netpol import __version__

pytestmark = requires_root

PODS = DUAL_STACK_PODS
POLICY = B_ON_TCP_80
POLICY_NAME = "x/b-on-tcp-80"
#: Refused by the store (bad CIDR). Were it enforced, it would also select x/a and change every decision about it.
BAD_CIDR_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "bad-cidr", "namespace": "x"},
    "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/33"}}]}],
    },
}
QUEUE_ID = 4242
#: Label names of every family the agent exports (decision_records only with decision logging on).
FAMILY_LABELS = {
    "dns_answers": {"result"},
    "dns_cache_entries": set(),
    "dns_cache_refused": set(),
    "packet_count": {"protocol", "family", "verdict"},
    "audit_would_deny_count": {"protocol", "family"},
    "verdicts_by_policy": {"direction", "evaluator", "policy", "verdict"},
    "packet_process_time": {"protocol", "family"},
    "packet_process_duration_microseconds": set(),
    "nfqueue_queue_total": {"queue"},
    "nfqueue_queue_dropped": {"queue"},
    "nfqueue_user_dropped": {"queue"},
    "nfqueue_packet_id": {"queue"},
    "invalid_objects": {"kind"},
    "dataplane_sync_duration_seconds": set(),
    "policy_apply_latency_seconds": set(),
    "dataplane_sync_errors": set(),
    "dataplane_repairs": {"kind"},
    "new_flows_rate_limited": set(),
    "kernel_verdicts": {"verdict"},
    "packet_errors": set(),
    "decision_records": {"result"},
    "managed_pod_ips": {"family"},
    "verdict_cache": {"result"},
    "build_info": {"version", "python"},
}
HISTOGRAMS = {"packet_process_time", "dataplane_sync_duration_seconds", "policy_apply_latency_seconds"}
GAUGES = {"nfqueue_queue_total", "nfqueue_queue_dropped", "nfqueue_user_dropped", "nfqueue_packet_id",
          "managed_pod_ips", "build_info", "dns_cache_entries"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --------------------------------------------------------------------- helpers


def labelled(metrics: Metrics, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Every series of ``name``, keyed by the values of ``labels`` (in that order)."""
    found: dict[tuple[str, ...], float] = {}
    for sample_labels, value in metrics.series(name):
        assert set(sample_labels) == set(labels), (name, sample_labels)
        found[tuple(sample_labels[label] for label in labels)] = value
    return found


def expected_packets(attempts: Iterable[Attempt], audit: bool = False) -> dict[tuple[str, str, str], float]:
    """packet_count by (protocol, family, verdict): every queued packet of an attempt, by its fate."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for attempt in attempts:
        verdict = "accept" if attempt.connected or audit else "drop"
        counts[(attempt.protocol, attempt.family, verdict)] += attempt.queued
    return {key: float(value) for key, value in counts.items()}


def check_families(metrics: Metrics, decision_log: bool) -> None:
    """Names, label names and types of every family, and that docs/observability.md lists each one."""
    ours = metrics.ours()
    expected = {name: labels for name, labels in FAMILY_LABELS.items() if decision_log or name != "decision_records"}
    assert set(ours) == set(expected), (
        "families differ; `_total` names mean /metrics is written by prometheus_client's generate_latest, "
        "not kube_netpol.observability.exposition.generate_text")
    for name, family in ours.items():
        if family.samples:  # a family without series yet (audit_would_deny_count) has no labels to show
            assert family.label_names == expected[name], name
        kind = "histogram" if name in HISTOGRAMS else "gauge" if name in GAUGES else (
            "summary" if name == "packet_process_duration_microseconds" else "counter")
        # Counters are typed counter under the reference's names: no "_total" series anywhere.
        assert family.type == kind, (name, family.type)
    assert not any(sample.endswith("_total") for family in metrics.families.values()
                   for sample, _, _ in family.samples if sample.startswith(PREFIX) and "nfqueue" not in sample)
    documented = DOCS.read_text()
    undocumented = [name for name in ours if f"`{PREFIX}{name}`" not in documented]
    assert not undocumented, f"docs/observability.md does not list {undocumented}"


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        return decision_records(path.read_text())
    except FileNotFoundError:
        return []


def all_recorded(attempts: Iterable[Attempt]) -> Any:
    """A ``done`` test for wait_for: every queued packet of ``attempts`` has its record."""
    wanted = list(attempts)
    return lambda records: all(len(records_of(records, a)) >= a.queued for a in wanted)


def check_direction(record: Mapping[str, Any], direction: str, evaluator: str | None, verdict: str,
                    policy: str, rule: str) -> None:
    decided = record[direction]
    assert (decided["evaluator"], decided["verdict"], decided["policy"], decided["rule"]) == (
        evaluator, verdict, policy, rule), (direction, record)
    assert decided["reason"], record


def check_record(record: Mapping[str, Any], env: AgentLab, attempt: Attempt, verdict: str, audit: bool) -> None:
    version = 4 if attempt.family == "IPv4" else 6
    assert TIME_FORMAT.match(record["time"]), record
    assert record["logger"] == "kube_netpol.decisions"
    assert (record["src"], record["dst"]) == (attempt.src, attempt.dst)
    assert (record["src_ip"], record["dst_ip"]) == (env.ip(attempt.src, version), env.ip(attempt.dst, version))
    assert (record["family"], record["protocol"]) == (attempt.family, attempt.protocol)
    assert (record["src_port"], record["dst_port"]) == (attempt.src_port, attempt.dst_port)
    assert (record["verdict"], record["audit"]) == (verdict, audit)
    assert record["msg"] == {
        ("allow", False): "connection allowed",
        ("deny", False): "connection denied",
        ("deny", True): "connection would be denied (audit)",
    }[(verdict, audit)]
    assert record["process_time_us"] > 0


# ----------------------------------------------------------------------- tests


def mixed_attempts(env: AgentLab) -> list[Attempt]:
    """Allowed and denied, TCP and UDP, IPv4 and IPv6, a repeated key, a retransmitted SYN."""
    attempts = [
        tcp_connect(env, "x/b", "x/a")[0],
        tcp_connect(env, "x/b", "x/a")[0],  # same pods and port: a verdict cache hit
        tcp_connect(env, "x/b", "x/a", version=6)[0],
        udp_exchange(env, "x/a", "y/a"),  # x/a's egress is not isolated: allowed, judged as x/a's traffic
        # Held past the first SYN retransmission (1 s): two SYNs, two first packets of one connection.
        tcp_connect(env, "y/a", "x/a", timeout=1.3)[0],
        tcp_connect(env, "y/a", "x/a", version=6, timeout=0.3)[0],
        udp_exchange(env, "x/b", "x/a"),  # the policy admits x/b on TCP only
    ]
    assert [a.connected for a in attempts] == [True] * 4 + [False] * 3
    assert attempts[4].queued >= 2, "the denied SYN was not retransmitted"
    return attempts


def test_with_the_verdict_memory_the_agent_and_the_kernel_count_every_first_packet_once() -> None:
    """packet_count (what userspace judged) plus kernel_verdicts (what the memory answered) is every
    first packet, by verdict; the queue's own count and the processing times follow packet_count."""
    with agent_lab(PODS, policies=[POLICY], extra_args=["--nfqueue-id", str(QUEUE_ID), "--verdict-memory=true"]) as env:
        attempts = mixed_attempts(env)
        metrics = scrape(env)
        judged = labelled(metrics, "packet_count", "protocol", "family", "verdict")
        kernel = labelled(metrics, "kernel_verdicts", "verdict")
        # The repeated key and the retransmitted SYN were answered in the kernel.
        assert kernel[("accept",)] >= 1 and kernel[("drop",)] >= 1, kernel
        for verdict in ("accept", "drop"):
            expected = sum(n for (_, _, v), n in expected_packets(attempts).items() if v == verdict)
            seen = sum(n for (_, _, v), n in judged.items() if v == verdict)
            assert seen + kernel[(verdict,)] == expected, (verdict, judged, kernel)
        total = sum(judged.values())
        assert labelled(metrics, "nfqueue_packet_id", "queue") == {(str(QUEUE_ID),): total}
        assert metrics.value("packet_process_duration_microseconds_count") == total


def test_metrics_count_real_connections_exactly() -> None:
    # Every first packet reaches the queue (the memory on: test_with_the_verdict_memory_...).
    with agent_lab(PODS, extra_args=["--nfqueue-id", str(QUEUE_ID), "--verdict-memory=false"]) as env:
        idle = scrape(env)
        assert labelled(idle, "managed_pod_ips", "family") == {("IPv4",): 0, ("IPv6",): 0}
        assert labelled(idle, "invalid_objects", "kind") == {}
        # The change reaches a running agent: its apply latency and dataplane sync are measured.
        env.apply(POLICY, BAD_CIDR_POLICY)
        applied = scrape(env)
        assert labelled(applied, "managed_pod_ips", "family") == {("IPv4",): 1, ("IPv6",): 1}
        assert labelled(applied, "invalid_objects", "kind") == {("NetworkPolicy",): 1}
        assert applied.value("policy_apply_latency_seconds_count") >= 1
        assert applied.value("dataplane_sync_duration_seconds_count") >= 1
        assert labelled(applied, "packet_count", "protocol", "family", "verdict") == {}

        attempts = mixed_attempts(env)
        # Neither end is selected by a policy: not queued, not counted.
        unmanaged, _ = tcp_connect(env, "y/a", "x/b")
        assert unmanaged.connected
        metrics = scrape(env)

        check_families(metrics, decision_log=False)
        packets = expected_packets(attempts)
        total = sum(packets.values())
        assert labelled(metrics, "packet_count", "protocol", "family", "verdict") == packets
        # The kernel's own count of queued packets agrees: the queue's last packet id.
        assert labelled(metrics, "nfqueue_packet_id", "queue") == {(str(QUEUE_ID),): total}
        for gauge in ("nfqueue_queue_total", "nfqueue_queue_dropped", "nfqueue_user_dropped"):
            assert labelled(metrics, gauge, "queue") == {(str(QUEUE_ID),): 0}, gauge
        # One processing time per judged packet, by protocol and family.
        by_kind: Counter[tuple[str, str]] = Counter()
        for (protocol, family, _), count in packets.items():
            by_kind[(protocol, family)] += int(count)
        assert labelled(metrics, "packet_process_time_count", "protocol", "family") == {
            key: float(count) for key, count in by_kind.items()}
        for (protocol, family), count in by_kind.items():
            assert metrics.value("packet_process_time_bucket", protocol=protocol, family=family, le="+Inf") == count
            assert metrics.value("packet_process_time_sum", protocol=protocol, family=family) > 0
        assert metrics.value("packet_process_duration_microseconds_count") == total
        assert metrics.value("packet_process_duration_microseconds_sum") > 0
        # Each judged packet counts once per direction; the invalid policy decided nothing.
        to_x_a = [a for a in attempts if a.dst == "x/a"]
        assert labelled(metrics, "verdicts_by_policy", "direction", "evaluator", "policy", "verdict") == {
            ("egress", "(none)", "(none)", "allow"): total,
            ("ingress", "(none)", "(none)", "allow"): sum(a.queued for a in attempts if a.dst != "x/a"),
            ("ingress", "networkpolicy", POLICY_NAME, "allow"): sum(a.queued for a in to_x_a if a.connected),
            ("ingress", "networkpolicy", POLICY_NAME, "deny"): sum(a.queued for a in to_x_a if not a.connected),
        }
        assert labelled(metrics, "audit_would_deny_count", "protocol", "family") == {}
        # Every judged packet looked the cache up; repeats of a (source, destination, protocol, port) hit.
        keys = {(a.src, a.dst, a.protocol, a.family, a.dst_port) for a in attempts}
        cache = labelled(metrics, "verdict_cache", "result")
        # A new key is judged by the pipeline (miss) or given its port segment's judgement (segment).
        assert cache[("miss",)] >= 1 and cache[("miss",)] + cache[("segment",)] >= len(keys)
        assert cache[("hit",)] >= total - len(keys) >= 2
        assert cache[("hit",)] + cache[("miss",)] + cache[("segment",)] >= total
        assert metrics.value("packet_errors") == 0
        assert metrics.value("dataplane_sync_errors") == 0
        assert labelled(metrics, "build_info", "version", "python") == {(__version__, platform.python_version()): 1}

        # Another change: y/a becomes managed too; the unchanged invalid policy is not counted again.
        env.apply(POLICY, BAD_CIDR_POLICY, deny_ingress("y"))
        changed = scrape(env)
        assert labelled(changed, "managed_pod_ips", "family") == {("IPv4",): 2, ("IPv6",): 2}
        assert labelled(changed, "invalid_objects", "kind") == {("NetworkPolicy",): 1}
        assert changed.value("policy_apply_latency_seconds_count") > metrics.value("policy_apply_latency_seconds_count")
        assert changed.value("dataplane_sync_duration_seconds_count") > metrics.value(
            "dataplane_sync_duration_seconds_count")


RATE = 20
FLOOD_PORTS = range(20000, 20600)


def test_decision_records_name_pods_policies_and_rules_and_keep_to_the_rate(tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    with agent_lab(PODS, policies=[POLICY],
                   extra_args=["--decision-log", str(log_path), "--decision-log-rate", str(RATE)]) as env:
        allowed, _ = tcp_connect(env, "x/b", "x/a")
        denied, _ = tcp_connect(env, "y/a", "x/a", version=6, timeout=0.3)
        egress_only = udp_exchange(env, "x/a", "y/a")
        assert (allowed.connected, denied.connected, egress_only.connected) == (True, False, True)
        attempts = [allowed, denied, egress_only]
        records = wait_for(lambda: read_records(log_path), all_recorded(attempts))
        # One record per judged packet (all within the burst), nothing else.
        assert len(records) == sum(a.queued for a in attempts), records
        assert not any("remembered_s" in r for r in records), "decision logging turns the memory's default off"

        (record,) = records_of(records, allowed)
        check_record(record, env, allowed, "allow", audit=False)
        check_direction(record, "egress", None, "allow", "", "")
        check_direction(record, "ingress", "networkpolicy", "allow", POLICY_NAME, "ingress[0]")
        denials = records_of(records, denied)
        assert len(denials) == denied.queued
        for record in denials:
            check_record(record, env, denied, "deny", audit=False)
            check_direction(record, "egress", None, "allow", "", "")
            check_direction(record, "ingress", "networkpolicy", "deny", POLICY_NAME, "")
            assert POLICY_NAME in record["ingress"]["reason"]
        (record,) = records_of(records, egress_only)
        check_record(record, env, egress_only, "allow", audit=False)
        check_direction(record, "egress", None, "allow", "", "")
        check_direction(record, "ingress", None, "allow", "", "")

        # A flood of new UDP flows (denied: the policy admits TCP only) far beyond the rate.
        flood_started = time.monotonic()
        sent = udp_flood(env, "x/b", "x/a", FLOOD_PORTS)
        judged_before = sum(a.queued for a in attempts)

        def accounted(metrics: Metrics) -> bool:
            fates = labelled(metrics, "decision_records", "result")
            return metrics.total("packet_count") == judged_before + sent and sum(fates.values()) == judged_before + sent

        metrics = wait_for(lambda: scrape(env), accounted)
        elapsed = time.monotonic() - flood_started
        records = read_records(log_path)
        assert labelled(metrics, "packet_count", "protocol", "family", "verdict")[("UDP", "IPv4", "drop")] == sent
        check_families(metrics, decision_log=True)
        fates = labelled(metrics, "decision_records", "result")
        assert set(fates) == {("written",), ("rate_limited",), ("queue_full",), ("write_error",)}
        # Every judged packet is either written or counted as dropped by the limit or the full queue.
        assert sum(fates.values()) == judged_before + sent, fates
        assert fates[("written",)] == len(records)
        assert fates[("write_error",)] == 0
        flood_records = [r for r in records if r["dst_port"] in FLOOD_PORTS]
        assert all(r["src"] == "x/b" and r["dst"] == "x/a" and r["verdict"] == "deny" for r in flood_records)
        # At most the burst (RATE) plus RATE per second since the flood began.
        budget = RATE + RATE * elapsed
        assert 1 <= len(flood_records) <= budget, (len(flood_records), elapsed)
        assert fates[("rate_limited",)] + fates[("queue_full",)] >= sent - budget
        print(f"flood of {sent}: {len(flood_records)} records in {elapsed:.2f} s, fates {fates}")

        # On the way out the agent writes how many records it suppressed.
        assert env.agent.stop() == 0
        summaries = suppression_summaries(log_path.read_text())
        assert summaries, "no suppression summary"
        assert sum(s["suppressed"] for s in summaries) == fates[("rate_limited",)] + fates[("queue_full",)]
        assert sum(s["rate_limited"] for s in summaries) == fates[("rate_limited",)]
        assert read_records(log_path) == records  # nothing was written after the scrape


def test_with_decision_records_and_the_memory_a_record_says_the_kernel_answers_the_key_next(tmp_path: Path) -> None:
    """Decision logging turns the memory's default off (the test above counts every packet); asked for
    both, the first connection's record says how long the kernel answers the key, and the next has none."""
    log_path = tmp_path / "decisions.jsonl"
    with agent_lab(PODS, policies=[POLICY], extra_args=["--decision-log", str(log_path), "--verdict-memory=true"]) as env:
        first, _ = tcp_connect(env, "x/b", "x/a")
        second, _ = tcp_connect(env, "x/b", "x/a")
        assert first.connected and second.connected
        (record,) = records_of(wait_for(lambda: read_records(log_path), all_recorded([first])), first)
        check_record(record, env, first, "allow", audit=False)
        assert record["remembered_s"] == 60
        time.sleep(0.5)  # the writer drains every 0.1 s
        assert records_of(read_records(log_path), second) == []
        assert labelled(scrape(env), "kernel_verdicts", "verdict")[("accept",)] >= second.queued >= 1


def test_audit_mode_lets_denied_connections_through_and_records_them_as_denied() -> None:
    with agent_lab(PODS, policies=[POLICY],
                   extra_args=["--audit", "--log-decisions", "--decision-log-denied-only"]) as env:
        allowed, _ = tcp_connect(env, "x/b", "x/a")
        denied, held = tcp_connect(env, "y/a", "x/a", keep_open=True)
        denied_udp = udp_exchange(env, "x/b", "x/a", version=6)  # the policy admits x/b on TCP only
        try:
            assert (allowed.connected, denied.connected, denied_udp.connected) == (True, True, True)
            metrics = scrape(env)
            # Everything was accepted; the policies' denials are counted as would-deny.
            assert labelled(metrics, "packet_count", "protocol", "family", "verdict") == expected_packets(
                [allowed, denied, denied_udp], audit=True)
            assert labelled(metrics, "audit_would_deny_count", "protocol", "family") == {
                ("TCP", "IPv4"): denied.queued, ("UDP", "IPv6"): 1}
            assert labelled(metrics, "verdicts_by_policy", "direction", "evaluator", "policy", "verdict") == {
                ("egress", "(none)", "(none)", "allow"): allowed.queued + denied.queued + 1,
                ("ingress", "networkpolicy", POLICY_NAME, "allow"): allowed.queued,
                ("ingress", "networkpolicy", POLICY_NAME, "deny"): denied.queued + 1,
            }
            status = env.agent.status()
            assert status is not None and status["verdicts"]["dropped"] == 0

            # --log-decisions writes to stderr (the agent's log here); denied only: the allowed one is absent.
            records = wait_for(lambda: decision_records(env.agent.log_text()), all_recorded([denied, denied_udp]))
            assert len(records) == denied.queued + 1, records
            for attempt in (denied, denied_udp):
                for record in records_of(records, attempt):
                    check_record(record, env, attempt, "deny", audit=True)
                    check_direction(record, "egress", None, "allow", "", "")
                    check_direction(record, "ingress", "networkpolicy", "deny", POLICY_NAME, "")
            assert labelled(scrape(env), "decision_records", "result")[("written",)] == len(records)

            # Enforcing strict mode would cut the denied connection on the next change; audit mode never does.
            env.apply(POLICY, deny_ingress("x"))
            assert echo(held, b"still connected")
        finally:
            if held is not None:
                held.close()
