"""Metrics: reference names, labels and values, gathered at scrape time."""

from __future__ import annotations

from typing import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6

from kube_netpol.observability.exposition import generate_text
from kube_netpol.tools.testing.metrics_text import parse_metrics, type_lines

from kube_netpol.agent import verdict_loop
from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import Decision, Verdict
from kube_netpol.engine import PolicyEngine
from kube_netpol.observability.metrics import AgentCollector, ControlStats, VerdictMetrics
from kube_netpol.observability.nfqueue_proc import QueueStats, parse_nfqueue_stats
from unit_standins import ByPort, Queued, engine_of, syn

DENY = Decision(Verdict.DENY, "x/deny-all", "", "isolated")
ALLOW = Decision(Verdict.ACCEPT, "x/allow-y", "ingress[0]")


def udp6(port: int) -> bytes:
    return bytes(IPv6(src="::1", dst="::2") / UDP(sport=40000, dport=port))


def judged(monkeypatch: pytest.MonkeyPatch, decisions: dict[int, Decision], packets: Sequence[tuple[bytes, int]],
           audit: bool = False) -> PolicyEngine:
    """The verdict loop's real recording of ``packets`` (payload, processing ns), judged by ``decisions``."""
    engine = engine_of(ByPort(decisions))
    loop = VerdictLoop(engine, 100, fail_open=True, audit=audit)

    def readings() -> Iterator[int]:  # a judged packet reads the clock twice: at its start and at its end
        now = 1_000_000  # not 0: the loop takes a 0 reading for "not timed yet"
        for _, elapsed in packets:
            yield now
            yield now + elapsed
            now += elapsed + 1_000_000
        while True:
            yield now

    clock = readings()
    monkeypatch.setattr(verdict_loop, "perf_counter_ns", lambda: next(clock))
    for payload, _ in packets:
        loop.handle(Queued(payload))
    return engine


def scrape(collector: AgentCollector) -> dict[str, list]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_text(registry).decode()
    samples: dict[str, list] = {}
    for family in parse_metrics(text).values():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def collector(verdicts: VerdictMetrics, queues: list[QueueStats] | None = None,
              control: ControlStats | None = None) -> AgentCollector:
    return AgentCollector(
        verdicts,
        control or ControlStats(),
        invalid_objects=lambda: {"NetworkPolicy": 2},
        managed_ips=lambda: (3, 1),
        cache_stats=lambda: (10, 4, 2),
        queue_stats=lambda: queues or [],
    )


def test_reference_names_labels_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = judged(monkeypatch, {80: ALLOW, 81: DENY, 53: DENY},
                    [(syn(80), 5_000), (syn(81), 300_000), (udp6(53), 40_000)])
    samples = scrape(collector(VerdictMetrics(engine), [QueueStats(100, 1, 2, 2, 128, 7, 1, 99)]))

    counts = {(l["protocol"], l["family"], l["verdict"]): v for l, v in samples["kube_network_policies_packet_count"]}
    assert counts == {("TCP", "IPv4", "accept"): 1, ("TCP", "IPv4", "drop"): 1, ("UDP", "IPv6", "drop"): 1}
    buckets = {(l["protocol"], l["le"]): v for l, v in samples["kube_network_policies_packet_process_time_bucket"]}
    assert buckets[("TCP", "10.0")] == 1 and buckets[("TCP", "500.0")] == 2 and buckets[("UDP", "50.0")] == 1
    assert dict((l["protocol"], v) for l, v in samples["kube_network_policies_packet_process_time_count"]) == {"TCP": 2, "UDP": 1}
    assert samples["kube_network_policies_packet_process_duration_microseconds_count"] == [({}, 3.0)]
    quantiles = {l["quantile"]: v for l, v in samples["kube_network_policies_packet_process_duration_microseconds"]}
    assert quantiles["0.5"] == 40.0 and quantiles["0.99"] == 300.0

    by_policy = {(l["direction"], l["evaluator"], l["policy"], l["verdict"]): v
                 for l, v in samples["kube_network_policies_verdicts_by_policy"]}
    assert by_policy[("ingress", "networkpolicy", "x/deny-all", "deny")] == 2
    assert by_policy[("ingress", "networkpolicy", "x/allow-y", "allow")] == 1
    assert by_policy[("egress", "(none)", "(none)", "allow")] == 3

    assert samples["kube_network_policies_nfqueue_queue_total"] == [({"queue": "100"}, 2)]
    assert samples["kube_network_policies_nfqueue_queue_dropped"] == [({"queue": "100"}, 7)]
    assert samples["kube_network_policies_nfqueue_user_dropped"] == [({"queue": "100"}, 1)]
    assert samples["kube_network_policies_nfqueue_packet_id"] == [({"queue": "100"}, 99)]
    assert samples["kube_network_policies_invalid_objects"] == [({"kind": "NetworkPolicy"}, 2)]
    assert {l["family"]: v for l, v in samples["kube_network_policies_managed_pod_ips"]} == {"IPv4": 3, "IPv6": 1}
    assert {l["result"]: v for l, v in samples["kube_network_policies_verdict_cache"]} == {"hit": 10, "miss": 4, "segment": 2}
    assert samples["kube_network_policies_build_info"][0][1] == 1


def test_policy_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    decisions = {1000 + i: Decision(Verdict.DENY, f"x/p{i}", "") for i in range(5)}
    packets = [(syn(1000 + i), 1000) for i in range(5) for _ in range(10 - i)]  # repeats: flow-table hits
    engine = judged(monkeypatch, decisions, packets)
    samples = scrape(collector(VerdictMetrics(engine, top_policies=2)))
    policies = {l["policy"]: v for l, v in samples["kube_network_policies_verdicts_by_policy"] if l["direction"] == "ingress"}
    assert policies == {"x/p0": 10, "x/p1": 9, "(other)": 8 + 7 + 6}


def test_audit_marks_what_would_have_been_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = judged(monkeypatch, {80: DENY}, [(syn(80), 1000)], audit=True)
    samples = scrape(collector(VerdictMetrics(engine)))
    assert samples["kube_network_policies_audit_would_deny_count"] == [({"protocol": "TCP", "family": "IPv4"}, 1)]
    assert samples["kube_network_policies_packet_count"][0][0]["verdict"] == "accept"


def test_sync_and_apply_latency() -> None:
    control = ControlStats()
    control.record_sync(0.002, True)
    control.record_sync(0.2, False)
    control.record_apply_latency(0.03)
    samples = scrape(collector(VerdictMetrics(engine_of()), control=control))
    assert samples["kube_network_policies_dataplane_sync_duration_seconds_count"] == [({}, 2)]
    assert samples["kube_network_policies_dataplane_sync_errors"] == [({}, 1)]
    buckets = {l["le"]: v for l, v in samples["kube_network_policies_policy_apply_latency_seconds_bucket"]}
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1


def test_proc_parsing() -> None:
    text = "  100  12345     0 2   128     3     4      250  1\n  101  1 0 2 128 0 0 0 1\ngarbage line\n"
    assert parse_nfqueue_stats(text) == [QueueStats(100, 12345, 0, 2, 128, 3, 4, 250), QueueStats(101, 1, 0, 2, 128, 0, 0, 0)]


#: Every counter the agent exports, by the reference's naming (no ``_total``).
COUNTERS = {
    "packet_count", "audit_would_deny_count", "verdicts_by_policy", "invalid_objects", "dataplane_sync_errors",
    "packet_errors", "decision_records", "verdict_cache", "dataplane_repairs", "new_flows_rate_limited", "kernel_verdicts",
    "dns_answers", "dns_cache_refused",
}


def test_counters_are_typed_counter_under_the_reference_name_in_help_type_and_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    engine = judged(monkeypatch, {80: ALLOW}, [(syn(80), 5_000)])
    registry.register(AgentCollector(
        VerdictMetrics(engine), ControlStats(), invalid_objects=lambda: {"NetworkPolicy": 2}, managed_ips=lambda: (3, 1),
        cache_stats=lambda: (10, 4, 2), queue_stats=lambda: [QueueStats(100, 1, 2, 2, 128, 7, 1, 99)],
        decision_log_stats=lambda: {"written": 1},
    ))
    text = generate_text(registry).decode()
    assert "# TYPE kube_network_policies_packet_count counter\n" in text
    assert "# HELP kube_network_policies_packet_count Number of packets\n" in text
    assert 'kube_network_policies_packet_count{family="IPv4",protocol="TCP",verdict="accept"} 1.0\n' in text
    assert "kube_network_policies_dataplane_sync_errors 0.0\n" in text
    prefix = "kube_network_policies_"
    types = {name[len(prefix):]: kind for name, kind in type_lines(text).items() if name.startswith(prefix)}
    assert {name for name, kind in types.items() if kind == "counter"} == COUNTERS
    assert "untyped" not in types.values()
    assert "_total" not in text.replace("nfqueue_queue_total", "")


def test_the_exposition_writes_other_families_as_prometheus_client_does() -> None:
    registry = CollectorRegistry()
    Counter("library_requests", "A prometheus_client counter: its samples are ..._total", ["code"],
            registry=registry).labels("200").inc(3)
    Histogram("library_latency_seconds", "A histogram", registry=registry, buckets=(0.1, 1)).observe(0.5)
    assert generate_text(registry) == generate_latest(registry)
    assert "# TYPE library_requests_total counter" in generate_text(registry).decode()


def test_the_exposition_escapes_help_and_label_values() -> None:
    class Odd:
        def collect(self):  # type: ignore[no-untyped-def]
            metric = Metric("odd_count", 'back\\slash and\nnewline', "counter")
            metric.add_sample("odd_count", {"b": 'say "hi"\n', "a": "c:\\"}, 2, timestamp=1.5)
            yield metric
    text = generate_text(Odd()).decode()
    assert text == ('# HELP odd_count back\\\\slash and\\nnewline\n# TYPE odd_count counter\n'
                    'odd_count{a="c:\\\\",b="say \\"hi\\"\\n"} 2.0 1500\n')
    # prometheus_client's parser reads it back; parse_metrics names it as written.
    (family,) = parse_metrics(text).values()
    assert family.type == "counter" and family.samples[0].labels == {"a": "c:\\", "b": 'say "hi"\n'}
    assert family.samples[0].name == "odd_count"


def test_a_counter_whose_samples_have_other_names_is_left_to_prometheus_client() -> None:
    class Library:
        def collect(self):  # type: ignore[no-untyped-def]
            family = CounterMetricFamily("lib_events", "prometheus_client's own counter shape", labels=["k"])
            family.add_metric(["v"], 4)
            yield family
    assert generate_text(Library()) == generate_latest(Library())
    assert b"lib_events_total{" in generate_text(Library())


@pytest.mark.parametrize("name", sorted(COUNTERS - {"decision_records"}))
def test_each_counter_family_parses_back_under_its_written_name(name: str) -> None:
    samples = scrape(collector(VerdictMetrics(engine_of())))
    full = "kube_network_policies_" + name
    assert full + "_total" not in samples
    if name not in ("audit_would_deny_count", "packet_count", "verdicts_by_policy", "dataplane_repairs"):  # series only after traffic or a repair
        assert full in samples, sorted(samples)


def test_packet_errors_and_decision_records() -> None:
    agent_collector = AgentCollector(
        VerdictMetrics(engine_of()),
        ControlStats(),
        invalid_objects=dict,
        managed_ips=lambda: (0, 0),
        cache_stats=lambda: (0, 0, 0),
        queue_stats=list,
        verdict_errors=lambda: 7,
        decision_log_stats=lambda: {"written": 5, "rate_limited": 2, "queue_full": 1, "write_error": 0},
    )
    samples = scrape(agent_collector)
    assert samples["kube_network_policies_packet_errors"] == [({}, 7)]
    assert {l["result"]: v for l, v in samples["kube_network_policies_decision_records"]} == {
        "written": 5, "rate_limited": 2, "queue_full": 1, "write_error": 0,
    }


def test_verdicts_are_counted_per_cluster_network_policy_and_tier() -> None:
    from kube_netpol.plugins import BUILTIN_ORDER, build_engine

    engine = build_engine(BUILTIN_ORDER)
    state = engine.state
    for ns, ip in (("x", "10.0.1.10"), ("y", "10.0.2.10"), ("z", "10.0.3.10")):
        state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}})
        state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": "a", "labels": {"pod": "a"}},
                     "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIPs": [{"ip": ip}]}})

    def cnp(name: str, tier: str, subject: str, action: str, peer: str) -> dict[str, object]:
        return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
                "spec": {"tier": tier, "priority": 1, "subject": {"namespaces": {"matchLabels": {"ns": subject}}},
                         "ingress": [{"name": f"{action.lower()}-{peer}", "action": action,
                                      "from": [{"namespaces": {"matchLabels": {"ns": peer}}}]}]}}

    assert state.apply(cnp("admin-x", "Admin", "x", "Deny", "z"))
    assert state.apply(cnp("baseline-y", "Baseline", "y", "Deny", "x"))
    assert state.apply(cnp("baseline-z", "Baseline", "z", "Accept", "y"))
    assert engine.publish() is not None
    loop = VerdictLoop(engine, 100, fail_open=True)
    sent = [("10.0.3.10", "10.0.1.10", 80), ("10.0.3.10", "10.0.1.10", 81),  # z -> x: Admin Deny, two flows
            ("10.0.1.10", "10.0.2.10", 80),  # x -> y: Baseline Deny
            ("10.0.2.10", "10.0.3.10", 80),  # y -> z: Baseline Accept
            ("10.0.2.10", "10.0.1.10", 80)]  # y -> x: nothing decides
    for src, dst, port in sent:
        loop.handle(Queued(syn(port, src, dst)))
    samples = scrape(collector(VerdictMetrics(engine)))
    by_policy = {(l["direction"], l["evaluator"], l["policy"], l["verdict"]): v
                 for l, v in samples["kube_network_policies_verdicts_by_policy"]}
    ingress = {key: v for key, v in by_policy.items() if key[0] == "ingress"}
    assert ingress == {
        ("ingress", "clusternetworkpolicy-admin", "admin-x", "deny"): 2,
        ("ingress", "clusternetworkpolicy-baseline", "baseline-y", "deny"): 1,
        ("ingress", "clusternetworkpolicy-baseline", "baseline-z", "allow"): 1,
        ("ingress", "(none)", "(none)", "allow"): 1,
    }
